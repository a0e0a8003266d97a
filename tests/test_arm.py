"""ARM (aarch64 NEON) schedules on an emulated board.

``scripts/arm_board.sh`` builds the board once (toolchain, aarch64 rootfs + TVM wheels, cached under
``.cache/arm``) and runs a TVM RPC server under ``qemu-aarch64-static`` on 127.0.0.1. Each kernel is built with an
ARM rule, cross-compiled with ``aarch64-linux-gnu-gcc``, run on the board and compared with
``torch.nn.functional.conv2d`` (float64) on the host, on seeded random data (inputs and weights derived from the
workload key with ``zlib.crc32``, so every run and every ``PYTHONHASHSEED`` draws the same numbers). Each family's
kernel is disassembled and its innermost loops must do their floating-point work as 4-lane NEON (``fmla vN.4s``;
no scalar or 2-lane FP arithmetic there), see :func:`neon_inner_loop_problems`. Tests skip only when the board
cannot be set up at all (no apt-get / no root).

Emulated timings are not ARM performance; these tests check correctness and instruction selection only.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from convpipe import remote
from convpipe.errors import ConvpipeError
from convpipe.schedules import Conv2dWorkload, resolve_target, rules_for

pytestmark = pytest.mark.arm

REPO = Path(__file__).resolve().parents[1]
BOARD = REPO / "scripts" / "arm_board.sh"
OBJDUMP = "aarch64-linux-gnu-objdump"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _board(cmd: str, run_dir: Path, *args: str, env: dict | None = None, timeout: float = 900):
    e = {**os.environ, "CONVPIPE_ARM_RUN_DIR": str(run_dir), **(env or {})}
    return subprocess.run(["bash", str(BOARD), cmd, *args], env=e, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def arm_setup():
    """Toolchain + emulator + rootfs + wheels (cached). Skips only when setup is impossible here."""
    if shutil.which("apt-get") is None and shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("emulated ARM board cannot be set up: no apt-get and no aarch64 toolchain")
    if os.geteuid() != 0 and shutil.which("sudo") is None and shutil.which("qemu-aarch64-static") is None:
        pytest.skip("emulated ARM board cannot be set up: not root and no sudo to apt-get install")
    t0 = time.monotonic()
    r = subprocess.run(["bash", str(BOARD), "setup"], capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, f"scripts/arm_board.sh setup failed:\n{r.stdout}\n{r.stderr}"
    return time.monotonic() - t0


@pytest.fixture(scope="session")
def board(arm_setup, tmp_path_factory):
    """A running emulated board on 127.0.0.1 (its own run dir and port); stopped at the end of the session."""
    run_dir = tmp_path_factory.mktemp("arm_board")
    port = _free_port()
    r = _board("start", run_dir, str(port), timeout=300)
    assert r.returncode == 0, f"scripts/arm_board.sh start failed:\n{r.stdout}\n{r.stderr}"
    try:
        yield f"127.0.0.1:{port}"
    finally:
        _board("stop", run_dir, timeout=60)


@pytest.fixture(scope="session")
def session(board):
    return remote.connect(board, None, None, timeout_s=30)


@pytest.fixture(scope="session")
def arm():
    return resolve_target("arm")


def _ref(x: np.ndarray, w: np.ndarray, wl: Conv2dWorkload) -> np.ndarray:
    import torch

    xp = np.pad(x, ((0, 0), (0, 0), (wl.pad_top, wl.pad_bottom), (wl.pad_left, wl.pad_right)))
    out = torch.nn.functional.conv2d(
        torch.from_numpy(xp).double(),
        torch.from_numpy(w).double(),
        stride=(wl.stride_h, wl.stride_w),
        dilation=(wl.dilation_h, wl.dilation_w),
        groups=wl.groups,
    )
    return out.numpy()


def _data(wl: Conv2dWorkload) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random ``(input, weight)`` for ``wl``: the seed is ``crc32`` of the workload key (Python's ``hash``
    of a string changes with ``PYTHONHASHSEED``), so a failure reproduces with the same numbers."""
    rng = np.random.default_rng(zlib.crc32(wl.key().encode()))
    return rng.standard_normal(wl.data_shape, dtype=np.float32), rng.standard_normal(wl.weight_shape, dtype=np.float32)


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    """``max|got - ref| / max|ref|`` (normwise: random data has outputs near 0, where elementwise rtol misleads)."""
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def _build(family: str, wl: Conv2dWorkload, arm, knobs: dict | None, path: Path):
    from convpipe.compiler.kernel import compile_kernel

    rule = rules_for("arm")[family]
    assert rule.supports(wl, arm), rule.unsupported_reason(wl, arm)
    kn = rule.default_knobs(wl, arm) if knobs is None else knobs
    remote.export_for_board(compile_kernel(rule, wl, arm, kn), path)
    return rule, kn


def W(n, c, h, w, k, kh, kw, s=1, p=(0, 0, 0, 0), d=1, g=1) -> Conv2dWorkload:
    return Conv2dWorkload(n, c, h, w, k, kh, kw, s, s, *p, d, d, g)


P1 = (1, 1, 1, 1)
#: (family, workload, knobs or None for the defaults): a representative subset of the Conv2d property space
#: (kernel size, stride, padding incl. asymmetric, dilation, groups, batch, channel counts not multiples of 4).
CASES = [
    ("direct", W(1, 8, 10, 10, 16, 3, 3, p=P1), None),
    ("direct", W(1, 16, 7, 7, 8, 1, 1), None),
    ("direct", W(2, 3, 11, 13, 6, 5, 5, s=2, p=(2, 1, 2, 3)), None),
    ("direct", W(1, 8, 12, 12, 12, 3, 3, p=(2, 2, 2, 2), d=2), None),
    ("direct", W(1, 8, 8, 8, 16, 3, 3, p=P1), {"oc_block": 4, "ow_tile": 4, "ic_block": 1, "oc_tile": 1}),
    ("im2col", W(1, 8, 10, 10, 16, 3, 3, p=P1), None),
    ("im2col", W(1, 8, 9, 9, 12, 3, 3, s=2, p=P1, g=2), None),
    ("im2col", W(2, 6, 8, 8, 9, 3, 3, p=(0, 1, 2, 1), d=2, g=3), None),
    ("im2col", W(1, 16, 6, 6, 8, 1, 1), {"ow_tile": 6, "oc_block": 2}),
    ("winograd", W(1, 16, 12, 12, 16, 3, 3, p=P1), None),
    ("winograd", W(1, 6, 7, 9, 10, 3, 3, p=(1, 0, 2, 1)), None),
    ("winograd", W(2, 4, 4, 4, 4, 3, 3, p=P1), None),
    ("winograd", W(1, 8, 12, 12, 8, 3, 3, p=P1), {"m": 6, "oc_block": 8, "p_tile": 4}),
    ("winograd", W(1, 8, 10, 10, 12, 3, 3), {"m": 2, "oc_block": 4, "p_tile": 8}),
    ("depthwise", W(1, 8, 12, 12, 8, 3, 3, p=P1, g=8), None),
    ("depthwise", W(1, 4, 17, 17, 8, 3, 3, s=2, p=P1, g=4), None),
    ("depthwise", W(2, 6, 9, 10, 6, 5, 5, p=(4, 4, 4, 4), d=2, g=6), None),
    ("depthwise", W(1, 8, 16, 16, 8, 3, 3, p=P1, g=8), {"ow_tile": 16, "oh_tile": 2}),
]

#: max |ours - float64 reference| / max |reference| allowed per family (fp32; Winograd loses digits with m).
RTOL = {"direct": 1e-5, "im2col": 1e-5, "depthwise": 1e-5, "winograd": 1e-4}


@pytest.mark.parametrize(
    "family,wl,knobs", CASES, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(CASES)]
)
def test_family_matches_torch_on_board(family, wl, knobs, arm, session, tmp_path):
    rule, kn = _build(family, wl, arm, knobs, tmp_path / "k.so")
    x, w = _data(wl)
    packed = rule.pack_weight(w, wl, kn).astype(np.float32)
    assert packed.shape == tuple(rule.packed_weight_shape(wl, kn))
    (got,) = remote.run_kernel(tmp_path / "k.so", [x, packed], [wl.out_shape], session)
    err = _rel_err(got, _ref(x, w, wl))
    assert err < RTOL[family], f"{family} {kn} on {wl.describe()}: relative error {err:.2e}"


_FUNC = re.compile(r"^[0-9a-f]+ <([^>]+)>:$")
_INSN = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*([^/]*)")
#: the kernel built with global symbol ``main``: TVM's packed wrapper and the bodies of its parallel loops
_KERNEL_FUNC = re.compile(r"(__tvm_ffi_)?main(_compute_\w*)?")
_BRANCH = re.compile(r"b(\.\w+)?|cbn?z|tbn?z")
_FP_MUL = {"fmla", "fmls", "fmadd", "fmsub", "fnmadd", "fnmsub", "fmul", "fmulx"}
_FP_ARITH = _FP_MUL | {"fadd", "fsub"}
_V4S = re.compile(r"v\d+\.4s\b")  # destination operand: a full 128-bit vector of 4 floats


def _kernel_functions(asm: str) -> dict[str, list[tuple[int, str, str]]]:
    """``{function: [(address, mnemonic, operands)]}`` for the kernel's functions in ``objdump -d`` output."""
    funcs, cur = {}, None
    for line in asm.splitlines():
        if m := _FUNC.match(line):
            cur = funcs.setdefault(m.group(1), []) if _KERNEL_FUNC.fullmatch(m.group(1)) else None
        elif cur is not None and (m := _INSN.match(line)):
            cur.append((int(m.group(1), 16), m.group(2), m.group(3).strip()))
    return funcs


def _innermost_loops(insns: list[tuple[int, str, str]]) -> list[tuple[int, int]]:
    """``(first, last)`` addresses of the innermost loops of one function: a loop is a backward branch within the
    function and the code from its target to it; innermost means it contains no other loop."""
    loops = set()
    for addr, op, args in insns:
        if _BRANCH.fullmatch(op) and (m := re.search(r"\b([0-9a-f]+) <", args)):
            target = int(m.group(1), 16)
            if insns[0][0] <= target <= addr:
                loops.add((target, addr))
    return sorted(lo for lo in loops if not any(o != lo and lo[0] <= o[0] and o[1] <= lo[1] for o in loops))


def neon_inner_loop_problems(asm: str) -> tuple[str, list[str]]:
    """``(summary, problems)`` for the kernel ``main`` in an aarch64 ``objdump -d``: its innermost loops that do
    floating-point multiplies (the conv's inner loop) must do them as 4-lane NEON, with ``fmla vN.4s`` in the
    hottest one, and hold no scalar (``s``) or 2-lane (``.2s``) FP arithmetic. A ``fmla`` elsewhere (straight-line
    code, an outer loop, an epilogue) does not count."""
    funcs = _kernel_functions(asm)
    if not funcs:
        return "", ["no kernel function (main / main_compute_*) in the disassembly"]
    loops = []  # (function, first, last, FP instructions in the loop)
    for name, insns in funcs.items():
        for lo, hi in _innermost_loops(insns):
            fp = [(a, op, args) for a, op, args in insns if lo <= a <= hi and op in _FP_ARITH]
            if any(op in _FP_MUL for _, op, _ in fp):
                loops.append((name, lo, hi, fp))
    summary = ", ".join(
        f"{n}[{lo:x}..{hi:x}]: {sum(op == 'fmla' and bool(_V4S.match(args)) for _, op, args in fp)} fmla .4s"
        f" of {len(fp)} FP ops" for n, lo, hi, fp in loops
    )
    if not loops:
        return summary, ["no innermost loop of the kernel does FP multiplies: the conv's inner loop is not a loop of FMAs"]
    problems = []
    for name, lo, hi, fp in loops:
        bad = [f"{a:x}: {op} {args}" for a, op, args in fp if not _V4S.match(args)]
        if bad:
            problems.append(f"{name} inner loop {lo:x}..{hi:x} has non-NEON-4s FP arithmetic: {bad[:6]}")
    name, lo, hi, fp = max(loops, key=lambda lp: sum(op in _FP_MUL for _, op, _ in lp[3]))
    if not any(op == "fmla" and _V4S.match(args) for _, op, args in fp):
        problems.append(f"hottest inner loop {name} {lo:x}..{hi:x} has no fmla vN.4s")
    return summary, problems


def _disassemble(so: Path) -> str:
    return subprocess.run([OBJDUMP, "-d", "--no-show-raw-insn", str(so)], capture_output=True, text=True, check=True).stdout


_ASM = """
0000000000001000 <main_compute_>:
    1000:\tmov\tx8, xzr
    1004:\tfmla\tv0.4s, v1.4s, v2.s[0]
    1008:\tldr\t{load}
    100c:\t{fma}
    1010:\tsubs\tx8, x8, #0x1
    1014:\tb.ne\t1008 <main_compute_+0x8>  // b.any
    1018:\tret
"""


@pytest.mark.parametrize(
    "load,fma,ok",
    [("q3, [x1]", "fmla\tv4.4s, v3.4s, v2.s[0]", True),
     ("s3, [x1]", "fmadd\ts4, s3, s2, s4", False),  # scalar inner loop; the one fmla v.4s is outside it
     ("d3, [x1]", "fmla\tv4.2s, v3.2s, v2.s[0]", False)],  # 2 lanes of 4
    ids=["neon-inner-loop", "scalar-inner-loop", "half-width"],
)
def test_neon_check_looks_at_the_inner_loop(load, fma, ok):
    """The NEON check on a hand-written disassembly: a 4-lane ``fmla`` outside the loop does not make a scalar or
    2-lane inner loop pass (the old check, any ``fmla vN.4s`` in the file, passed all three)."""
    summary, problems = neon_inner_loop_problems(_ASM.format(load=load, fma=fma))
    assert (not problems) == ok, (summary, problems)


#: one representative layer per family (default knobs) for the NEON check
NEON_CASES = {
    "direct": W(1, 32, 14, 14, 32, 3, 3, p=P1),
    "im2col": W(1, 32, 16, 16, 32, 3, 3, s=2, p=P1, g=2),
    "winograd": W(1, 32, 14, 14, 32, 3, 3, p=P1),
    "depthwise": W(1, 32, 16, 16, 32, 3, 3, p=P1, g=32),
}


@pytest.mark.parametrize("family", list(NEON_CASES))
def test_family_inner_loop_is_neon(family, arm, arm_setup, tmp_path):
    so = tmp_path / f"{family}.so"
    _, kn = _build(family, NEON_CASES[family], arm, None, so)
    summary, problems = neon_inner_loop_problems(_disassemble(so))
    print(f"\nNEON {family} {kn}: inner loops with FP multiplies: {summary}")
    assert not problems, f"{family} kernel's inner loop is not vectorised NEON: {problems}"


def _leftovers():
    import psutil

    return threading.active_count(), len(psutil.Process().children(recursive=True))


def test_unreachable_server_is_a_clear_error_quickly():
    before = _leftovers()
    port = _free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(ConvpipeError, match=f"127.0.0.1:{port}"):
        remote.connect(f"127.0.0.1:{port}", None, None, timeout_s=3)
    assert time.monotonic() - t0 < 3
    with pytest.raises(ConvpipeError, match="HOST:PORT"):
        remote.connect("127.0.0.1", None, None, timeout_s=3)
    with pytest.raises(ConvpipeError, match="exactly one"):
        remote.connect(None, None, None, timeout_s=3)
    assert _leftovers() == before


def test_silent_server_times_out():
    """A listener that never answers the RPC handshake: bounded by the timeout, error names host:port."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    try:
        t0 = time.monotonic()
        with pytest.raises(ConvpipeError, match=f"127.0.0.1:{port}.*within 2 s"):
            remote.connect(f"127.0.0.1:{port}", None, None, timeout_s=2)
        assert time.monotonic() - t0 < 4
    finally:
        srv.close()


@pytest.fixture
def tracker():
    from tvm.rpc.tracker import Tracker

    trk = Tracker(host="127.0.0.1", port=_free_port(), port_end=65535, silent=True)
    try:
        yield trk
    finally:
        trk.terminate()


def test_tracker_without_board_for_key(tracker):
    before = _leftovers()
    addr = f"127.0.0.1:{tracker.port}"
    t0 = time.monotonic()
    with pytest.raises(ConvpipeError, match=f"{addr}.*'no-such-board'"):
        remote.connect(None, addr, "no-such-board", timeout_s=3)
    assert time.monotonic() - t0 < 4
    with pytest.raises(ConvpipeError, match="--key"):
        remote.connect(None, addr, None, timeout_s=3)
    assert _leftovers() == before


def test_tracker_board_busy_then_free(arm_setup, tracker, arm, tmp_path):
    """A board registered with a tracker: a session through it runs our kernel; while that session holds the
    only board, a second request fails within its timeout naming the tracker and key."""
    run_dir = tmp_path / "board"
    key = "convpipe-a72"
    r = _board(
        "start",
        run_dir,
        str(_free_port()),
        env={"CONVPIPE_ARM_TRACKER": f"127.0.0.1:{tracker.port}", "CONVPIPE_ARM_KEY": key},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    try:
        from tvm import rpc

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the board registers shortly after it starts listening
            q = rpc.connect_tracker("127.0.0.1", tracker.port).summary()["queue_info"]
            if q.get(key, {}).get("free"):
                break
            time.sleep(0.5)
        addr = f"127.0.0.1:{tracker.port}"
        sess = remote.connect(None, addr, key, timeout_s=30)
        wl = W(1, 4, 6, 6, 8, 3, 3, p=P1)
        rule, kn = _build("direct", wl, arm, None, tmp_path / "k.so")
        x, w = _data(wl)  # random: all-ones data cannot tell a transposed or permuted kernel from the right one
        (got,) = remote.run_kernel(tmp_path / "k.so", [x, rule.pack_weight(w, wl, kn)], [wl.out_shape], sess)
        assert _rel_err(got, _ref(x, w, wl)) < RTOL["direct"]
        t0 = time.monotonic()
        with pytest.raises(ConvpipeError, match=f"{addr}.*no free board with key '{key}' within 2 s"):
            remote.connect(None, addr, key, timeout_s=2)
        assert time.monotonic() - t0 < 4
        del sess
    finally:
        _board("stop", run_dir, timeout=60)


def test_board_script_status_and_idempotent_setup(board, tmp_path):
    r = subprocess.run(["bash", str(BOARD), "setup"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "cached" in r.stderr
    other = tmp_path / "none"
    s = _board("status", other)
    assert s.returncode == 1 and s.stdout.strip() == "stopped"
    assert _board("stop", other).returncode == 0  # stopping a stopped board is fine


def test_make_measure_times_a_candidate_on_board(board, session, arm):
    from convpipe.compiler.kernel import remote_measure

    # the board serves one RPC session at a time: reuse the suite's
    measure = remote_measure(board, None, None, number=1, repeat=1, session=session)
    wl = W(1, 8, 8, 8, 8, 3, 3, p=P1)
    rule = rules_for("arm")["direct"]
    secs = measure(rule, wl, arm, rule.default_knobs(wl, arm))
    assert 0 < secs < 10


# ---- real models compiled for ARM and verified on the board ------------------------------------------------
ARM_MODELS = {"resnet18": (1, 3, 64, 64), "mobilenet_v2": (1, 3, 64, 64), "pnet": (1, 3, 48, 48),
              "rnet": (1, 3, 24, 24), "onet": (1, 3, 48, 48)}


@pytest.mark.parametrize("name", list(ARM_MODELS))
def test_model_on_board_matches_onnxruntime(name, session, tmp_path):
    """Export -> compile for ARM (NEON, cross-compiled) -> run on the emulated board over RPC -> compare with
    onnxruntime on the host, on a real image."""
    from convpipe.compiler.build import compile_model
    from convpipe.compiler.export import export_onnx
    from convpipe.compiler.verify import compare, run_onnxruntime
    from convpipe.compiler.zoo import ZOO
    from test_models import conv2d_off_our_schedules

    shape = ARM_MODELS[name]
    onnx_path, art = str(tmp_path / "m.onnx"), str(tmp_path / "m.cpa")
    export_onnx(ZOO[name].build(), shape, onnx_path)
    res = compile_model(onnx_path, art, "arm")
    assert res.manifest["target"]["arch"] == "arm"
    assert conv2d_off_our_schedules(art, onnx_path) == []  # every ONNX Conv runs one of our NEON kernels
    x = ZOO[name].real_input(shape)
    ours = remote.run_remote(str(tmp_path / "m.cpa" / "model.so"), [x], session, [o["name"] for o in res.manifest["outputs"]])
    checks = compare(ours, run_onnxruntime(onnx_path, {"input": x}), rtol=1e-3, atol=1e-4)
    assert all(c.ok for c in checks), checks


def test_cli_verify_run_bench_remote(arm_setup, tmp_path):
    """The CLI's --remote forms (run, verify, bench, tune measuring on the board) against a board of its own (an
    RPC server serves one session at a time)."""
    import sys

    cp = str(Path(sys.executable).with_name("convpipe"))
    run_dir = tmp_path / "board"
    run_dir.mkdir()
    port = _free_port()
    assert _board("start", run_dir, str(port), timeout=300).returncode == 0
    try:
        onnx_path, art = str(tmp_path / "r.onnx"), str(tmp_path / "r.cpa")
        for cmd in (["export", "rnet", "-o", onnx_path], ["compile", onnx_path, "-o", art, "--target", "arm", "-q"],
                    ["verify", art, onnx_path, "--remote", f"127.0.0.1:{port}"],
                    ["run", art, "--remote", f"127.0.0.1:{port}", "-o", str(tmp_path / "o.npz")],
                    ["bench", art, "--remote", f"127.0.0.1:{port}", "--rounds", "1"],
                    ["tune", onnx_path, "--target", "arm", "--remote", f"127.0.0.1:{port}", "--db", str(tmp_path / "db.json"),
                     "--budget-s", "5"],
                    ["compile", onnx_path, "-o", art, "--target", "arm", "--db", str(tmp_path / "db.json"), "-q"],
                    ["verify", art, onnx_path, "--remote", f"127.0.0.1:{port}"]):
            p = subprocess.run([cp, *cmd], capture_output=True, text=True, timeout=600)
            assert p.returncode == 0, (cmd, p.stdout, p.stderr)
        assert set(np.load(tmp_path / "o.npz").keys()) == {"output0", "output1"}
        p = subprocess.run([cp, "run", art], capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and "run it on the board (--remote HOST:PORT)" in p.stderr
    finally:
        _board("stop", run_dir, timeout=60)
