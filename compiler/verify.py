"""Compare an artifact's outputs with onnxruntime's (CPU provider) on the same inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from convpipe.errors import ConvpipeError


@dataclass
class OutputCheck:
    """One output's comparison: ``max_abs = max|ours - ref|``, ``max_rel = max_abs / max|ref|`` (normwise),
    ``ok = all(|ours - ref| <= atol + rtol * |ref|)``."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    ok: bool


def onnxruntime_session(onnx_path: str, threads: int | None = None, spinning: bool = True):
    """An onnxruntime ``InferenceSession`` on the CPU provider with ``threads`` intra-op threads (busy-waiting
    between ops unless ``spinning`` is False)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ConvpipeError(f"{onnx_path}: onnxruntime cannot load it: {e}") from None


def run_onnxruntime(onnx_path: str, inputs: dict[str, np.ndarray], threads: int | None = None) -> dict[str, np.ndarray]:
    sess = onnxruntime_session(onnx_path, threads)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs)))


def compare(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray], rtol: float, atol: float) -> list[OutputCheck]:
    """Per-output comparison in ``ref``'s order.

    Raises:
        ConvpipeError: an output of ``ref`` is missing from ``ours`` or has another shape.
    """
    checks = []
    for name, r in ref.items():
        if name not in ours:
            raise ConvpipeError(f"output {name!r} is missing from the artifact's outputs {sorted(ours)}")
        o = ours[name]
        if o.shape != r.shape:
            raise ConvpipeError(f"output {name!r}: artifact gives shape {list(o.shape)}, onnxruntime {list(r.shape)}")
        o64, r64 = o.astype(np.float64), r.astype(np.float64)
        diff = np.abs(o64 - r64)
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(r64).max()) if r64.size else 0.0
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
        ok = bool(np.all(diff <= atol + rtol * np.abs(r64))) and bool(np.all(np.isfinite(o64) == np.isfinite(r64)))
        checks.append(OutputCheck(name, tuple(o.shape), max_abs, max_rel, ok))
    return checks
