"""Exact ONNX Resize / Upsample (issue 10, ``compiler/resize.py``).

A sweep of small Resize models built with ``onnx.helper`` -- modes nearest (every ``nearest_mode``), linear, cubic
(``cubic_coeff_a``, ``exclude_outside``); every ``coordinate_transformation_mode``; up- and downsampling with
non-integer ratios and to an output of length 1; ``antialias``; ``axes``; ``keep_aspect_ratio_policy``;
``tf_crop_and_resize`` with ``roi`` and ``extrapolation_value``; the ``scales`` and ``sizes`` forms; Resize opsets
10/11/13/19, Upsample opsets 7/9; 3-D and 5-D inputs; a Resize between convs in the blocked NCHW[x]c layout --
compiled with :func:`convpipe.compiler.build.compile_model` (x86, default flags) and compared with onnxruntime at
``max|ours - ort| <= 1e-4 * max|ort| + 1e-5`` (the issue's tolerance).

To stay fast, the cases of a group are outputs of one model (one Resize node each on the same input), compiled
once per module (:func:`_compiled`). The planner alone (:func:`convpipe.compiler.resize.plan_resize`, NumPy) is
also checked against onnxruntime on a wider grid, which takes no compile.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from convpipe.compiler import resize as R
from convpipe.compiler.build import compile_model
from convpipe.errors import ConvpipeError
from convpipe.runtime import load

REL, ABS = 1e-4, 1e-5

X_SHAPE = (1, 2, 6, 14)
COORDS = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "tf_half_pixel_for_nn", "align_corners",
          "asymmetric")
NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
#: (form, values over H, W): non-integer up, down, to length 1, mixed, scales down/up, integer 2x, 14 -> 16
TARGETS = {
    "up": ("sizes", (9, 16)), "down": ("sizes", (4, 9)), "one": ("sizes", (1, 1)), "mixed": ("sizes", (13, 5)),
    "sc_mixed": ("scales", (0.6, 2.3)), "sc_down": ("scales", (0.5, 0.45)), "x2": ("scales", (2.0, 2.0)),
}
ROI = (0.2, -0.1, 0.9, 1.3)  # H start, W start, H end, W end (W reaches outside the input: extrapolation)


def _x(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 3, shape)
    x.reshape(-1)[:4] = [20, -20, 80, -80]
    return x.astype("float32")


class Case:
    """One Resize node: ``attrs``; ``target`` ``(form, values)`` over ``axes`` (default: the last two, written
    for all four axes); ``roi`` for tf_crop_and_resize."""

    def __init__(self, cid, group, attrs, target, roi=None, axes_in_attr=None):
        self.cid, self.group, self.attrs, self.target, self.roi = cid, group, attrs, target, roi
        self.axes_in_attr = axes_in_attr

    def node(self, x: str, out: str, inits: list, opset: int):
        form, vals = self.target
        if self.axes_in_attr is None:
            vals = (1, X_SHAPE[1], *vals) if form == "sizes" else (1.0, 1.0, *vals)
        names = [x]
        if opset >= 11:
            if self.roi is not None:
                roi = self.roi if self.axes_in_attr is not None else (0, 0, ROI[0], ROI[1], 1, 1, ROI[2], ROI[3])
                inits.append(numpy_helper.from_array(np.array(roi, "float32"), f"{out}_roi"))
                names.append(f"{out}_roi")
            else:
                names.append("")
        arr = np.array(vals, "float32" if form == "scales" else "int64")
        inits.append(numpy_helper.from_array(arr, f"{out}_{form}"))
        names += ([f"{out}_scales"] if form == "scales" else ["", f"{out}_sizes"]) if opset >= 11 else [f"{out}_scales"]
        attrs = dict(self.attrs)
        if self.axes_in_attr is not None:
            attrs["axes"] = list(self.axes_in_attr)
        return helper.make_node("Resize", names, [out], name=f"resize_{self.cid}", **attrs)


def _cases() -> list[Case]:
    cases = []
    for i, (ctm, nm) in enumerate(itertools.product(COORDS, NEAREST)):
        for t in (("up", "sc_mixed", "one", "down")[i % 4], ("mixed", "x2", "sc_down", "up")[i % 4]):
            cases.append(Case(f"nearest-{ctm}-{nm}-{t}", "nearest",
                              {"mode": "nearest", "coordinate_transformation_mode": ctm, "nearest_mode": nm},
                              TARGETS[t]))
    for nm in NEAREST:
        cases.append(Case(f"nearest-tf_crop_and_resize-{nm}", "nearest",
                          {"mode": "nearest", "coordinate_transformation_mode": "tf_crop_and_resize",
                           "nearest_mode": nm, "extrapolation_value": 7.5}, TARGETS["up"], roi=ROI))
    for ctm in COORDS:
        for t in ("up", "down", "one", "sc_mixed", "sc_down"):
            cases.append(Case(f"linear-{ctm}-{t}", "linear", {"mode": "linear", "coordinate_transformation_mode": ctm},
                              TARGETS[t]))
    for t in ("up", "mixed", "one"):
        cases.append(Case(f"linear-tf_crop_and_resize-{t}", "linear",
                          {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
                           "extrapolation_value": -3.0}, TARGETS[t], roi=ROI))
    for ctm in COORDS:
        for t in ("up", "down", "sc_mixed"):
            cases.append(Case(f"cubic-{ctm}-{t}", "cubic", {"mode": "cubic", "coordinate_transformation_mode": ctm},
                              TARGETS[t]))
    for a, ex, t in itertools.product((-0.5, -0.75), (0, 1), ("mixed", "sc_down")):
        cases.append(Case(f"cubic-A{a}-ex{ex}-{t}", "cubic",
                          {"mode": "cubic", "cubic_coeff_a": a, "exclude_outside": ex}, TARGETS[t]))
    cases.append(Case("cubic-tf_crop_and_resize", "cubic", {"mode": "cubic", "coordinate_transformation_mode":
                                                            "tf_crop_and_resize", "extrapolation_value": 2.0},
                      TARGETS["up"], roi=ROI))
    for mode, ex, t in itertools.product(("linear", "cubic"), (0, 1), ("down", "sc_down", "mixed", "sc_mixed")):
        cases.append(Case(f"antialias-{mode}-ex{ex}-{t}", "antialias",
                          {"mode": mode, "antialias": 1, "exclude_outside": ex}, TARGETS[t]))
    cases.append(Case("antialias-linear-align_corners", "antialias",
                      {"mode": "linear", "antialias": 1, "coordinate_transformation_mode": "align_corners"},
                      TARGETS["down"]))
    for mode, axes, t in [("nearest", (2, 3), ("scales", (2.0, 3.0))), ("nearest", (3, 2), ("sizes", (9, 5))),
                          ("linear", (3,), ("sizes", (20,))), ("linear", (-1, -2), ("scales", (0.5, 1.5))),
                          ("cubic", (2,), ("scales", (1.7,)))]:
        cases.append(Case(f"axes-{mode}-{'_'.join(map(str, axes))}", "axes", {"mode": mode}, t, axes_in_attr=axes))
    for pol, mode in itertools.product(("not_larger", "not_smaller"), ("nearest", "linear")):
        cases.append(Case(f"policy-{pol}-{mode}", "axes", {"mode": mode, "keep_aspect_ratio_policy": pol},
                          ("sizes", (9, 10)), axes_in_attr=(2, 3)))
        if mode == "nearest":  # without axes the policy's scale also applies to N and C (linear refuses that)
            cases.append(Case(f"policy-{pol}-{mode}-noaxes", "axes", {"mode": mode, "keep_aspect_ratio_policy": pol},
                              TARGETS["down"]))
    cases.append(Case("axes-tf_crop_and_resize", "axes", {"mode": "linear", "coordinate_transformation_mode":
                                                          "tf_crop_and_resize", "extrapolation_value": 1.5},
                      ("sizes", (17, 4)), roi=(-0.2, 0.3, 0.8, 1.1), axes_in_attr=(3, 2)))
    return cases


CASES = _cases()
GROUPS = sorted({c.group for c in CASES})


def _group_model(group: str, opset: int = 19):
    inits, nodes = [], []
    cs = [c for c in CASES if c.group == group]
    for i, c in enumerate(cs):
        nodes.append(c.node("x", f"y{i}", inits, opset))
    graph = helper.make_graph(nodes, f"resize_{group}", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                        list(X_SHAPE))],
                              [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(len(cs))],
                              inits)
    return _with_output_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                                 ir_version=9)), cs


def _ort(model, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _compile_run(model, feeds: dict, workdir, name: str, layout: str = "auto") -> dict:
    path = str(workdir / f"{name}.onnx")
    onnx.save(model, path)
    art = str(workdir / f"{name}_{layout}.cpa")
    compile_model(path, art, "x86", layout=layout)
    return load(art).run(feeds)


def _assert_close(ours, ref, what=""):
    ours = np.asarray(ours)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs onnxruntime {ref.shape}"
    if ref.size == 0:
        return
    fin = np.isfinite(ref)
    assert np.array_equal(np.isfinite(ours), fin), f"{what}: non-finite values differ"
    err = np.abs(ours[fin].astype("float64") - ref[fin]).max() if fin.any() else 0.0
    tol = REL * np.abs(ref[fin]).max() + ABS if fin.any() else 0.0
    assert err <= tol, f"{what}: max|ours - ort| = {err:.3g} > {tol:.3g}"


@pytest.fixture(scope="module")
def _compiled(tmp_path_factory):
    """``group -> (outputs by case id, onnxruntime's by case id)`` or the exception compiling the group raised;
    each group compiled once, on first use."""
    cache = {}
    workdir = tmp_path_factory.mktemp("resize")

    def get(group):
        if group not in cache:
            model, cs = _group_model(group)
            x = _x(X_SHAPE)
            refs = _ort(model, {"x": x})
            try:
                ours = _compile_run(model, {"x": x}, workdir, group)
                cache[group] = ({c.cid: ours[f"y{i}"] for i, c in enumerate(cs)},
                                {c.cid: r for c, r in zip(cs, refs)})
            except Exception as e:  # noqa: BLE001 -- reported by every case of the group
                cache[group] = e
        got = cache[group]
        if isinstance(got, Exception):
            raise got
        return got

    return get


@pytest.mark.parametrize("case", CASES, ids=[c.cid for c in CASES])
def test_resize_case(case, _compiled):
    ours, refs = _compiled(case.group)
    _assert_close(ours[case.cid], refs[case.cid], case.cid)


# ------------------------------------------------------------------ the planner alone (NumPy), a wider grid


def _plan_attrs(a: dict) -> R.ResizeAttrs:
    return R.ResizeAttrs(mode=a.get("mode", "nearest"), coord=a.get("coordinate_transformation_mode", "half_pixel"),
                         nearest_mode=a.get("nearest_mode", "round_prefer_floor"),
                         cubic_a=a.get("cubic_coeff_a", -0.75), exclude_outside=bool(a.get("exclude_outside", 0)),
                         extrapolation_value=a.get("extrapolation_value", 0.0), antialias=bool(a.get("antialias", 0)))


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_planner_matches_onnxruntime(mode):
    """:func:`plan_resize` + :func:`reference` (what the converter emits, in NumPy) equal onnxruntime on every
    coordinate mode x nearest mode x antialias x exclude_outside x several shapes/targets, including the float32
    rounding ties of nearest (e.g. 7 -> 16 and 14 -> 16 wide)."""
    rng = np.random.default_rng(1)
    n = 0
    for ctm in R.COORD_MODES:
        for nm in (NEAREST if mode == "nearest" else (None,)):
            for aa in ((0, 1) if mode != "nearest" else (0,)):
                for ex in ((0, 1) if mode == "cubic" or aa else (0,)):
                    for (ih, iw), (form, v) in itertools.product(
                            [(5, 7), (14, 1), (4, 14)],
                            [("sizes", (9, 16)), ("sizes", (1, 1)), ("sizes", (3, 4)), ("scales", (0.6, 2.3)),
                             ("scales", (1.0, 0.5)), ("scales", (3.0, 1.7)), ("sizes", (16, 16))]):
                        a = {"mode": mode, "coordinate_transformation_mode": ctm}
                        if nm:
                            a["nearest_mode"] = nm
                        if aa:
                            a["antialias"] = 1
                        if ex:
                            a["exclude_outside"] = 1
                        roi = None
                        if ctm == "tf_crop_and_resize":
                            roi = [0, 0, 0.2, -0.1, 1, 1, 0.9, 1.3]
                            a["extrapolation_value"] = 7.5
                        x = rng.normal(0, 3, (1, 2, ih, iw)).astype(np.float32)
                        sc = [1, 1, *v] if form == "scales" else None
                        sz = [1, 2, *v] if form == "sizes" else None
                        inits, names = [], ["x"]
                        for nme, arr in (("roi", None if roi is None else np.array(roi, "float32")),
                                         ("scales", None if sc is None else np.array(sc, "float32")),
                                         ("sizes", None if sz is None else np.array(sz, "int64"))):
                            if arr is None:
                                names.append("")
                            else:
                                inits.append(numpy_helper.from_array(arr, nme))
                                names.append(nme)
                        while names[-1] == "":
                            names.pop()
                        g = helper.make_graph([helper.make_node("Resize", names, ["y"], **a)], "g",
                                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
                        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
                        ref = _ort(m, {"x": x})[0]
                        got = R.reference(x, R.plan_resize(_plan_attrs(a), list(x.shape), sc, sz, roi),
                                          a.get("extrapolation_value", 0.0))
                        what = f"{a} {(ih, iw)} {form} {v}"
                        if mode == "nearest":
                            assert got.shape == ref.shape and np.array_equal(got, ref), what
                        else:
                            _assert_close(got, ref, what)
                        n += 1
    assert n >= 100


# ------------------------------------------------------------------ opsets, ranks, Upsample, layouts


def _one_node_model(nodes, x_shape, inits, opset, n_out, out_shapes=None):
    out_shapes = out_shapes or [None] * n_out
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, out_shapes[i])
                               for i in range(n_out)],
                              inits)
    return _with_output_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9))


def _with_output_shapes(model):
    """``model`` with its outputs' shapes filled in by ONNX shape inference (the checker wants them)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for out in model.graph.output:
        if not out.type.tensor_type.HasField("shape") and out.name in known:
            out.type.CopyFrom(known[out.name].type)
    return model


def _f(name, vals, dtype="float32"):
    return numpy_helper.from_array(np.array(vals, dtype), name)


#: The opsets whose op takes ``X, scales``: opset -> (op, [(mode, scales) per node], output shapes).
SCALES_INPUT = {
    9: ("Upsample", [("nearest", [1, 1, 2, 2]), ("linear", [1, 1, 1.5, 2.5]), ("nearest", [1, 1, 1.7, 1.15])],
        [[1, 2, 12, 28], [1, 2, 9, 35], [1, 2, 10, 16]]),
    10: ("Resize", [("nearest", [1, 1, 0.6, 2.3]), ("linear", [1, 1, 0.5, 1.5]), ("nearest", [1, 1, 1.7, 0.4])],
         [[1, 2, 3, 32], [1, 2, 3, 21], [1, 2, 10, 5]]),
}


def _opset_model(opset: int):
    """Nodes valid at ``opset``: Upsample (7: ``scales`` attribute, 9: input), Resize 10 (``X, scales``),
    Resize 11/13 (``X, roi, scales, sizes``)."""
    if opset == 7:
        nodes = [helper.make_node("Upsample", ["x"], ["y0"], mode="nearest", scales=[1.0, 1.0, 2.0, 3.0]),
                 helper.make_node("Upsample", ["x"], ["y1"], mode="linear", scales=[1.0, 1.0, 1.5, 2.5])]
        return _one_node_model(nodes, X_SHAPE, [], 7, 2, [[1, 2, 12, 42], [1, 2, 9, 35]])
    if opset in SCALES_INPUT:
        op, cases, shapes = SCALES_INPUT[opset]
        nodes = [helper.make_node(op, ["x", f"s{i}"], [f"y{i}"], mode=mode) for i, (mode, _) in enumerate(cases)]
        inits = [_f(f"s{i}", scales) for i, (_, scales) in enumerate(cases)]
        return _one_node_model(nodes, X_SHAPE, inits, opset, len(cases), shapes)
    nodes = [helper.make_node("Resize", ["x", "r", "s0"], ["y0"], mode="linear",
                              coordinate_transformation_mode="pytorch_half_pixel"),
             helper.make_node("Resize", ["x", "r", "e", "z1"], ["y1"], mode="nearest",
                              coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
             helper.make_node("Resize", ["x", "r", "s2"], ["y2"], mode="cubic", cubic_coeff_a=-0.5,
                              coordinate_transformation_mode="align_corners")]
    inits = [_f("r", []), _f("e", []), _f("s0", [1, 1, 0.6, 2.3]), _f("z1", [1, 2, 7, 9], "int64"), _f("s2", [1, 1, 1.5, 0.5])]
    return _one_node_model(nodes, X_SHAPE, inits, opset, 3, [[1, 2, 3, 32], [1, 2, 7, 9], [1, 2, 9, 7]])


@pytest.mark.parametrize("opset", [7, 9, 10, 11, 13])
def test_older_opsets_and_upsample(opset, tmp_path):
    model = _opset_model(opset)
    x = _x(X_SHAPE, 2)
    refs = _ort(model, {"x": x})
    ours = _compile_run(model, {"x": x}, tmp_path, f"opset{opset}")
    for i, r in enumerate(refs):
        _assert_close(ours[f"y{i}"], r, f"opset {opset} y{i}")


@pytest.mark.parametrize("shape,mode,scales", [((2, 3, 10), "linear", (1, 1, 0.65)),
                                               ((2, 3, 10), "nearest", (1, 1, 2.35)),
                                               ((1, 2, 3, 4, 5), "linear", (1, 1, 1.7, 0.8, 1.9)),
                                               ((1, 2, 3, 4, 5), "nearest", (1, 1, 2.0, 1.75, 0.35))])
def test_other_ranks(shape, mode, scales, tmp_path):
    node = helper.make_node("Resize", ["x", "", "s"], ["y0"], mode=mode)
    model = _one_node_model([node], shape, [_f("s", scales)], 19, 1)
    x = _x(shape, 3)
    _assert_close(_compile_run(model, {"x": x}, tmp_path, "rank")["y0"], _ort(model, {"x": x})[0], str(shape))


def _conv_resize_conv(mode: str, extra: dict, out_hw):
    """conv 3 -> 16 channels, Resize, conv 16 -> 16: the Resize sits in the blocked layout."""
    rng = np.random.default_rng(5)
    w1 = rng.uniform(-0.5, 0.5, (16, 3, 3, 3)).astype("float32")
    w2 = rng.uniform(-0.5, 0.5, (16, 16, 1, 1)).astype("float32")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["c1", "", "", "z"], ["r"], mode=mode, **extra),
             helper.make_node("Conv", ["r", "w2"], ["y0"])]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), _f("z", [1, 16, *out_hw], "int64")]
    return _one_node_model(nodes, (1, 3, 8, 10), inits, 19, 1)


@pytest.mark.parametrize("layout", ["auto", "nchw8c", "nchw"])
@pytest.mark.parametrize("mode,extra,out_hw", [("nearest", {}, (13, 19)), ("linear", {"antialias": 1}, (5, 7)),
                                               ("cubic", {"coordinate_transformation_mode": "half_pixel_symmetric"},
                                                (13, 19))],
                         ids=["nearest", "linear-antialias", "cubic-hps"])
def test_resize_between_convs(mode, extra, out_hw, layout, tmp_path):
    model = _conv_resize_conv(mode, extra, out_hw)
    x = _x((1, 3, 8, 10), 4)
    _assert_close(_compile_run(model, {"x": x}, tmp_path, "crc", layout)["y0"], _ort(model, {"x": x})[0],
                  f"{mode} {layout}")


# ------------------------------------------------------------------ refusals: never a wrong answer


def test_refuses_non_constant_scales(tmp_path):
    nodes = [helper.make_node("Resize", ["x", "", "s"], ["y0"], mode="linear")]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(X_SHAPE)),
                                           helper.make_tensor_value_info("s", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y0", TensorProto.FLOAT, [1, 2, 12, 28])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    path = str(tmp_path / "m.onnx")
    onnx.save(model, path)
    with pytest.raises(ConvpipeError, match="scales"):
        compile_model(path, str(tmp_path / "m.cpa"), "x86")


def test_refuses_invalid_attribute_combinations():
    with pytest.raises(ValueError, match="exclude_outside"):
        R.plan_resize(R.ResizeAttrs(mode="linear", exclude_outside=True), [1, 1, 4, 4], sizes=[1, 1, 8, 8])
    with pytest.raises(ValueError, match="antialias"):
        R.plan_resize(R.ResizeAttrs(mode="nearest", antialias=True), [1, 1, 4, 4], sizes=[1, 1, 8, 8])


# ------------------------------------------------------------------ the resize2d fast path (whole-number upsampling)

#: (mode, attributes): every configuration :func:`convpipe.compiler.resize.fast_path` hands to TVM's resize2d
FAST = {
    "nearest-asym-floor": ("nearest", {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}),
    "nearest-half-pixel": ("nearest", {}),
    "nearest-pytorch-half-pixel": ("nearest", {"coordinate_transformation_mode": "pytorch_half_pixel"}),
    "linear-half-pixel": ("linear", {}),
    "linear-pytorch-half-pixel": ("linear", {"coordinate_transformation_mode": "pytorch_half_pixel"}),
    "linear-asym": ("linear", {"coordinate_transformation_mode": "asymmetric"}),
    "linear-align-corners": ("linear", {"coordinate_transformation_mode": "align_corners"}),
}
FAST_SHAPES = {"x1": (1, 2, 29, 23), "x2": (1, 3, 1, 5)}


def _fast_model(mode: str, extra: dict):
    nodes, inits, outs = [], [], []
    for name, shape in FAST_SHAPES.items():
        for k in range(2, 9):
            kh, kw = k, (k % 3) + 1  # H and W grow differently (W by 1..3)
            sc = f"s_{name}_{k}"
            inits.append(_f(sc, [1, 1, kh, kw]))
            out = f"y_{name}_{k}"
            nodes.append(helper.make_node("Resize", [name, "", sc], [out], mode=mode, **extra))
            outs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, [shape[0], shape[1], shape[2] * kh,
                                                                                shape[3] * kw]))
    graph = helper.make_graph(nodes, "fast", [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s))
                                              for n, s in FAST_SHAPES.items()], outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


@pytest.mark.parametrize("config", list(FAST))
def test_fast_path_matches_onnxruntime(config, tmp_path):
    mode, extra = FAST[config]
    for shape in FAST_SHAPES.values():  # the planner hands every one of these to resize2d
        at = _plan_attrs({"mode": mode, **extra})
        plan = R.plan_resize(at, list(shape), scales=[1, 1, 3, 2])
        assert R.fast_path(at, list(shape), plan), config
    model = _fast_model(mode, extra)
    feeds = {n: _x(s, i) for i, (n, s) in enumerate(FAST_SHAPES.items())}
    ours = _compile_run(model, feeds, tmp_path, "fast")
    for out, ref in zip([o.name for o in model.graph.output], _ort(model, feeds)):
        if mode == "nearest":  # an exact gather: any wrong pixel is a different input value
            np.testing.assert_array_equal(ours[out], ref, err_msg=f"{config} {out}")
        else:
            _assert_close(ours[out], ref, f"{config} {out}")


def test_fast_path_keeps_the_blocked_layout(tmp_path):
    """conv -> 2x nearest / bilinear upsample -> conv: no layout fallback recorded (the decomposition's take would
    leave NCHW[x]c)."""
    import json

    for mode in ("nearest", "linear"):
        model = _conv_resize_conv(mode, {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
                                  if mode == "nearest" else {}, (16, 20))
        x = _x((1, 3, 8, 10), 4)
        got = _compile_run(model, {"x": x}, tmp_path, f"crc_{mode}")["y0"]
        _assert_close(got, _ort(model, {"x": x})[0], mode)
        manifest = json.load(open(tmp_path / f"crc_{mode}_auto.cpa" / "manifest.json"))
        assert manifest["layout"] != "NCHW" and manifest["fallbacks"] == [], manifest["fallbacks"]
