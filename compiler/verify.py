"""Compare an artifact's outputs with onnxruntime's (CPU provider) on the same inputs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from convpipe.errors import ConvpipeError

#: A whole network matches onnxruntime when every output has ``max |ours - ref| <= NETWORK_RTOL * max |ref| +
#: NETWORK_ATOL`` (normwise; issue 10's tolerance, used by the corpus and the compile-time accuracy guard,
#: :mod:`.accuracy`).
NETWORK_RTOL, NETWORK_ATOL = 1e-4, 1e-5


@dataclass
class OutputCheck:
    """One output's comparison: ``max_abs = max|ours - ref|``, ``max_rel = max_abs / max|ref|`` (normwise),
    ``ok = all(|ours - ref| <= atol + rtol * |ref|)``."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    ok: bool
    max_ref: float = 0.0  # max |ref| over the finite positions

    def within(self, rtol: float = NETWORK_RTOL, atol: float = NETWORK_ATOL) -> bool:
        """Normwise: ``max_abs <= rtol * max|ref| + atol`` (issue 10's network tolerance by default); a
        non-finite mismatch (``max_abs`` inf) never is."""
        return math.isfinite(self.max_abs) and self.max_abs <= rtol * self.max_ref + atol


def onnxruntime_session(onnx_path: str, threads: int | None = None, spinning: bool = True, optimize: bool = True):
    """An onnxruntime ``InferenceSession`` on the CPU provider with ``threads`` intra-op threads (busy-waiting
    between ops unless ``spinning`` is False); ``optimize=False`` turns its graph optimisations off
    (``ORT_DISABLE_ALL``), as the correctness reference :func:`run_onnxruntime` does."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ConvpipeError(f"{onnx_path}: onnxruntime cannot load it: {e}") from e


_ORT_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
              "tensor(bool)": "bool"}


def io_mismatch(sess, inputs: dict[str, np.ndarray]) -> list[str]:
    """What differs between an onnxruntime session's graph inputs and the ``inputs`` about to be fed (the
    artifact's inputs): names missing or extra, rank, static dims (symbolic dims match any size), dtype. Empty
    when they agree."""
    problems = []
    want = {i.name: i for i in sess.get_inputs()}
    for name in sorted(set(want) - set(inputs)):
        problems.append(f"the ONNX has input {name!r}, the artifact does not")
    for name in sorted(set(inputs) - set(want)):
        problems.append(f"the artifact has input {name!r}, the ONNX does not")
    for name in [n for n in inputs if n in want]:
        a, info = inputs[name], want[name]
        dims = list(info.shape)
        if len(dims) != a.ndim or any(isinstance(d, int) and d != s for d, s in zip(dims, a.shape)):
            problems.append(f"input {name!r}: the ONNX has shape {dims}, the artifact {list(a.shape)}")
        dtype = _ORT_TYPES.get(info.type)
        if dtype is not None and dtype != str(a.dtype):
            problems.append(f"input {name!r}: the ONNX has dtype {dtype}, the artifact {a.dtype}")
    return problems


def run_onnxruntime(onnx_path: str, inputs: dict[str, np.ndarray], threads: int | None = None) -> dict[str, np.ndarray]:
    """Run ``onnx_path`` on onnxruntime's CPU provider; returns ``{output name: array}`` in graph order. This is
    convpipe's correctness reference (``verify``, the corpus, the fuzzers), so onnxruntime's graph optimisations are
    off: its level-1 PadFusion (``onnxruntime/core/optimizer/pad_fusion.cc``, PR #18136) folds a zero ``Pad`` into
    a following ``MaxPool``, whose padding acts as -inf, and so returns the window maximum where the model says 0
    (onnxruntime 1.31.1, found by the graph fuzzer: a max error of 0.84 on values ~3.6, and "pads[dim] < kernel"
    load failures when the folded pad outgrows the kernel). Benchmarks time onnxruntime with its defaults.

    Raises:
        ConvpipeError: onnxruntime cannot load the file; its inputs differ from ``inputs`` (names, ranks, static
            dims, dtypes: every difference is listed); onnxruntime fails while running it.
    """
    sess = onnxruntime_session(onnx_path, threads, optimize=False)
    problems = io_mismatch(sess, inputs)
    if problems:
        raise ConvpipeError(f"{onnx_path}: not the model the artifact was compiled from: " + "; ".join(problems))
    names = [o.name for o in sess.get_outputs()]
    try:
        return dict(zip(names, sess.run(names, inputs)))
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
        raise ConvpipeError(f"{onnx_path}: onnxruntime failed to run it: {msg}") from e


def compare(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray], rtol: float, atol: float) -> list[OutputCheck]:
    """Per-output comparison in ``ref``'s order, elementwise ``|ours - ref| <= atol + rtol * |ref|``.

    Non-finite values match only themselves, position by position: NaN where ``ref`` has NaN, the same
    infinity where ``ref`` has one (``inf - inf`` would be NaN and fail). ``max_abs`` and ``max_rel`` are taken
    over the positions where both are finite; a non-finite mismatch makes them ``inf``.

    Raises:
        ConvpipeError: ``ref`` has no outputs (nothing would be compared), or an output of ``ref`` is missing
            from ``ours`` or has another shape.
    """
    if not ref:
        raise ConvpipeError("the reference produced no outputs: nothing to compare")
    checks = []
    for name, r in ref.items():
        if name not in ours:
            raise ConvpipeError(f"output {name!r} is missing from the artifact's outputs {sorted(ours)}")
        o = ours[name]
        if o.shape != r.shape:
            raise ConvpipeError(f"output {name!r}: artifact gives shape {list(o.shape)}, onnxruntime {list(r.shape)}")
        o64, r64 = np.asarray(o, np.float64), np.asarray(r, np.float64)
        finite = np.isfinite(o64) & np.isfinite(r64)
        same_nonfinite = ~finite & ((np.isnan(o64) & np.isnan(r64)) | (o64 == r64))
        with np.errstate(invalid="ignore"):  # inf - inf at non-finite positions, masked out here
            diff = np.where(finite, np.abs(o64 - r64), 0.0)
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(np.where(finite, r64, 0.0)).max()) if r64.size else 0.0
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
        nonfinite_ok = bool(np.all(finite | same_nonfinite))
        if not nonfinite_ok:
            max_abs = max_rel = float("inf")
        ok = nonfinite_ok and bool(np.all(diff <= atol + rtol * np.abs(np.where(finite, r64, 0.0))))
        checks.append(OutputCheck(name, tuple(o.shape), max_abs, max_rel, ok, scale))
    return checks
