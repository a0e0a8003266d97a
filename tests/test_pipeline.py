"""The Relax pipeline around our conv2d kernels: an ONNX BatchNormalization that the exporter could not fold into a
conv (one after a ReLU) is decomposed into element-wise ops before lowering and fused into the preceding
conv's epilogue, on x86 and CUDA, and the compiled model still matches onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm

from convpipe.compiler.build import compile_model, prepare
from convpipe.compiler.export import export_onnx
from convpipe.compiler.importer import import_onnx
from convpipe.compiler.lower import lower_conv2d
from convpipe.compiler.verify import compare, run_onnxruntime
from convpipe.runtime import load
from convpipe.schedules import resolve_target


@pytest.fixture(scope="module")
def bn_after_relu(tmp_path_factory):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.BatchNorm2d(16),
        torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
    ).eval()
    bn = net[2]
    with torch.no_grad():  # non-trivial statistics, or the test could pass with BN dropped
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.25, 4)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    path = str(tmp_path_factory.mktemp("bn") / "bn.onnx")
    export_onnx(net, (1, 3, 20, 20), path)
    import onnx

    assert "BatchNormalization" in [n.op_type for n in onnx.load(path).graph.node]
    return path


def _ops(mod) -> str:
    return mod["main"].script()


def test_batchnorm_decomposed_before_lowering(bn_after_relu):
    mod, _ = prepare(import_onnx(bn_after_relu), resolve_target("x86"), "nchw")
    text = _ops(mod)
    assert "R.nn.batch_norm" not in text and "R.multiply" in text


@pytest.mark.parametrize("layout", ["auto", "nchw"])
def test_batchnorm_after_relu_matches_onnxruntime(bn_after_relu, tmp_path, layout):
    art = str(tmp_path / "bn.cpa")
    compile_model(bn_after_relu, art, "x86", layout=layout)
    x = np.random.default_rng(0).standard_normal((1, 3, 20, 20)).astype("float32")
    checks = compare(load(art).run([x]), run_onnxruntime(bn_after_relu, {"input": x}), 1e-4, 1e-5)
    assert all(c.ok for c in checks), checks


@pytest.mark.parametrize("arch", ["x86", "cuda"])
def test_batchnorm_fused_into_conv_epilogue(bn_after_relu, arch):
    """After FuseOps/FuseTIR and our schedule rules, the BatchNorm's ops live in the first conv's function: every
    PrimFunc with element-wise BatchNorm ops is a conv2d function."""
    from convpipe.compiler.pipeline import cuda_schedule_passes

    target = resolve_target("cuda", arch="sm_90") if arch == "cuda" else resolve_target("x86")
    mod, _ = prepare(import_onnx(bn_after_relu), target, "nchw")
    lowered, _ = lower_conv2d(mod, target)
    with target.target:
        if arch == "cuda":
            fused = tvm.transform.Sequential(cuda_schedule_passes(target))(lowered)
        else:
            from tvm.relax.backend.cpu_generic import pipeline as cpu

            fused = tvm.transform.Sequential(cpu.legalize_passes(target.target))(lowered)
    names = [gv.name_hint for gv, f in fused.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    bn_funcs = [n for n in names if "divide" in n or "subtract" in n]
    assert bn_funcs and all("conv2d" in n for n in bn_funcs), names
