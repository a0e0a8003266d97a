"""Running compiled code on a remote board through TVM RPC (a board reached directly or through a tracker).

The flow a ``--remote``/``--tracker`` command follows::

    sess = connect("192.168.1.7:9090", None, None, timeout_s=10)        # or connect(None, "host:9190", "rk3399", 10)
    outs = run_remote("model.so", {"input": x}, sess)                   # upload, load, relax VM on remote.cpu()
    secs = time_remote("model.so", [x], sess, number=10, repeat=3)      # board-side time_evaluator

The library must be cross-compiled for the board (``export_library(path, fcompile=cross_compiler(...))``, see
:func:`cross_compiler`). Every failure to reach a board raises :class:`ConvpipeError` naming ``host:port``
within ``timeout_s`` and leaves no thread, process or socket behind.

Only this module talks to boards; it imports TVM lazily (``import convpipe.remote`` is cheap). It is transport
only: what to build and measure (e.g. tuning's per-candidate measurer, ``remote_measure``) lives in
:mod:`convpipe.compiler.kernel`.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from convpipe.errors import ConvpipeError
from convpipe.runtime.module import flatten_outputs

#: The aarch64 cross compiler (Debian ``gcc-aarch64-linux-gnu``; ``scripts/arm_board.sh setup`` installs it).
AARCH64_CC = "aarch64-linux-gnu-gcc"


def parse_addr(addr: str, what: str = "--remote") -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(host, port)``.

    Raises:
        ConvpipeError: not of the form HOST:PORT with a port in 1..65535.
    """
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConvpipeError(f"{what} {addr!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
    return host.strip("[]"), int(port)


def _probe(host: str, port: int, timeout_s: float, what: str) -> None:
    """A plain TCP connect (closed at once): fails fast on refused/unreachable/unknown hosts."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except socket.timeout:
        raise ConvpipeError(f"{what} {host}:{port} did not answer within {timeout_s:g} s") from None
    except OSError as e:
        raise ConvpipeError(f"cannot reach {what} {host}:{port}: {e.strerror or e}") from None


def _connect_server(host: str, port: int, key: str, timeout_s: float, session_timeout: float, probe: bool = True):
    """``tvm.rpc.connect`` bounded by ``timeout_s``.

    The TCP probe catches dead addresses; the RPC handshake itself runs on a helper thread because the C++
    ``rpc.Connect`` has no timeout (a server busy with another session queues new clients). On a timeout the
    handshake thread is left to finish against the server and its session is dropped at once.
    """
    from tvm import rpc

    if probe:  # not for a board a tracker just matched: a dropped connection makes it renew its match key
        _probe(host, port, timeout_s, "RPC server")
    box: dict[str, Any] = {}

    def _go():
        try:
            box["sess"] = rpc.connect(host, port, key=key, session_timeout=session_timeout)
        except Exception as e:  # noqa: BLE001 -- reported below with the address
            box["err"] = e

    th = threading.Thread(target=_go, name=f"rpc-connect-{host}:{port}", daemon=True)
    th.start()
    th.join(timeout_s)
    if th.is_alive():
        raise ConvpipeError(
            f"RPC server {host}:{port} accepted the connection but did not complete the TVM RPC handshake within "
            f"{timeout_s:g} s (busy with another session, or not a TVM RPC server)"
        )
    if "err" in box:
        msg = str(box["err"]).strip().splitlines()
        raise ConvpipeError(f"RPC server {host}:{port}: connection failed: {msg[-1] if msg else box['err']}")
    return box["sess"]


def _request_from_tracker(host: str, port: int, key: str, timeout_s: float) -> tuple[str, int, str]:
    """Ask a TVM RPC tracker for a free board with ``key``; ``(board host, board port, match key)``.

    Speaks the tracker protocol (``tvm/rpc/tracker.py``) on a socket with a timeout: ``TrackerSession.request``
    waits forever when no board with ``key`` is free.
    """
    from tvm.rpc import base

    _probe(host, port, timeout_s, "RPC tracker")
    deadline = time.monotonic() + timeout_s
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as e:
        raise ConvpipeError(f"cannot reach RPC tracker {host}:{port}: {e.strerror or e}") from None
    try:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        magic = struct.unpack("<i", base.recvall(sock, 4))[0]
        if magic != base.RPC_TRACKER_MAGIC:
            raise ConvpipeError(f"{host}:{port} is not a TVM RPC tracker")
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        base.sendjson(sock, [base.TrackerCode.SUMMARY])
        reply = base.recvjson(sock)  # [SUCCESS, {"queue_info": {key: {"free", "pending"}}, "server_info": ...}]
        summary = reply[1] if isinstance(reply, list) and len(reply) > 1 else {}
        queues = summary.get("queue_info", {}) if isinstance(summary, dict) else {}
        if key not in queues:
            known = sorted(queues) or "none"
            raise ConvpipeError(
                f"RPC tracker {host}:{port} has no board registered with key {key!r} (keys: {known})"
            )
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        base.sendjson(sock, [base.TrackerCode.REQUEST, key, "", 1])
        value = base.recvjson(sock)
    except socket.timeout:
        raise ConvpipeError(
            f"RPC tracker {host}:{port}: no free board with key {key!r} within {timeout_s:g} s"
        ) from None
    except OSError as e:
        raise ConvpipeError(f"RPC tracker {host}:{port}: connection failed: {e}") from None
    finally:
        sock.close()  # the tracker drops our queued request with the connection
    if not isinstance(value, list) or value[0] != base.TrackerCode.SUCCESS:
        raise ConvpipeError(f"RPC tracker {host}:{port}: unexpected reply {value!r}")
    b_host, b_port, matchkey = value[1]
    return b_host, int(b_port), matchkey


def connect(
    remote: str | None,
    tracker: str | None = None,
    key: str | None = None,
    timeout_s: float = 10.0,
    session_timeout: float = 0,
):
    """Open a TVM RPC session on a board.

    Args:
        remote: ``"HOST:PORT"`` of an RPC server (``--remote``); exclusive with ``tracker``.
        tracker: ``"HOST:PORT"`` of an RPC tracker (``--tracker``); needs ``key``.
        key: the board key registered with the tracker (``--key``).
        timeout_s: bound on reaching the server/tracker and on waiting for a free board.
        session_timeout: seconds after which the server ends the session (0: never).

    Returns:
        a ``tvm.rpc.RPCSession``.

    Raises:
        ConvpipeError: bad arguments; server or tracker unreachable, refusing or silent within ``timeout_s``;
            no board with ``key`` registered or free within ``timeout_s``.
    """
    if (remote is None) == (tracker is None):
        raise ConvpipeError("give exactly one of --remote HOST:PORT or --tracker HOST:PORT (with --key)")
    if timeout_s <= 0:
        raise ConvpipeError(f"timeout must be > 0 s, got {timeout_s}")
    if remote is not None:
        host, port = parse_addr(remote, "--remote")
        return _connect_server(host, port, key or "", timeout_s, session_timeout)
    if not key:
        raise ConvpipeError("--tracker needs --key KEY (the key the board registered with)")
    t_host, t_port = parse_addr(tracker, "--tracker")
    t0 = time.monotonic()
    b_host, b_port, matchkey = _request_from_tracker(t_host, t_port, key, timeout_s)
    left = max(1.0, timeout_s - (time.monotonic() - t0))
    return _connect_server(b_host, b_port, matchkey, left, session_timeout, probe=False)


def cross_compiler(cc: str = AARCH64_CC):
    """``fcompile`` for ``export_library`` that links with ``cc`` (default: the aarch64 cross gcc).

    Raises:
        ConvpipeError: ``cc`` is not installed (``scripts/arm_board.sh setup`` installs the aarch64 one).
    """
    import shutil

    import tvm

    if shutil.which(cc) is None:
        raise ConvpipeError(f"cross compiler {cc!r} not found: run scripts/arm_board.sh setup (or apt-get install gcc-aarch64-linux-gnu)")
    return tvm.support.cc.cross_compiler(cc)


def export_for_board(executable, path: str | os.PathLike, cc: str = AARCH64_CC, workspace: str | None = None) -> str:
    """Write a ``tvm.compile`` result for an aarch64 target as a shared library the board can load
    (``workspace``: directory for the intermediate objects, default a temporary one of TVM's)."""
    path = os.fspath(path)
    executable.export_library(path, fcompile=cross_compiler(cc), workspace_dir=workspace)
    return path


def upload(session, lib_path: str | os.PathLike):
    """Upload a shared library to the board's session directory and load it there (``remote.load_module``).

    Raises:
        ConvpipeError: missing file, or the board could not load it (wrong architecture, missing symbols).
    """
    lib_path = os.fspath(lib_path)
    if not os.path.isfile(lib_path):
        raise ConvpipeError(f"{lib_path}: no such library")
    # a fresh name per upload: overwriting a library the board already dlopen'ed kills the server (SIGBUS)
    name = f"{uuid.uuid4().hex[:12]}_{os.path.basename(lib_path)}"
    try:
        session.upload(lib_path, target=name)
        return session.load_module(name)
    except Exception as e:  # noqa: BLE001 -- TVM raises its own error types across RPC
        msg = str(e).strip().splitlines()
        raise ConvpipeError(f"{lib_path}: the board could not load it: {msg[-1] if msg else e}") from None


def remote_device(session, device: str = "cpu"):
    """The session's ``cpu(0)`` or ``cuda(0)``.

    Raises:
        ConvpipeError: ``device`` is neither, or the RPC server has no CUDA GPU (or a TVM without CUDA).
    """
    if device == "cpu":
        return session.cpu(0)
    if device != "cuda":
        raise ConvpipeError(f"remote device {device!r}: expected 'cpu' or 'cuda'")
    dev = session.cuda(0)
    try:
        ok = bool(dev.exist)
    except Exception:  # noqa: BLE001 -- a server whose TVM has no CUDA runtime raises instead of answering
        ok = False
    if not ok:
        raise ConvpipeError("the RPC server has no usable CUDA GPU (no device 0, or its TVM has no CUDA runtime)")
    return dev


def _as_list(inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> list[np.ndarray]:
    arrays = list(inputs.values()) if isinstance(inputs, Mapping) else list(inputs)
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray):
            raise ConvpipeError(f"input #{i}: expected a NumPy array, got {type(a).__name__}")
    return [np.ascontiguousarray(a) for a in arrays]


def run_remote(
    lib_path: str | os.PathLike,
    inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    session,
    output_names: Sequence[str] | None = None,
    func: str = "main",
    device: str = "cpu",
) -> dict[str, np.ndarray]:
    """Run a Relax VM library (``tvm.compile(relax_mod)`` exported for the board) once on the board.

    Args:
        lib_path: the cross-compiled library (an artifact's ``.so``).
        inputs: arrays in the model's input order (a mapping is taken in its iteration order: validate and
            order it against the manifest first, e.g. with the runtime's ``check_inputs`` logic).
        session: from :func:`connect`.
        output_names: names for the outputs (manifest order); default ``output_0``, ``output_1``, ...
        func: the VM function to call.
        device: ``"cpu"`` or ``"cuda"`` (a library built for ``--target cuda``, on the server's GPU 0).

    Returns:
        ``{output name: np.ndarray}`` copied back to the host.

    Raises:
        ConvpipeError: upload/load/run failed on the server, or it has no CUDA GPU for ``device="cuda"``.
    """
    import tvm
    from tvm.runtime.vm import VirtualMachine

    arrays = _as_list(inputs)
    dev = remote_device(session, device)
    rmod = upload(session, lib_path)
    try:
        vm = VirtualMachine(rmod, dev)
        # set_input/invoke_stateful/get_outputs: a tuple result comes back element by element (a tuple
        # returned directly is a remote object the host cannot iterate)
        vm.set_input(func, *[tvm.runtime.tensor(a, dev) for a in arrays])
        vm.invoke_stateful(func)
        flat = [t.numpy() for t in flatten_outputs(vm.get_outputs(func))]
    except Exception as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()
        raise ConvpipeError(f"{os.fspath(lib_path)}: running on the board failed: {msg[-1] if msg else e}") from None
    names = list(output_names) if output_names is not None else [f"output_{i}" for i in range(len(flat))]
    if len(names) != len(flat):
        raise ConvpipeError(f"the board returned {len(flat)} outputs, expected {len(names)}: {names}")
    return dict(zip(names, flat))


def time_remote(
    lib_path: str | os.PathLike,
    inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    session,
    number: int = 10,
    repeat: int = 3,
    func: str = "main",
    device: str = "cpu",
) -> list[float]:
    """Per-run latency of a Relax VM library on the board, in seconds: ``repeat`` figures, each the mean of
    ``number`` runs, timed on the board by TVM's ``time_evaluator`` (inputs already on the board).

    Emulated boards (``scripts/arm_board.sh``) run ~20x slower than hardware: never report their timings as
    ARM performance.
    """
    import tvm
    from tvm.runtime.vm import VirtualMachine

    arrays = _as_list(inputs)
    dev = remote_device(session, device)
    rmod = upload(session, lib_path)
    vm = VirtualMachine(rmod, dev)
    vm.set_input(func, *[tvm.runtime.tensor(a, dev) for a in arrays])
    fn = vm.time_evaluator("invoke_stateful", dev, number=number, repeat=repeat)
    return list(fn(func).results)


def _kernel_call(lib_path, args: Sequence[np.ndarray], out_shapes: Sequence[tuple[int, ...]], session, device: str,
                 dtype: str):
    """Upload and load a kernel library; ``(remote module, remote device, inputs then zero outputs on it)``."""
    import tvm

    dev = remote_device(session, device)
    rmod = upload(session, lib_path)
    targs = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in args]
    targs += [tvm.runtime.tensor(np.zeros(s, dtype=dtype), dev) for s in out_shapes]
    return rmod, dev, targs


def run_kernel(
    lib_path: str | os.PathLike,
    args: Sequence[np.ndarray],
    out_shapes: Sequence[tuple[int, ...]],
    session,
    func: str = "main",
    device: str = "cpu",
    dtype: str = "float32",
) -> list[np.ndarray]:
    """Run one compiled PrimFunc (destination-passing: inputs then outputs) on the board; returns the outputs.
    For kernel-level tests of a single conv2d schedule (building one: :mod:`convpipe.compiler.kernel`).

    Args:
        lib_path: the library exported for the board (its function ``func``).
        args: the inputs, copied to the board's ``device``.
        out_shapes: one zero-filled ``dtype`` output per shape is made on the board.

    Returns:
        the outputs, copied back, as NumPy arrays.

    Raises:
        ConvpipeError: the board could not load the library, or has no CUDA GPU for ``device="cuda"``.
    """
    rmod, dev, targs = _kernel_call(lib_path, args, out_shapes, session, device, dtype)
    rmod[func](*targs)
    return [t.numpy() for t in targs[len(args):]]


def time_kernel(
    lib_path: str | os.PathLike,
    args: Sequence[np.ndarray],
    out_shapes: Sequence[tuple[int, ...]],
    session,
    number: int = 10,
    repeat: int = 3,
    func: str = "main",
    device: str = "cpu",
    dtype: str = "float32",
) -> list[float]:
    """Board-side ``time_evaluator`` of one PrimFunc: ``repeat`` figures in seconds per run, each the mean of
    ``number`` runs (arguments as :func:`run_kernel`; see :func:`time_remote` on emulation). Tuning's measurer
    built on it is :func:`convpipe.compiler.kernel.remote_measure`.

    Raises:
        ConvpipeError: as :func:`run_kernel`.
    """
    rmod, dev, targs = _kernel_call(lib_path, args, out_shapes, session, device, dtype)
    fn = rmod.time_evaluator(func, dev, number=number, repeat=repeat)
    return list(fn(*targs).results)
