"""The cross-target corpus slice (issue 10, ``scripts/corpus_targets.py``): the ``targets`` slice names listed
models, the op classifier finds the classes the slice claims on a small hand-built graph, and the committed report
(``docs/corpus/targets.json``) has one entry per slice model and covers every claimed class. Cheap: no export, no
compile, no board (the run itself is ``scripts/corpus_targets.py``)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
import corpus_targets as ct  # noqa: E402

REPORT = os.path.join(REPO, "docs", "corpus", "targets.json")


def corpus_list() -> dict:
    with open(os.path.join(REPO, "scripts", "corpus.json")) as f:
        return json.load(f)


def test_slice_names_at_least_30_listed_models():
    data = corpus_list()
    sl = data["slices"][ct.SLICE]
    assert len(sl) >= 30 and len(sl) == len(set(sl))
    assert set(sl) <= {m["spec"] for m in data["models"]}


def _graph(path):
    """A small graph with one node of most classes: depthwise / grouped+dilated / 1x1 / 5x5 strided convs, a conv
    whose weight is computed, SiLU, an SE block (GlobalAveragePool -> 1x1 conv -> HardSigmoid -> Mul), hard-swish as
    x * HardSigmoid(x), residual Add, channel shuffle, channel Concat/Split/Slice, pools, Resize, LayerNorm, GELU."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def w(name, *shape):
        inits.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
        return name

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def n(op, ins, out, **kw):
        nodes.append(helper.make_node(op, ins, [out], **kw))
        return out

    x = "x"
    a = n("Conv", [x, w("wd", 8, 1, 3, 3)], "a", group=8, pads=[1, 1, 1, 1])  # depthwise 3x3
    b = n("Conv", [a, w("wg", 8, 4, 3, 3)], "b", group=2, dilations=[2, 2], pads=[2, 2, 2, 2])  # grouped, dilated
    s = n("Sigmoid", [b], "s")
    c = n("Mul", [b, s], "c")  # SiLU
    gp = n("GlobalAveragePool", [c], "gp")
    g1 = n("Conv", [gp, w("w1", 8, 8, 1, 1)], "g1")
    hs = n("HardSigmoid", [g1], "hs")
    se = n("Mul", [c, hs], "se")  # SE block
    h2 = n("HardSigmoid", [se], "h2")
    hw = n("Mul", [se, h2], "hw")  # hard-swish
    ws = n("Mul", [w("wraw", 8, 8, 1, 1), const("two", np.float32(2.0))], "ws")
    wc = n("Conv", [hw, ws], "wc")  # computed weight: a subgraph of constants (NF-ResNet's weight standardisation)
    r = n("Add", [wc, x], "r")  # residual
    r5 = n("Reshape", [r, const("s5", np.array([1, 2, 4, 8, 8], np.int64))], "r5")
    t5 = n("Transpose", [r5], "t5", perm=[0, 2, 1, 3, 4])
    sh = n("Reshape", [t5, const("s4", np.array([1, 8, 8, 8], np.int64))], "sh")  # channel shuffle
    n("Split", [sh, const("sp", np.array([4, 4], np.int64))], "p0", axis=1)
    nodes[-1].output.append("p1")
    cat = n("Concat", ["p1", "p0"], "cat", axis=1)
    mp = n("MaxPool", [cat], "mp", kernel_shape=[2, 2], strides=[2, 2])
    ap = n("AveragePool", [mp], "ap", kernel_shape=[2, 2], strides=[2, 2])
    rs = n("Resize", [ap, "", const("sc", np.array([1, 1, 4, 4], np.float32))], "rs", mode="linear")
    c5 = n("Conv", [rs, w("w5", 8, 8, 5, 5)], "c5", strides=[2, 2], pads=[2, 2, 2, 2])
    nh = n("Transpose", [c5], "nh", perm=[0, 2, 3, 1])
    ln = n("LayerNormalization", [nh, w("lg", 8), w("lb", 8)], "ln", axis=-1)
    e = n("Erf", [ln], "e")
    mm = n("MatMul", [e, w("wm", 8, 8)], "y")
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
                          [helper.make_tensor_value_info(mm, TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)


def test_op_classes_on_a_hand_built_graph(tmp_path):
    path = str(tmp_path / "g.onnx")
    _graph(path)
    got = ct.op_classes(path)
    want = {"conv depthwise": 1, "conv grouped": 1, "conv dilated": 1, "conv 1x1": 2, "conv 3x3": 2, "conv 5x5+": 1,
            "conv strided": 1, "silu": 1, "SE block": 1, "hardswish": 1, "residual add": 1, "channel shuffle": 1,
            "split (channels)": 1, "concat (channels)": 1, "maxpool": 1, "avgpool": 1, "global avgpool": 1,
            "resize (linear)": 1, "layernorm": 1, "gelu (erf)": 1, "matmul": 1, "transpose nchw<->nhwc": 1,
            "conv computed weights": 1, "elementwise with constant": 1}
    assert {k: got.get(k) for k in want} == want, got


def test_op_classes_sees_a_weight_computed_from_the_input(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Relu", ["w"], ["wr"]), helper.make_node("Conv", ["x", "wr"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 2, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "w.onnx"))
    assert ct.op_classes(str(tmp_path / "w.onnx"))["conv computed weights"] == 1


def test_committed_report_has_the_slice_and_covers_the_claimed_classes():
    with open(REPORT) as f:
        report = json.load(f)
    sl = corpus_list()["slices"][report["slice"]]
    assert [r["spec"] for r in report["results"]] == [s for s in sl if s in {r["spec"] for r in report["results"]}]
    assert {r["spec"] for r in report["results"]} == set(sl), "the report covers the whole slice"
    covered = set().union(*(r["op_classes"] for r in report["results"]))
    assert ct.CLAIMED_CLASSES <= covered, sorted(ct.CLAIMED_CLASSES - covered)
    assert report["summary"] == ct.summarize(report["results"])
    with open(os.path.join(REPO, "docs", "corpus", "targets.md")) as f:
        assert report["summary"] in f.read()


def test_committed_report_is_all_green():
    """Issue 10's done criterion, as recorded: every slice model compiles for CUDA sm_80 and sm_90 (nvcc cubin of the
    requested arch) and for ARM, and matches onnxruntime on the emulated board."""
    with open(REPORT) as f:
        report = json.load(f)
    bad = [(r["spec"], t, (r.get(t) or {}).get("status"), (r.get(t) or {}).get("error"))
           for r in report["results"] for t in ct.TARGETS if (r.get(t) or {}).get("status") not in ("ok", "pass")]
    assert not bad, bad
    assert all(r["arm"]["max_rel"] <= ct.RTOL + ct.ATOL for r in report["results"])  # normwise, loosely re-checked
