"""The sample world: miniature upstream llama.cpp, TurboQuant fork and Ollama (eras B and C)."""

from .world import SCENARIOS, Scenario, World, generate, scenario

__all__ = ["SCENARIOS", "Scenario", "World", "generate", "scenario"]
