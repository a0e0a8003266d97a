"""What a conv2d computes, per algorithm family: tensor-expression (TE) definitions and the NumPy weight packing
that goes with each. Target independent: ``x86/``, ``arm/`` and ``cuda/`` schedule these same computes.

Every compute takes data NCHW ``float32[N, C, H, W]`` (unpadded) and a pre-packed weight, and produces
``float32[N, K, OH, OW]`` in a final stage named ``"out"``. Padding is zero padding with the workload's four
(possibly asymmetric) pads, in a stage named ``"pad_temp"``.

Sources:
- direct NCHW[x]c: the blocked-output layout of ``topi/nn/conv2d.py:conv2d_NCHWc`` (output channels blocked by
  the vector width, broadcast input x vector weight FMA).
- im2col + GEMM: Chellapilla et al., "High Performance Convolutional Neural Networks for Document Processing"
  (2006); grouped convs become a batched GEMM over groups.
- Winograd F(m x m, 3 x 3): Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016);
  the stage structure follows ``topi/nn/conv2d.py:_conv2d_winograd_nchw_impl``, the matrices come from
  ``topi/nn/winograd_util.py`` (Cook-Toom construction with the interpolation points of Barabasz et al.,
  arXiv:1803.10986).
- depthwise: ``topi/nn/depthwise_conv2d.py:depthwise_conv2d_nchw`` with a channel multiplier.
"""

from __future__ import annotations

import math

import numpy as np
from tvm import te, tirx, topi
from tvm.topi.nn.winograd_util import _cook_toom_convolution, _interpolation_points
from tvm.topi.utils import const_matrix

from .workload import Conv2dWorkload


def pad_nchw(data: te.Tensor, wl: Conv2dWorkload, extra_h: int = 0, extra_w: int = 0) -> te.Tensor:
    """Zero-pad NCHW ``data`` by the workload's pads (plus ``extra_h``/``extra_w`` more at bottom/right)."""
    before = [0, 0, wl.pad_top, wl.pad_left]
    after = [0, 0, wl.pad_bottom + extra_h, wl.pad_right + extra_w]
    if not any(before) and not any(after):
        return data
    return topi.nn.pad(data, before, after, name="pad_temp")


# ------------------------------------------------------------------------------------------------------------
# Direct, output channels blocked (NCHW[x]c output tile, OIHW[x]o weight)
# ------------------------------------------------------------------------------------------------------------
def direct_packed_shape(wl: Conv2dWorkload, oc_block: int) -> tuple[int, ...]:
    """``(K / oc_block, C, KH, KW, oc_block)`` -- OIHW with the output channels split into vector blocks."""
    return (wl.out_channels // oc_block, wl.in_channels, wl.kernel_h, wl.kernel_w, oc_block)


def direct_pack_weight(weight: np.ndarray, wl: Conv2dWorkload, oc_block: int) -> np.ndarray:
    """OIHW ``[K, C, KH, KW]`` -> ``[K/ob, C, KH, KW, ob]`` (groups must be 1)."""
    k, c, kh, kw = weight.shape
    return np.ascontiguousarray(weight.reshape(k // oc_block, oc_block, c, kh, kw).transpose(0, 2, 3, 4, 1))


def direct_nchwc(wl: Conv2dWorkload, oc_block: int) -> list[te.Tensor]:
    """Direct conv2d producing an NCHW[ob]c tile ``conv`` (``[N, K/ob, OH, OW, ob]``) then ``out`` in NCHW.

    Requires ``groups == 1`` and ``K % oc_block == 0``. Returns ``[data, packed_weight, out]``.
    """
    if wl.groups != 1 or wl.out_channels % oc_block:
        raise ValueError(f"direct_nchwc needs groups=1 and K % {oc_block} == 0: {wl.describe()}")
    data = te.placeholder(wl.data_shape, wl.dtype, name="data")
    weight = te.placeholder(direct_packed_shape(wl, oc_block), wl.dtype, name="packed_weight")
    pad = pad_nchw(data, wl)
    ic = te.reduce_axis((0, wl.in_channels), name="ic")
    rh = te.reduce_axis((0, wl.kernel_h), name="rh")
    rw = te.reduce_axis((0, wl.kernel_w), name="rw")
    sh, sw, dh, dw = wl.stride_h, wl.stride_w, wl.dilation_h, wl.dilation_w
    conv = te.compute(
        (wl.batch, wl.out_channels // oc_block, wl.out_h, wl.out_w, oc_block),
        lambda n, ko, y, x, ki: te.sum(
            pad[n, ic, y * sh + rh * dh, x * sw + rw * dw] * weight[ko, ic, rh, rw, ki], axis=[ic, rh, rw]
        ),
        name="conv",
    )
    out = te.compute(
        wl.out_shape,
        lambda n, k, y, x: conv[n, k // oc_block, y, x, k % oc_block],
        name="out",
    )
    return [data, weight, out]


# ------------------------------------------------------------------------------------------------------------
# im2col + GEMM (any stride, padding, dilation, groups)
# ------------------------------------------------------------------------------------------------------------
def im2col_packed_shape(wl: Conv2dWorkload) -> tuple[int, ...]:
    """``(G, K/G, C/G * KH * KW)`` -- one GEMM left operand per group."""
    g = wl.groups
    return (g, wl.out_channels // g, (wl.in_channels // g) * wl.kernel_h * wl.kernel_w)


def im2col_pack_weight(weight: np.ndarray, wl: Conv2dWorkload) -> np.ndarray:
    """OIHW ``[K, C/G, KH, KW]`` -> ``[G, K/G, C/G*KH*KW]`` (row-major reshape)."""
    return np.ascontiguousarray(weight.reshape(im2col_packed_shape(wl)))


def im2col_gemm(wl: Conv2dWorkload) -> list[te.Tensor]:
    """``col[n, g, r, p]`` (r = (ic, kh, kw), p = (oh, ow)) then ``gemm[n, g, k, p] = sum_r W[g, k, r] col``.

    Returns ``[data, packed_weight, out]``; stages ``im2col``, ``gemm``, ``out``.
    """
    g, cg, kg = wl.groups, wl.in_channels // wl.groups, wl.out_channels // wl.groups
    khw = wl.kernel_h * wl.kernel_w
    r_len, p_len = cg * khw, wl.out_h * wl.out_w
    data = te.placeholder(wl.data_shape, wl.dtype, name="data")
    weight = te.placeholder(im2col_packed_shape(wl), wl.dtype, name="packed_weight")
    pad = pad_nchw(data, wl)
    ow_, kw_ = wl.out_w, wl.kernel_w
    col = te.compute(
        (wl.batch, g, r_len, p_len),
        lambda n, gi, r, p: pad[
            n,
            gi * cg + r // khw,
            (p // ow_) * wl.stride_h + ((r % khw) // kw_) * wl.dilation_h,
            (p % ow_) * wl.stride_w + (r % kw_) * wl.dilation_w,
        ],
        name="im2col",
    )
    rk = te.reduce_axis((0, r_len), name="rk")
    gemm = te.compute(
        (wl.batch, g, kg, p_len),
        lambda n, gi, k, p: te.sum(weight[gi, k, rk] * col[n, gi, rk, p], axis=rk),
        name="gemm",
    )
    out = te.compute(
        wl.out_shape,
        lambda n, k, y, x: gemm[n, k // kg, k % kg, y * ow_ + x],
        name="out",
    )
    return [data, weight, out]


# ------------------------------------------------------------------------------------------------------------
# Winograd F(m x m, 3 x 3)
# ------------------------------------------------------------------------------------------------------------
def winograd_matrices(m: int, r: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A, B, G)`` of F(m, r) in float64: ``Y = A^T [(G g G^T) * (B^T d B)] A`` (Lavin & Gray 2016).

    Shapes: A ``[alpha, m]``, B ``[alpha, alpha]``, G ``[alpha, r]`` with ``alpha = m + r - 1``. Generated by
    TVM's Cook-Toom construction (``topi/nn/winograd_util.py``), interpolation points from Barabasz et al.
    """
    if not 2 <= m <= 8:
        raise ValueError(f"Winograd tile size m must be in 2..8, got {m}")
    return _cook_toom_convolution(_interpolation_points(m + r - 1), m, r)


def winograd_packed_shape(wl: Conv2dWorkload, m: int) -> tuple[int, ...]:
    """``(alpha, alpha, C, K)`` -- the transformed kernel U = G g G^T per (eps, nu)."""
    a = m + 2
    return (a, a, wl.in_channels, wl.out_channels)


def winograd_pack_weight(weight: np.ndarray, wl: Conv2dWorkload, m: int) -> np.ndarray:
    """Kernel transform ``U[eps, nu, c, k] = (G g[k, c] G^T)[eps, nu]``, computed in float64 then cast."""
    _, _, g_mat = winograd_matrices(m)
    u = np.einsum("ar,kcrs,bs->abck", g_mat, weight.astype(np.float64), g_mat)
    return np.ascontiguousarray(u.astype(weight.dtype))


def winograd_tiles(wl: Conv2dWorkload, m: int) -> tuple[int, int]:
    """Number of m x m output tiles along H and W."""
    return math.ceil(wl.out_h / m), math.ceil(wl.out_w / m)


def winograd(wl: Conv2dWorkload, m: int) -> list[te.Tensor]:
    """Winograd F(m x m, 3 x 3) for a 3x3, stride-1, dilation-1, groups-1 conv.

    Stages: ``pad_temp`` -> ``input_tile`` ``d[c, p, alpha, alpha]`` -> ``data_pack`` ``V[eps, nu, c, p] = B^T d B``
    -> ``bgemm`` ``M[eps, nu, k, p] = sum_c U[eps, nu, c, k] V[eps, nu, c, p]`` -> ``inverse``
    ``Y[k, p, m, m] = A^T M A`` -> ``out`` (NCHW, tiles cropped). ``p`` runs over ``N * nH * nW`` tiles.
    Returns ``[data, packed_weight (U), out]``.
    """
    if not wl.is_winograd_shape():
        raise ValueError(f"Winograd F(m, 3) needs a 3x3, stride-1, dilation-1, groups-1 conv: {wl.describe()}")
    alpha = m + 2
    a_np, b_np, _ = winograd_matrices(m)
    n_h, n_w = winograd_tiles(wl, m)
    n_tiles = wl.batch * n_h * n_w
    c, k = wl.in_channels, wl.out_channels
    data = te.placeholder(wl.data_shape, wl.dtype, name="data")
    weight = te.placeholder(winograd_packed_shape(wl, m), wl.dtype, name="packed_weight")
    # pad so that every tile's alpha x alpha input window lies inside the padded image
    need_h = n_h * m + 2 - (wl.in_h + wl.pad_top + wl.pad_bottom)
    need_w = n_w * m + 2 - (wl.in_w + wl.pad_left + wl.pad_right)
    pad = pad_nchw(data, wl, max(need_h, 0), max(need_w, 0))
    a_mat = const_matrix(a_np.astype(wl.dtype), "A")
    b_mat = const_matrix(b_np.astype(wl.dtype), "B")
    per_img = n_h * n_w

    tile = te.compute(
        (c, n_tiles, alpha, alpha),
        lambda ci, p, eps, nu: pad[p // per_img, ci, (p % per_img) // n_w * m + eps, (p % n_w) * m + nu],
        name="input_tile",
    )
    ra = te.reduce_axis((0, alpha), "r_a")
    rb = te.reduce_axis((0, alpha), "r_b")
    data_pack = te.compute(
        (alpha, alpha, c, n_tiles),
        lambda eps, nu, ci, p: te.sum(tile[ci, p, ra, rb] * b_mat[ra, eps] * b_mat[rb, nu], axis=[ra, rb]),
        name="data_pack",
    )
    rc = te.reduce_axis((0, c), "rc")
    bgemm = te.compute(
        (alpha, alpha, k, n_tiles),
        lambda eps, nu, ko, p: te.sum(weight[eps, nu, rc, ko] * data_pack[eps, nu, rc, p], axis=rc),
        name="bgemm",
    )
    ra2 = te.reduce_axis((0, alpha), "r_a")
    rb2 = te.reduce_axis((0, alpha), "r_b")
    inverse = te.compute(
        (k, n_tiles, m, m),
        lambda ko, p, vh, vw: te.sum(bgemm[ra2, rb2, ko, p] * a_mat[ra2, vh] * a_mat[rb2, vw], axis=[ra2, rb2]),
        name="inverse",
    )
    out = te.compute(
        wl.out_shape,
        lambda n, ko, y, x: inverse[ko, n * per_img + (y // m) * n_w + x // m, y % m, x % m],
        name="out",
    )
    return [data, weight, out]


# ------------------------------------------------------------------------------------------------------------
# Depthwise (groups == C, K = multiplier * C)
# ------------------------------------------------------------------------------------------------------------
def depthwise_packed_shape(wl: Conv2dWorkload) -> tuple[int, ...]:
    """``(K, KH, KW)`` -- OIHW with the unit input-channel axis dropped."""
    return (wl.out_channels, wl.kernel_h, wl.kernel_w)


def depthwise_pack_weight(weight: np.ndarray, wl: Conv2dWorkload) -> np.ndarray:
    """OIHW ``[K, 1, KH, KW]`` -> ``[K, KH, KW]``."""
    return np.ascontiguousarray(weight.reshape(depthwise_packed_shape(wl)))


def depthwise(wl: Conv2dWorkload) -> list[te.Tensor]:
    """``out[n, k, y, x] = sum_{rh, rw} pad[n, k // mult, y*sh + rh*dh, x*sw + rw*dw] * W[k, rh, rw]``.

    Returns ``[data, packed_weight, out]``; stages ``pad_temp`` and ``out``.
    """
    if not wl.is_depthwise:
        raise ValueError(f"depthwise needs groups == C_in > 1: {wl.describe()}")
    mult = wl.out_channels // wl.in_channels
    data = te.placeholder(wl.data_shape, wl.dtype, name="data")
    weight = te.placeholder(depthwise_packed_shape(wl), wl.dtype, name="packed_weight")
    pad = pad_nchw(data, wl)
    rh = te.reduce_axis((0, wl.kernel_h), name="rh")
    rw = te.reduce_axis((0, wl.kernel_w), name="rw")
    out = te.compute(
        wl.out_shape,
        lambda n, k, y, x: te.sum(
            pad[n, k // mult, y * wl.stride_h + rh * wl.dilation_h, x * wl.stride_w + rw * wl.dilation_w]
            * weight[k, rh, rw],
            axis=[rh, rw],
        ),
        name="out",
    )
    return [data, weight, out]


def create_prim_func(tensors: list[te.Tensor]) -> tirx.PrimFunc:
    """``te.create_prim_func`` without a ``global_symbol`` (the compiler names kernels; duplicate symbols fail)."""
    func = te.create_prim_func(tensors)
    return func.without_attr("global_symbol")
