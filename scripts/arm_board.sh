#!/usr/bin/env bash
# An emulated aarch64 board for convpipe: a TVM RPC server running an aarch64 CPython + aarch64 TVM runtime
# under QEMU user-mode emulation, on the loopback interface only.
#
#   scripts/arm_board.sh setup          # install toolchain + emulator, build rootfs, install aarch64 wheels (cached)
#   scripts/arm_board.sh start [PORT]   # start the RPC server on 127.0.0.1:PORT (default $CONVPIPE_ARM_PORT or 9190)
#   scripts/arm_board.sh stop           # stop it (by its PID file)
#   scripts/arm_board.sh status         # "running 127.0.0.1:PORT pid PID" (exit 0) or "stopped" (exit 1)
#   scripts/arm_board.sh env            # print the paths (for debugging)
#
# Environment:
#   CONVPIPE_ARM_DIR   cache directory (default <repo>/.cache/arm, git-ignored)
#   CONVPIPE_ARM_PORT  RPC port for `start` (default 9190)
#   CONVPIPE_ARM_CPU   QEMU_CPU model (default cortex-a72: code using instructions the core lacks fails)
#   CONVPIPE_ARM_RUN_DIR  where start/stop keep the PID file and log (default $CONVPIPE_ARM_DIR/run; one per board)
#   CONVPIPE_ARM_TRACKER, CONVPIPE_ARM_KEY  register the board with a TVM RPC tracker on 127.0.0.1:PORT under KEY
#
# Emulated timings say nothing about ARM performance: use the board for correctness only.
# Recipe and the reasons behind it: shared/notes/tvm-0.27.md ("ARM (aarch64) without an ARM machine").
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARM_DIR="${CONVPIPE_ARM_DIR:-$REPO/.cache/arm}"
ROOTFS="$ARM_DIR/rootfs"
SITE="$ARM_DIR/site"
RUN_DIR="${CONVPIPE_ARM_RUN_DIR:-$ARM_DIR/run}"
PID_FILE="$RUN_DIR/rpc.pid"
PORT_FILE="$RUN_DIR/rpc.port"
LOG_FILE="$RUN_DIR/rpc.log"
QEMU_CPU_MODEL="${CONVPIPE_ARM_CPU:-cortex-a72}"
SUITE=bookworm
TVM_PIN="apache-tvm[rpc]==0.27.0.post1"
FFI_PIN="apache-tvm-ffi==0.1.14.post1"
PYVER=3.11   # bookworm's python3

log() { echo "arm_board: $*" >&2; }
die() { echo "arm_board: error: $*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "need root (or sudo) to run: $*"
    fi
}

debian_mirror() {
    # first URIs: line of the main (non-security) source, else deb.debian.org
    local f=/etc/apt/sources.list.d/debian.sources m=""
    if [ -r "$f" ]; then
        m="$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' "$f")"
    fi
    if [ -z "$m" ] && [ -r /etc/apt/sources.list ]; then
        m="$(awk '$1=="deb" && $3 !~ /security/ {print $2; exit}' /etc/apt/sources.list)"
    fi
    echo "${m:-http://deb.debian.org/debian}"
}

host_python() {
    if [ -x "$REPO/.venv/bin/python" ]; then echo "$REPO/.venv/bin/python"; else command -v python3; fi
}

setup_packages() {
    local need=()
    command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu)
    command -v aarch64-linux-gnu-objdump >/dev/null 2>&1 || need+=(binutils-aarch64-linux-gnu)
    # crti.o & co. for linking shared objects (only "recommended" by the compiler package)
    [ -f /usr/aarch64-linux-gnu/lib/crti.o ] || need+=(libc6-dev-arm64-cross)
    command -v qemu-aarch64-static >/dev/null 2>&1 || need+=(qemu-user-static)
    command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
    if [ ${#need[@]} -eq 0 ]; then log "toolchain, qemu and debootstrap present"; return; fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install ${need[*]} by hand"
    log "apt-get install ${need[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

setup_rootfs() {
    if [ -x "$ROOTFS/usr/bin/python3" ] && [ -f "$ROOTFS/.convpipe-ok" ]; then log "rootfs cached: $ROOTFS"; return; fi
    local mirror tmp
    mirror="$(debian_mirror)"
    tmp="$ROOTFS.tmp"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    log "debootstrap --foreign arm64 $SUITE from $mirror (download only)"
    # --foreign only downloads and unpacks the base; we unpack every downloaded .deb ourselves (no chroot).
    as_root debootstrap --arch=arm64 --foreign --variant=minbase --include=python3 "$SUITE" "$tmp" "$mirror" \
        >"$ARM_DIR/debootstrap.log" 2>&1 || { tail -20 "$ARM_DIR/debootstrap.log" >&2; die "debootstrap failed"; }
    local n=0
    for deb in "$tmp"/var/cache/apt/archives/*.deb; do
        dpkg -x "$deb" "$tmp"
        n=$((n + 1))
    done
    [ -x "$tmp/usr/bin/python3" ] || die "rootfs has no usr/bin/python3 after unpacking $n debs"
    rm -f "$tmp"/var/cache/apt/archives/*.deb
    echo "$SUITE arm64 minbase python3" >"$tmp/.convpipe-ok"
    rm -rf "$ROOTFS"
    mv "$tmp" "$ROOTFS"
    log "rootfs ready ($n debs): $ROOTFS"
}

setup_wheels() {
    local pins="$TVM_PIN $FFI_PIN numpy tornado psutil cloudpickle python$PYVER"
    if [ -f "$SITE/.convpipe-ok" ] && [ "$(cat "$SITE/.convpipe-ok")" = "$pins" ]; then
        log "aarch64 wheels cached: $SITE"; return
    fi
    local py tmp
    py="$(host_python)"
    tmp="$SITE.tmp"
    rm -rf "$tmp"
    log "pip install aarch64 wheels ($TVM_PIN, $FFI_PIN, numpy) into $SITE"
    # shellcheck disable=SC2086
    "$py" -m pip install --quiet --disable-pip-version-check --no-warn-conflicts --no-compile --target "$tmp" --only-binary=:all: \
        --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
        --python-version "$PYVER" --implementation cp --abi "cp${PYVER/./}" \
        "$TVM_PIN" "$FFI_PIN" numpy tornado psutil cloudpickle
    echo "$pins" >"$tmp/.convpipe-ok"
    rm -rf "$SITE"
    mv "$tmp" "$SITE"
    log "wheels ready: $SITE"
}

run_aarch64() {
    # run the emulated python3 with the aarch64 site-packages
    mkdir -p "$RUN_DIR/tmp"
    env -u PYTHONHOME QEMU_CPU="$QEMU_CPU_MODEL" PYTHONPATH="$SITE" TMPDIR="$RUN_DIR/tmp" PYTHONDONTWRITEBYTECODE=1 \
        qemu-aarch64-static -L "$ROOTFS" "$ROOTFS/usr/bin/python3" "$@"
}

cmd_setup() {
    local t0=$SECONDS
    mkdir -p "$ARM_DIR"
    setup_packages
    setup_rootfs
    setup_wheels
    local smoke="$ARM_DIR/.smoke-ok" want
    want="$(cat "$ROOTFS/.convpipe-ok" "$SITE/.convpipe-ok" 2>/dev/null; echo "$QEMU_CPU_MODEL")"
    if [ -f "$smoke" ] && [ "$(cat "$smoke")" = "$want" ]; then
        log "smoke test cached"
    else
        log "smoke test: aarch64 python imports tvm (QEMU_CPU=$QEMU_CPU_MODEL)"
        run_aarch64 -c 'import platform, tvm, tvm.rpc, numpy; print("aarch64 ok", platform.machine(), tvm.__version__)' >&2 \
            || die "the emulated python cannot import tvm (see above)"
        echo "$want" >"$smoke"
    fi
    log "setup done in $((SECONDS - t0)) s"
}

is_running() {
    [ -f "$PID_FILE" ] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

port_open() {
    "$(host_python)" - "$1" <<'EOF'
import socket, sys
s = socket.socket(); s.settimeout(1.0)
try:
    s.connect(("127.0.0.1", int(sys.argv[1]))); sys.exit(0)
except OSError:
    sys.exit(1)
finally:
    s.close()
EOF
}

cmd_start() {
    local port="${1:-${CONVPIPE_ARM_PORT:-9190}}"
    [ -f "$ROOTFS/.convpipe-ok" ] && [ -d "$SITE" ] || die "board not set up: run '$0 setup' first"
    if is_running; then
        log "already running on 127.0.0.1:$(cat "$PORT_FILE") (pid $(cat "$PID_FILE"))"
        return 0
    fi
    if port_open "$port"; then die "127.0.0.1:$port is already in use by another process"; fi
    mkdir -p "$RUN_DIR"
    # python -m tvm.exec.rpc_server re-execs itself through PopenWorker (Exec format error under qemu):
    # run the server state in-process instead. Loopback only.
    local server_py="$RUN_DIR/rpc_server.py"
    cat >"$server_py" <<'EOF'
import os, sys, time
from tvm.rpc.server import PopenRPCServerState
port = int(sys.argv[1])
tracker = os.environ.get("CONVPIPE_ARM_TRACKER") or None
key = os.environ.get("CONVPIPE_ARM_KEY") or ""
tracker_addr = None
if tracker:
    host, tport = tracker.rsplit(":", 1)
    if host not in ("127.0.0.1", "localhost"):
        sys.exit(f"tracker must be on loopback, got {tracker}")
    tracker_addr = ("127.0.0.1", int(tport))
state = PopenRPCServerState("127.0.0.1", port, port + 1, tracker_addr=tracker_addr, key=key)
print(f"convpipe arm board: RPC server on 127.0.0.1:{state.port} tracker={tracker} key={key!r}", flush=True)
while True:
    time.sleep(3600)
EOF
    log "starting RPC server under qemu-aarch64-static (QEMU_CPU=$QEMU_CPU_MODEL) on 127.0.0.1:$port"
    mkdir -p "$RUN_DIR/tmp"
    # setsid: its own process group, so `stop` ends the server and the session workers it forks, nothing else
    setsid env -u PYTHONHOME QEMU_CPU="$QEMU_CPU_MODEL" PYTHONPATH="$SITE" TMPDIR="$RUN_DIR/tmp" \
        PYTHONDONTWRITEBYTECODE=1 CONVPIPE_ARM_TRACKER="${CONVPIPE_ARM_TRACKER:-}" \
        CONVPIPE_ARM_KEY="${CONVPIPE_ARM_KEY:-}" \
        qemu-aarch64-static -L "$ROOTFS" "$ROOTFS/usr/bin/python3" "$server_py" "$port" \
        >"$LOG_FILE" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$PID_FILE"
    echo "$port" >"$PORT_FILE"
    local deadline=$((SECONDS + ${CONVPIPE_ARM_START_TIMEOUT:-120}))
    until port_open "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE"
            tail -20 "$LOG_FILE" >&2 || true
            die "RPC server exited during start-up (log: $LOG_FILE)"
        fi
        if [ $SECONDS -ge $deadline ]; then
            cmd_stop || true
            die "RPC server did not answer on 127.0.0.1:$port within ${CONVPIPE_ARM_START_TIMEOUT:-120} s (log: $LOG_FILE)"
        fi
        sleep 0.5
    done
    log "running on 127.0.0.1:$port (pid $pid, log $LOG_FILE)"
}

cmd_stop() {
    if ! [ -f "$PID_FILE" ]; then log "not running"; return 0; fi
    local pid
    pid="$(cat "$PID_FILE")"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        # the server runs in its own session (setsid): signal its process group, which holds only it
        # and the worker processes it forked for sessions
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
        log "stopped (pid $pid)"
    else
        log "stale PID file (pid $pid not running)"
    fi
    rm -f "$PID_FILE" "$PORT_FILE"
}

cmd_status() {
    if is_running; then
        echo "running 127.0.0.1:$(cat "$PORT_FILE") pid $(cat "$PID_FILE")"
    else
        echo "stopped"
        return 1
    fi
}

case "${1:-}" in
    setup) cmd_setup ;;
    start) shift; cmd_start "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) printf 'ARM_DIR=%s\nROOTFS=%s\nSITE=%s\nRUN_DIR=%s\nQEMU_CPU=%s\n' "$ARM_DIR" "$ROOTFS" "$SITE" "$RUN_DIR" "$QEMU_CPU_MODEL" ;;
    *) echo "usage: $0 setup|start [PORT]|stop|status|env" >&2; exit 2 ;;
esac
