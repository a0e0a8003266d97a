"""ONNX's node conformance tests through convpipe's ONNX backend (issue 10): a fixed fast slice in CI (the full
in-scope set is ``scripts/node_tests.py``, whose report is docs/corpus/node_tests.md)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))

import node_tests  # noqa: E402

#: CNN ops whose every conformance case runs in CI.
CI_OPS = ("Conv", "Relu", "Softmax", "MaxPool", "GlobalAveragePool", "Concat", "Flatten")


def _cases():
    import warnings

    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    return [c for c in cases if {n.op_type for n in c.model.graph.node} <= node_tests.IN_SCOPE
            and {n.op_type for n in c.model.graph.node} & set(CI_OPS)]


#: Cases of :data:`CI_OPS` that fail today, with why (docs/corpus/node_tests.md lists every failing case).
KNOWN_FAILURES = {
    "test_maxpool_with_argmax_2d_precomputed_pads": "TVM's ONNX frontend has no MaxPool Indices output",
    "test_maxpool_with_argmax_2d_precomputed_strides": "TVM's ONNX frontend has no MaxPool Indices output",
}


def _param(case):
    marks = [pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[case.name])] if case.name in KNOWN_FAILURES else []
    return pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in _cases()])
def test_node_case(case):
    rec = node_tests.run_case(case, timeout=300)
    assert rec["status"] == "pass", rec


def test_backend_bakes_parameters_and_keeps_activations():
    import numpy as np
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 3])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 1, 1, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 3, 3])
    model = helper.make_model(helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g", [x, w], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    baked, feed = node_tests.bake_constants(model, [np.ones((1, 1, 3, 3), "float32"), np.full((1, 1, 1, 1), 2, "float32")])
    assert [i.name for i in baked.graph.input] == ["x"] and [t.name for t in baked.graph.initializer] == ["w"]
    assert len(feed) == 1
    from convpipe.compiler.onnx_backend import ConvpipeBackend

    (out,) = ConvpipeBackend.run_model(baked, feed)
    np.testing.assert_array_equal(out, np.full((1, 1, 3, 3), 2, "float32"))
