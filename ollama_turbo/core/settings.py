"""Settings: defaults in code, validated into typed objects.

Settings live under the ``turbo`` key, so ``invoke.yaml`` at the project root, ``INVOKE_TURBO_*``
environment variables and ``-f FILE`` all override :data:`DEFAULTS` (read and merged by
:mod:`ollama_turbo.core.settings_layers`). Every validation error names the dotted key and where it came from.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ollama_turbo.core.errors import ConfigError
from ollama_turbo.core.kv_types import CACHE_TYPES, ForkBehaviour, label
from ollama_turbo.core.platforms import HOST_OS, SERVICES, default_service, runs_on

BACKENDS = ("metal", "cuda", "cpu")
CUDA_ARCH_PATTERN = r"[1-9]\d{1,2}[af]?"  # a compute capability as CMake names it: 90, 89, 90a, 120
CUDA_ARCH_EXAMPLES = "90 (H100/H200), 89 (L4/RTX 40), 86 (A10/RTX 30), 80 (A100)"

DEFAULTS: dict[str, Any] = {
    "workspace": ".turbo",
    "sources": {
        "ollama": {"url": "https://github.com/ollama/ollama.git", "ref": "main"},
        "fork": {
            "url": "https://github.com/TheTom/llama-cpp-turboquant.git",
            "ref": "feature/turboquant-kv-cache",
        },
        "upstream": {"url": "https://github.com/ggml-org/llama.cpp.git", "ref": "master"},
    },
    "kv": {"type_k": "turbo4", "type_v": "turbo4", "flash_attention": True, "env": {}},
    "build": {"backend": "metal", "version_suffix": "turbo", "cuda_arch": "", "leave_out": [], "placements": "",
              "cpu_exclude": []},
    "hosts": {},
    "groups": {},
}

HOST_DEFAULTS: dict[str, Any] = {
    "ssh": "",
    "os": "darwin",
    "service": None,
    "listen": "127.0.0.1:11434",
    "memory_gib": None,
    "prefix": "~/.ollama-turbo",
    "models_dir": "~/.ollama/models",
    "keep": 3,
    "health_timeout": 60,
    "cpu_exclude": [],
}

_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")

Origin = Callable[[str], str]


def _no_origin(key: str) -> str:
    return "settings"


@dataclass(frozen=True)
class Source:
    url: str
    ref: str
    ref_given: bool = True  # False: the built-in default, which a local checkout overrides with its HEAD

    @property
    def is_local(self) -> bool:
        return "://" not in self.url and not re.match(r"^[\w.-]+@[\w.-]+:", self.url)


@dataclass(frozen=True)
class Sources:
    ollama: Source
    fork: Source
    upstream: Source


@dataclass(frozen=True)
class KV:
    """The configured cache, typed once when the settings are read: two cache types the fork has, and its
    knobs from ``env`` parsed into :class:`~ollama_turbo.core.kv_types.ForkBehaviour` (``fork``), which every
    stage is handed instead of reading ``env`` again."""

    type_k: str
    type_v: str
    flash_attention: bool
    env: dict[str, str] = field(default_factory=dict)
    fork: ForkBehaviour = field(default_factory=ForkBehaviour)
    parallel: int = 1  # OLLAMA_NUM_PARALLEL: the sequences the server serves at once (Ollama's default 1)

    @property
    def symmetric(self) -> bool:
        return self.type_k == self.type_v

    @property
    def label(self) -> str:
        return label(self.type_k, self.type_v)

    def summary(self) -> dict[str, Any]:
        """The configured cache, as reports record it beside what the server really ran."""
        return {"type_k": self.type_k, "type_v": self.type_v, "env": self.env}


@dataclass(frozen=True)
class Build:
    backend: str
    version_suffix: str
    cuda_arch: str = ""  # the GPU architecture a CUDA build is for (e.g. 90 for Hopper); "" detects it
    leave_out: tuple[str, ...] = ()  # model architectures whose compat patches the build leaves out (laguna)
    placements: str = ""  # a YAML file of the user's own placement rules for Ollama's compat patches
    cpu_exclude: tuple[str, ...] = ()  # ggml CPU variants left out of the build (lib/ollama/libggml-cpu-<v>.so)


@dataclass(frozen=True)
class Host:
    name: str
    ssh: str
    os: str
    service: str
    listen: str
    memory_gib: float | None
    prefix: str
    models_dir: str
    keep: int = 3
    health_timeout: float = 60
    cpu_exclude: tuple[str, ...] = ()  # ggml CPU variants this host cannot run: left out of its release

    @property
    def is_local(self) -> bool:
        return self.ssh in ("", "local")

    @property
    def listens_everywhere(self) -> bool:
        """Listening on every interface exposes Ollama's unauthenticated API (create, delete, pull)."""
        return self.listen.rsplit(":", 1)[0] in ("0.0.0.0", "::", "[::]", "")

    @property
    def probe_host(self) -> str:
        """Where the host's own server is reached from the host itself: its listen address, or loopback
        when it listens on every interface."""
        return "127.0.0.1" if self.listens_everywhere else self.listen.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


@dataclass(frozen=True)
class Settings:
    workspace: Path
    sources: Sources
    kv: KV
    build: Build
    hosts: dict[str, Host]
    groups: dict[str, list[str]] = field(default_factory=dict)  # turbo.groups: name -> hosts, for rolling deploys

    def kv_summary(self) -> dict[str, Any]:
        return self.kv.summary()

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            known = ", ".join(sorted(self.hosts)) or "none"
            raise ConfigError(
                f"unknown host {name!r} (configured hosts: {known})",
                key=f"hosts.{name}",
                hint="add it under turbo.hosts in invoke.yaml",
            ) from None


def merged(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge mappings, later layers winning (how invoke combines config files)."""
    out: dict[str, Any] = copy.deepcopy(dict(layers[0])) if layers else {}
    for layer in layers[1:]:
        for key, value in layer.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def _in(tree: Any, key: str) -> bool:
    node = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def parse(raw: Mapping[str, Any], origin: Origin = _no_origin, *, base: Path | None = None,
          given: Callable[[str], bool] | None = None) -> Settings:
    """Validate the ``turbo`` mapping into :class:`Settings`.

    ``given(key)`` says whether the user set a key (rather than a default filling it in);
    without it, a key is given when ``raw`` has it.
    """
    v = _Validator(origin)
    top = v.mapping(raw, "", allowed=set(DEFAULTS))
    given = given or (lambda key: _in(top, key))
    full = merged(DEFAULTS, top)
    ws = Path(v.string(full["workspace"], "workspace"))
    if base is not None and not ws.is_absolute():
        ws = base / ws
    src = v.mapping(full["sources"], "sources", allowed={"ollama", "fork", "upstream"})
    sources = Sources(**{
        name: v.source(src.get(name), f"sources.{name}", ref_given=given(f"sources.{name}.ref"))
        for name in ("ollama", "fork", "upstream")
    })
    kvm = v.mapping(full["kv"], "kv", allowed={"type_k", "type_v", "flash_attention", "env"})
    env_raw = v.mapping(kvm["env"], "kv.env")
    env = {v.env_name(k, f"kv.env.{k}"): v.scalar_str(val, f"kv.env.{k}") for k, val in env_raw.items()}
    kv = KV(
        type_k=v.cache_type(kvm["type_k"], "kv.type_k"),
        type_v=v.cache_type(kvm["type_v"], "kv.type_v"),
        flash_attention=v.boolean(kvm["flash_attention"], "kv.flash_attention"),
        env=env, fork=ForkBehaviour.from_env(env, origin), parallel=v.parallel(env),
    )
    bm = v.mapping(full["build"], "build",
                   allowed={"backend", "version_suffix", "cuda_arch", "leave_out", "placements", "cpu_exclude"})
    build = Build(
        backend=v.choice(bm["backend"], "build.backend", BACKENDS),
        version_suffix=v.string(bm["version_suffix"], "build.version_suffix", pattern=r"^[A-Za-z0-9.]+$"),
        cuda_arch=v.cuda_arch(bm["cuda_arch"], "build.cuda_arch"),
        leave_out=v.names(bm["leave_out"], "build.leave_out"),
        placements=v.optional_path(bm["placements"], "build.placements", base),
        cpu_exclude=v.names(bm["cpu_exclude"], "build.cpu_exclude"),
    )
    hosts_raw = v.mapping(full["hosts"], "hosts")
    hosts = {name: v.host(name, h) for name, h in hosts_raw.items()}
    groups: dict[str, list[str]] = {}
    for name, members in v.mapping(full["groups"], "groups").items():
        key = f"groups.{name}"
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            raise v.fail(key, f"expected a list of host names, got {members!r}", hint="e.g. fleet: [mac-1, mac-2]")
        unknown = [m for m in members if m not in hosts]
        if unknown:
            raise v.fail(key, f"unknown host {unknown[0]!r}; configured hosts: {', '.join(sorted(hosts)) or 'none'}",
                         hint="add it under turbo.hosts, or take it out of the group")
        groups[str(name)] = list(members)
    return Settings(workspace=ws, sources=sources, kv=kv, build=build, hosts=hosts, groups=groups)


def names_flag(value: str, flag: str) -> tuple[str, ...]:
    """A flag's comma list of names (``--leave-out laguna``), checked as the settings' lists are."""
    v = _Validator(lambda key: "the command line")
    try:
        return v.names(value, flag)
    except ConfigError as exc:
        raise ConfigError(exc.message.replace(f"turbo.{flag}", flag), hint=exc.hint) from None


def _is_port(text: str) -> bool:
    """A TCP port: digits, 1 to 65535."""
    return text.isdigit() and 0 < int(text) < 65536


class _Validator:
    def __init__(self, origin: Origin) -> None:
        self.origin = origin

    def fail(self, key: str, message: str, hint: str | None = None) -> ConfigError:
        return ConfigError(message, key=key or "turbo", source=self.origin(key), hint=hint)

    def mapping(self, value: Any, key: str, allowed: set[str] | None = None) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(key, f"expected a mapping, got {type(value).__name__} {value!r}")
        if allowed is not None:
            unknown = sorted(set(value) - allowed)
            if unknown:
                k = f"{key}.{unknown[0]}" if key else str(unknown[0])
                raise self.fail(k, f"unknown key {unknown[0]!r}; expected one of: "
                                   + ", ".join(sorted(allowed)),
                                hint="fix its spelling or remove it (docs/settings.md)")
        return dict(value)

    def string(self, value: Any, key: str, pattern: str | None = None) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"expected a non-empty string, got {value!r}")
        if pattern and not re.match(pattern, value):
            raise self.fail(key, f"{value!r} does not match {pattern}")
        return value

    def cuda_arch(self, value: Any, key: str) -> str:
        """A CUDA compute capability as CMake names it (``90``, ``89``, ``90a``), or "" (detect the GPU's)."""
        text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
        if text is None or text and not re.fullmatch(CUDA_ARCH_PATTERN, text):
            raise self.fail(key, f"{value!r} is not a CUDA architecture: give the compute capability without the "
                                 f"dot, e.g. {CUDA_ARCH_EXAMPLES}")
        return text

    def names(self, value: Any, key: str) -> tuple[str, ...]:
        """A list of lower-case names (e.g. model architectures: [laguna]); a comma list is taken too."""
        if value is None or value == "":
            return ()
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise self.fail(key, f"expected a list of names, e.g. [laguna], got {value!r}")
        out = tuple(i.strip().lower() for i in items if i.strip())
        bad = [i for i in out if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", i)]
        if bad:
            raise self.fail(key, f"{bad[0]!r} is not a name (letters, digits, - and _)")
        return out

    def optional_path(self, value: Any, key: str, base: Path | None) -> str:
        """A file path, relative to the project directory; "" for none."""
        if value in (None, ""):
            return ""
        if not isinstance(value, str):
            raise self.fail(key, f"expected a file path, got {value!r}")
        p = Path(value).expanduser()
        return str(p if p.is_absolute() or base is None else base / p)

    def prefix(self, value: Any, key: str) -> str:
        """A host's install prefix: absolute or under ~, one line (it is quoted into every remote command)."""
        v = self.string(value, key)
        if not (v == "~" or v.startswith(("~/", "/"))) or re.search(r"[\x00-\x1f\x7f]", v):
            raise self.fail(key, f"{v!r} is not an absolute path or one under ~/ on a single line "
                                 "(e.g. ~/.ollama-turbo)")
        return v

    def scalar_str(self, value: Any, key: str) -> str:
        if isinstance(value, bool):
            return "1" if value else "0"
        if isinstance(value, (str, int, float)):
            return str(value)
        raise self.fail(key, f"expected a string or number, got {value!r}")

    def boolean(self, value: Any, key: str) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise self.fail(key, f"expected true or false, got {value!r}")

    def choice(self, value: Any, key: str, options: tuple[str, ...]) -> str:
        if value not in options:
            raise self.fail(key, f"{value!r} is not one of: {', '.join(options)}")
        return str(value)

    def cache_type(self, value: Any, key: str) -> str:
        """A cache type the fork has (its table as this project knows it; a build's own table is checked
        against when one is deployed or planned with)."""
        s = self.string(value, key).lower()
        if s not in CACHE_TYPES:
            raise self.fail(key, f"{value!r} is not a cache type the fork has; known: {', '.join(CACHE_TYPES)}",
                            hint="e.g. turbo4, turbo3, q8_0 or f16")
        return s

    def parallel(self, env: Mapping[str, str]) -> int:
        """``OLLAMA_NUM_PARALLEL`` in ``kv.env``: the sequences a host's Ollama serves at once (passed to
        llama-server as ``-np``); a bench runs its own llama-server the same way."""
        key = "kv.env.OLLAMA_NUM_PARALLEL"
        text = env.get("OLLAMA_NUM_PARALLEL", "").strip()
        if not text:
            return 1
        if not text.isdigit() or int(text) < 1:
            raise self.fail(key, f"{text!r} is not a number of sequences", hint='give 1 or more, e.g. "4"')
        return int(text)

    def env_name(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not _ENV_NAME.match(value):
            raise self.fail(key, f"{value!r} is not an environment variable name")
        return value

    def source(self, value: Any, key: str, ref_given: bool = True) -> Source:
        m = self.mapping(value, key, allowed={"url", "ref"})
        return Source(url=self.string(m.get("url"), f"{key}.url"),
                      ref=self.string(m.get("ref"), f"{key}.ref"), ref_given=ref_given)

    def host(self, name: str, value: Any) -> Host:
        key = f"hosts.{name}"
        if not _HOST_NAME.match(str(name)):
            raise self.fail(key, f"{name!r} is not a valid host name")
        m = merged(HOST_DEFAULTS, self.mapping(value, key, allowed=set(HOST_DEFAULTS)))
        os_ = self.choice(m["os"], f"{key}.os", HOST_OS)
        service = self.choice(m["service"] or default_service(os_), f"{key}.service", SERVICES)
        why = runs_on(service, os_)
        if why:
            raise self.fail(f"{key}.service", why)
        listen = self.string(m["listen"], f"{key}.listen", pattern=r"^[\w.\[\]:-]+:\d{1,5}$")
        if not _is_port(listen.rsplit(":", 1)[1]):
            raise self.fail(f"{key}.listen", f"port {listen.rsplit(':', 1)[1]} is not a TCP port (1 to 65535)")
        mem = m["memory_gib"]
        if mem is not None and (isinstance(mem, bool) or not isinstance(mem, (int, float))
                                or not math.isfinite(mem) or mem <= 0):
            raise self.fail(f"{key}.memory_gib", f"expected a positive number, got {mem!r}",
                            hint="give the host's memory in GiB, e.g. memory_gib: 36")
        ssh = m["ssh"]
        if not isinstance(ssh, str):
            raise self.fail(f"{key}.ssh", f"expected a string (user@host, an ssh alias or "
                                          f"'local'), got {ssh!r}")
        if ssh not in ("", "local"):
            address = ssh.rsplit("@", 1)[-1]  # host, host:port, an alias, or [v6]...
            port = address.rsplit(":", 1)[1] if ":" in address and not address.startswith("[") else None
            if re.search(r"\s", ssh) or (port is not None and not _is_port(port)):
                raise self.fail(f"{key}.ssh", f"{ssh!r} is not user@host, user@host:port (port 1 to 65535), an ssh "
                                              "alias or 'local'")
        keep = m["keep"]
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise self.fail(f"{key}.keep", f"expected a whole number >= 1 (releases to keep), got {keep!r}")
        ht = m["health_timeout"]
        if isinstance(ht, bool) or not isinstance(ht, (int, float)) or not math.isfinite(ht) or ht <= 0:
            raise self.fail(f"{key}.health_timeout", f"expected seconds > 0, got {ht!r}",
                            hint="e.g. health_timeout: 60")
        return Host(
            name=name, ssh=ssh, os=os_, service=service, listen=listen,
            memory_gib=None if mem is None else float(mem),
            prefix=self.prefix(m["prefix"], f"{key}.prefix"),
            models_dir=self.string(m["models_dir"], f"{key}.models_dir"),
            keep=keep, health_timeout=float(ht), cpu_exclude=self.names(m["cpu_exclude"], f"{key}.cpu_exclude"),
        )
