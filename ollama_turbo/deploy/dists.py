"""The build to deploy, here: which one (the newest), whether it is whole (its manifest's checksums), and
whether it runs on a host (its OS, CPU architecture, backend and GPU architecture)."""

from __future__ import annotations

from pathlib import Path

from ollama_turbo.core import gpu
from ollama_turbo.core import manifest as manifest_mod
from ollama_turbo.core.errors import UsageError
from ollama_turbo.core.manifest import Manifest
from ollama_turbo.core.settings import Host, Settings
from ollama_turbo.deploy.errors import DeployError
from ollama_turbo.deploy.transport import Transport


def latest_dist(settings: Settings) -> Path:
    """The newest build by the time its manifest says it was built (a copied directory keeps its age)."""
    dists = [(m.built_at, p) for p in (settings.workspace / "dist").glob("*")
             if (m := manifest_mod.read(p)) is not None]
    if not dists:
        raise UsageError(f"no build in {settings.workspace / 'dist'}", hint="run invoke build-ollama, or pass --dist")
    return max(dists, key=lambda d: (d[0], d[1].name))[1]


ARCH = {"aarch64": "arm64", "arm64": "arm64", "x86_64": "x86_64", "amd64": "x86_64"}


def check_platform(m: Manifest, host: Host, t: Transport) -> None:
    """A build runs only where it was built for: its OS, its CPU architecture, its backend."""
    built, backend, dist = m.platform, m.backend, m.dist
    if backend == "metal" and host.os != "darwin" or backend == "cuda" and host.os != "linux":
        raise DeployError(f"{dist.name} is a {backend} build; {host.name} is os: {host.os}",
                          hint=f"build with --backend {'cpu' if host.os == 'linux' else 'metal'} for this host")
    if built.get("os") and built["os"] != host.os:
        raise DeployError(f"{dist.name} was built on {built['os']}; {host.name} is os: {host.os}",
                          hint="build on (or for) the host's OS")
    if built.get("arch"):
        arch = t.sh("uname -m", check=False).stdout.strip()
        if arch and ARCH.get(arch, arch) != ARCH.get(built["arch"], built["arch"]):
            raise DeployError(f"{dist.name} was built for {built['arch']}; {host.name} is {arch}",
                              hint="build on a machine of the host's architecture")
    check_gpu(m, host, t)


def check_gpu(m: Manifest, host: Host, t: Transport) -> None:
    """A CUDA build runs on the GPU architecture it was built for: the host's GPUs, as nvidia-smi names them."""
    want, dist = (m.gpu.arch if m.gpu else ""), m.dist
    if m.backend != "cuda" or not want:
        return
    r = t.sh(gpu.QUERY + " 2>&1", check=False)
    found = gpu.parse_query(r.stdout)
    if not found:
        said = r.stdout.strip().splitlines()[:1]
        raise DeployError(f"{dist.name} is a CUDA build for sm_{want}; {host.name} has no NVIDIA GPU that "
                          f"nvidia-smi can see ({said[0] if said else 'no answer'})",
                          hint="deploy a cpu build there, or check the host's NVIDIA driver (nvidia-smi)")
    other = [(name, arch) for name, arch in found if arch != gpu.base_arch(want)]
    if other:
        raise DeployError(f"{dist.name} is a CUDA build for sm_{want}; {host.name} has {gpu.describe(found)}",
                          hint=f"build for that GPU: invoke build-ollama --backend cuda --cuda-arch {other[0][1]}")


def load_dist(dist: Path) -> Manifest:
    """The build to deploy: its manifest, and every file as the manifest says (a damaged build is never sent)."""
    return manifest_mod.load(dist, whole=True)
