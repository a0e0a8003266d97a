"""One conv2d kernel alone: build it, make its inputs, run it, time it -- here or on a board.

A kernel is a :class:`~convpipe.schedules.rule.Conv2dRule`'s scheduled PrimFunc for one
:class:`~convpipe.schedules.Conv2dWorkload` and one knob setting, compiled as a standalone function named
``main`` with destination-passing arguments ``(data, packed weight, output)``:

- ``data``: float32 ``wl.data_tensor_shape`` (NCHW ``[N, C, H, W]``, or NCHW[x]c ``[N, C/x, H, W, x]`` when
  ``wl.data_block = x``);
- ``packed weight``: float32 ``rule.packed_weight_shape(wl, knobs)`` (``rule.pack_weight`` of the OIHW weight);
- ``output``: float32 ``wl.out_tensor_shape`` (NCHW, or NCHW[x]c when ``wl.out_block = x``), overwritten.

Every place that builds or measures one kernel goes through here: tuning (:func:`measure_local`,
:func:`remote_measure`, used by :mod:`.tune`), the GPU kit's layer libraries (``scripts/gpu_kit.py``) and the
kernel tests (``tests/conftest.py``, ``tests/test_cuda.py``). TVM is imported lazily: importing this module is
cheap, and the run/time helpers (:func:`run_compiled`, :func:`time_local`) work with a runtime-only TVM.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np

from convpipe.errors import ConvpipeError
from convpipe.schedules import Conv2dWorkload, TargetInfo

#: ``(rule, wl, target, knobs) -> median seconds``: what :func:`convpipe.compiler.tune.tune_workloads` calls.
Measure = Callable[[Any, Conv2dWorkload, TargetInfo, dict], float]


def compile_func(func, target: TargetInfo | Any):
    """``tvm.compile`` of one PrimFunc alone, as the module's function ``main``.

    Args:
        func: a ``tvm.tirx.PrimFunc`` (any ``global_symbol`` it carries is replaced by ``main``).
        target: a resolved :class:`TargetInfo`, or anything ``tvm.target.Target`` accepts (e.g. ``"llvm"``, a
            JSON dict). For a CUDA :class:`TargetInfo` the device code is compiled by nvcc for the target's arch
            and embedded (:func:`convpipe.compiler.cuda_device.cuda_build`); compilation always runs inside
            ``with target:``.

    Returns:
        the ``tvm.runtime.Executable``: ``ex["main"](...)`` runs it, ``ex.export_library(path)`` writes it.

    Raises:
        ConvpipeError: a CUDA target and no nvcc, or nvcc failing (from ``cuda_build``).
        tvm.error.TVMError: TVM cannot lower or compile the function.
    """
    import contextlib

    import tvm

    if isinstance(target, TargetInfo):
        tgt = target.target
        if target.arch == "cuda":
            from .cuda_device import cuda_build

            build = cuda_build(target.isa)
        else:
            build = contextlib.nullcontext()
    else:
        tgt, build = tvm.target.Target(target), contextlib.nullcontext()
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    with build, tgt:
        return tvm.compile(mod, target=tgt)


def compile_kernel(rule, wl: Conv2dWorkload, target: TargetInfo, knobs: dict):
    """Build ``rule``'s kernel for ``wl`` with ``knobs`` and compile it alone for ``target`` (:func:`compile_func`:
    function ``main(data, packed weight, output)``, see the module docstring for shapes and layouts).

    Raises:
        ValueError: ``knobs`` are invalid for ``wl`` on ``target`` (``rule.check_knobs``: names the knob).
        ConvpipeError: a CUDA target and nvcc missing or failing.
        tvm.error.TVMError: the schedule fails to build or compile.
    """
    return compile_func(rule.build(wl, target, knobs), target)


def kernel_arrays(rule, wl: Conv2dWorkload, knobs: dict, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The random inputs every measurement uses: ``(data, packed weight, zero output)``, NumPy float32,
    C-contiguous, of shapes ``wl.data_tensor_shape``, ``rule.packed_weight_shape(wl, knobs)`` and
    ``wl.out_tensor_shape``. Data then OIHW weight are drawn from ``np.random.default_rng(seed)`` (standard
    normal); the weight is packed with ``rule.pack_weight``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(wl.data_tensor_shape).astype("float32")
    w = rule.pack_weight(rng.standard_normal(wl.weight_shape).astype("float32"), wl, knobs)
    return x, np.ascontiguousarray(w, dtype="float32"), np.zeros(wl.out_tensor_shape, "float32")


def local_device(target: TargetInfo, error: str = "running a CUDA kernel here needs a local CUDA GPU"):
    """The device a ``target`` kernel runs on in this process: ``tvm.cpu(0)``, or ``tvm.cuda(0)`` for CUDA.

    Raises:
        ConvpipeError: a CUDA target and no usable local GPU: ``error``, then why in parentheses.
    """
    import tvm

    if target.arch != "cuda":
        return tvm.cpu(0)
    from convpipe.runtime.module import cuda_gpu_missing

    why = cuda_gpu_missing()
    if why:
        raise ConvpipeError(f"{error} ({why})")
    return tvm.cuda(0)


def _on(dev, arrays: Sequence[Any]) -> list:
    """NumPy arrays copied to ``dev`` as TVM tensors (TVM tensors pass through)."""
    import tvm

    return [tvm.runtime.tensor(np.ascontiguousarray(a), dev) if isinstance(a, np.ndarray) else a for a in arrays]


def run_compiled(ex, wl: Conv2dWorkload, x: np.ndarray, w_packed: np.ndarray, dev=None) -> np.ndarray:
    """Run a compiled kernel (:func:`compile_kernel`, or a loaded library with a ``main``) once.

    Args:
        ex: the executable or ``tvm.runtime.Module``.
        wl: its workload (for the output shape and layouts).
        x: NCHW float32 data ``wl.data_shape``; blocked to NCHW[x]c here when ``wl.data_block``.
        w_packed: the packed weight (``rule.pack_weight``), float32.
        dev: the TVM device (default ``tvm.cpu(0)``).

    Returns:
        the NCHW float32 output ``wl.out_shape`` (un-blocked from NCHW[x]c when ``wl.out_block``).
    """
    import tvm

    from convpipe.schedules.compute import block_nchw, unblock_nchw

    dev = tvm.cpu(0) if dev is None else dev
    if wl.data_block:
        x = block_nchw(x, wl.data_block)
    out = tvm.runtime.tensor(np.zeros(wl.out_tensor_shape, "float32"), dev)
    xt, wt = _on(dev, [np.asarray(x, dtype="float32"), np.asarray(w_packed, dtype="float32")])
    ex["main"](xt, wt, out)
    return unblock_nchw(out.numpy()) if wl.out_block else out.numpy()


def run_local(rule, wl: Conv2dWorkload, target: TargetInfo, knobs: dict, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Build ``rule``'s kernel for ``wl`` alone (:func:`compile_kernel`), run it once on this machine (its CPU, or
    GPU 0 for a CUDA target) and return its NCHW output.

    Args:
        x: NCHW float32 data ``wl.data_shape`` (blocked here for NCHW[x]c workloads).
        w: OIHW float32 weight ``wl.weight_shape`` (packed here with ``rule.pack_weight``).

    Returns:
        float32 ``wl.out_shape`` (NCHW; un-blocked for NCHW[x]c outputs).

    Raises:
        ConvpipeError: a CUDA target and no local GPU (checked before compiling), or nvcc missing/failing.
    """
    dev = local_device(target)
    ex = compile_kernel(rule, wl, target, knobs)
    return run_compiled(ex, wl, x, rule.pack_weight(w, wl, knobs), dev)


def time_local(ex, args: Sequence[Any], dev, number: int = 1, repeat: int = 5, min_repeat_ms: float = 40) -> float:
    """Median seconds of one run of ``main`` of a compiled kernel on ``dev`` (TVM's ``time_evaluator``: ``repeat``
    figures, each the mean of at least ``number`` runs lasting ``min_repeat_ms``; it synchronises a GPU around
    each repeat).

    Args:
        ex: the executable (:func:`compile_kernel`) or a loaded ``tvm.runtime.Module``.
        args: ``(data, packed weight, output)`` as NumPy arrays (copied to ``dev``, e.g. :func:`kernel_arrays`)
            or TVM tensors already on ``dev``.
        dev: the TVM device (:func:`local_device`).
    """
    mod = ex.mod if hasattr(ex, "mod") else ex
    f = mod.time_evaluator("main", dev, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms)
    return float(np.median(f(*_on(dev, args)).results))


def measure_local(rule, wl: Conv2dWorkload, target: TargetInfo, knobs: dict, min_repeat_ms: float = 40) -> float:
    """Median seconds of one run of ``rule``'s kernel for ``wl`` on this machine: its CPU, or its GPU 0 for a CUDA
    target (device code compiled by nvcc for the target's arch; TVM's ``time_evaluator`` synchronises the
    device around each repeat). Inputs: :func:`kernel_arrays` (seed 0); 5 repeats of at least
    ``min_repeat_ms`` each.

    Raises:
        ConvpipeError: a CUDA target and no local CUDA GPU (checked before compiling; names ``--remote``).
        ValueError, tvm.error.TVMError: the candidate does not build (the tuner skips it and reports why).
    """
    dev = local_device(target, "tuning for CUDA needs a local GPU, or a remote one: give --remote HOST:PORT")
    ex = compile_kernel(rule, wl, target, knobs)
    return time_local(ex, kernel_arrays(rule, wl, knobs), dev, min_repeat_ms=min_repeat_ms)


def remote_measure(*where, timeout_s: float = 30.0, number: int = 3, repeat: int = 3, session=None) -> Measure:
    """A ``measure(rule, wl, target, knobs) -> seconds`` for :func:`convpipe.compiler.tune.tune_workloads` that
    times each candidate kernel on a board or GPU host over TVM RPC: :func:`compile_kernel`, export
    (:func:`convpipe.compiler.build.export_library`: cross-linked for aarch64 for ARM; for CUDA the device
    code, compiled by nvcc for the target's arch, is embedded and the host code is x86-64), upload, then the
    median of the board-side ``time_evaluator`` (:func:`convpipe.remote.time_kernel`: ``repeat`` figures, each
    the mean of ``number`` runs) on the server's CPU, or its GPU 0 for a CUDA target. Inputs:
    :func:`kernel_arrays` (seed 0).

    One RPC session is opened now -- ``where`` (``remote, tracker, key``) and ``timeout_s`` are passed to
    :func:`convpipe.remote.connect` as they are; or pass an open ``session`` -- and reused: a TVM RPC server
    serves one session at a time. The returned function carries it as ``measure.session`` and a temporary directory for the
    libraries as ``measure.tmpdir`` (both live as long as the function). On an emulated board the ranking is only
    indicative (QEMU's costs are not a Cortex-A72's).

    Raises:
        ConvpipeError: the server or tracker cannot be reached (see :func:`convpipe.remote.connect`); from the
            returned function, the board cannot load or run a candidate, or has no CUDA GPU.
    """
    import tempfile

    from convpipe import remote

    from .build import export_library

    sess = session if session is not None else remote.connect(*where, timeout_s=timeout_s)
    tmp = tempfile.TemporaryDirectory(prefix="convpipe-measure-")
    counter = [0]

    def measure(rule, wl: Conv2dWorkload, target: TargetInfo, knobs: dict) -> float:
        counter[0] += 1
        so = os.path.join(tmp.name, f"cand{counter[0]}.so")
        export_library(compile_kernel(rule, wl, target, knobs), so, target)
        x, w, out = kernel_arrays(rule, wl, knobs)
        try:
            secs = remote.time_kernel(so, [x, w], [out.shape], sess, number=number, repeat=repeat,
                                      device="cuda" if target.arch == "cuda" else "cpu")
        finally:
            os.remove(so)
        return float(np.median(secs))

    measure.session = sess  # keep the session (and the temp dir) alive with the function
    measure.tmpdir = tmp
    return measure
