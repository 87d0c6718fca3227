"""The deploy stage's error."""

from __future__ import annotations

from ollama_turbo.core.errors import TurboError


class DeployError(TurboError):
    pass
