"""Issue 10, "never crash on a graph we can run correctly": where the blocked NCHW[x]c layout cannot be carried into
an op, that op's input goes back to NCHW (``compiler/layout.py``: a pre-analysis, then a safety net that bisects
for the op at fault, then NCHW for the whole model); where an epilogue consumer cannot be inlined into its conv
kernel, it stays a kernel of its own (``schedules/epilogue.py``). Every fallback is in the manifest's
``fallbacks`` list and in ``convpipe inspect``.

Each graph below is a minimal reproduction of one error class that the default build raised before the fix
(the failure it gave is in the test's docstring). Every test compiles with the default flags, checks the output
against onnxruntime (``max|ours - ort| <= 1e-4 * max|ort| + 1e-5``) and checks the recorded fallback."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import cli
from convpipe.compiler.build import compile_model
from convpipe.compiler.verify import compare, run_onnxruntime
from convpipe.runtime import load, read_manifest
from convpipe.runtime.artifact import manifest_problems

X_SHAPE = (1, 16, 8, 8)


def _conv(name: str, src: str, c_in: int, c_out: int, rng, k: int = 3) -> tuple[list, list]:
    w = numpy_helper.from_array((rng.standard_normal((c_out, c_in, k, k)) * 0.2).astype("float32"), f"{name}_w")
    b = numpy_helper.from_array((rng.standard_normal(c_out) * 0.2).astype("float32"), f"{name}_b")
    pad = k // 2
    return [helper.make_node("Conv", [src, f"{name}_w", f"{name}_b"], [name], pads=[pad] * 4)], [w, b]


def _const(name: str, value, dtype: str = "float32"):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def _save(path, nodes, inits, out: str, opset: int = 13) -> str:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(X_SHAPE))],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    model = onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def conv_transpose(path):
    """conv (16 -> 16) -> ConvTranspose (stride 2, DBNet-style upsampling head) -> conv."""
    rng = np.random.default_rng(0)
    n0, i0 = _conv("c0", "x", 16, 16, rng)
    n1, i1 = _conv("c1", "up", 16, 16, rng)
    ct = numpy_helper.from_array((rng.standard_normal((16, 16, 2, 2)) * 0.2).astype("float32"), "ct_w")
    nodes = n0 + [helper.make_node("ConvTranspose", ["c0", "ct_w"], ["up"], strides=[2, 2], kernel_shape=[2, 2])] + n1
    return _save(path, nodes, i0 + i1 + [ct], "c1")


def _channel_split(path, seed: int, sizes: list[int], branch: int, cat: list[str]) -> str:
    """conv ``c0`` (16 -> 32) -> Split(``sizes``, axis=1) into ``s0``, ``s1`` -> conv ``c1`` (-> 16) on part
    ``branch`` -> Concat of ``cat`` (names among ``s0``, ``s1``, ``c1``) -> conv ``c2`` (-> 16)."""
    rng = np.random.default_rng(seed)
    width = {"s0": sizes[0], "s1": sizes[1], "c1": 16}
    n0, i0 = _conv("c0", "x", 16, 32, rng)
    n1, i1 = _conv("c1", f"s{branch}", sizes[branch], 16, rng)
    n2, i2 = _conv("c2", "cat", sum(width[n] for n in cat), 16, rng)
    nodes = (n0 + [helper.make_node("Split", ["c0", "sp"], ["s0", "s1"], axis=1)] + n1
             + [helper.make_node("Concat", cat, ["cat"], axis=1)] + n2)
    return _save(path, nodes, i0 + i1 + i2 + [_const("sp", sizes, "int64")], "c2")


def uneven_channel_split(path):
    """YOLO-style: conv (16 -> 32) -> Split([8, 24], axis=1) -> conv on the 8 -> Concat with the 24 -> conv."""
    return _channel_split(path, 1, [8, 24], 0, ["c1", "s1"])


def even_channel_split(path):
    """YOLOv8 C2f: conv (16 -> 32) -> Split([16, 16], axis=1) -> conv on one half -> Concat of all three -> conv."""
    return _channel_split(path, 2, [16, 16], 1, ["s0", "s1", "c1"])


def operand_of_other_rank(path):
    """conv -> Add of a 5-D constant [2, 1, 16, 8, 8] (broadcast against the 4-D conv output)."""
    rng = np.random.default_rng(3)
    n0, i0 = _conv("c0", "x", 16, 16, rng)
    k = _const("k", rng.standard_normal((2, 1, 16, 8, 8)))
    return _save(path, n0 + [helper.make_node("Add", ["c0", "k"], ["y"])], i0 + [k], "y")


def elementwise_max(path):
    """Two convs -> Max(a, b) (``torch.maximum``; TVM's ONNX frontend imports it as ``stack`` + ``max``)."""
    rng = np.random.default_rng(8)
    n0, i0 = _conv("c0", "x", 16, 16, rng)
    n1, i1 = _conv("c1", "x", 16, 16, rng)
    return _save(path, n0 + n1 + [helper.make_node("Max", ["c0", "c1"], ["y"])], i0 + i1, "y")


def size_one_constants(path):
    """conv -> Mul by a [1] constant -> Add of a [1, 1, 1, 1] constant -> conv (tf2onnx/Keras-style scalars)."""
    rng = np.random.default_rng(9)
    n0, i0 = _conv("c0", "x", 16, 16, rng)
    n1, i1 = _conv("c1", "a", 16, 16, rng)
    nodes = n0 + [helper.make_node("Mul", ["c0", "k1"], ["m"]), helper.make_node("Add", ["m", "k4"], ["a"])] + n1
    return _save(path, nodes, i0 + i1 + [_const("k1", [0.5]), _const("k4", np.full((1, 1, 1, 1), 0.25))], "c1")


def comparison_select(path):
    """conv -> Where(c > 0, c, 0.5 c) (a LeakyReLU written with a comparison: a bool tensor) -> conv."""
    rng = np.random.default_rng(4)
    n0, i0 = _conv("c0", "x", 16, 16, rng)
    n1, i1 = _conv("c1", "m", 16, 16, rng)
    nodes = n0 + [helper.make_node("Greater", ["c0", "zero"], ["g"]), helper.make_node("Mul", ["c0", "half"], ["h"]),
                  helper.make_node("Where", ["g", "c0", "h"], ["m"])] + n1
    return _save(path, nodes, i0 + i1 + [_const("zero", 0.0), _const("half", 0.5)], "c1")


def channel_reduction(path):
    """conv -> ReduceSum over the channel axis (keepdims)."""
    rng = np.random.default_rng(5)
    n0, i0 = _conv("c0", "x", 16, 16, rng)
    nodes = n0 + [helper.make_node("ReduceSum", ["c0", "ax"], ["y"], keepdims=1)]
    return _save(path, nodes, i0 + [_const("ax", [1], "int64")], "y")


def spatial_attention(path):
    """CBAM spatial attention: channel max and mean -> Concat (2 channels) -> conv (2 -> 1) -> Sigmoid -> Mul."""
    rng = np.random.default_rng(6)
    n0, i0 = _conv("c0", "x", 16, 16, rng)
    n1, i1 = _conv("c1", "cat", 2, 1, rng)
    nodes = (n0 + [helper.make_node("ReduceMax", ["c0"], ["mx"], axes=[1], keepdims=1),
                   helper.make_node("ReduceMean", ["c0"], ["mn"], axes=[1], keepdims=1),
                   helper.make_node("Concat", ["mx", "mn"], ["cat"], axis=1)]
             + n1 + [helper.make_node("Sigmoid", ["c1"], ["sg"]), helper.make_node("Mul", ["c0", "sg"], ["y"])])
    return _save(path, nodes, i0 + i1, "y")


def squeeze_excite(path):
    """Squeeze-and-excitation: conv -> GlobalAveragePool -> 1x1 conv -> Sigmoid -> Mul with the conv output -> conv."""
    rng = np.random.default_rng(7)
    n0, i0 = _conv("c0", "x", 16, 16, rng)
    n1, i1 = _conv("se", "gp", 16, 16, rng, k=1)
    n2, i2 = _conv("c1", "m", 16, 16, rng)
    nodes = (n0 + [helper.make_node("GlobalAveragePool", ["c0"], ["gp"])] + n1
             + [helper.make_node("Sigmoid", ["se"], ["sg"]), helper.make_node("Mul", ["c0", "sg"], ["m"])] + n2)
    return _save(path, nodes, i0 + i1 + i2, "c1")


def _matches_onnxruntime(artifact: str, onnx_path: str) -> None:
    x = np.random.default_rng(0).standard_normal(X_SHAPE).astype("float32")
    ours = load(artifact).run([x])
    ref = run_onnxruntime(onnx_path, {"x": x})
    compare(ours, ref, 1e-4, 1e-5)  # shapes and names agree
    for name, r in ref.items():
        err = float(np.abs(ours[name].astype(np.float64) - r).max())
        assert err <= 1e-4 * float(np.abs(r).max()) + 1e-5, (name, err, float(np.abs(r).max()))


def _compile(tmp_path, build, layout: str = "auto", name: str = "a"):
    path = build(tmp_path / f"{build.__name__}.onnx")
    res = compile_model(path, str(tmp_path / f"{name}-{layout}.cpa"), layout=layout)
    _matches_onnxruntime(res.path, path)
    assert not manifest_problems(res.manifest)
    assert read_manifest(res.path)["fallbacks"] == res.manifest["fallbacks"]
    return res


def _layout_fallbacks(res, op: str) -> list[dict]:
    return [f for f in res.manifest["fallbacks"] if f["stage"] == "layout" and op in f["op"]]


# ---- (a) "Layouts must have the same size" ------------------------------------------------------------------------

def test_conv_transpose_after_blocked_conv(tmp_path):
    """Before: ConvertLayout raised ``InternalError: Check failed: (src.ndim() == dst.ndim() && input.ndim() ==
    src.ndim()) is false: Layouts must have the same size`` (TVM's conv2d_transpose layout inference transposes
    its NCHW attrs like the 5-letter blocked layout). Now its input goes back to NCHW there, nowhere else."""
    res = _compile(tmp_path, conv_transpose)
    assert res.manifest["layout"] == "NCHW16c"
    fb = _layout_fallbacks(res, "relax.nn.conv2d_transpose")
    assert len(fb) == 1 and res.manifest["fallbacks"] == fb, res.manifest["fallbacks"]
    assert fb[0]["fallback"].startswith("NCHW input") and "conv2d_transpose" in fb[0]["why"]
    assert all(c["workload"]["out_block"] == 16 for c in res.manifest["conv2d"])  # both convs stay blocked


# ---- (c) Split/Concat: "The channel size of the data should equal ..." -------------------------------------------

def test_uneven_channel_split(tmp_path):
    """Before: ``ValueError: The channel size of the data should equal to the product of input channel size of the
    weight and the number of groups`` (TVM's split layout inference keeps the split indices in channels while the
    blocked axis counts blocks; the conv after it saw 32 channels for 8)."""
    res = _compile(tmp_path, uneven_channel_split)
    assert res.manifest["layout"] != "NCHW"
    fb = _layout_fallbacks(res, "relax.split")
    assert len(fb) == 1 and "split of the channel axis" in fb[0]["why"], res.manifest["fallbacks"]


def test_even_channel_split_stays_blocked(tmp_path):
    """Before: the same ValueError (data channel size 0). Evenly spaced split points are now equal sections, which
    TVM carries through the blocked layout correctly: no fallback at all."""
    res = _compile(tmp_path, even_channel_split)
    assert res.manifest["layout"] == "NCHW16c" and res.manifest["fallbacks"] == []


# ---- (b) binary ops with an operand the blocked layout cannot hold ------------------------------------------------

def test_binary_operand_of_other_rank(tmp_path):
    """Before: ``InternalError: Check failed: axis.size() == 1 (3 vs. 1) : Invalid layout axis 16b`` (TVM's binary
    layout inference gives the 5-D operand the blocked 4-D layout's letters)."""
    res = _compile(tmp_path, operand_of_other_rank)
    fb = _layout_fallbacks(res, "relax.add")
    assert len(fb) == 1 and "[2, 1, 16, 8, 8]" in fb[0]["why"], res.manifest["fallbacks"]


def test_elementwise_max(tmp_path):
    """Before: ``InternalError: Check failed: (res != std::string::npos) is false: Invalid SLayout:can't find S in
    source layoutABCDE`` -- TVM's stack layout inference names the new axis ``S``, which the ``max`` reduction
    after it cannot find; any ConvertLayout run hit it. The stack is now an equivalent concat of expand_dims: no
    fallback needed, the convs stay blocked."""
    res = _compile(tmp_path, elementwise_max)
    assert res.manifest["layout"] == "NCHW16c" and res.manifest["fallbacks"] == [], res.manifest


def test_size_one_constants_stay_blocked(tmp_path):
    """A [1] or [1, 1, 1, 1] constant operand is a 0-d one for ConvertLayout (the same result): carried blocked,
    no fallback (the pre-analysis alone would convert the Mul and Add back to NCHW)."""
    res = _compile(tmp_path, size_one_constants)
    assert res.manifest["layout"] == "NCHW16c" and res.manifest["fallbacks"] == [], res.manifest


def test_spatial_attention(tmp_path):
    """Before: ``ValueError: The channel size of the data should equal ...`` (data channel size 17 for 2): the
    channel max/mean kept a broken blocked layout. Both reductions and the [1, 1, H, W] multiply get NCHW (and
    that multiply, which broadcasts the attention conv's output, stays out of its epilogue: see (d))."""
    res = _compile(tmp_path, spatial_attention)
    ops = [f["op"].split()[0] for f in res.manifest["fallbacks"] if f["stage"] == "layout"]
    assert sorted(ops) == ["relax.max", "relax.mean", "relax.multiply"], res.manifest["fallbacks"]


# ---- blocked bool tensors and channel reductions (found while reproducing) -----------------------------------------

def test_comparison_and_select(tmp_path):
    """Before: ``ScheduleError: ... transform_layout ... Buffer te_layout_transform has elements of type T.bool, but
    the transformation fills padding with ... float32`` (the comparison's bool output was carried blocked)."""
    res = _compile(tmp_path, comparison_select)
    fb = _layout_fallbacks(res, "relax.greater")
    assert len(fb) == 1 and "bool" in fb[0]["why"], res.manifest["fallbacks"]


def test_channel_reduction(tmp_path):
    """Before: ``InternalError: Check failed: (padded_iter_map->errors.empty()) is false: Could not parse mapping as
    sum of iterators`` while legalising the layout_transform of a sum over the blocked channel axis."""
    res = _compile(tmp_path, channel_reduction)
    fb = _layout_fallbacks(res, "relax.sum")
    assert len(fb) == 1 and "channel axis" in fb[0]["why"], res.manifest["fallbacks"]


# ---- (d) epilogue inline: "Cannot dispatch a null expression" ------------------------------------------------------

@pytest.mark.parametrize("layout", ["nchw", "auto"])
def test_squeeze_excite_epilogue(tmp_path, layout):
    """Before (both layouts): ``InternalError: Check failed: (node.defined()) is false: Cannot dispatch a null
    expression`` from ``reverse_compute_inline`` in ``fuse_epilogue``: the SE 1x1 conv's epilogue chain reaches
    the Mul that broadcasts its [N, C, 1, 1] output over the first conv's [N, C, H, W]. That consumer is now a
    kernel of its own, recorded as an epilogue fallback that says why (it broadcasts: no epilogue of this conv),
    found before TVM is asked (no internal error in the record)."""
    res = _compile(tmp_path, squeeze_excite, layout)
    epi = [f for f in res.manifest["fallbacks"] if f["stage"] == "epilogue"]
    assert len(epi) == 1 and "multiply" in epi[0]["op"] and "broadcasts the conv output" in epi[0]["why"], res.manifest
    assert "null expression" not in epi[0]["why"]


def test_squeeze_excite_epilogue_cuda(tmp_path):
    """The same on CUDA (sm_90, built without a GPU): before, ``InternalError: ... Cannot dispatch a null
    expression`` from the CUDA epilogue rule's inline; now the Mul is a bound kernel of its own (compile only
    here: this machine has no GPU)."""
    path = squeeze_excite(tmp_path / "se.onnx")
    res = compile_model(path, str(tmp_path / "se-cuda.cpa"), "cuda", arch="sm_90")
    epi = [f for f in res.manifest["fallbacks"] if f["stage"] == "epilogue"]
    assert len(epi) == 1 and "multiply" in epi[0]["op"], res.manifest["fallbacks"]
    assert not manifest_problems(res.manifest)


# ---- the safety net -------------------------------------------------------------------------------------------------

def test_safety_net_finds_the_op_at_fault(tmp_path, monkeypatch):
    """With the pre-analysis blinded (it trusts every op), ConvertLayout fails; the safety net bisects over the ops
    that receive a blocked tensor, converts the one at fault back to NCHW, and records TVM's message."""
    from convpipe.compiler import layout

    monkeypatch.setattr(layout, "_carry_problem", lambda *a: None)
    res = _compile(tmp_path, conv_transpose)
    fb = _layout_fallbacks(res, "relax.nn.conv2d_transpose")
    assert len(fb) == 1 and res.manifest["layout"] == "NCHW16c", res.manifest["fallbacks"]
    assert "Layouts must have the same size" in fb[0]["why"]


@pytest.mark.parametrize("build", [uneven_channel_split, operand_of_other_rank, comparison_select, channel_reduction,
                                   spatial_attention])
def test_safety_net_alone_keeps_every_reproduction_correct(tmp_path, monkeypatch, build):
    """Without the pre-analysis, the safety net alone (bisection, then whole-model NCHW, also after a failure past
    ConvertLayout) still compiles each reproduction correctly and records at least one layout fallback."""
    from convpipe.compiler import layout

    monkeypatch.setattr(layout, "_carry_problem", lambda *a: None)
    res = _compile(tmp_path, build)
    assert [f for f in res.manifest["fallbacks"] if f["stage"] == "layout"], res.manifest["fallbacks"]


def test_later_failure_rebuilds_the_model_in_nchw(tmp_path, monkeypatch):
    """A TVM error after ConvertLayout in the blocked build (here injected into conv lowering) rebuilds the whole
    model in NCHW and says so; a ConvpipeError (a user-facing problem) is not retried."""
    from convpipe.compiler import build

    real = build.lower_conv2d

    def failing(mod, target, *args):
        if "NCHW16c" in mod.script(show_meta=False):
            raise RuntimeError("InternalError: injected failure of the blocked build")
        return real(mod, target, *args)

    monkeypatch.setattr(build, "lower_conv2d", failing)
    res = _compile(tmp_path, even_channel_split)
    assert res.manifest["layout"] == "NCHW"
    assert res.manifest["fallbacks"] == [{
        "stage": "layout", "op": "model", "fallback": "NCHW for the whole model",
        "why": "the NCHW16c build failed after ConvertLayout: RuntimeError: InternalError: injected failure of the "
               "blocked build"}]


# ---- the record ---------------------------------------------------------------------------------------------------

def test_manifest_schema_and_inspect(tmp_path):
    res = _compile(tmp_path, conv_transpose)
    m = json.loads(json.dumps(res.manifest))
    p = cli("inspect", res.path)
    assert "fallbacks (1)" in p.stdout and "[layout] relax.nn.conv2d_transpose" in p.stdout, p.stdout
    bad = dict(m, fallbacks=[{"stage": "tuning", "op": "", "fallback": "x"}])
    problems = manifest_problems(bad)
    assert any(s.startswith("fallbacks[0].stage: expected one of") for s in problems), problems
    assert "fallbacks[0].op: expected a non-empty string, got ''" in problems and "fallbacks[0].why: missing" in problems
    assert manifest_problems(dict(m, fallbacks="none")) == ["fallbacks: expected a list, got str"]
    older = {k: v for k, v in m.items() if k != "fallbacks"}
    assert manifest_problems(older) == []  # optional: artifacts made before it still read


@pytest.mark.parametrize("build", [conv_transpose, uneven_channel_split, even_channel_split, operand_of_other_rank,
                                   elementwise_max, comparison_select, channel_reduction, spatial_attention,
                                   squeeze_excite])
def test_what_compiles_in_nchw_compiles_by_default(tmp_path, build):
    """The promise of issue 10 for every reproduction here: NCHW compiles, so the default does, both correct."""
    _compile(tmp_path, build, "nchw", "n")
    _compile(tmp_path, build, "auto", "d")
