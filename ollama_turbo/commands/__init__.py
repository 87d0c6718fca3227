"""The tasks of ``ollama-turbo`` and ``invoke``, by what they work on; ``ollama_turbo.cli`` assembles them."""
