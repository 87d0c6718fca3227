"""A sample CPU for ggml's CPU variants: a witness of what a host does with ``lib/ollama/libggml-cpu-<variant>.so``.

:func:`add_variants` puts variant libraries (placeholders) beside a dist's llama-server and puts a loader in front
of it: at each start it picks, by its own ranking, the best variant whose flags the host's CPU reports, logs
``load_backend: loaded CPU backend from <path>`` as ggml does, and runs the server. The host's CPU is described in
``$HOME/.sample-cpu`` (:func:`describe_cpu`): the flags it reports, and the ones that trap although reported (a
hypervisor advertising AMX without enabling it). A server started with a model on a variant that uses a trapping
flag dies at warm-up with SIGILL, as the field's did. No file: a CPU with every flag, none trapping.

The ranking is the sample's own knowledge, kept apart from the toolkit's table on purpose.
"""

from __future__ import annotations

from pathlib import Path

# best first: variant, and the flags it uses that set it apart
RANKING = (
    ("sapphirerapids", "avx512f avx512_bf16 amx_tile amx_int8"),
    ("zen4", "avx512f avx512_bf16"),
    ("icelake", "avx512f avx512_vnni"),
    ("skylakex", "avx512f"),
    ("alderlake", "avx2 avx_vnni"),
    ("haswell", "avx2 fma"),
    ("sandybridge", "avx"),
    ("sse42", "sse4_2"),
    ("x64", ""),
)
REAL = "llama-server.sample-cpu"

LOADER = """#!/bin/sh
# ggml's CPU backend loader, as the sample world's host runs it (a witness; see ollama_turbo/sample/cpu_host.py)
here=$(cd "$(dirname "$0")" && pwd)
cpu="$HOME/.sample-cpu"
flags=""
traps=""
described=""
if [ -f "$cpu" ]; then
    described=1
    flags=$(sed -n 's/^flags: *//p' "$cpu")
    traps=$(sed -n 's/^traps: *//p' "$cpu")
fi
has() {
    for f in $1; do
        case " $2 " in *" $f "*) ;; *) return 1 ;; esac
    done
    return 0
}
pick=""
uses=""
while read -r name needs; do
    [ -n "$name" ] || continue
    [ -f "$here/libggml-cpu-$name.so" ] || continue
    if [ -z "$described" ] || has "$needs" "$flags"; then
        pick=$name
        uses=$needs
        break
    fi
done <<EOF
RANKING
EOF
if [ -n "$pick" ]; then
    echo "load_backend: loaded CPU backend from $here/libggml-cpu-$pick.so" >&2
    for f in $uses; do
        case " $traps " in *" $f "*)
            case " $* " in *" --model "*)
                echo "warmup: running the CPU backend $pick" >&2
                kill -ILL $$ ;;
            esac ;;
        esac
    done
fi
exec "$here/REAL" "$@"
""".replace("RANKING", "\n".join(f"{n} {f}" for n, f in RANKING)).replace("REAL", REAL)


def add_variants(dist: Path, variants: list[str]) -> None:
    """CPU variant libraries beside ``dist``'s llama-server, and the loader in front of it."""
    lib = dist / "lib" / "ollama"
    for v in variants:
        (lib / f"libggml-cpu-{v}.so").write_text(f"sample CPU backend: {v}\n")
    server = lib / "llama-server"
    if not (lib / REAL).exists():
        server.rename(lib / REAL)
    server.write_text(LOADER)
    server.chmod(0o755)


CPU_FILE = ".sample-cpu"  # in the host's home


def cpu_text(flags: str, traps: str = "") -> str:
    """The sample host's CPU (its ``~/.sample-cpu``): the flags it reports, and those that trap although
    reported."""
    return f"flags: {flags}\ntraps: {traps}\n"


def describe_cpu(home: Path, flags: str, traps: str = "") -> Path:
    path = home / CPU_FILE
    path.write_text(cpu_text(flags, traps))
    return path
