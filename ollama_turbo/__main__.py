"""``python -m ollama_turbo``: the ``ollama-turbo`` command."""

from ollama_turbo.cli import main

main()
