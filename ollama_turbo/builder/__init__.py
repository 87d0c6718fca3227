"""build-ollama: the build plan, era B and era C, the Go source rules, the llama-server build."""
