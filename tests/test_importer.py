"""ONNX import: Conv ``auto_pad`` semantics, asymmetric pads, input-shape pinning and the errors for bad models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from convpipe.compiler.build import compile_model
from convpipe.compiler.importer import import_onnx, parse_input_shapes
from convpipe.compiler.verify import compare, run_onnxruntime
from convpipe.errors import ConvpipeError
from convpipe.runtime import load


def conv_model(path, x_shape, w_shape, dyn_batch=False, **attrs):
    w = np.random.default_rng(0).standard_normal(w_shape).astype("float32")
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    xs = ["N"] + list(x_shape[1:]) if dyn_batch else list(x_shape)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, xs)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["on", "ok", "oh", "ow"])], [numpy_helper.from_array(w, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path)
    return path


@pytest.mark.parametrize(
    "attrs",
    [
        {"auto_pad": "SAME_UPPER", "strides": [2, 2], "kernel_shape": [3, 3]},
        {"auto_pad": "SAME_LOWER", "strides": [2, 1], "kernel_shape": [4, 2]},
        {"auto_pad": "SAME_UPPER", "kernel_shape": [2, 2]},
        {"auto_pad": "VALID", "strides": [1, 2], "kernel_shape": [3, 3]},
        {"pads": [0, 1, 2, 0], "kernel_shape": [3, 3]},
        {"pads": [1, 2, 1, 2], "dilations": [2, 1], "group": 2, "kernel_shape": [3, 3]},
    ],
    ids=["same_upper_s2", "same_lower_even", "same_upper_2x2", "valid", "asym_pads", "dilated_grouped"],
)
def test_onnx_conv_semantics(tmp_path, attrs):
    w_shape = (6, 4 // attrs.get("group", 1), *attrs["kernel_shape"])
    path = conv_model(str(tmp_path / "c.onnx"), (1, 4, 11, 10), w_shape, **attrs)
    compile_model(path, str(tmp_path / "a"))
    x = np.random.default_rng(1).standard_normal((1, 4, 11, 10)).astype("float32")
    ours = load(str(tmp_path / "a")).run({"x": x})
    assert all(c.ok for c in compare(ours, run_onnxruntime(path, {"x": x}), 1e-4, 1e-5))


def test_dynamic_dim_must_be_pinned(tmp_path):
    path = conv_model(str(tmp_path / "d.onnx"), (1, 3, 8, 8), (4, 3, 3, 3), dyn_batch=True, kernel_shape=[3, 3])
    with pytest.raises(ConvpipeError, match=r"input 'x' axis 0 is dynamic \('N'\).*--input-shape"):
        import_onnx(path)
    imp = import_onnx(path, parse_input_shapes(["x=2,3,8,8"]))
    assert imp.inputs[0].shape == (2, 3, 8, 8)


def test_input_shape_errors(tmp_path):
    path = conv_model(str(tmp_path / "d.onnx"), (1, 3, 8, 8), (4, 3, 3, 3), kernel_shape=[3, 3])
    with pytest.raises(ConvpipeError, match="'nope', which is not a graph input"):
        import_onnx(path, {"nope": (1, 3, 8, 8)})
    with pytest.raises(ConvpipeError, match="rank 4"):
        import_onnx(path, {"x": (1, 3, 8)})
    with pytest.raises(ConvpipeError, match="axis 1 is static 3"):
        import_onnx(path, {"x": (1, 4, 8, 8)})
    with pytest.raises(ConvpipeError, match="bad shape"):
        parse_input_shapes(["x=1,a,3"])


def test_bad_files(tmp_path):
    with pytest.raises(ConvpipeError, match="no such file"):
        import_onnx(str(tmp_path / "missing.onnx"))
    good = conv_model(str(tmp_path / "g.onnx"), (1, 3, 8, 8), (4, 3, 3, 3), kernel_shape=[3, 3])
    data = open(good, "rb").read()
    trunc = tmp_path / "t.onnx"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConvpipeError, match="not a valid ONNX model"):
        import_onnx(str(trunc))
    junk = tmp_path / "j.onnx"
    junk.write_bytes(b"\x00garbage\xff" * 10)
    with pytest.raises(ConvpipeError, match="not a valid ONNX model"):
        import_onnx(str(junk))


def test_unsupported_op_names_op_and_node(tmp_path):
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3])
    graph = helper.make_graph([helper.make_node("Det", ["x"], ["y"], name="my_det")], "g", [x], [y])
    path = str(tmp_path / "u.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path)
    with pytest.raises(ConvpipeError, match=r"node 'my_det' uses op 'Det'"):
        import_onnx(path)
