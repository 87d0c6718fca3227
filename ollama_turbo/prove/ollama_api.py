"""A small client for the Ollama HTTP API (the endpoints ollama-turbo relies on)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from ollama_turbo.core import poll
from ollama_turbo.core.errors import TurboError


class ApiError(TurboError):
    pass


class Client:
    def __init__(self, base_url: str, timeout: float = 120) -> None:
        self.base = base_url.rstrip("/")
        self.timeout = timeout

    def _req(self, method: str, path: str, **kw: Any) -> requests.Response:
        try:
            r = requests.request(method, self.base + path, timeout=kw.pop("timeout", self.timeout), **kw)
        except requests.RequestException as exc:
            raise ApiError(f"{self.base} is unreachable ({method} {path}): {exc.__class__.__name__}",
                           hint="check that the server runs and listens on that address") from exc
        if r.status_code >= 400:
            try:
                msg = r.json().get("error", r.text)
            except ValueError:
                msg = r.text
            raise ApiError(f"{method} {self.base}{path} returned {r.status_code}: {msg}")
        return r

    def get(self, path: str) -> Any:
        return self._req("GET", path).json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._req("POST", path, json=body).json()

    def version(self) -> str:
        return str(self.get("/api/version")["version"])

    def wait_ready(self, timeout: float = 30) -> None:
        last: list[Exception] = []

        def ready() -> bool | None:
            try:
                requests.get(self.base + "/", timeout=2).raise_for_status()
                return True
            except requests.RequestException as exc:
                last[:] = [exc]
                return None

        if not poll.until(ready, interval=0.05, timeout=timeout):
            raise ApiError(f"{self.base} did not become ready within {timeout:.0f} s: {last[0] if last else ''}")

    def upload_blob(self, path: Path) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        digest = "sha256:" + h.hexdigest()
        head = requests.head(f"{self.base}/api/blobs/{digest}", timeout=self.timeout)
        if head.status_code != 200:
            with open(path, "rb") as fh:
                self._req("POST", f"/api/blobs/{digest}", data=fh)
        return digest

    def create(self, model: str, *, gguf: Path | None = None, from_: str | None = None,
               parameters: dict[str, Any] | None = None, template: str | None = None,
               system: str | None = None) -> None:
        body: dict[str, Any] = {"model": model, "stream": False}
        if gguf is not None:
            body["files"] = {gguf.name: self.upload_blob(gguf)}
        if from_:
            body["from"] = from_
        if parameters:
            body["parameters"] = parameters
        if template is not None:
            body["template"] = template
        if system is not None:
            body["system"] = system
        status = self.post("/api/create", body).get("status")
        if status != "success":
            raise ApiError(f"creating {model} on {self.base} ended with status {status!r}")

    def generate(self, model: str, prompt: str, **options: Any) -> dict[str, Any]:
        body = {"model": model, "prompt": prompt, "stream": False, "options": options}
        return dict(self.post("/api/generate", body))

    def generate_stream(self, model: str, prompt: str, **options: Any) -> Iterator[dict[str, Any]]:
        body = {"model": model, "prompt": prompt, "stream": True, "options": options}
        r = self._req("POST", "/api/generate", json=body, stream=True)
        for line in r.iter_lines():
            if line:
                chunk = json.loads(line)
                if "error" in chunk:
                    raise ApiError(f"{self.base}: generate failed: {chunk['error']}")
                yield chunk
