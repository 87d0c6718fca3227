"""ollama-turbo: run Ollama with TurboQuant KV-cache compression, safely and repeatably."""

__version__ = "0.1.0"
