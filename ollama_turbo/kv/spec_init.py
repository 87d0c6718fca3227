"""``invoke spec-init``: a starting Modelfile spec (``modelfiles/<name>.yaml``) for a model the user names.

The spec is written from what is known: the model (an Ollama name, or a .gguf file whose geometry sizes
``num_ctx: auto`` for each host), the configured hosts, and a cache of its own when one is asked for. Everything
else a spec takes (parameters, system, template) is left to the user; the header says where it is described.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ollama_turbo.core.errors import TurboError, UsageError
from ollama_turbo.fork import cache_types
from ollama_turbo.kv.geometry import Geometry, geometry_from_gguf

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
COMMENT_AT = 29  # the column the comments start at


def _line(text: str, comment: str) -> str:
    return f"{text:<{COMMENT_AT}}# {comment}"


NO_GEOMETRY = [_line("num_ctx: 8192", "'auto' (the largest context each host fits) needs the model's geometry:"),
               _line("", "add gguf: <its .gguf file>, or geometry: {layers, kv_heads, head_dim, heads, weights_gib}")]


@dataclass(frozen=True)
class StartingSpec:
    name: str
    text: str
    geometry: Geometry | None  # read from the GGUF: num_ctx is auto


def name_for(model: str) -> str:
    """``qwen3:8b`` -> ``qwen3-8b``; ``~/models/Qwen3-8B-Q4_K_M.gguf`` -> ``Qwen3-8B-Q4_K_M``."""
    base = Path(model).stem if model.endswith(".gguf") else model.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.") or "model"


def _scalar(value: str) -> str:
    """A YAML scalar, quoted only where YAML needs it."""
    return yaml.safe_dump({"v": value}, default_flow_style=False, width=10_000, allow_unicode=True)[3:].strip()


def _absolute(path: str) -> str:
    """A file path as the spec keeps it: under ~ or absolute (a relative one would mean another folder later)."""
    return path if path.startswith(("~", "/")) else str(Path(path).resolve())


def starting_spec(model: str, *, hosts: list[str], name: str = "", gguf: str = "", kv: str = "") -> StartingSpec:
    """The spec's text for ``model`` on ``hosts``; a GGUF (``model`` itself, or ``gguf``) is read for its geometry."""
    model = model.strip()
    if not model:
        raise UsageError("spec-init needs --from MODEL",
                         hint="e.g. --from qwen3:8b (an Ollama model name) or --from ~/models/model.gguf")
    name = name or name_for(model)
    if not NAME.match(name):
        raise UsageError(f"--name {name!r}: not a spec name (letters, digits, '.', '_' and '-', starting with a letter "
                         "or digit)", hint="e.g. --name qwen3-8b")
    if model.endswith(".gguf"):
        model = _absolute(model)
    lines = [f"# {name}, written by ollama-turbo spec-init: invoke modelfiles renders it for each host below,",
             "# invoke deploy creates it there. Other keys (parameters, system, template): docs/kv-planning.md.",
             f"from: {_scalar(model)}"]
    flag, given = ("--gguf", _absolute(gguf)) if gguf else ("--from", model if model.endswith(".gguf") else "")
    path = Path(given).expanduser()
    if given and not path.is_file():
        raise UsageError(f"{flag} {given}: no such file", hint="give the path of the model's .gguf file")
    geo = geometry_from_gguf(path) if given else None
    if gguf:
        lines.append(f"gguf: {_scalar(given)}")
    lines += [_line("num_ctx: auto", "the largest context each host's memory fits, from the GGUF's geometry")] \
        if geo else NO_GEOMETRY
    if kv:
        try:
            lines.append(_line(f"kv: {cache_types.parse_pair(kv).label}",
                               "this model's own cache (PARAMETER kv_cache_type)"))
        except UsageError as exc:
            raise UsageError(f"--kv {kv}: {exc.message}", hint="e.g. --kv q8_0/turbo4, or leave it out for the "
                                                                "host's default (turbo.kv)") from None
    lines.append(f"hosts: [{', '.join(hosts)}]")
    return StartingSpec(name, "\n".join(lines) + "\n", geo)


def write_new(directory: Path, spec: StartingSpec) -> Path:
    """``directory/<name>.yaml``, created; an existing spec is never overwritten."""
    path = directory / f"{spec.name}.yaml"
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "x", encoding="utf-8") as fh:
            fh.write(spec.text)
    except FileExistsError:
        raise UsageError(f"{path} exists: spec-init does not overwrite a spec",
                         hint=f"edit {path}, or give --name another name") from None
    except OSError as exc:
        raise TurboError(f"cannot write {path}: {exc.strerror or exc}",
                         hint="free some space or fix the folder's permissions, then run it again") from None
    return path
