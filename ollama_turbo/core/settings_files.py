"""The settings files and variables, checked: each problem one :class:`ConfigError` naming the file (and line)
or the variable.

The toolkit reads and merges its settings itself (:mod:`ollama_turbo.core.settings_layers`); invoke reads the
same files for its own configuration, after importing ``tasks.py``, where a malformed file would end in a YAML
traceback or a merge error. :func:`preflight` checks them before either reads them.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ollama_turbo.core import settings as config
from ollama_turbo.core.errors import ConfigError

SUFFIXES = (".yaml", ".yml")


def config_files(project_dir: Path, argv: Sequence[str]) -> list[Path]:
    """The YAML files invoke will read: system, user, project and ``-f FILE``."""
    files = [Path("/etc/invoke" + s) for s in SUFFIXES]
    files += [Path.home() / (".invoke" + s) for s in SUFFIXES]
    files += [project_dir / ("invoke" + s) for s in SUFFIXES]
    runtime = runtime_file(argv)
    if runtime:
        files.append(runtime)
    return [f for f in files if f.exists() or f == runtime]


def runtime_file(argv: Sequence[str]) -> Path | None:
    for i, arg in enumerate(argv):
        if arg in ("-f", "--config") and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1])
    env = os.environ.get("INVOKE_RUNTIME_CONFIG")
    return Path(env) if env else None


def check_file(path: Path) -> Any:
    """The file's YAML, or a ConfigError naming the file (and line) when it cannot be read as settings."""
    if not path.exists():
        raise ConfigError(f"settings file {path} does not exist", hint="check the -f argument")
    if path.suffix not in SUFFIXES:
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML: {problem}",
                          hint=f"fix the syntax in {path}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r})",
                          hint=f"save {path} as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read settings file {path}: {exc.strerror or exc}",
                          hint=f"make {path} a readable file") from None
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}",
                          hint=f"put the settings under 'turbo:' in {path} (docs/settings.md)")
    return data


def check_shapes(files: Sequence[tuple[Path, Any]]) -> None:
    """invoke merges its files, in this order, into its own defaults and ours: a section where a single value
    stands, a single value where a section stands, or a section with nothing under it (``turbo:`` alone) would
    end in invoke's AmbiguousMergeError. Each is named here, with its key and file."""
    from invoke.config import Config

    tree = copy.deepcopy({**Config.global_defaults(), "turbo": config.DEFAULTS, "ollama_turbo": {"project_dir": ""}})
    for path, data in files:
        if isinstance(data, Mapping):
            _merge_shape(tree, data, (), path)


def _merge_shape(base: dict[str, Any], update: Mapping[str, Any], path: tuple[str, ...], source: Path) -> None:
    for key, value in update.items():
        here = (*path, str(key))
        old = base.get(key)
        if key not in base:
            base[key] = copy.deepcopy(value)
        elif isinstance(old, dict) and isinstance(value, dict):
            _merge_shape(old, value, here, source)
        elif isinstance(old, dict) and value is None:
            raise ConfigError("nothing under it", key=".".join(here), source=str(source), prefix="",
                              hint=f"put its settings under it, indented, or delete the line '{key}:' in {source}")
        elif isinstance(old, dict):
            raise ConfigError(f"expected a mapping, got {type(value).__name__} {value!r}", key=".".join(here),
                              source=str(source), prefix="",
                              hint=f"put its settings under '{key}:', indented, or delete the line in {source}")
        elif isinstance(value, dict):
            raise ConfigError("expected a single value, got a mapping", key=".".join(here), source=str(source),
                              prefix="", hint="give it one value (settings-show prints the current one)")
        else:
            base[key] = value


def preflight(project_dir: Path, argv: Sequence[str], environ: Mapping[str, str] | None = None) -> None:
    files = config_files(project_dir, argv)
    check_shapes([(f, check_file(f)) for f in files])
    check_environment(os.environ if environ is None else environ)


ENV_PREFIX = "INVOKE_TURBO_"
BOOLEAN_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False,
                 "0": False}


def leaves(tree: Mapping[str, Any], path: tuple[str, ...] = ()) -> dict[str, tuple[tuple[str, ...], Any]]:
    """``INVOKE_TURBO_<PATH>`` -> (path, default) for every setting the environment can set."""
    out: dict[str, tuple[tuple[str, ...], Any]] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping) and v:
            out.update(leaves(v, (*path, k)))
        else:
            out[ENV_PREFIX + "_".join((*path, k)).upper()] = ((*path, k), v)
    return out


def check_environment(environ: Mapping[str, str]) -> None:
    """``INVOKE_TURBO_*`` variables: each must name a setting, and a yes/no setting must say yes or no
    (invoke itself reads any non-empty word, ``false`` included, as true)."""
    known = leaves(config.DEFAULTS)
    for name in sorted(n for n in environ if n.startswith(ENV_PREFIX)):
        if name not in known:
            close = [k for k in known if k.startswith(name.rsplit("_", 1)[0])][:3] or sorted(known)[:4]
            raise ConfigError(f"unknown setting in the environment: {name}",
                              hint=f"settings are named like {', '.join(close)} (see invoke settings-show); "
                                   f"unset {name}")
        default = known[name][1]
        if isinstance(default, bool) and environ[name].strip().lower() not in BOOLEAN_WORDS:
            raise ConfigError(f"{name}={environ[name]!r} is not a yes/no value",
                              hint="use true/false, yes/no, on/off or 1/0")


