"""Network-wide NCHW[x]c (``compiler/layout.py``): the block choice, where ConvertLayout leaves layout transforms,
the ReLU6/Clip conversion that keeps activations blocked, and end-to-end equality with onnxruntime for every
``--layout``."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from conftest import cli
from convpipe.compiler.build import compile_model, prepare
from convpipe.compiler.export import export_onnx
from convpipe.compiler.importer import import_onnx, to_relax
from convpipe.compiler.conv_calls import conv2d_calls, workload_of
from convpipe.compiler.layout import choose_block
from convpipe.compiler.verify import compare, run_onnxruntime
from convpipe.errors import ConvpipeError
from convpipe.runtime import load
from convpipe.schedules import Conv2dWorkload, resolve_target


class InvertedResidual(torch.nn.Module):
    """MobileNetV2-style: stem conv (3 channels) + BN + ReLU6, 1x1 expand, depthwise 3x3, 1x1 project, residual
    add, a stride-2 depthwise, global pool and a classifier -- every op the blocked path must carry."""

    def __init__(self):
        super().__init__()
        act = torch.nn.ReLU6
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 24, 3, 2, 1, bias=False), torch.nn.BatchNorm2d(24), act())
        self.block = torch.nn.Sequential(
            torch.nn.Conv2d(24, 48, 1), act(), torch.nn.Conv2d(48, 48, 3, 1, 1, groups=48), act(),
            torch.nn.Conv2d(48, 24, 1),
        )
        self.down = torch.nn.Sequential(torch.nn.Conv2d(24, 24, 3, 2, 1, groups=24), torch.nn.ReLU(),
                                        torch.nn.MaxPool2d(2))
        self.head = torch.nn.Linear(24, 10)

    def forward(self, x):
        y = self.stem(x)
        y = y + self.block(y)
        y = self.down(y)
        return self.head(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1))


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    torch.manual_seed(0)
    m = InvertedResidual().eval()
    with torch.no_grad():  # non-trivial BN statistics
        m.stem[1].running_mean.uniform_(-0.5, 0.5)
        m.stem[1].running_var.uniform_(0.5, 2.0)
    path = str(tmp_path_factory.mktemp("layout") / "ir.onnx")
    export_onnx(m, (1, 3, 32, 32), path)
    return path


def _ops(mod) -> list[str]:
    return re.findall(r"= (R\.[\w.]+)\(", mod.script())


def test_choose_block():
    x86 = resolve_target("x86")  # AVX-512 here: 16 lanes
    neon = resolve_target("arm")
    resnet = [Conv2dWorkload(1, 3, 224, 224, 64, 7, 7, 2, 2, 3, 3, 3, 3), Conv2dWorkload(1, 64, 56, 56, 64, 3, 3)]
    mobilenet = resnet + [Conv2dWorkload(1, 24, 56, 56, 144, 1, 1), Conv2dWorkload(1, 144, 56, 56, 144, 3, 3, groups=144)]
    if x86.vector_lanes == 16:
        assert choose_block(resnet, x86) == 16
        assert choose_block(mobilenet, x86) == 8  # 24 and 144 channels: 16 does not divide them
    assert choose_block(resnet, neon) == 4
    assert choose_block([Conv2dWorkload(1, 3, 8, 8, 5, 3, 3)], x86) == 0  # nothing blocks: stay NCHW


def test_blocked_network_has_transforms_only_at_the_edges(small_model):
    target = resolve_target("x86")
    mod, block = prepare(import_onnx(small_model), target)
    assert block in (4, 8)
    layouts = [workload_of(c).layout for c in conv2d_calls(mod)]
    assert layouts[0] == f"NCHW->NCHW{block}c"  # the stem reads the 3-channel input in place
    assert all(lay == f"NCHW{block}c" for lay in layouts[1:]), layouts
    ops = _ops(mod)
    # one transform back to NCHW before the flatten/classifier; nothing converts in between
    assert ops.count("R.layout_transform") == 1, ops
    assert "R.call_tir" not in ops  # ReLU6 became Relax maximum/minimum, which ConvertLayout carries


@pytest.mark.parametrize("layout", ["auto", "nchw", "nchw4c"])
def test_every_layout_matches_onnxruntime(small_model, tmp_path, layout):
    res = compile_model(small_model, str(tmp_path / f"{layout}.cpa"), layout=layout)
    assert res.manifest["fallbacks"] == []  # every op of this network carries the blocked layout (issue 10)
    expect = {"auto": None, "nchw": "NCHW", "nchw4c": "NCHW4c"}[layout]
    if expect:
        assert res.manifest["layout"] == expect
    else:
        assert res.manifest["layout"].startswith("NCHW") and res.manifest["layout"] != "NCHW"
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype("float32")
    checks = compare(load(res.path).run([x]), run_onnxruntime(small_model, {"input": x}), 1e-4, 1e-5)
    assert all(c.ok for c in checks), checks


def _clip_model(path, opset: int, lo, hi, nan_bound: bool = False):
    """Conv (8 -> 16 channels) then Clip in one of its ONNX forms, then another conv."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 8, 1, 1)).astype("float32"), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype("float32") * 0.1, "w2")
    inits, inputs, attrs = [w1, w2], ["c"], {}
    if opset < 11:
        attrs = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None}
    else:
        for name, v in (("lo", lo), ("hi", hi)):
            if v is None:
                inputs.append("")
            else:
                inits.append(numpy_helper.from_array(np.array(np.nan if nan_bound and name == "lo" else v, "float32"), name))
                inputs.append(name)
        while inputs[-1] == "":
            inputs.pop()
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"]),
        helper.make_node("Clip", inputs, ["r"], **attrs),
        helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(nodes, "clip", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 6, 6])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8), path)


@pytest.mark.parametrize("opset,lo,hi", [(13, 0.0, 6.0), (13, None, 1.5), (13, -0.5, None), (6, 0.0, 6.0)])
def test_clip_forms_stay_blocked_and_match(tmp_path, opset, lo, hi):
    path = str(tmp_path / "clip.onnx")
    _clip_model(path, opset, lo, hi)
    ops = _ops(to_relax(import_onnx(path)))
    assert "R.call_tir" not in ops, ops
    mod, block = prepare(import_onnx(path), resolve_target("x86"))
    # the model edges only: the 8-channel input into NCHW[x]c, the output back; nothing around the Clip
    assert block and _ops(mod).count("R.layout_transform") == 2, _ops(mod)
    res = compile_model(path, str(tmp_path / "a.cpa"))
    x = np.random.default_rng(0).standard_normal((1, 8, 6, 6)).astype("float32") * 3
    assert all(c.ok for c in compare(load(res.path).run([x]), run_onnxruntime(path, {"x": x}), 1e-4, 1e-5))


def test_clip_with_nan_bound_keeps_the_default_conversion(tmp_path):
    """ONNX treats a NaN bound as no bound; TVM's own Clip converter handles that, ours steps aside."""
    path = str(tmp_path / "clip.onnx")
    _clip_model(path, 13, 0.0, 6.0, nan_bound=True)
    res = compile_model(path, str(tmp_path / "a.cpa"))
    x = np.random.default_rng(0).standard_normal((1, 8, 6, 6)).astype("float32") * 3
    assert all(c.ok for c in compare(load(res.path).run([x]), run_onnxruntime(path, {"x": x}), 1e-4, 1e-5))


def test_bad_layouts_are_user_errors(small_model, tmp_path):
    p = cli("compile", small_model, "-o", str(tmp_path / "a.cpa"), "--layout", "nhwc", check=False)
    assert p.returncode == 2 and "layout 'nhwc'" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "a.cpa").exists()
    with pytest.raises(ConvpipeError, match="CUDA kernels take NCHW"):
        compile_model(small_model, str(tmp_path / "c.cpa"), "cuda", arch="sm_80", layout="nchw16c")
    from convpipe.schedules import rules_for

    blocked = Conv2dWorkload(1, 16, 8, 8, 16, 3, 3, 1, 1, 1, 1, 1, 1).with_layout(16)
    for rule in rules_for("cuda").values():
        assert "CUDA kernels take NCHW" in rule.unsupported_reason(blocked, resolve_target("cuda", "sm_80"))
    # a block that does not divide a conv's channels leaves that conv's output in NCHW; the result is still right
    res = compile_model(small_model, str(tmp_path / "b.cpa"), layout="nchw16c")
    for c in res.manifest["conv2d"]:
        w = c["workload"]
        assert w["out_block"] == (16 if w["out_channels"] % 16 == 0 else 0), w
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype("float32")
    assert all(c.ok for c in compare(load(res.path).run([x]), run_onnxruntime(small_model, {"input": x}), 1e-4, 1e-5))


def test_bench_compares_layouts_side_by_side(small_model):
    p = cli("bench", small_model, "--layout", "auto,nchw", "--threads", "1", "--rounds", "1")
    assert "convpipe[auto]" in p.stdout and "convpipe[nchw]" in p.stdout and "onnxruntime" in p.stdout, p.stdout
    bad = cli("bench", small_model, "--layout", "auto,nhwc", check=False)
    assert bad.returncode == 2 and "layout 'nhwc'" in bad.stderr, bad.stderr
