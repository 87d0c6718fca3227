"""The shared ground: errors, the subprocess chokepoint, settings, toolchains, sources, manifests, waits."""
