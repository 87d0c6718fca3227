"""Credentials never leave this machine in a manifest, a report or an error message."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

SECRET_KEYS = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|CREDENTIAL|AUTH", re.I)
URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^/@:\s]+)(?::[^/@\s]*)?@", re.I)


def text(value: str) -> str:
    """``https://me:tok@host/x`` -> ``https://me:***@host/x`` (anywhere in the text)."""
    return URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:***@", value)


def env(values: Mapping[str, str]) -> dict[str, str]:
    """Environment settings with the values of secret-looking names hidden."""
    return {k: "***" if SECRET_KEYS.search(k) else text(str(v)) for k, v in values.items()}


def tree(value: Any) -> Any:
    """Every string in a JSON-like tree, with URL credentials hidden."""
    if isinstance(value, str):
        return text(value)
    if isinstance(value, Mapping):
        return {k: tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [tree(v) for v in value]
    return value
