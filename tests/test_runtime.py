"""convpipe.runtime: loading, input checks, integrity and target checks, thread safety, minimal dependencies,
and all-or-nothing artifact writing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from convpipe.compiler.build import compile_model
from convpipe.compiler.export import export_onnx, torch_outputs
from convpipe.errors import ConvpipeError
from convpipe.runtime import load, read_manifest
from test_runtime_hardening import concurrently


class TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return self.b(y), y.mean(dim=(2, 3))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    d = tmp_path_factory.mktemp("rt")
    torch.manual_seed(0)
    model = TwoInputs().eval()
    onnx_path = str(d / "m.onnx")
    export_onnx(model, (1, 3, 10, 12), onnx_path)
    compile_model(onnx_path, str(d / "m.cpa"))
    return str(d / "m.cpa"), onnx_path, model


def fresh_copy(artifact, tmp_path):
    dst = str(tmp_path / "copy.cpa")
    shutil.copytree(artifact, dst)
    return dst


def test_run_by_name_and_position(artifact):
    path, _, model = artifact
    m = load(path)
    assert [i.name for i in m.inputs] == ["input"] and m.inputs[0].shape == (1, 3, 10, 12)
    assert [o.name for o in m.outputs] == ["output0", "output1"]
    x = np.random.default_rng(0).standard_normal((1, 3, 10, 12)).astype("float32")
    a, b = m.run({"input": x}), m.run([x])
    ref = torch_outputs(model, x)
    for name, r in zip(("output0", "output1"), ref):
        np.testing.assert_allclose(a[name], r, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(a[name], b[name])
    assert m.manifest["conv2d"] and all(layer["family"] for layer in m.manifest["conv2d"])


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({}, r"missing input\(s\) \['input'\]"),
        ({"input": None, "extra": None}, r"unexpected input\(s\) \['extra'\]"),
        ({"inp": None}, r"unexpected input\(s\) \['inp'\]"),
        ({"input": np.zeros((1, 3, 10, 11), "float32")}, r"input 'input': expected shape \[1, 3, 10, 12\], got \[1, 3, 10, 11\]"),
        ({"input": np.zeros((1, 3, 10, 12), "float64")}, r"input 'input': expected dtype float32, got float64"),
        ([np.zeros((1, 3, 10, 12), "float32")] * 2, r"got 2 positional input\(s\), the model takes 1"),
        ({"input": [[1.0]]}, r"expected a NumPy array, got list"),
    ],
)
def test_bad_inputs(artifact, inputs, message):
    with pytest.raises(ConvpipeError, match=message):
        load(artifact[0]).run(inputs)


def test_tampered_library(artifact, tmp_path):
    path = fresh_copy(artifact[0], tmp_path)
    with open(os.path.join(path, "model.so"), "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ConvpipeError, match="sha256 .* disagrees with the manifest"):
        load(path)


def _edit_manifest(path, fn):
    mp = os.path.join(path, "manifest.json")
    m = json.load(open(mp))
    fn(m)
    json.dump(m, open(mp, "w"))


def test_wrong_target_or_version(artifact, tmp_path):
    path = fresh_copy(artifact[0], tmp_path)
    _edit_manifest(path, lambda m: m["target"].update(arch="arm", isa="neon"))
    with pytest.raises(ConvpipeError, match="built for aarch64"):
        load(path)
    _edit_manifest(path, lambda m: m["target"].update(arch="x86", isa="avx512", ) or m.update(tvm_version="0.19.0"))
    with pytest.raises(ConvpipeError, match="built with TVM 0.19.0"):
        load(path)


def test_not_an_artifact(tmp_path):
    with pytest.raises(ConvpipeError, match="no such artifact"):
        load(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConvpipeError, match="manifest.json is missing"):
        load(str(tmp_path / "empty"))
    with pytest.raises(ConvpipeError, match="not an artifact"):
        read_manifest(__file__)


def test_time_then_run(artifact):
    """``time`` (TVM time_evaluator) leaves ``run`` usable on the same thread."""
    m = load(artifact[0])
    x = np.ones((1, 3, 10, 12), "float32")
    before = m.run([x])
    times = m.time([x], number=2, repeat=2)
    assert len(times) == 2 and all(t > 0 for t in times)
    np.testing.assert_array_equal(m.run([x])["output0"], before["output0"])


def test_threads_share_one_module(artifact):
    """Eight threads run one Module concurrently (each thread gets its own VirtualMachine); every result equals
    the sequential one."""
    m = load(artifact[0])
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((1, 3, 10, 12)).astype("float32") for _ in range(8)]
    expected = [m.run([x]) for x in xs]
    results = {}

    def worker(i):
        for _ in range(10):
            results[i] = m.run([xs[i]])
            for k in expected[i]:
                np.testing.assert_array_equal(results[i][k], expected[i][k])

    errors = concurrently(worker, 8)
    assert not errors, errors


BLOCKER = r"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "onnx", "onnxruntime", "onnxslim"):
            raise ImportError("blocked for this test: " + name)
sys.meta_path.insert(0, Block())
import numpy as np
import convpipe.runtime as rt
assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "onnxruntime")]
m = rt.load(sys.argv[1])
out = m.run([np.ones((1, 3, 10, 12), "float32")])
print("ran", sorted(out), [m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "onnxruntime")])
"""


def test_runtime_needs_only_tvm_and_numpy(artifact):
    """With torch, onnx and onnxruntime made unimportable, the runtime still loads and runs an artifact."""
    p = subprocess.run([sys.executable, "-c", BLOCKER, artifact[0]], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "ran ['output0', 'output1'] []" in p.stdout


RUNTIME_ONLY = r"""
import sys
import numpy as np
import tvm
assert tvm.base._RUNTIME_ONLY
import convpipe.runtime as rt
m = rt.load(sys.argv[1])
np.savez(sys.argv[2], **m.run([np.linspace(-1, 1, 360, dtype="float32").reshape(1, 3, 10, 12)]))
print("compiler library mapped:", "libtvm_compiler" in open("/proc/self/maps").read())
"""


def test_runtime_only_tvm(artifact, tmp_path):
    """A deployment needs only TVM's runtime: with ``TVM_USE_RUNTIME_LIB=1`` (libtvm_compiler.so never loaded,
    TVM's compiler Python packages unimportable) the artifact runs and gives the same outputs as in full TVM."""
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")
    out = str(tmp_path / "out.npz")
    p = subprocess.run([sys.executable, "-c", RUNTIME_ONLY, artifact[0], out], capture_output=True, text=True,
                       timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    assert "compiler library mapped: False" in p.stdout
    ref = load(artifact[0]).run([np.linspace(-1, 1, 360, dtype="float32").reshape(1, 3, 10, 12)])
    got = np.load(out)
    for name, a in ref.items():
        np.testing.assert_array_equal(got[name], a)


def test_failed_compile_leaves_nothing(artifact, tmp_path):
    from onnx import TensorProto, helper, save

    bad = str(tmp_path / "bad.onnx")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    save(helper.make_model(helper.make_graph([helper.make_node("Det", ["x"], ["y"])], "g", [x], [y]),
                           opset_imports=[helper.make_opsetid("", 17)], ir_version=10), bad)
    dest = tmp_path / "out.cpa"
    with pytest.raises(ConvpipeError):
        compile_model(bad, str(dest))
    assert not dest.exists()
    # an existing artifact survives a failed recompile untouched
    shutil.copytree(artifact[0], dest)
    before = sorted(os.listdir(dest))
    with pytest.raises(ConvpipeError):
        compile_model(bad, str(dest))
    assert sorted(os.listdir(dest)) == before and load(str(dest)).run([np.ones((1, 3, 10, 12), "float32")])
    assert sorted(os.listdir(tmp_path)) == ["bad.onnx", "out.cpa"], "no temporary directories left behind"


def test_failure_while_writing_leaves_nothing(artifact, tmp_path, monkeypatch):
    """A failure after the library is half-written (here: a simulated disk error) leaves no artifact."""
    import convpipe.compiler.build as build

    def broken_export(ex, path, target, *rest):  # build.export_library may take a workspace too
        open(path, "wb").write(b"partial")
        raise OSError("simulated: no space left on device")

    monkeypatch.setattr(build, "export_library", broken_export)
    dest = tmp_path / "out.cpa"
    with pytest.raises(OSError, match="simulated"):
        compile_model(artifact[1], str(dest))
    assert os.listdir(tmp_path) == []


def _graph_model(path, nodes, outputs):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)


@pytest.mark.parametrize("kind", ["identity", "reshape", "twice", "relu"])
def test_outputs_stay_valid_across_runs(kind, tmp_path):
    """A CPU run reuses its input buffers and returns the VM's own output memory (issue 11: per-call overhead);
    an output that is the input, a view of it, or an output listed twice must still come back as memory of its
    own, unchanged by the next run."""
    from onnx import helper

    nodes = {"identity": [helper.make_node("Identity", ["x"], ["y"])],
             "reshape": [helper.make_node("Reshape", ["x", "s"], ["y"])],
             "twice": [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Identity", ["y"], ["z"])],
             "relu": [helper.make_node("Relu", ["x"], ["y"])]}[kind]
    outs = {"identity": [("y", [2, 3])], "reshape": [("y", [3, 2])], "twice": [("y", [2, 3]), ("z", [2, 3])],
            "relu": [("y", [2, 3])]}[kind]
    path = str(tmp_path / "m.onnx")
    if kind == "reshape":
        from onnx import numpy_helper

        nodes.insert(0, helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(np.array([3, 2]))))
    _graph_model(path, nodes, outs)
    compile_model(path, str(tmp_path / "m.cpa"), "x86")
    m = load(str(tmp_path / "m.cpa"))
    x1 = np.arange(6, dtype=np.float32).reshape(2, 3)
    first = m.run([x1])
    kept = {k: v.copy() for k, v in first.items()}
    m.run([x1 * -1 - 7])
    for k in first:
        np.testing.assert_array_equal(first[k], kept[k], err_msg=f"{kind}: output {k} changed by the next run")
    assert not np.shares_memory(first[outs[0][0]], x1)
    if kind == "twice":
        first["y"][0, 0] = 123.0
        assert first["z"][0, 0] != 123.0
