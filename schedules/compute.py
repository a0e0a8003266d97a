"""What a conv2d computes, per algorithm family: tensor-expression (TE) definitions and the NumPy weight packing
that goes with each. Target independent: ``cpu/`` (x86, ARM) and ``cuda/`` schedule these same computes.

Every compute takes data NCHW ``float32[N, C, H, W]`` (unpadded) and a pre-packed weight, and produces
``float32[N, K, OH, OW]`` in a final stage named ``"out"``. Padding is zero padding with the workload's four
(possibly asymmetric) pads, in a stage named ``"pad_temp"``. For NCHW[x]c data or output (``wl.data_block``,
``wl.out_block``) the data argument is ``[N, C/x, H, W, x]``, read through an NCHW index view, and/or ``out`` is
followed by ``out_blocked`` ``[N, K/x, OH, OW, x]`` (:func:`input_view`, :func:`output_view`); depthwise has its
own blocked compute (:func:`depthwise_blocked`).

Sources:
- direct NCHW[x]c: the blocked layout of ``topi/nn/conv2d.py:conv2d_NCHWc`` (output and input channels blocked by
  the vector width, broadcast input x vector weight FMA); CUDA uses it with unit input-channel blocks.
- im2col + GEMM: Chellapilla et al., "High Performance Convolutional Neural Networks for Document Processing"
  (2006); grouped convs become a batched GEMM over groups. Two layouts of the column matrix: output rows kept
  2-D for the CPU rules (:func:`im2col_rows`), flattened for CUDA's implicit GEMM (:func:`im2col_gemm`).
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

from .workload import Conv2dWorkload


def pad_nchw(data: te.Tensor, wl: Conv2dWorkload, extra_h: int = 0, extra_w: int = 0) -> te.Tensor:
    """Zero-pad NCHW ``data`` by the workload's pads (plus ``extra_h``/``extra_w`` more at bottom/right)."""
    before = [0, 0, wl.pad_top, wl.pad_left]
    after = [0, 0, wl.pad_bottom + extra_h, wl.pad_right + extra_w]
    if not any(before) and not any(after):
        return data
    return topi.nn.pad(data, before, after, name="pad_temp")


class _BlockedView:
    """NCHW indexing of an NCHW[x]c tensor: ``view[n, c, h, w]`` is ``data[n, c // x, h, w, c % x]``.

    An index expression, not a stage: the family computes read the blocked tensor directly (an inlined view
    stage would fail TVM's region analysis where a guarded read indexes outside the tensor, as padding does)."""

    def __init__(self, data: te.Tensor, block: int):
        self.data, self.block = data, block

    def __getitem__(self, idx):
        n, c, h, w = idx
        return self.data[n, c // self.block, h, w, c % self.block]


def input_view(wl: Conv2dWorkload):
    """The data argument of a kernel and the NCHW view its compute indexes: ``(placeholder, view)``.

    NCHW data: both are the ``float32[N, C, H, W]`` placeholder ``data``. NCHW[x]c data (``wl.data_block = x``):
    the placeholder is ``data`` ``[N, C/x, H, W, x]`` and the view indexes it as ``[n, c, h, w]``, so each
    algorithm's compute is written once, in NCHW indices, and reads the blocked tensor directly."""
    b = wl.data_block
    data = te.placeholder(wl.data_tensor_shape, wl.dtype, name="data")
    return (data, _BlockedView(data, b)) if b else (data, data)


def block_nchw(x: np.ndarray, block: int) -> np.ndarray:
    """NumPy NCHW ``[N, C, H, W]`` -> NCHW[x]c ``[N, C/x, H, W, x]`` (``block = x`` divides ``C``)."""
    n, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(n, c // block, block, h, w).transpose(0, 1, 3, 4, 2))


def unblock_nchw(x: np.ndarray) -> np.ndarray:
    """NumPy NCHW[x]c ``[N, C/x, H, W, x]`` -> NCHW ``[N, C, H, W]``."""
    n, co, h, w, b = x.shape
    return np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3).reshape(n, co * b, h, w))


def output_view(out: te.Tensor, wl: Conv2dWorkload) -> te.Tensor:
    """The kernel's final output: ``out`` itself (NCHW) or, for NCHW[x]c output (``wl.out_block = x``), a stage
    ``out_blocked`` ``[N, K/x, OH, OW, x]`` reading the NCHW stage ``out``, which the CPU rules inline into
    ``out``'s store."""
    b = wl.out_block
    if not b:
        return out
    return te.compute(
        wl.out_tensor_shape, lambda n, ko, y, x, ki: out[n, ko * b + ki, y, x], name="out_blocked"
    )


# ------------------------------------------------------------------------------------------------------------
# Direct, channels blocked (NCHW[x]c output tile, OIHW[ib]i[ob]o weight)
# ------------------------------------------------------------------------------------------------------------
def direct_blocked_geometry(wl: Conv2dWorkload, oc_block: int, ic_block: int, ow_tile: int) -> dict[str, int]:
    """Padded extents of :func:`direct_blocked`: ``k_outer`` (``ceil(K / oc_block)``), ``c_outer``
    (``ceil(C / ic_block)``), ``ow_padded`` (OW rounded up to ``ow_tile``), ``hp``/``wp`` (the padded input
    plane, wide enough for every column of ``ow_padded``) and ``needs_pack`` (0 when the kernel can read ``data``
    in place: no spatial padding at all and ``ic_block`` 1, or equal to the NCHW[x]c input's block ``x``)."""
    ow_p = -(-wl.out_w // ow_tile) * ow_tile
    hp = wl.in_h + wl.pad_top + wl.pad_bottom
    wp = max(wl.in_w + wl.pad_left + wl.pad_right, (ow_p - 1) * wl.stride_w + (wl.kernel_w - 1) * wl.dilation_w + 1)
    in_place_block = wl.data_block or 1  # channel blocking the input already has
    needs_pack = int(
        ic_block not in (1, in_place_block) or hp != wl.in_h or wp != wl.in_w or wl.pad_top or wl.pad_left
    )
    return {
        "k_outer": -(-wl.out_channels // oc_block),
        "c_outer": -(-wl.in_channels // ic_block),
        "ow_padded": ow_p,
        "hp": hp,
        "wp": wp,
        "needs_pack": needs_pack,
    }


def direct_blocked_packed_shape(wl: Conv2dWorkload, oc_block: int, ic_block: int) -> tuple[int, ...]:
    """``(ceil(K/ob), ceil(C/ib), KH, KW, ib, ob)`` -- OIHW with both channel axes blocked (``OIHW[ib]i[ob]o``),
    zero-padded up to whole blocks."""
    return (
        -(-wl.out_channels // oc_block),
        -(-wl.in_channels // ic_block),
        wl.kernel_h,
        wl.kernel_w,
        ic_block,
        oc_block,
    )


def direct_blocked_pack_weight(weight: np.ndarray, wl: Conv2dWorkload, oc_block: int, ic_block: int) -> np.ndarray:
    """OIHW ``[K, C, KH, KW]`` -> ``[K/ob, C/ib, KH, KW, ib, ob]`` with zero rows for the padded channels."""
    k, c, kh, kw = weight.shape
    ko, co = -(-k // oc_block), -(-c // ic_block)
    w = np.zeros((ko * oc_block, co * ic_block, kh, kw), dtype=weight.dtype)
    w[:k, :c] = weight
    w = w.reshape(ko, oc_block, co, ic_block, kh, kw).transpose(0, 2, 4, 5, 3, 1)
    return np.ascontiguousarray(w)


def direct_blocked(wl: Conv2dWorkload, oc_block: int, ic_block: int, ow_tile: int) -> list[te.Tensor]:
    """Direct conv2d on channel-blocked data, the NCHW[x]c scheme of ``topi/nn/conv2d.py:conv2d_NCHWc``.

    Stages:

    - ``data_pack`` ``[N, ceil(C/ib), Hp, Wp, ib]``: zero padding and input-channel blocking of NCHW ``data`` in
      one pass (absent when ``ic_block == 1`` and nothing needs padding: the kernel then reads ``data``);
    - ``conv`` ``[N, ceil(K/ob), OH, OWp, ob]`` (NCHW[ob]c, OW rounded up to ``ow_tile``) =
      ``sum_{co, rh, rw, ci} data_pack[n, co, y*sh + rh*dh, x*sw + rw*dw, ci] * W[ko, co, rh, rw, ci, ki]``;
    - ``out`` ``[N, K, OH, OW]``: NCHW, padded channels and columns cropped.

    ``packed_weight`` is :func:`direct_blocked_pack_weight`. Requires ``groups == 1``. Returns
    ``[data, packed_weight, out]``.
    """
    if wl.groups != 1:
        raise ValueError(f"direct_blocked needs groups=1: {wl.describe()}")
    geo = direct_blocked_geometry(wl, oc_block, ic_block, ow_tile)
    c = wl.in_channels
    arg, data = input_view(wl)
    weight = te.placeholder(direct_blocked_packed_shape(wl, oc_block, ic_block), wl.dtype, name="packed_weight")
    pt, pl = wl.pad_top, wl.pad_left
    if geo["needs_pack"]:

        def _pack(n, co, h, w, ci):
            ch = co * ic_block + ci
            conds = []
            if c % ic_block:
                conds.append(ch < c)
            if pt:
                conds.append(h >= pt)
            if geo["hp"] - pt > wl.in_h:
                conds.append(h < pt + wl.in_h)
            if pl:
                conds.append(w >= pl)
            if geo["wp"] - pl > wl.in_w:
                conds.append(w < pl + wl.in_w)
            val = data[n, ch, h - pt, w - pl]
            if not conds:
                return val
            return te.if_then_else(tirx.all(*conds), val, tirx.const(0.0, wl.dtype))

        packed = te.compute(
            (wl.batch, geo["c_outer"], geo["hp"], geo["wp"], ic_block), _pack, name="data_pack"
        )

        def src(n, co, h, w, ci):
            return packed[n, co, h, w, ci]

    elif ic_block == 1:

        def src(n, co, h, w, ci):
            return data[n, co, h, w]

    else:  # NCHW[x]c input with ic_block == x: read the blocked input in place

        def src(n, co, h, w, ci):
            return arg[n, co, h, w, ci]

    co_ax = te.reduce_axis((0, geo["c_outer"]), name="co")
    ci_ax = te.reduce_axis((0, ic_block), name="ci")
    rh = te.reduce_axis((0, wl.kernel_h), name="rh")
    rw = te.reduce_axis((0, wl.kernel_w), name="rw")
    sh, sw, dh, dw = wl.stride_h, wl.stride_w, wl.dilation_h, wl.dilation_w
    conv = te.compute(
        (wl.batch, geo["k_outer"], wl.out_h, geo["ow_padded"], oc_block),
        lambda n, ko, y, x, ki: te.sum(
            src(n, co_ax, y * sh + rh * dh, x * sw + rw * dw, ci_ax) * weight[ko, co_ax, rh, rw, ci_ax, ki],
            axis=[co_ax, rh, rw, ci_ax],
        ),
        name="conv",
    )
    out = te.compute(
        wl.out_shape,
        lambda n, k, y, x: conv[n, k // oc_block, y, x, k % oc_block],
        name="out",
    )
    return [arg, weight, output_view(out, wl)]


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

    The form CUDA's implicit GEMM (``cuda/im2col.py``) schedules: with the output pixels on one flattened axis ``p``,
    a thread block's tile of ``p`` is one contiguous range, so the shared-memory slice of ``col`` it stages is
    exactly that range (with :func:`im2col_rows`' separate ``(y, x)`` axes a tile crossing a row boundary would
    stage whole rows). The CPU rules use :func:`im2col_rows`, whose 2-D rows keep the copy and the NCHW store
    contiguous and whose weight is blocked for the register tile.

    Returns ``[data, packed_weight, out]``; stages ``pad_temp`` (when padded), ``im2col``, ``gemm``, ``out``.
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


def im2col_blocked_packed_shape(wl: Conv2dWorkload, oc_block: int) -> tuple[int, ...]:
    """``(G, ceil((K/G) / kb), C/G * KH * KW, kb)`` -- per group, the GEMM left operand in ``kb``-row panels
    (output channels zero-padded up to whole panels)."""
    g = wl.groups
    return (g, -(-(wl.out_channels // g) // oc_block), (wl.in_channels // g) * wl.kernel_h * wl.kernel_w, oc_block)


def im2col_blocked_pack_weight(weight: np.ndarray, wl: Conv2dWorkload, oc_block: int) -> np.ndarray:
    """OIHW ``[K, C/G, KH, KW]`` -> ``[G, Kg/kb, C/G*KH*KW, kb]``, zero rows for the padded channels."""
    g, ko, r, kb = im2col_blocked_packed_shape(wl, oc_block)
    kg = wl.out_channels // g
    w = np.zeros((g, ko * kb, r), dtype=weight.dtype)
    w[:, :kg] = weight.reshape(g, kg, r)
    return np.ascontiguousarray(w.reshape(g, ko, kb, r).transpose(0, 1, 3, 2))


def im2col_rows(wl: Conv2dWorkload, oc_block: int, ow_tile: int) -> list[te.Tensor]:
    """im2col with the output rows kept 2-D, then a GEMM per group (any stride, padding, dilation, groups).

    Stages:

    - ``im2col`` ``col[n, g, r, y, x]`` ``[N, G, C/G*KH*KW, OH, OWp]`` (``r = (ic, kh, kw)``; OW zero-padded up
      to a multiple of ``ow_tile``; zero padding of the input folded in);
    - ``gemm`` ``[N, G, Kgp, OH, OWp]`` = ``sum_r W[g, k // kb, r, k % kb] * col[n, g, r, y, x]``
      (``Kgp`` = ``K/G`` rounded up to ``oc_block``);
    - ``out`` ``[N, K, OH, OW]`` (NCHW, padding cropped).

    Keeping ``(y, x)`` 2-D (rather than one flattened ``OH*OW`` axis) makes both the im2col copy and the output
    store contiguous along ``x``. ``packed_weight`` is :func:`im2col_blocked_pack_weight`.
    Returns ``[data, packed_weight, out]``.
    """
    g, cg, kg = wl.groups, wl.in_channels // wl.groups, wl.out_channels // wl.groups
    khw, kw_ = wl.kernel_h * wl.kernel_w, wl.kernel_w
    r_len = cg * khw
    ow_p = -(-wl.out_w // ow_tile) * ow_tile
    kgo = -(-kg // oc_block)
    arg, data = input_view(wl)
    weight = te.placeholder(im2col_blocked_packed_shape(wl, oc_block), wl.dtype, name="packed_weight")
    pt, pl = wl.pad_top, wl.pad_left

    def _col(n, gi, r, y, x):
        h = y * wl.stride_h + ((r % khw) // kw_) * wl.dilation_h - pt
        w = x * wl.stride_w + (r % kw_) * wl.dilation_w - pl
        conds = []
        if pt or wl.pad_bottom:
            conds += [h >= 0, h < wl.in_h]
        if pl or wl.pad_right or ow_p != wl.out_w:
            conds += [w >= 0, w < wl.in_w]
        val = data[n, gi * cg + r // khw, h, w]
        return te.if_then_else(tirx.all(*conds), val, tirx.const(0.0, wl.dtype)) if conds else val

    col = te.compute((wl.batch, g, r_len, wl.out_h, ow_p), _col, name="im2col")
    rk = te.reduce_axis((0, r_len), name="rk")
    gemm = te.compute(
        (wl.batch, g, kgo * oc_block, wl.out_h, ow_p),
        lambda n, gi, k, y, x: te.sum(weight[gi, k // oc_block, rk, k % oc_block] * col[n, gi, rk, y, x], axis=rk),
        name="gemm",
    )
    out = te.compute(
        wl.out_shape,
        lambda n, k, y, x: gemm[n, k // kg, k % kg, y, x],
        name="out",
    )
    return [arg, weight, output_view(out, wl)]


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


def _round_up(x: int, b: int) -> int:
    return (x + b - 1) // b * b


def winograd_packed_shape(wl: Conv2dWorkload, m: int, oc_block: int = 1) -> tuple[int, ...]:
    """``(alpha, alpha, C, K_pad)`` -- the transformed kernel U = G g G^T per (eps, nu), ``alpha = m + 2``.

    ``K_pad = ceil(K / oc_block) * oc_block``: output channels are zero-padded to a multiple of the GEMM's vector
    block so the batched GEMM never needs a boundary predicate.
    """
    a = m + 2
    return (a, a, wl.in_channels, _round_up(wl.out_channels, oc_block))


def winograd_pack_weight(weight: np.ndarray, wl: Conv2dWorkload, m: int, oc_block: int = 1) -> np.ndarray:
    """Kernel transform ``U[eps, nu, c, k] = (G g[k, c] G^T)[eps, nu]``, computed in float64 then cast.

    Output channels ``k >= K`` (padding up to a multiple of ``oc_block``) are zero.
    """
    _, _, g_mat = winograd_matrices(m)
    u = np.einsum("ar,kcrs,bs->abck", g_mat, weight.astype(np.float64), g_mat)
    out = np.zeros(winograd_packed_shape(wl, m, oc_block), dtype=np.float64)
    out[..., : wl.out_channels] = u
    return np.ascontiguousarray(out.astype(weight.dtype))


def winograd_tiles(wl: Conv2dWorkload, m: int) -> tuple[int, int]:
    """Number of m x m output tiles along H and W."""
    return math.ceil(wl.out_h / m), math.ceil(wl.out_w / m)


def _lincomb(coefs, terms, dtype: str):
    """``sum_i coefs[i] * terms[i]`` as a TE expression with zero coefficients dropped and +-1 not multiplied."""
    acc = None
    for c, t in zip(coefs, terms):
        c = float(c)
        if c == 0.0:
            continue
        if abs(c) == 1.0:
            term, neg = t, c < 0
        else:
            term, neg = t * tirx.const(c, dtype), False
        if acc is None:
            acc = -term if neg else term
        else:
            acc = acc - term if neg else acc + term
    return acc if acc is not None else tirx.const(0.0, dtype)


def _select(idx, exprs):
    """``exprs[idx]`` for a loop variable ``idx`` as a Select chain: folds to one expression once ``idx``'s loop
    is unrolled, so each Winograd transform output keeps only its own non-zero terms."""
    res = exprs[-1]
    for i in range(len(exprs) - 2, -1, -1):
        res = tirx.Select(idx == i, exprs[i], res)
    return res


def winograd(wl: Conv2dWorkload, m: int, oc_block: int = 1, p_tile: int = 1) -> list[te.Tensor]:
    """Winograd F(m x m, 3 x 3) for a 3x3, stride-1, dilation-1, groups-1 conv (Lavin & Gray 2016).

    ``alpha = m + 2``; ``P = N * nH * nW`` tiles (``nH = ceil(OH / m)``), padded to ``P_pad`` (multiple of
    ``p_tile``; extra tiles repeat the last one); ``K_pad`` = K rounded up to ``oc_block``. Stages:

    - ``pad_temp`` ``[N, nH*m+2, nW*m+2, C]``: zero-padded input, channels last (one gather pass over NCHW; every
      tile window then lies inside it, so no bounds test runs in the transforms);
    - ``data_tmp`` ``[P_pad, alpha, alpha, C]`` = d B and ``data_pack`` ``V[eps, nu, P_pad, C]`` = B^T d B, each
      output an explicit sparse linear combination (constants folded, zeros dropped once the loops unroll);
    - ``bgemm`` ``M[P_pad, eps, nu, K_pad] = sum_c U[eps, nu, c, k] V[eps, nu, p, c]``;
    - ``inv_tmp`` ``[P_pad, alpha, m, K_pad]`` = M A and ``inverse`` ``[N, nH*m, nW*m, K_pad]`` = A^T M A
      (channels last);
    - ``out`` NCHW ``[N, K, OH, OW]``: crop + transpose of ``inverse``.

    Returns ``[data, packed_weight (U, see winograd_packed_shape), out]``.
    """
    if not wl.is_winograd_shape():
        raise ValueError(f"Winograd F(m, 3) needs a 3x3, stride-1, dilation-1, groups-1 conv: {wl.describe()}")
    alpha = m + 2
    dt = wl.dtype
    a_np, b_np, _ = winograd_matrices(m)
    n_h, n_w = winograd_tiles(wl, m)
    per_img = n_h * n_w
    n_tiles = wl.batch * per_img
    p_pad = _round_up(n_tiles, p_tile)
    c, k = wl.in_channels, wl.out_channels
    k_pad = _round_up(k, oc_block)
    arg, data = input_view(wl)
    weight = te.placeholder(winograd_packed_shape(wl, m, oc_block), dt, name="packed_weight")
    hp, wp = n_h * m + 2, n_w * m + 2

    def _pad(n, y, x, ci):
        iy, ix = y - wl.pad_top, x - wl.pad_left
        inside = tirx.all(iy >= 0, iy < wl.in_h, ix >= 0, ix < wl.in_w)
        return tirx.if_then_else(
            inside,
            data[n, ci, tirx.min(tirx.max(iy, 0), wl.in_h - 1), tirx.min(tirx.max(ix, 0), wl.in_w - 1)],
            tirx.const(0.0, dt),
        )

    pad = te.compute((wl.batch, hp, wp, c), _pad, name="pad_temp")

    def _tile_origin(p):
        pc = tirx.min(p, n_tiles - 1)
        return pc // per_img, (pc % per_img) // n_w * m, (pc % n_w) * m

    def _dtmp(p, ra, nu, ci):
        n, y0, x0 = _tile_origin(p)
        row = [pad[n, y0 + ra, x0 + rb, ci] for rb in range(alpha)]
        return _select(nu, [_lincomb(b_np[:, j], row, dt) for j in range(alpha)])

    dtmp = te.compute((p_pad, alpha, alpha, c), _dtmp, name="data_tmp")

    def _dpack(eps, nu, p, ci):
        col = [dtmp[p, ra, nu, ci] for ra in range(alpha)]
        return _select(eps, [_lincomb(b_np[:, i], col, dt) for i in range(alpha)])

    data_pack = te.compute((alpha, alpha, p_pad, c), _dpack, name="data_pack")
    rc = te.reduce_axis((0, c), "rc")
    bgemm = te.compute(
        (p_pad, alpha, alpha, k_pad),
        lambda p, eps, nu, ko: te.sum(weight[eps, nu, rc, ko] * data_pack[eps, nu, p, rc], axis=rc),
        name="bgemm",
    )

    def _itmp(p, eps, vw, ko):
        row = [bgemm[p, eps, nu, ko] for nu in range(alpha)]
        return _select(vw, [_lincomb(a_np[:, j], row, dt) for j in range(m)])

    itmp = te.compute((p_pad, alpha, m, k_pad), _itmp, name="inv_tmp")

    def _inv(n, y, x, ko):
        p = n * per_img + (y // m) * n_w + x // m
        col = [itmp[p, eps, x % m, ko] for eps in range(alpha)]
        return _select(y % m, [_lincomb(a_np[:, i], col, dt) for i in range(m)])

    inverse = te.compute((wl.batch, n_h * m, n_w * m, k_pad), _inv, name="inverse")
    out = te.compute(wl.out_shape, lambda n, ko, y, x: inverse[n, y, x, ko], name="out")
    return [arg, weight, output_view(out, wl)]


# ------------------------------------------------------------------------------------------------------------
# Depthwise (groups == C, K = multiplier * C)
# ------------------------------------------------------------------------------------------------------------
def depthwise_packed_shape(wl: Conv2dWorkload) -> tuple[int, ...]:
    """``(K, KH, KW)`` -- OIHW with the unit input-channel axis dropped."""
    return (wl.out_channels, wl.kernel_h, wl.kernel_w)


def depthwise_pack_weight(weight: np.ndarray, wl: Conv2dWorkload) -> np.ndarray:
    """OIHW ``[K, 1, KH, KW]`` -> ``[K, KH, KW]``."""
    return np.ascontiguousarray(weight.reshape(depthwise_packed_shape(wl)))


def depthwise(wl: Conv2dWorkload, deinterleave: bool = True) -> list[te.Tensor]:
    """``out[n, k, y, x] = sum_{rh, rw} pad[n, k // mult, y*sh + rh*dh, x*sw + rw*dw] * W[k, rh, rw]``.

    When the conv has padding or a horizontal stride ``sw > 1``, stage ``pad_temp``
    ``[N, C, Hp, sw, ceil(Wp / sw)]`` holds the zero-padded input with its columns de-interleaved by the stride
    (``pad_temp[n, c, y, x % sw, x // sw] = padded[n, c, y, x]``), so that for every tap ``rw`` consecutive
    output columns read consecutive ``pad_temp`` elements (unit-stride vector loads even for stride 2).
    With ``deinterleave=False`` the stage is the plain padded input ``[N, C, Hp, Wp]`` (created only when the conv
    has padding). Returns ``[data, packed_weight, out]``; stages ``pad_temp`` (optional) and ``out``.
    """
    if not wl.is_depthwise:
        raise ValueError(f"depthwise needs groups == C_in > 1: {wl.describe()}")
    mult = wl.out_channels // wl.in_channels
    data = te.placeholder(wl.data_shape, wl.dtype, name="data")
    weight = te.placeholder(depthwise_packed_shape(wl), wl.dtype, name="packed_weight")
    rh = te.reduce_axis((0, wl.kernel_h), name="rh")
    rw = te.reduce_axis((0, wl.kernel_w), name="rw")
    sh, sw, dh, dw = wl.stride_h, wl.stride_w, wl.dilation_h, wl.dilation_w
    has_pad = any((wl.pad_top, wl.pad_left, wl.pad_bottom, wl.pad_right))
    if not deinterleave:
        pad = pad_nchw(data, wl)
        out = te.compute(
            wl.out_shape,
            lambda n, k, y, x: te.sum(
                pad[n, k // mult, y * sh + rh * dh, x * sw + rw * dw] * weight[k, rh, rw], axis=[rh, rw]
            ),
            name="out",
        )
        return [data, weight, out]
    if not has_pad and sw == 1:
        out = te.compute(
            wl.out_shape,
            lambda n, k, y, x: te.sum(
                data[n, k // mult, y * sh + rh * dh, x + rw * dw] * weight[k, rh, rw], axis=[rh, rw]
            ),
            name="out",
        )
        return [data, weight, out]
    hp = wl.in_h + wl.pad_top + wl.pad_bottom
    wq = math.ceil((wl.in_w + wl.pad_left + wl.pad_right) / sw)

    def _pad(n, c, y, ph, xq):
        iy, ix = y - wl.pad_top, xq * sw + ph - wl.pad_left
        inside = tirx.all(iy >= 0, iy < wl.in_h, ix >= 0, ix < wl.in_w)
        return tirx.if_then_else(
            inside,
            data[n, c, tirx.min(tirx.max(iy, 0), wl.in_h - 1), tirx.min(tirx.max(ix, 0), wl.in_w - 1)],
            tirx.const(0.0, wl.dtype),
        )

    pad = te.compute((wl.batch, wl.in_channels, hp, sw, wq), _pad, name="pad_temp")
    out = te.compute(
        wl.out_shape,
        lambda n, k, y, x: te.sum(
            pad[n, k // mult, y * sh + rh * dh, (rw * dw) % sw, x + (rw * dw) // sw] * weight[k, rh, rw],
            axis=[rh, rw],
        ),
        name="out",
    )
    return [data, weight, out]


def depthwise_blocked_packed_shape(wl: Conv2dWorkload) -> tuple[int, ...]:
    """``(C/x, KH, KW, x)``: the depthwise filters with channels blocked like the NCHW[x]c data."""
    b = wl.out_block
    return (wl.out_channels // b, wl.kernel_h, wl.kernel_w, b)


def depthwise_blocked_pack_weight(weight: np.ndarray, wl: Conv2dWorkload) -> np.ndarray:
    """OIHW ``[C, 1, KH, KW]`` -> ``[C/x, KH, KW, x]``."""
    b = wl.out_block
    w = weight.reshape(wl.out_channels // b, b, wl.kernel_h, wl.kernel_w).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(w)


def depthwise_blocked(wl: Conv2dWorkload) -> list[te.Tensor]:
    """Depthwise conv2d (channel multiplier 1) on NCHW[x]c data, the layout of onnxruntime's MLAS NCHWc kernels
    (``onnxruntime/core/mlas/lib/snchwc.cpp``): every tap is one vector FMA over the ``x`` channels of a pixel,
    so strided and dilated convs read whole vectors too.

    ``out[n, co, y, xo, ci] = sum_{rh, rw} pad[n, co, y*sh + rh*dh, xo*sw + rw*dw, ci] * W[co, rh, rw, ci]``
    with stage ``pad_temp`` ``[N, C/x, Hp, Wp, x]`` (zero padding; absent without padding) and ``out``
    ``[N, C/x, OH, OW, x]``. ``packed_weight`` is :func:`depthwise_blocked_pack_weight`.
    Returns ``[data, packed_weight, out]``.
    """
    b = wl.data_block
    if not b or b != wl.out_block or not wl.is_depthwise or wl.out_channels != wl.in_channels:
        raise ValueError(f"depthwise_blocked needs NCHW[x]c and K == C == groups: {wl.describe()}")
    data = te.placeholder(wl.data_tensor_shape, wl.dtype, name="data")
    weight = te.placeholder(depthwise_blocked_packed_shape(wl), wl.dtype, name="packed_weight")
    if any((wl.pad_top, wl.pad_left, wl.pad_bottom, wl.pad_right)):
        pad = topi.nn.pad(data, [0, 0, wl.pad_top, wl.pad_left, 0], [0, 0, wl.pad_bottom, wl.pad_right, 0],
                          name="pad_temp")
    else:
        pad = data
    rh = te.reduce_axis((0, wl.kernel_h), name="rh")
    rw = te.reduce_axis((0, wl.kernel_w), name="rw")
    sh, sw, dh, dw = wl.stride_h, wl.stride_w, wl.dilation_h, wl.dilation_w
    out = te.compute(
        wl.out_tensor_shape,
        lambda n, co, y, x, ci: te.sum(
            pad[n, co, y * sh + rh * dh, x * sw + rw * dw, ci] * weight[co, rh, rw, ci], axis=[rh, rw]
        ),
        name="out",
    )
    return [data, weight, out]


def create_prim_func(tensors: list[te.Tensor]) -> tirx.PrimFunc:
    """``te.create_prim_func`` with int64 indices (as TVM's legalised Relax ops have, so FuseTIR can fuse our
    kernel with its element-wise consumers) and without a ``global_symbol`` (the compiler names kernels;
    duplicate symbols fail)."""
    func = te.create_prim_func(tensors, index_dtype_override="int64")
    return func.without_attr("global_symbol")
