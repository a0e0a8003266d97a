"""Activations and ConvTranspose shapes compiled exactly (issue 10, ONNX node conformance findings).

- Tanh, Softplus, Mish, Elu, Selu and Celu match a float64 NumPy reference to ~1e-6 *per element*, including
  arguments near 0 where TVM's own lowerings cancel (tanh(-1e-8) came out 0, softplus(-16.6) 1.9x too large,
  elu(-8.8e-5) 6.8e-4 off), and keep inf / -inf / NaN semantics (:mod:`convpipe.compiler.convert`).
- Their small-argument branches select arithmetically: a conv -> Mish -> conv -> Tanh ... network keeps the blocked
  NCHW[x]c layout end to end (no fallback recorded in the manifest); a comparison's bool tensor would not.
- ConvTranspose with ``output_shape`` (odd and negative total padding) and ``auto_pad`` SAME_UPPER / SAME_LOWER
  matches onnxruntime (:func:`convpipe.compiler.importer.make_conv_transpose_pads_explicit`).
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from convpipe.compiler.build import compile_model
from convpipe.runtime import load

SELU_ALPHA, SELU_GAMMA = 1.67326319217681884765625, 1.05070102214813232421875


def _elu64(x, alpha=1.0):
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


#: op -> (ONNX attributes, float64 reference)
ACTIVATIONS = {
    "Tanh": ({}, np.tanh),
    "Softplus": ({}, lambda x: np.logaddexp(0.0, x)),
    "Mish": ({}, lambda x: x * np.tanh(np.logaddexp(0.0, x))),
    "Elu": ({"alpha": 0.7}, lambda x: _elu64(x, 0.7)),
    "Selu": ({}, lambda x: SELU_GAMMA * _elu64(x, SELU_ALPHA)),
    "Celu": ({"alpha": 2.0}, lambda x: np.maximum(x, 0) + np.minimum(0, 2.0 * np.expm1(x / 2.0))),
}


def _activation_model(n: int) -> onnx.ModelProto:
    nodes = [helper.make_node(op, ["x"], [op.lower()], **attrs) for op, (attrs, _) in ACTIVATIONS.items()]
    graph = helper.make_graph(nodes, "acts", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
                              [helper.make_tensor_value_info(op.lower(), TensorProto.FLOAT, [n]) for op in ACTIVATIONS])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


@pytest.fixture(scope="module")
def activations(tmp_path_factory):
    d = tmp_path_factory.mktemp("acts")
    mag = np.logspace(-8, np.log10(80.0), 600)
    x = np.concatenate([-mag, mag, [0.0, -0.0, 0.0625, -0.0625, 0.1, -0.1, 0.0625 + 1e-9, -0.1 - 1e-9]])
    x = x.astype(np.float32)
    special = np.array([np.inf, -np.inf, np.nan, 1e30, -1e30, 100.0, -100.0], np.float32)
    xs = np.concatenate([x, special])
    onnx.save(_activation_model(xs.size), str(d / "acts.onnx"))
    compile_model(str(d / "acts.onnx"), str(d / "acts.cpa"), "x86")
    out = load(str(d / "acts.cpa")).run({"x": xs})
    return x, special, {op: out[op.lower()] for op in ACTIVATIONS}


@pytest.mark.parametrize("op", list(ACTIVATIONS))
def test_activation_exact_per_element(activations, op):
    x, _, outs = activations
    got = outs[op][: x.size].astype(np.float64)
    ref = ACTIVATIONS[op][1](x.astype(np.float64))
    # per element: 2e-6 relative, or an absolute 1e-37 where the reference is below float32's normal range
    err = np.abs(got - ref)
    bad = err > 2e-6 * np.abs(ref) + 1e-37
    assert not bad.any(), f"{op}: {bad.sum()} elements off, worst at x={x[np.argmax(err / (np.abs(ref) + 1e-37))]}"


@pytest.mark.parametrize("op", list(ACTIVATIONS))
def test_activation_special_values(activations, op):
    x, special, outs = activations
    got = outs[op][x.size:]
    with np.errstate(all="ignore"):
        ref = ACTIVATIONS[op][1](special.astype(np.float64)).astype(np.float32)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-37, equal_nan=True, err_msg=f"{op} at {special}")


def test_activations_keep_the_blocked_layout(tmp_path):
    """conv -> Mish -> conv -> Tanh -> conv -> Elu -> Softplus: default flags pick NCHW[x]c and record no fallback,
    and the artifact matches onnxruntime."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n)
             for n, s in (("w1", (16, 8, 3, 3)), ("w2", (16, 16, 3, 3)), ("w3", (16, 16, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Mish", ["c1"], ["a1"]),
             helper.make_node("Conv", ["a1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Tanh", ["c2"], ["a2"]),
             helper.make_node("Conv", ["a2", "w3"], ["c3"]), helper.make_node("Elu", ["c3"], ["a3"]),
             helper.make_node("Softplus", ["a3"], ["y"])]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    path = str(tmp_path / "chain.onnx")
    onnx.save(model, path)
    compile_model(path, str(tmp_path / "chain.cpa"), "x86")
    manifest = json.load(open(tmp_path / "chain.cpa" / "manifest.json"))
    assert manifest["layout"].startswith("NCHW") and manifest["layout"] != "NCHW", manifest["layout"]
    assert manifest.get("fallbacks", []) == []
    x = rng.standard_normal((1, 8, 16, 16)).astype(np.float32)
    ours = load(str(tmp_path / "chain.cpa")).run({"x": x})["y"]
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max() + 1e-5


#: ConvTranspose attribute sets: output_shape with odd (1) and negative (-1) total padding, SAME_* with and
#: without output_shape, a kernel smaller than the stride (negative SAME total), dilation.
CONV_T = {
    "output_shape_negative_total": dict(strides=[3, 2], output_shape=[10, 8]),
    "output_shape_odd_total": dict(strides=[3, 2], output_shape=[8, 6]),
    "same_upper": dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    "same_lower": dict(strides=[2, 2], auto_pad="SAME_LOWER"),
    "same_upper_output_shape": dict(strides=[3, 2], auto_pad="SAME_UPPER", output_shape=[8, 6]),
    "same_lower_output_shape": dict(strides=[3, 2], auto_pad="SAME_LOWER", output_shape=[8, 6]),
    "same_kernel_below_stride": dict(strides=[3, 3], auto_pad="SAME_UPPER", kernel_shape=[2, 2]),
    "output_padding_and_shape": dict(strides=[2, 2], output_padding=[1, 0], output_shape=[8, 6]),
    "dilated_output_shape": dict(strides=[2, 2], dilations=[2, 1], output_shape=[9, 7]),
}


@pytest.mark.parametrize("case", list(CONV_T))
def test_conv_transpose_shapes_match_onnxruntime(case, tmp_path):
    import onnxruntime as ort

    attrs = dict(CONV_T[case])
    k = attrs.get("kernel_shape", [3, 3])
    rng = np.random.default_rng(1)
    w = rng.standard_normal((1, 2, *k)).astype(np.float32)
    b = rng.standard_normal(2).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)
    graph = helper.make_graph([node], "ct", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = str(tmp_path / "ct.onnx")
    onnx.save(model, path)
    x = rng.standard_normal((1, 1, 3, 3)).astype(np.float32)
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, list(ref.shape)))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    compile_model(path, str(tmp_path / "ct.cpa"), "x86")
    ours = load(os.path.join(tmp_path, "ct.cpa")).run({"x": x})["y"]
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_conv_transpose_output_shape_of_wrong_length_is_refused(tmp_path):
    from convpipe.errors import ConvpipeError

    w = np.ones((1, 2, 3, 3), np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up1", strides=[2, 2], output_shape=[1, 2, 6, 7])
    graph = helper.make_graph([node], "ct", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 7])],
                              [numpy_helper.from_array(w, "w")])
    path = str(tmp_path / "ct.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    with pytest.raises(ConvpipeError,
                       match=r"ct\.onnx: ONNX shape inference failed: .*node name: up1.*output_shape has incorrect size"):
        compile_model(path, str(tmp_path / "ct.cpa"), "x86")
    assert not os.path.exists(tmp_path / "ct.cpa")
