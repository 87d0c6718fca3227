#!/usr/bin/env bash
# Your own fleet: from a clone of ollama-turbo to a TurboQuant Ollama deployed, smoked, benched, rolled back and
# uninstalled on two hosts, a Mac that already runs a stock Ollama and a Linux box.
#
# Run from a clone (Python dependencies installed, see README), as root:
#   examples/own-fleet.sh [DIR]        (DIR: an empty folder for everything it writes; default a new one in /tmp)
#
# It runs against the sample world, so it works anywhere, offline: the two hosts are accounts of this machine
# reached over a real sshd on 127.0.0.1 (the Mac's launchd is an emulator; the Mac already runs a stock Ollama as
# Homebrew leaves it). Creating those accounts is why it needs root; on your own fleet you skip step 0, write
# your hosts in invoke.yaml (docs/own-fleet.md) and run the same commands. Every command is printed before it
# runs, with its wall time after; the total is printed at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-$(mktemp -d /tmp/own-fleet.XXXXXX)}
mkdir -p "$DIR" && DIR=$(cd "$DIR" && pwd)
PY=${PYTHON:-python3}
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
OUT="$DIR/out"                  # the --json results of every step
mkdir -p "$OUT"
STEPS=()                        # "seconds name" for the summary

invoke() { "$PY" -m invoke "$@"; }                  # the invoke that comes with the clone's dependencies
show() { local a; printf '\n$'; for a in "$@"; do printf ' %q' "$a"; done | sed "s|$DIR|\$DIR|g"; echo; }
since() { "$PY" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(date +%s.%N)"; }
step() {  # step NAME COMMAND...: print the command, run it, print its wall time; stop at the first failure
    local name=$1 t0 rc=0; shift
    show "$@"
    t0=$(date +%s.%N)
    "$@" || rc=$?
    local s; s=$(since "$t0")
    if [ "$rc" -ne 0 ]; then echo "FAILED: $name (exit $rc after $s s)"; exit "$rc"; fi
    echo "-- $name: exit 0, $s s"
    STEPS+=("$s $name")
}

# --- 0. the sample fleet (only here: on your own fleet your hosts already exist) ------------------------------
echo "== 0. sample world and two hosts over SSH in $DIR"
T0=$(date +%s.%N)
"$PY" -m tests.sample_fleet up "$DIR" &
FLEET=$!
trap 'kill -TERM $FLEET 2>/dev/null; wait $FLEET 2>/dev/null || true' EXIT
until [ -e "$DIR/ready" ]; do
    if [ -e "$DIR/failed" ] || ! kill -0 $FLEET 2>/dev/null; then echo "the sample fleet did not start"; exit 1; fi
    sleep 0.2
done
# shellcheck disable=SC1091
set -a; . "$DIR/fleet.env"; set +a   # WORLD, GOPROXY, TURBO_SSH_CONFIG, TURBO_KNOWN_HOSTS, MAC_*, BOX_*
SETUP=$(since "$T0")
T_START=$(date +%s.%N)          # your own fleet starts here: the clone, your hosts, your settings
MODEL="$WORLD/models/sample-model.gguf"

# --- 1. your settings: sources, the cache type, your hosts -----------------------------------------------------
CFG="$DIR/invoke.yaml"
cat > "$CFG" <<EOF
turbo:
  workspace: $DIR/ws
  build: {backend: cpu}              # a real Mac: metal; a Linux GPU box: cuda (docs/own-fleet.md)
  kv: {type_k: turbo4, type_v: turbo4}
  sources:
    ollama: {url: $WORLD/ollama-c, ref: main}
    fork: {url: $WORLD/fork, ref: feature/turboquant-kv-cache}
    upstream: {url: $WORLD/upstream, ref: master}
  hosts:
    mac:                             # already runs a stock Ollama (Homebrew's agent): deploy adopts it
      ssh: $MAC_SSH
      os: darwin
      service: launchd
      listen: 127.0.0.1:$MAC_PORT
      memory_gib: 16
      health_timeout: 30
    box:
      ssh: $BOX_SSH
      os: linux
      service: none                  # a real Linux box: systemd (the default on os: linux)
      listen: 127.0.0.1:$BOX_PORT
      memory_gib: 16
      health_timeout: 30
EOF
echo; echo "== 1. your settings, $CFG:"; sed "s|$DIR|\$DIR|g" "$CFG"
WS="$DIR/ws"
SPECS="$DIR/modelfiles"

# --- 2. plan: which model, how much context, which cache -------------------------------------------------------
step "spec-init" invoke -f "$CFG" spec-init --from "$MODEL" --name sample --specs "$SPECS"
step "plan" invoke -f "$CFG" plan --model "$MODEL" --host box --ctx 4k,16k --types f16,q8_0,turbo4

# --- 3. build, measure, choose ---------------------------------------------------------------------------------
step "build-ollama" invoke -f "$CFG" build-ollama --json "$OUT/build-1.json"
DIST1=$(ls -td "$WS"/dist/*/ | head -1); DIST1=${DIST1%/}
step "quality" invoke -f "$CFG" quality --model "$MODEL" --manifest "$DIST1" --types turbo4 --ctx 512 \
    --json "$OUT/quality.json"
step "recommend" invoke -f "$CFG" recommend --model "$MODEL" --host box --ctx 8k --manifest "$DIST1" \
    --json "$OUT/recommend.json"

# --- 4. deploy and smoke ---------------------------------------------------------------------------------------
# sample world only: the emulated Mac is this Linux machine, so the Linux build stands in for a Mac's build
# (on your fleet: build-ollama --backend metal on the Mac, then deploy that dist)
step "label the build as a Mac build (sample world only)" "$PY" -m tests.sample_fleet as-mac "$DIST1" "$DIR/mac-dist"
MAC_DIST="$DIR/mac-dist/$(basename "$DIST1")"
step "deploy mac (adopts the stock Ollama)" invoke -f "$CFG" deploy --host mac --dist "$MAC_DIST" \
    --specs "$SPECS" --json "$OUT/deploy-mac.json"
step "deploy box" invoke -f "$CFG" deploy --host box --dist "$DIST1" --specs "$SPECS" --json "$OUT/deploy-box.json"
step "smoke mac" invoke -f "$CFG" smoke --host mac --json "$OUT/smoke-mac.json"
step "smoke box" invoke -f "$CFG" smoke --host box --json "$OUT/smoke-box.json"
DEPLOYED=$(since "$T_START")

# --- 5. measure it where it runs, and look at it ---------------------------------------------------------------
step "bench box" invoke -f "$CFG" bench --host box --model sample --types turbo4 --depths 0 --reps 1 \
    --niah-lengths "" --ab-predict 2 --out "$OUT/bench-box"
step "status mac" invoke -f "$CFG" status --host mac --json "$OUT/status-mac.json"
step "status box" invoke -f "$CFG" status --host box --json "$OUT/status-box.json"

# --- 6. a new build, deployed, then rolled back ----------------------------------------------------------------
# sample world only: the fork moves on (on your fleet: git pull in your fork, or a new fork ref in invoke.yaml)
step "the fork gains a commit (sample world only)" git -C "$WORLD/fork" -c user.name=you -c user.email=you@localhost \
    commit -q --allow-empty -m "fork: a newer revision"
step "build-ollama (second)" invoke -f "$CFG" build-ollama --json "$OUT/build-2.json"
DIST2=$(ls -td "$WS"/dist/*/ | head -1); DIST2=${DIST2%/}
step "deploy box (second)" invoke -f "$CFG" deploy --host box --dist "$DIST2" --specs "$SPECS" \
    --json "$OUT/deploy-box-2.json"
step "rollback box" invoke -f "$CFG" rollback --host box --json "$OUT/rollback-box.json"
step "smoke box (after rollback)" invoke -f "$CFG" smoke --host box --json "$OUT/smoke-box-rollback.json"

# --- 7. uninstall: the Mac gets its stock Ollama back ----------------------------------------------------------
step "uninstall mac" invoke -f "$CFG" uninstall --host mac --json "$OUT/uninstall-mac.json"
step "uninstall box" invoke -f "$CFG" uninstall --host box --json "$OUT/uninstall-box.json"
step "the stock Ollama answers again on the Mac" curl -sS "http://127.0.0.1:$MAC_PORT/api/version"
step "with its models, and the one deployed beside them" curl -sS "http://127.0.0.1:$MAC_PORT/api/tags"

# --- the times -------------------------------------------------------------------------------------------------
echo; echo "== wall time per step"
printf '%8s s  %s\n' "$SETUP" "0. sample world and hosts (sample world only, not in the totals)"
for s in "${STEPS[@]}"; do printf '%8s s  %s\n' "${s%% *}" "${s#* }"; done
echo "clone to deployed and smoked: $DEPLOYED s"
echo "the whole walkthrough (bench, second build, rollback, uninstall too): $(since "$T_START") s"
