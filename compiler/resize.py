"""Exact ONNX ``Resize`` (opsets 10-19) and ``Upsample`` (opsets 7, 9) for TVM's ONNX frontend (issue 10).

TVM 0.27's converters (``relax/frontend/onnx/onnx_frontend.py``: ``Resize._impl_v18``, ``Upsample._impl_v9``) are
inexact or fail in many configurations: with ``scales`` they take the coordinate scale from ``out / in`` instead
of the given scale (downsampling 4 -> 1.5 -> 1 read scale 1/4 instead of 0.6), ``antialias`` is ignored,
``half_pixel_symmetric`` is refused, ``axes`` and ``keep_aspect_ratio_policy`` crash, ``align_corners`` to an
output of length 1 divides by zero while legalising, nearest rounding ties at non-integer ratios disagree with
onnxruntime, opset 10's ``(X, scales)`` inputs are read as ``(X, roi)``, and Upsample reads its opset-9 ``scales``
input as an attribute.

This module replaces both converters (:func:`converters`; merged into the frontend's table by
:func:`convpipe.compiler.convert.convpipe_converters`). Input shapes are static at import (convpipe pins them), so
everything about the resize is known then:

* **Plan** (:func:`plan_resize`, NumPy only): the output shape and, for each axis that is resized, a *tap table*
  -- per output index ``o`` the input indices ``idx[o, k]`` and float32 weights ``w[o, k]`` of ``K`` taps, plus an
  extrapolation mask for ``tf_crop_and_resize``. Every formula follows onnxruntime's CPU kernel (the engine
  convpipe is checked against; it implements the ONNX operator spec, ``docs/Operators.md#Resize``), computed in
  float32 the way it computes them so that nearest-rounding ties and window bounds agree exactly:

  - coordinate transforms: ``onnxruntime/core/providers/cpu/tensor/upsamplebase.h``
    (``GetOriginalCoordinateFromResizedCoordinate``: ``half_pixel``, ``half_pixel_symmetric`` (partly in double
    there), ``pytorch_half_pixel`` (0 for an output of length 1), ``tf_half_pixel_for_nn``, ``align_corners``
    (0 for an output of length 1), ``asymmetric``, ``tf_crop_and_resize`` with ``roi``);
  - nearest modes: same file (``GetNearestPixelFromOriginal``; opset < 11 and Upsample use the "simple" rule:
    ``ceil`` when downsampling, truncation otherwise), index clamped to ``[0, L-1]``
    (``upsample.cc: UpsampleNearestSetupInputMappings``);
  - linear: ``upsample.cc: SetupUpsampleBilinear`` (coordinate clamped to ``[0, L-1]``, taps ``i1 = int(v)``,
    ``i2 = min(i1+1, L-1)``, weights ``|v-i2|``, ``|v-i1|``, 0.5/0.5 when ``i1 == i2``);
  - cubic: ``upsample.cc: GetCubicCoeffs`` / ``ResizeBiCubic`` (Keys kernel with ``cubic_coeff_a``, taps
    ``floor(x)-1 .. floor(x)+2`` clamped to the edge, ``exclude_outside`` zeroes taps outside and renormalises);
  - antialias (linear and cubic): ``upsample_antialias.h: SetupUpsampleFilterAntiAlias`` (Pillow-style filter
    widened by ``1/scale`` when downsampling, out-of-range taps folded onto the edge pixel unless
    ``exclude_outside``, weights normalised to sum 1);
  - output sizes: ``upsamplebase.h`` (``floor(float32(scale * in))`` from scales; from sizes the scale is
    ``float32(out) / float32(in)``; ``keep_aspect_ratio_policy`` ``not_larger``/``not_smaller`` take the min/max
    scale over the resized axes and round ``scale * in`` half away from zero); ``axes`` (opset 18) expands
    ``scales``/``sizes``/``roi`` to the full rank (``ParseScalesData``, ``ParseSizesData``, ``ComputeROIWithAxes``);
  - identities onnxruntime takes: all output dims equal to the input's -> the input is returned unchanged; an
    axis whose scale is exactly 1 -> unchanged; with antialias, an axis whose length does not change ->
    unchanged (``ComputeInterpolationAtLevel1/2``).

* **Emit** (:func:`emit_resize`): separable, one axis at a time:
  ``y = sum_k take(x, idx[:, k], axis) * w[:, k]`` (weights broadcast along ``axis``; nearest is a single
  ``take``, no arithmetic, so exact for any dtype), then ``where(mask, extrapolation_value, y)`` with the outer
  OR of the per-axis masks. ``take``/``multiply``/``add`` are injective/element-wise, so FuseOps makes one kernel
  of each axis. Separable evaluation differs from onnxruntime's fused bilinear/bicubic sums only by float32
  rounding (~1e-7 relative).

Data: float32 for linear / cubic (weights are float32, as in onnxruntime's kernel); nearest for any dtype.
Layout: NCHW (any rank >= 1; any axes). Non-constant ``scales``/``sizes``/``roi``, dynamic input shapes,
non-float32 linear/cubic data and invalid attribute combinations raise :class:`convpipe.errors.ConvpipeError`
naming the node: never a silently different answer.

TVM's own ``resize2d`` is not used: it takes its coordinate scale from the sizes, rounds nearest ties its own way
(14 -> 16 wide: TVM ``x * 14/16``, onnxruntime ``x / (16/14)``, differing at ties), and only one exact fused
kernel would be gained over the decomposition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from convpipe.errors import ConvpipeError

f32 = np.float32

COORD_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "tf_half_pixel_for_nn", "align_corners",
               "asymmetric", "tf_crop_and_resize")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple")


@dataclass
class ResizeAttrs:
    """The attributes of one Resize/Upsample node, normalised (``nearest_mode="simple"`` for opset < 11)."""

    mode: str = "nearest"  # nearest | linear | cubic
    coord: str = "half_pixel"
    nearest_mode: str = "round_prefer_floor"
    cubic_a: float = -0.75
    exclude_outside: bool = False
    extrapolation_value: float = 0.0
    antialias: bool = False
    axes: list[int] | None = None
    keep_aspect_ratio_policy: str = "stretch"


@dataclass
class AxisTaps:
    """How one axis is resized: output ``o`` reads input indices ``idx[o, :]`` (int64, ``[out, K]``) with float32
    weights ``w[o, :]`` (``None`` for nearest: one tap of weight 1); ``extrapolate[o]`` (or ``None``): the output
    takes ``extrapolation_value`` (tf_crop_and_resize outside the input)."""

    axis: int
    idx: np.ndarray
    w: np.ndarray | None
    extrapolate: np.ndarray | None = None


@dataclass
class ResizePlan:
    """Output shape and the per-axis tap tables (axes left unchanged have none)."""

    out_shape: list[int]
    scales: list[float]
    taps: list[AxisTaps] = field(default_factory=list)
    identity: bool = False


# ---------------------------------------------------------------------------------------------------------------
# coordinates (onnxruntime upsamplebase.h, GetOriginalCoordinateFromResizedCoordinate), float32 per element


def original_coordinate(coord: str, x: int, scale: np.float32, len_out: int, len_in: int, roi_start: np.float32,
                        roi_end: np.float32) -> np.float32:
    """Input coordinate of output index ``x`` as onnxruntime computes it (float32 arithmetic; double where its
    expression promotes to double)."""
    xr, s, lr, lo = f32(x), f32(scale), f32(len_out), f32(len_in)
    if coord == "asymmetric":
        return xr / s
    if coord == "pytorch_half_pixel":
        return (xr + f32(0.5)) / s - f32(0.5) if lr > 1 else f32(0.0)
    if coord == "tf_half_pixel_for_nn":
        return (xr + f32(0.5)) / s
    if coord == "align_corners":
        return f32(0.0) if lr == 1 else xr * (lo - f32(1)) / (lr - f32(1))
    if coord == "tf_crop_and_resize":
        rs, re = f32(roi_start), f32(roi_end)
        if lr > 1:
            return rs * (lo - f32(1)) + (xr * (re - rs) * (lo - f32(1))) / (lr - f32(1))
        return f32(0.5 * (float(rs) + float(re)) * float(lo - f32(1)))
    if coord == "half_pixel_symmetric":
        output_width = s * lo
        adjustment = lr / output_width
        center = lo / f32(2)
        offset = center * (f32(1) - adjustment)
        return f32(float(offset) + (float(xr) + 0.5) / float(s) - 0.5)
    if coord == "half_pixel":
        return ((xr + f32(0.5)) / s) - f32(0.5)
    raise ValueError(coord)


def nearest_pixel(mode: str, x: np.float32, downsample: bool) -> int:
    """onnxruntime's ``GetNearestPixelFromOriginal`` (float32 input). onnxruntime 1.31 treats a coordinate whose
    fraction is within 1e-6 of 0.5 as a tie for ``round_prefer_ceil`` / ``round_prefer_floor`` (measured: at
    ``8 / float32(16/7) = 3.4999998`` it picks 4 with ``round_prefer_ceil``; ``3.4999990`` -> 4, ``3.4999988`` -> 3;
    the fix of onnxruntime issue #28291)."""
    x = f32(x)
    trunc = int(x)  # static_cast<int64_t>: toward zero

    def cround(v):  # std::round: half away from zero
        return int(math.floor(abs(float(v)) + 0.5)) * (1 if v >= 0 else -1)

    if mode == "simple":
        return int(math.ceil(x)) if downsample else trunc
    if mode == "floor":
        return int(math.floor(x))
    if mode == "ceil":
        return int(math.ceil(x))
    fl = f32(math.floor(x))
    tie = abs((x - fl) - f32(0.5)) <= f32(1e-6)
    if mode == "round_prefer_ceil":
        return int(fl) + 1 if tie else cround(x)
    return int(fl) if tie else cround(x)  # round_prefer_floor


def _cubic_coeffs(s: np.float32, a: np.float32) -> list:
    """``upsample.cc: GetCubicCoeffs`` (float32)."""
    s = abs(f32(s))
    one, two = f32(1), f32(2)
    return [
        ((a * (s + one) - f32(5) * a) * (s + one) + f32(8) * a) * (s + one) - f32(4) * a,
        ((a + two) * s - (a + f32(3))) * s * s + one,
        ((a + two) * (one - s) - (a + f32(3))) * (one - s) * (one - s) + one,
        ((a * (two - s) - f32(5) * a) * (two - s) + f32(8) * a) * (two - s) - f32(4) * a,
    ]


def _aa_filter(mode: str, x: np.float32, a: np.float32) -> np.float32:
    """``upsample_antialias.h``: ``BilinearParamsAntiAlias::Filter`` / ``BiCubicParamsAntiAlias::Filter``."""
    x = abs(f32(x))
    if mode == "linear":
        return f32(1) - x if x < f32(1) else f32(0)
    if x < f32(1):
        return ((a + f32(2)) * x - (a + f32(3))) * x * x + f32(1)
    if x < f32(2):
        return (((x - f32(5)) * x + f32(8)) * x - f32(4)) * a
    return f32(0)


def axis_taps(at: ResizeAttrs, axis: int, len_in: int, len_out: int, scale: float, roi_start: float,
              roi_end: float) -> AxisTaps:
    """The tap table of one resized axis (see the module docstring for the sources of each rule)."""
    s = f32(scale)
    rs, re = f32(roi_start), f32(roi_end)
    extrap = at.coord == "tf_crop_and_resize"
    mask = np.zeros(len_out, bool)

    def coord(o):
        if s == f32(1):
            return f32(o)
        return original_coordinate(at.coord, o, s, len_out, len_in, rs, re)

    def outside(c):
        return bool(extrap and (c < 0 or c > f32(len_in - 1)))

    if at.mode == "nearest":
        idx = np.zeros((len_out, 1), np.int64)
        for o in range(len_out):
            c = coord(o)
            mask[o] = outside(c)
            i = nearest_pixel(at.nearest_mode, c, bool(s < f32(1)))
            idx[o, 0] = min(max(i, 0), len_in - 1)
        return AxisTaps(axis, idx, None, mask if mask.any() else None)

    a = f32(at.cubic_a)
    if at.antialias:
        support_size = f32(2.0) if at.mode == "linear" else f32(4.0)
        fscale = f32(1) / s
        support = (support_size * f32(0.5)) * fscale if fscale >= f32(1) else support_size * f32(0.5)
        window = int(math.ceil(support)) * 2 + 1
        inv_scale = f32(1) / fscale if fscale >= f32(1) else f32(1)
        rows_idx, rows_w = [], []
        for o in range(len_out):
            center = f32(0.5) + (f32(o) if fscale == f32(1) else
                                 original_coordinate(at.coord, o, s, len_out, len_in, rs, re))
            mask[o] = bool(extrap and (center - f32(0.5) < 0 or center - f32(0.5) > f32(len_in - 1)))
            xmin_real = int(math.floor(center - support + f32(0.5)))
            xmax_real = int(math.floor(center + support + f32(0.5)))
            xmax_real = xmin_real + min(max(xmax_real - xmin_real, 0), window)
            xmin_cut, xmax_cut = min(max(xmin_real, 0), len_in), min(max(xmax_real, 0), len_in)
            xmin = xmin_cut if at.exclude_outside else xmin_real
            xmax = (xmax_cut if at.exclude_outside else xmax_real) - xmin
            buf = [f32(0)] * max(window, xmax, 1)
            total = f32(0)
            for x in range(xmax):
                wgt = _aa_filter(at.mode, (f32(x + xmin) - center + f32(0.5)) * inv_scale, a)
                buf[x] = wgt
                total = total + wgt
            if not at.exclude_outside and xmin_cut < xmax_cut:
                neg = min(max(-xmin, 0), xmax - 1)
                for x in range(neg):
                    buf[neg] = buf[neg] + buf[x]
                bound = min(max(xmax + xmin - len_in, 0), xmax - 1)
                for x in range(xmax - bound, xmax):
                    buf[xmax - bound - 1] = buf[xmax - bound - 1] + buf[x]
                if (neg | bound) > 0:
                    for x in range(xmax_cut - xmin_cut):
                        buf[x] = buf[x + neg]
            tinv = f32(1) if total == f32(0) else f32(1) / total
            n = xmax_cut - xmin_cut
            rows_idx.append([xmin_cut + x for x in range(n)])
            rows_w.append([buf[x] * tinv for x in range(n)])
        return _pack(axis, rows_idx, rows_w, len_in, mask)

    rows_idx, rows_w = [], []
    for o in range(len_out):
        c = coord(o)
        mask[o] = outside(c)
        if at.mode == "linear":
            v = max(f32(0), min(c, f32(len_in - 1)))
            i1 = min(int(v), len_in - 1)
            i2 = min(i1 + 1, len_in - 1)
            if i1 == i2:
                rows_idx.append([i1, i2])
                rows_w.append([f32(0.5), f32(0.5)])
            else:
                rows_idx.append([i1, i2])
                rows_w.append([abs(v - f32(i2)), abs(v - f32(i1))])
        else:  # cubic
            xi = int(math.floor(c))
            coeffs = _cubic_coeffs(c - f32(xi), a)
            taps = [xi - 1 + k for k in range(4)]
            total = f32(1)
            if at.exclude_outside:
                coeffs = [f32(0) if (t < 0 or t >= len_in) else cf for t, cf in zip(taps, coeffs)]
                total = f32(0)
                for cf in coeffs:
                    total = total + cf
            rows_idx.append([min(max(t, 0), len_in - 1) for t in taps])
            with np.errstate(invalid="ignore", divide="ignore"):  # all taps outside: 0/0, as onnxruntime
                rows_w.append([cf / total for cf in coeffs])
    return _pack(axis, rows_idx, rows_w, len_in, mask)


def _pack(axis, rows_idx, rows_w, len_in, mask) -> AxisTaps:
    """Rows of differing tap counts -> rectangular ``[out, K]`` arrays (padding taps: index 0, weight 0)."""
    k = max([len(r) for r in rows_idx] + [1])
    idx = np.zeros((len(rows_idx), k), np.int64)
    w = np.zeros((len(rows_idx), k), np.float32)
    for o, (ri, rw) in enumerate(zip(rows_idx, rows_w)):
        idx[o, : len(ri)] = ri
        w[o, : len(rw)] = np.array(rw, np.float32)
    return AxisTaps(axis, idx, w, mask if mask.any() else None)


# ---------------------------------------------------------------------------------------------------------------
# the whole node


def plan_resize(at: ResizeAttrs, in_shape: list[int], scales=None, sizes=None, roi=None) -> ResizePlan:
    """Output shape and tap tables of a Resize of an input of shape ``in_shape`` (static) given constant ``scales``
    (float) or ``sizes`` (int) and ``roi`` (float or ``None``), each over ``axes`` when given, else the full rank.
    Raises ``ValueError`` for inconsistent operands (the converter turns it into a ConvpipeError)."""
    r = len(in_shape)
    axes = list(range(r)) if not at.axes else [a + r if a < 0 else a for a in at.axes]
    if any(not 0 <= a < r for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"axes {at.axes} invalid for rank {r}")
    if scales is not None and sizes is not None:
        raise ValueError("both scales and sizes are given")
    full_roi = [f32(0)] * r + [f32(1)] * r
    if roi is not None and len(roi):
        roi = [f32(v) for v in np.asarray(roi, np.float32).reshape(-1)]
        if len(roi) != 2 * len(axes):
            raise ValueError(f"roi has {len(roi)} values, expected {2 * len(axes)}")
        for i, a in enumerate(axes):
            full_roi[a], full_roi[r + a] = roi[i], roi[len(axes) + i]
    if scales is not None:
        sc = [f32(v) for v in np.asarray(scales, np.float32).reshape(-1)]
        if len(sc) != len(axes):
            raise ValueError(f"scales has {len(sc)} values, expected {len(axes)}")
        full_sc = [f32(1)] * r
        for i, a in enumerate(axes):
            if not sc[i] > 0:
                raise ValueError(f"scale {sc[i]} is not positive")
            full_sc[a] = sc[i]
        out = [int(full_sc[i] * f32(in_shape[i])) for i in range(r)]
    elif sizes is not None:
        sz = [int(v) for v in np.asarray(sizes).reshape(-1)]
        if len(sz) != len(axes):
            raise ValueError(f"sizes has {len(sz)} values, expected {len(axes)}")
        out = list(in_shape)
        for i, a in enumerate(axes):
            out[a] = sz[i]
        if any(o < 0 for o in out):
            raise ValueError(f"negative output size {out}")
        full_sc = [f32(1) if in_shape[i] == 0 else f32(out[i]) / f32(in_shape[i]) for i in range(r)]
        pol = at.keep_aspect_ratio_policy
        if pol not in ("stretch", "not_larger", "not_smaller"):
            raise ValueError(f"keep_aspect_ratio_policy {pol!r}")
        if pol != "stretch":
            chosen = [full_sc[i] for i in range(r) if not at.axes or i in axes]
            s = min(chosen) if pol == "not_larger" else max(chosen)
            for i in range(r):
                if not at.axes or i in axes:
                    full_sc[i] = s
                    v = float(s * f32(in_shape[i]))
                    out[i] = int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)
                else:
                    full_sc[i], out[i] = f32(1), in_shape[i]
    else:
        raise ValueError("neither scales nor sizes is given")
    if at.mode == "nearest" and at.antialias:
        raise ValueError("antialias is not defined for mode 'nearest'")
    if at.exclude_outside and at.mode != "cubic" and not (at.antialias and at.mode == "linear"):
        raise ValueError("exclude_outside=1 needs mode 'cubic' (or 'linear' with antialias)")
    plan = ResizePlan(out, [float(s) for s in full_sc])
    if out == list(in_shape):
        plan.identity = True
        return plan
    if any(o == 0 for o in out):
        return plan
    for a in range(r):
        if full_sc[a] == f32(1):
            continue
        if at.antialias and out[a] == in_shape[a]:
            continue
        plan.taps.append(axis_taps(at, a, in_shape[a], out[a], full_sc[a], full_roi[a], full_roi[r + a]))
    return plan


def reference(x: np.ndarray, plan: ResizePlan, extrapolation_value: float = 0.0) -> np.ndarray:
    """Apply ``plan`` to ``x`` in NumPy (float32, the same separable computation :func:`emit_resize` emits);
    used by the tests to check the planner against onnxruntime without compiling."""
    if plan.identity:
        return x.copy()
    y = x
    masks = []
    for t in plan.taps:
        if t.w is None:
            y = np.take(y, t.idx[:, 0], axis=t.axis)
        else:
            acc = None
            for k in range(t.idx.shape[1]):
                shape = [1] * y.ndim
                shape[t.axis] = t.idx.shape[0]
                term = np.take(y, t.idx[:, k], axis=t.axis) * t.w[:, k].reshape(shape)
                acc = term if acc is None else acc + term
            y = acc.astype(x.dtype)
        if t.extrapolate is not None:
            shape = [1] * x.ndim
            shape[t.axis] = t.idx.shape[0]
            masks.append(t.extrapolate.reshape(shape))
    if plan.out_shape and any(o == 0 for o in plan.out_shape):
        return np.zeros(plan.out_shape, x.dtype)
    if masks:
        m = masks[0]
        for mm in masks[1:]:
            m = m | mm
        y = np.where(m, np.asarray(extrapolation_value, x.dtype), y)
    return y


# ---------------------------------------------------------------------------------------------------------------
# Relax emission and the converters


def emit_resize(bb, x, plan: ResizePlan, extrapolation_value: float):
    """Relax ops computing ``plan`` on ``x`` (any layout the plan's axes refer to; NCHW from ONNX): per resized axis
    ``sum_k take(x, idx[:, k], axis) * w[:, k]`` (a lone ``take`` for nearest), then the extrapolation ``where``.
    The planned indices are in range; ``take`` clamps them anyway (``mode="clip"``: TVM's default "fast" mode reads
    out of bounds on a bad index, and warns so at every compile).
    Returns the output expression (dtype of ``x``)."""
    from tvm import relax

    if plan.identity:
        return x
    dtype = str(x.ty.dtype)
    rank = len(plan.out_shape)
    if any(o == 0 for o in plan.out_shape):
        return relax.op.zeros(relax.ShapeExpr(plan.out_shape), dtype)
    y = x
    mask = None
    for t in plan.taps:
        if t.w is None:
            y = bb.emit(relax.op.take(y, relax.const(t.idx[:, 0].astype("int64")), axis=t.axis, mode="clip"))
        else:
            bshape = [1] * rank
            bshape[t.axis] = t.idx.shape[0]
            acc = None
            for k in range(t.idx.shape[1]):
                w = t.w[:, k]
                if not w.any():
                    continue  # a padding tap (antialias windows of differing widths): weight 0 everywhere
                term = relax.op.take(y, relax.const(t.idx[:, k].astype("int64")), axis=t.axis, mode="clip")
                term = relax.op.multiply(term, relax.const(w.reshape(bshape).astype(dtype)))
                acc = term if acc is None else relax.op.add(acc, term)
            if acc is None:  # every weight 0 (cubic exclude_outside with no tap inside): onnxruntime's 0/0
                first = relax.op.take(y, relax.const(t.idx[:, 0].astype("int64")), axis=t.axis, mode="clip")
                acc = relax.op.multiply(first, relax.const(np.full(bshape, np.nan, dtype)))
            y = bb.emit(acc)
        if t.extrapolate is not None:
            mshape = [1] * rank
            mshape[t.axis] = t.idx.shape[0]
            m = t.extrapolate.reshape(mshape)
            mask = m if mask is None else (mask | m)
    if mask is not None:
        y = bb.emit(relax.op.where(relax.const(mask), relax.const(np.asarray(extrapolation_value, dtype)), y))
    return y


def _node_name(attr) -> str:
    return str(attr.get("tvm_custom", {}).get("name", "?"))


def _const_values(expr, params, what: str, node: str, op: str):
    """A constant operand's values as a NumPy array (``None`` for an omitted or empty one)."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import onnx_frontend as fe

    if expr is None:
        return None
    expr = fe.get_constant(expr, params)
    if isinstance(expr, relax.ShapeExpr):
        vals = []
        for v in expr.values:
            if not isinstance(v, tvm.tirx.IntImm if hasattr(tvm, "tirx") else tvm.tir.IntImm):
                raise ConvpipeError(f"{op} node '{node}': {what} is not a constant (convpipe resizes only with "
                                    "constant scales/sizes/roi at the pinned input shapes)")
            vals.append(int(v.value))
        return np.array(vals, np.int64)
    value = getattr(expr, "value", None) if not isinstance(expr, relax.Var) else None
    if value is None or not hasattr(value, "numpy"):
        data = getattr(expr, "data", None)
        if data is None or not hasattr(data, "numpy"):
            raise ConvpipeError(f"{op} node '{node}': {what} is not a constant (convpipe resizes only with constant "
                                "scales/sizes/roi at the pinned input shapes)")
        value = data
    arr = value.numpy()
    return None if arr.size == 0 else arr


def _attrs(attr, opset: int, op: str) -> ResizeAttrs:
    def s(name, default):
        v = attr.get(name, default)
        return v.decode("ascii") if isinstance(v, bytes) else str(v)

    at = ResizeAttrs()
    at.mode = s("mode", "nearest")
    if op == "Upsample" or opset < 11:
        at.coord, at.nearest_mode = "asymmetric", "simple"
    else:
        at.coord = s("coordinate_transformation_mode", "half_pixel")
        at.nearest_mode = s("nearest_mode", "round_prefer_floor")
    if op == "Resize" and opset >= 11:
        at.cubic_a = float(attr.get("cubic_coeff_a", -0.75))
        at.exclude_outside = bool(int(attr.get("exclude_outside", 0)))
        at.extrapolation_value = float(attr.get("extrapolation_value", 0.0))
    if op == "Resize" and opset >= 18:
        at.antialias = bool(int(attr.get("antialias", 0)))
        axes = attr.get("axes")
        at.axes = [int(a) for a in axes] if axes is not None and len(axes) else None
        at.keep_aspect_ratio_policy = s("keep_aspect_ratio_policy", "stretch")
    return at


def _convert(bb, inputs, attr, params, opset: int, op: str):
    """Shared body of the Resize/Upsample converters: read the node, plan it (:func:`plan_resize`), emit it."""
    from tvm.relax.frontend.onnx import onnx_frontend as fe

    node = _node_name(attr)
    x = inputs[0]
    try:
        in_shape = [int(d) for d in fe.get_const_tuple(x.ty.shape)]
    except Exception:  # noqa: BLE001 -- symbolic dims
        raise ConvpipeError(f"{op} node '{node}': input shape {x.ty.shape} is not static (pin the input shapes)") \
            from None
    at = _attrs(attr, opset, op)
    if at.mode not in ("nearest", "linear", "cubic"):
        raise ConvpipeError(f"{op} node '{node}': mode {at.mode!r} is not defined")
    if at.coord not in COORD_MODES:
        raise ConvpipeError(f"{op} node '{node}': coordinate_transformation_mode {at.coord!r} is not defined")
    if at.nearest_mode not in NEAREST_MODES:
        raise ConvpipeError(f"{op} node '{node}': nearest_mode {at.nearest_mode!r} is not defined")
    dtype = str(x.ty.dtype)
    if at.mode != "nearest" and dtype != "float32":
        raise ConvpipeError(f"{op} node '{node}': {at.mode} resize of {dtype} data is not supported (float32 only; "
                            "nearest works for any dtype)")
    roi = scales = sizes = None
    if op == "Upsample" and opset < 9:
        scales = np.asarray(attr.get("scales"), np.float32) if attr.get("scales") is not None else None
    elif op == "Upsample" or opset < 11:
        scales = _const_values(inputs[1] if len(inputs) > 1 else None, params, "scales", node, op)
    else:
        roi = _const_values(inputs[1] if len(inputs) > 1 else None, params, "roi", node, op)
        scales = _const_values(inputs[2] if len(inputs) > 2 else None, params, "scales", node, op)
        sizes = _const_values(inputs[3] if len(inputs) > 3 else None, params, "sizes", node, op)
    if at.coord != "tf_crop_and_resize":
        roi = None
    try:
        plan = plan_resize(at, in_shape, scales=scales, sizes=sizes, roi=roi)
    except ValueError as e:
        raise ConvpipeError(f"{op} node '{node}': {e}") from None
    if fast_path(at, in_shape, plan):
        from tvm import relax

        rounding = {"simple": "floor"}.get(at.nearest_mode, at.nearest_mode) if at.mode == "nearest" else ""
        return relax.op.image.resize2d(x, plan.out_shape[2:], layout="NCHW",
                                       method="nearest_neighbor" if at.mode == "nearest" else "linear",
                                       coordinate_transformation_mode=at.coord, rounding_method=rounding)
    return emit_resize(bb, x, plan, at.extrapolation_value)


def fast_path(at: ResizeAttrs, in_shape: list[int], plan: ResizePlan) -> bool:
    """Whether TVM's own ``relax.op.image.resize2d`` computes ``plan`` exactly, so it can be used instead of the
    take/multiply decomposition: one fused kernel, and ConvertLayout carries it through the blocked NCHW[x]c
    layout (the decomposition's ``take`` leaves and re-enters NCHW around it). That is the upsampling real CNNs
    do (FPN/YOLO/U-Net ``F.interpolate(scale_factor=k)``, ``nn.Upsample``): a 4-D NCHW input whose H and/or W grow
    by a whole number ``k`` (1..8, the output size exactly ``k *`` the input's), no antialias / axes / extrapolation,
    and
    - nearest with ``asymmetric`` coordinates and ``floor`` / ``simple`` rounding (PyTorch's export of
      ``mode="nearest"``; with ``round_prefer_*`` TVM breaks the ties at x.5 differently from onnxruntime, measured),
      or ``half_pixel`` / ``pytorch_half_pixel`` (no ties there: (2x + 1 - k) / 2k is never a half);
    - linear with ``half_pixel``, ``pytorch_half_pixel``, ``asymmetric`` or ``align_corners``.
    tests/test_resize.py checks each such configuration against onnxruntime (k 1..8, sizes 1..29)."""
    if len(in_shape) != 4 or plan.identity or at.antialias or at.axes is not None:
        return False
    if at.keep_aspect_ratio_policy != "stretch" or any(t.extrapolate is not None for t in plan.taps):
        return False
    if plan.out_shape[:2] != in_shape[:2]:
        return False
    for a in (2, 3):
        n_in, n_out = in_shape[a], plan.out_shape[a]
        if n_out % n_in or not 1 <= n_out // n_in <= 8 or float(plan.scales[a]) != n_out // n_in:
            return False
    if at.mode == "nearest":
        if at.coord == "asymmetric":
            return at.nearest_mode in ("floor", "simple")  # round_prefer_*: TVM breaks the x.5 ties otherwise
        return at.coord in ("half_pixel", "pytorch_half_pixel")
    if at.mode == "linear":
        return at.coord in ("half_pixel", "pytorch_half_pixel", "asymmetric", "align_corners")
    return False


def converters() -> dict:
    """``{ONNX op type: converter class}`` for Resize and Upsample (subclasses of TVM's, so the frontend's opset
    dispatch ``_impl_vN`` applies: Resize 10 (inputs ``X, scales``), 11-17 (``X, roi, scales, sizes``), 18/19
    (``antialias``, ``axes``, ``keep_aspect_ratio_policy``); Upsample 7 (``scales`` attribute) and 9 (input))."""
    from tvm.relax.frontend.onnx import onnx_frontend as fe

    def subclass(base, op: str, versions: tuple[int, ...]):
        def impl(version):
            return classmethod(lambda cls, bb, inputs, attr, params: _convert(bb, inputs, attr, params, version, op))

        return type(f"{op}Op", (base,), {f"_impl_v{v}": impl(v) for v in versions})

    ResizeOp = subclass(fe.Resize, "Resize", (10, 11, 18))
    UpsampleOp = subclass(fe.Upsample, "Upsample", (7, 9))
    return {"Resize": ResizeOp, "Upsample": UpsampleOp}
