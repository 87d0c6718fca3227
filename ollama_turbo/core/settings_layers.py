"""The settings' layers, read and merged by the toolkit itself, each value with where it came from.

Lowest first, a later layer winning key by key (the order invoke documents for its own configuration):

1. the built-in defaults (:data:`ollama_turbo.core.settings.DEFAULTS`)
2. ``/etc/invoke.yaml`` (system), 3. ``~/.invoke.yaml`` (user), 4. ``invoke.yaml`` in the project directory
   (each the first of ``.yaml``/``.yml`` found)
5. ``INVOKE_TURBO_*`` environment variables
6. the ``-f FILE`` settings file (or ``INVOKE_RUNTIME_CONFIG``)

Only the ``turbo`` section is ours; the rest of a file belongs to invoke. :func:`load` reads the layers into a
:class:`Layers`, which parses them into :class:`~ollama_turbo.core.settings.Settings` and says, for any key,
where its value came from (:meth:`Layers.origin`) and whether the user set it (:meth:`Layers.given`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ollama_turbo.core import settings as config
from ollama_turbo.core import settings_files
from ollama_turbo.core.errors import ConfigError

DEFAULTS_ORIGIN = "built-in defaults"
ENVIRONMENT = "environment"


@dataclass(frozen=True)
class Layer:
    """One source of settings: its ``turbo`` section, and what it is (a file's path, the environment)."""

    kind: str  # defaults | system | user | project | environment | file
    origin: str  # how errors and settings-show name it: the file's path, "built-in defaults"
    tree: Mapping[str, Any]
    variables: dict[tuple[str, ...], str] = field(default_factory=dict)  # environment: key path -> variable

    def has(self, path: tuple[str, ...]) -> bool:
        node: Any = self.tree
        for part in path:
            if not isinstance(node, Mapping) or part not in node:
                return False
            node = node[part]
        return True

    def name_of(self, path: tuple[str, ...]) -> str:
        """Where ``path`` is set in this layer, as a person reads it."""
        if self.kind == ENVIRONMENT:
            return f"environment {self.variables.get(path) or settings_files.ENV_PREFIX + '_'.join(path).upper()}"
        return self.origin


@dataclass(frozen=True)
class Layers:
    """Every layer, lowest first (the defaults first)."""

    layers: tuple[Layer, ...]

    @property
    def merged(self) -> dict[str, Any]:
        """The ``turbo`` tree the user's layers give (the defaults are merged in by the parser)."""
        return config.merged({}, *[layer.tree for layer in self.layers if layer.kind != "defaults"])

    def origin(self, key: str) -> str:
        """Where the value of ``key`` (dotted, under ``turbo``) came from: the layer that set the deepest part of
        it (a host's entry, for a host setting it leaves to the defaults), the latest such layer winning; the
        built-in defaults where no layer set any of it."""
        return self._origin(tuple(p for p in key.split(".") if p), 1)

    def _origin(self, path: tuple[str, ...], shallowest: int) -> str:
        for depth in range(len(path), shallowest - 1, -1):
            for layer in reversed(self.layers):
                if layer.kind != "defaults" and layer.has(path[:depth]):
                    return layer.name_of(path[:depth])
        return DEFAULTS_ORIGIN

    def given(self, key: str) -> bool:
        """Whether the user set ``key`` exactly (a file, -f or the environment), not a default."""
        path = tuple(p for p in key.split(".") if p)
        return any(layer.has(path) for layer in self.layers if layer.kind != "defaults")

    def sources(self) -> dict[str, str]:
        """Every setting's dotted key and where its value came from (the layer that set it exactly)."""
        tree = config.merged(config.DEFAULTS, self.merged)
        return {key: self._origin(tuple(key.split(".")), key.count(".") + 1) for key in _keys(tree)}

    def settings(self, base: Path) -> config.Settings:
        """The settings, validated; an error names the key and the layer it came from."""
        return config.parse(self.merged, self.origin, base=base, given=self.given)


def _keys(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out += _keys(v, key + ".")
        else:
            out.append(key)
    return out


def first_file(stem: Path) -> Path | None:
    """``stem.yaml`` or ``stem.yml``, the first that exists."""
    return next((p for p in (stem.with_name(stem.name + s) for s in settings_files.SUFFIXES) if p.is_file()), None)


def file_layer(kind: str, path: Path) -> Layer:
    """A YAML settings file's ``turbo`` section (checked: a problem is one error naming the file)."""
    if path.suffix == ".json" and path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8") or "null")
        except (ValueError, OSError) as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}", hint=f"fix the syntax in {path}") from None
    else:
        data = settings_files.check_file(path)
    turbo = data.get("turbo") if isinstance(data, Mapping) else None
    if turbo is not None and not isinstance(turbo, Mapping):
        raise ConfigError(f"expected a mapping, got {type(turbo).__name__} {turbo!r}", key="turbo",
                          source=str(path), prefix="",
                          hint=f"put the settings under 'turbo:', indented, in {path}")
    return Layer(kind, str(path), dict(turbo or {}))


def environment_layer(environ: Mapping[str, str]) -> Layer:
    """The ``INVOKE_TURBO_*`` variables, each read as its setting's type (a yes/no setting as a word, a list as
    comma-separated names)."""
    settings_files.check_environment(environ)
    tree: dict[str, Any] = {}
    names: dict[tuple[str, ...], str] = {}
    for name, (path, default) in settings_files.leaves(config.DEFAULTS).items():
        if name not in environ:
            continue
        raw = environ[name]
        if isinstance(default, bool):
            value: Any = settings_files.BOOLEAN_WORDS[raw.strip().lower()]
        elif isinstance(default, list):
            value = [part.strip() for part in raw.split(",") if part.strip()]
        elif isinstance(default, dict):
            raise ConfigError(f"{name}: turbo.{'.'.join(path)} is a section, which the environment cannot set",
                              hint=f"set it in invoke.yaml (or a -f file) and unset {name}")
        else:
            value = raw
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
        for depth in range(1, len(path) + 1):
            names.setdefault(path[:depth], settings_files.ENV_PREFIX + "_".join(path[:depth]).upper())
        names[path] = name
    return Layer(ENVIRONMENT, ENVIRONMENT, tree, names)


def load(project_dir: Path, settings_file: Path | None, environ: Mapping[str, str]) -> Layers:
    """Every layer of the settings, read here (see the module's text for the order)."""
    layers = [Layer("defaults", DEFAULTS_ORIGIN, config.DEFAULTS)]
    for kind, stem in (("system", Path("/etc/invoke")), ("user", Path.home() / ".invoke"),
                       ("project", project_dir / "invoke")):
        found = first_file(stem)
        if found is not None:
            layers.append(file_layer(kind, found))
    layers.append(environment_layer(environ))
    if settings_file is not None:
        layers.append(file_layer("file", settings_file))
    return Layers(tuple(layers))
