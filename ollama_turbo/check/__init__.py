"""api-check: the C API model and its diff, Ollama's contract with llama.cpp, the report."""
