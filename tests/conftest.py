"""Shared test helpers: reference convolutions (PyTorch, onnxruntime), building one conv2d kernel alone, and the
hypothesis profiles (``ci`` is the default and deterministic; ``HYPOTHESIS_PROFILE=thorough`` runs more, random
examples)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

#: ``ci`` (the default): the same examples on every run and every machine -- ``derandomize`` seeds the search from
#: the test itself, and ``database=None`` keeps failures saved in a local ``.hypothesis/`` from being replayed, so
#: a checkout runs exactly what a fresh clone runs. A failure prints its example and a ``@reproduce_failure`` blob.
settings.register_profile(
    "ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True,
    derandomize=True, database=None,
)
#: ``thorough``: more examples, randomised (new ones every run), failures saved to and replayed from ``.hypothesis/``
settings.register_profile(
    "thorough", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONVPIPE = os.path.join(os.path.dirname(sys.executable), "convpipe")


def torch_conv(x: np.ndarray, w: np.ndarray, wl) -> np.ndarray:
    """Reference: explicit zero pad (asymmetric allowed) then ``torch.nn.functional.conv2d``, in float64."""
    import torch
    import torch.nn.functional as F

    xt = F.pad(torch.from_numpy(x).double(), (wl.pad_left, wl.pad_right, wl.pad_top, wl.pad_bottom))
    return F.conv2d(
        xt, torch.from_numpy(w).double(), stride=(wl.stride_h, wl.stride_w),
        dilation=(wl.dilation_h, wl.dilation_w), groups=wl.groups,
    ).numpy()


def onnx_conv_model(wl, w: np.ndarray):
    """A one-node ONNX model computing ``wl`` with weight ``w`` (explicit pads), opset 17."""
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node(
        "Conv", ["x", "w"], ["y"],
        strides=[wl.stride_h, wl.stride_w], dilations=[wl.dilation_h, wl.dilation_w], group=wl.groups,
        pads=[wl.pad_top, wl.pad_left, wl.pad_bottom, wl.pad_right], kernel_shape=[wl.kernel_h, wl.kernel_w],
    )
    graph = helper.make_graph(
        [node], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(wl.data_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(wl.out_shape))],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def ort_conv(x: np.ndarray, w: np.ndarray, wl) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_conv_model(wl, w).SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def run_kernel(rule, wl, target, knobs, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Build ``rule``'s kernel for ``wl`` alone, run it on this machine (CPU; GPU 0 for a CUDA target), return the
    NCHW output (NCHW[x]c workloads get ``x`` blocked and their output unblocked):
    :func:`convpipe.compiler.kernel.run_local`."""
    from convpipe.compiler.kernel import run_local

    return run_local(rule, wl, target, knobs, x, w)


def assert_close(got: np.ndarray, ref: np.ndarray, rel: float, what: str = "") -> None:
    """Normwise check: ``max|got - ref| <= rel * max(1, max|ref|)``."""
    err = float(np.abs(got.astype(np.float64) - ref).max()) if got.size else 0.0
    scale = max(1.0, float(np.abs(ref).max()) if ref.size else 0.0)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    assert err <= rel * scale, f"{what}: max abs err {err:.3e} > {rel:g} x {scale:.3g}"


def cli(*args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the installed ``convpipe`` CLI; with ``check``, a non-zero exit fails the test with its output."""
    p = subprocess.run([CONVPIPE, *args], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        pytest.fail(f"convpipe {' '.join(args)} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


@pytest.fixture(scope="session")
def x86():
    from convpipe.schedules import resolve_target

    return resolve_target("x86")


def has_cuda_gpu() -> bool:
    """Whether this process can run CUDA kernels (the GPU tests' skip condition)."""
    from convpipe.runtime.module import cuda_gpu_missing

    return cuda_gpu_missing() is None


def user_error(p: subprocess.CompletedProcess, *fragments: str) -> None:
    """A CLI user error: exit 2, exactly one stderr line starting ``convpipe: error:``, no traceback, naming each
    of ``fragments`` (the offending file, node, input; expected vs got)."""
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convpipe: error: "), p.stderr
    for frag in fragments:
        assert frag in p.stderr, (frag, p.stderr)
