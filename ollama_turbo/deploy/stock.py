"""The stock Ollama on a host (as Ollama's own installers leave it), read and decided without touching the host:
its service config parsed, where it keeps its models and which address it listens on, the environment it gives
the server, whether a deploy may take it over, and the record of it kept on the host (``<prefix>/adopted.json``)
that ``invoke uninstall`` restores it from.

The effects (finding it, stopping it, starting it again) are the service managers'
(:mod:`ollama_turbo.deploy.managers`); this module only reads text and decides."""

from __future__ import annotations

import json
import plistlib
import re
import shlex
from dataclasses import asdict, dataclass, field
from typing import Any

from ollama_turbo.core import server_kv
from ollama_turbo.core.errors import TurboError

RECORD = "adopted.json"
DEFAULT_LISTEN = "127.0.0.1:11434"
# a login's own variables: the service manager gives the server these, the stock config need not be copied for them
LOGIN_VARS = frozenset({"PATH", "HOME", "USER", "LOGNAME", "SHELL", "TMPDIR"})


class StockError(TurboError):
    pass


@dataclass(frozen=True)
class StockService:
    """A stock Ollama service as it was found: what ``uninstall`` puts back exactly."""

    manager: str                 # launchd | systemd
    name: str                    # the launchd label, or the systemd unit
    path: str                    # its plist or unit file
    enabled: bool                # starts by itself (plist in LaunchAgents; unit enabled)
    active: bool                 # was running when found
    env: dict[str, str]          # the environment its config gives the server
    models: str                  # the models directory it serves
    listen: str                  # host:port it listens on
    user: str = ""               # the account it runs as (systemd's User=; "" is the login's own)
    config_b64: str = ""         # the config file's bytes, base64: written back exactly if it is gone
    domain: str = ""             # launchd: the domain it was loaded in
    found_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    def describe(self) -> str:
        return f"{self.name}, {self.path}; models {self.models}, port {self.port}"

    def to_json(self) -> dict[str, Any]:
        return {"schema": 1, **asdict(self)}


def parse_record(text: str, where: str) -> StockService:
    """The record ``deploy`` left on the host; a damaged one is named, with what to do."""
    try:
        data = json.loads(text)
        data.pop("schema", None)
        return StockService(**data)
    except (ValueError, TypeError) as exc:
        raise StockError(f"{where} is not a record of an adopted stock Ollama ({exc.__class__.__name__}: {exc})",
                         hint="restore it from a backup, or remove it and give the stock Ollama back by hand "
                              "(enable its service again)") from None


def normal_listen(value: str | None) -> str:
    """OLLAMA_HOST as Ollama reads it: an optional scheme, a host (default 127.0.0.1), a port (default 11434)."""
    v = (value or "").strip()
    v = re.sub(r"^[a-z]+://", "", v).rstrip("/")
    if not v:
        return DEFAULT_LISTEN
    if v.startswith("["):
        host, _, rest = v.partition("]")
        port = rest.lstrip(":") or "11434"
        return f"{host}]:{port}"
    if v.count(":") == 1:
        host, port = v.split(":")
        return f"{host or '127.0.0.1'}:{port or '11434'}"
    return f"{v}:11434"


def from_plist(text: bytes, path: str, home: str) -> tuple[str, dict[str, str], list[str]]:
    """A launchd plist's label, environment and program; one that is not a plist is named."""
    try:
        data = plistlib.loads(text)
    except (plistlib.InvalidFileException, ValueError, TypeError) as exc:
        raise StockError(f"{path} is not a readable launchd plist ({exc})",
                         hint="repair or remove it, then deploy again") from None
    if not isinstance(data, dict) or not data.get("Label"):
        raise StockError(f"{path} has no Label: not a launchd job", hint="repair or remove it, then deploy again")
    env = {str(k): str(v) for k, v in (data.get("EnvironmentVariables") or {}).items()}
    args = [str(a) for a in data.get("ProgramArguments") or [data.get("Program", "")]]
    return str(data["Label"]), env, args


def from_unit(text: str) -> tuple[str, dict[str, str]]:
    """``systemctl cat`` of a unit (its file, then each drop-in): the User= it runs as and its Environment=,
    later assignments overriding earlier ones and an empty ``Environment=`` clearing them, as systemd reads them."""
    user, env = "", dict[str, str]()
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section != "[Service]" or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if key == "User":
            user = value
        elif key == "Environment":
            if not value:
                env = {}
                continue
            try:
                words = shlex.split(value)
            except ValueError:
                continue
            for w in words:
                k, eq, v = w.partition("=")
                if eq:
                    env[k] = v.replace("%%", "%")
    return user, env


def models_of(env: dict[str, str], home: str) -> str:
    """Where a stock Ollama keeps its models: OLLAMA_MODELS, else ~/.ollama/models of the account it runs as."""
    path = env.get("OLLAMA_MODELS", "").strip()
    if path.startswith("~/") or path == "~":
        path = home + path[1:]
    return (path or f"{home}/.ollama/models").rstrip("/")


def carried(stock: StockService, ours: set[str]) -> dict[str, str]:
    """The stock server's environment our service keeps: everything it was given, except what our service sets
    itself (listen address, models, K/V cache, flash attention, the fork's knobs) and the login's variables."""
    skip = ours | set(server_kv.NAMES) | {"OLLAMA_HOST", "OLLAMA_MODELS"} | LOGIN_VARS
    return {k: v for k, v in sorted(stock.env.items()) if k not in skip}


def refusal(host: str, stock: StockService, *, models: str, listen: str, loaded: list[str],
            models_ok: str | None, adopt_loaded: bool) -> StockError | None:
    """Why a deploy may not take over this stock Ollama (None: it may). ``models`` and ``listen`` are what the
    settings give our service; ``models_ok`` why the login cannot use the stock models (None: it can)."""
    key = f"turbo.hosts.{host}"
    if stock.models.rstrip("/") != models.rstrip("/"):
        return StockError(f"{host}: the stock Ollama ({stock.path}) keeps its models in {stock.models}, but "
                          f"{key}.models_dir gives {models}: adopting it would serve none of them",
                          hint=f"set {key}.models_dir: {stock.models} (its models are then served where they are, "
                               "nothing copied), then deploy again")
    if normal_listen(stock.listen) != normal_listen(listen):
        return StockError(f"{host}: the stock Ollama ({stock.path}) listens on {stock.listen}, but {key}.listen is "
                          f"{listen}: its clients would lose it",
                          hint=f"set {key}.listen: {stock.listen}, then deploy again")
    if models_ok:
        return StockError(f"{host}: {models_ok}", hint="give this login read and write access to the models "
                          f"directory (on Linux: sudo usermod -aG {stock.user or 'ollama'} $USER; sudo chmod -R g+rwX "
                          f"{stock.models}), then deploy again")
    if loaded and not adopt_loaded:
        return StockError(f"{host}: the stock Ollama has {len(loaded)} model(s) loaded ({', '.join(loaded)}): "
                          "taking it over stops it and cuts off whoever is using them",
                          hint="wait until they are unloaded (ollama ps shows none; ollama stop NAME unloads one), "
                               "or deploy again with --adopt-loaded")
    return None
