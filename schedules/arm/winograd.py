"""Winograd F(m x m, 3 x 3) conv2d for aarch64 NEON (Lavin & Gray 2016), m in {2, 4, 6}; the kernel transform
U = G g G^T runs in NumPy at compile time (:func:`convpipe.schedules.compute.winograd_pack_weight`). Stages and
layouts: :func:`convpipe.schedules.compute.winograd` (channels last, K padded to ``k_block``, tiles to
``p_block``).

Schedule, sized for 32 128-bit NEON registers (4 fp32 lanes):

- ``pad_temp`` (NCHW -> padded channels-last), vectorised over C;
- input transform ``data_tmp``/``data_pack`` per (tile, 4-channel vector), alpha x alpha unrolled so each output
  is its own sparse sum of constants;
- batched GEMM per (eps, nu) and ``k_block`` output channels: a ``p_block`` x ``k_block`` register tile
  (``p_block * k_block / 4 <= 16`` q-register accumulators) of broadcast(V) x vector(U) ``fmla`` over C;
- output transform ``inv_tmp``/``inverse`` unrolled, vectorised over K; crop + transpose to NCHW.
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from .. import compute
from ..rule import Conv2dRule, Knobs
from ..target import TargetInfo
from ..workload import Conv2dWorkload
from .common import MAX_ACCUMULATORS, NEON_LANES, largest_divisor


def _lane_divisor(n: int, lanes: int) -> int:
    """Vector width along an axis of extent ``n``: ``lanes`` if it divides ``n``, else the largest divisor below."""
    return largest_divisor(n, lanes)


class WinogradArm(Conv2dRule):
    """Winograd F(m x m, 3 x 3) for 3x3, stride-1, dilation-1, groups-1 convs (any N, C, K, H, W, pads).

    Knobs:
        tile: m (2, 4 or 6): multiplies per output fall from 9 to ``(m + 2)^2 / m^2``; fp32 error grows with m.
        k_block: output channels per GEMM register tile, a multiple of 4 (one q register per 4); K is zero-padded
            to it in the packed weight.
        p_block: Winograd tiles per GEMM register tile (``p_block * k_block / 4`` accumulators); the tile count is
            padded up to it.

    Packed weight: ``float32[alpha, alpha, C, ceil(K / k_block) * k_block]``.
    """

    family = "winograd"
    arch = "arm"

    def unsupported_reason(self, wl, target):
        if not wl.is_winograd_shape():
            return "Winograd needs a 3x3, stride-1, dilation-1, groups-1 conv"
        return None

    @staticmethod
    def _default_tile(wl: Conv2dWorkload) -> int:
        return 4 if min(wl.out_h, wl.out_w) >= 6 else 2

    def default_knobs(self, wl, target):
        lanes = target.vector_lanes or NEON_LANES
        m = self._default_tile(wl)
        k_block = 2 * lanes if wl.out_channels > lanes else lanes
        n_h, n_w = compute.winograd_tiles(wl, m)
        p_block = min(MAX_ACCUMULATORS // (k_block // lanes), wl.batch * n_h * n_w)
        # 8 x 8 = 16 accumulators; prefer a p_block dividing the tile count (no padded tiles)
        p_block = max(largest_divisor(wl.batch * n_h * n_w, p_block), min(4, p_block))
        return {"tile": m, "k_block": k_block, "p_block": p_block}

    def candidate_knobs(self, wl, target):
        lanes = target.vector_lanes or NEON_LANES
        out = [self.default_knobs(wl, target)]
        for m in (2, 4, 6):
            for kb, pb in ((lanes, 8), (lanes, 12), (2 * lanes, 4), (2 * lanes, 6), (2 * lanes, 8), (3 * lanes, 4)):
                cand = {"tile": m, "k_block": kb, "p_block": pb}
                if cand not in out:
                    out.append(cand)
        return out

    def packed_weight_shape(self, wl, knobs):
        return compute.winograd_packed_shape(wl, knobs["tile"], knobs["k_block"])

    def pack_weight(self, weight, wl, knobs):
        return compute.winograd_pack_weight(weight, wl, knobs["tile"], knobs["k_block"])

    def build(self, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> tvm.tirx.PrimFunc:
        self.check(wl, target)
        lanes = target.vector_lanes or NEON_LANES
        m, kb, pb = int(knobs["tile"]), int(knobs["k_block"]), int(knobs["p_block"])
        if m not in (2, 4, 6) or kb < 1 or pb < 1:
            raise ValueError(f"invalid winograd knobs {knobs}: tile in 2/4/6, k_block and p_block >= 1")
        kv = _lane_divisor(kb, lanes)  # vector width along K (GEMM, output transform)
        cv = _lane_divisor(wl.in_channels, lanes)  # vector width along C (input transform)
        sch = s_tir.Schedule(compute.create_prim_func(compute.winograd(wl, m, kb, pb)))

        # pad + NCHW -> NHWC
        pad = sch.get_sblock("pad_temp")
        n, y, x, c = sch.get_loops(pad)
        _, ci = sch.split(c, [None, cv])
        sch.parallel(sch.fuse(n, y))
        sch.vectorize(ci)

        # input transform V = B^T d B, per (tile, channel vector)
        dp = sch.get_sblock("data_pack")
        eps, nu, p, c = sch.get_loops(dp)
        co, ci = sch.split(c, [None, cv])
        sch.reorder(p, co, eps, nu, ci)
        sch.parallel(p)
        sch.unroll(eps)
        sch.unroll(nu)
        sch.vectorize(ci)
        dt = sch.get_sblock("data_tmp")
        sch.compute_at(dt, co)
        _, ra, nu2, c2 = sch.get_loops(dt)[-4:]
        sch.unroll(ra)
        sch.unroll(nu2)
        sch.vectorize(c2)

        # batched GEMM M = U V: p_block x k_block register tile, broadcast V x vector U
        bg = sch.get_sblock("bgemm")
        p, eps, nu, k, rc = sch.get_loops(bg)
        po, pi = sch.split(p, [None, pb])
        ko, kvo, kvi = sch.split(k, [None, kb // kv, kv])
        sch.reorder(eps, nu, ko, po, rc, pi, kvo, kvi)
        sch.parallel(sch.fuse(eps, nu, ko))
        acc = sch.cache_write(bg, 0, "local")
        sch.reverse_compute_at(acc, po)
        sch.unroll(pi)
        sch.unroll(kvo)
        sch.vectorize(kvi)
        a_p, a_k = sch.get_loops(acc)[-2:]
        a_ko, a_ki = sch.split(a_k, [None, kv])
        sch.unroll(a_p)
        sch.unroll(a_ko)
        sch.vectorize(a_ki)
        init = sch.decompose_reduction(bg, rc)
        i_k = sch.get_loops(init)[-1]
        i_ko, i_ki = sch.split(i_k, [None, kv])
        sch.vectorize(i_ki)

        # output transform Y = A^T M A, per (tile, channel vector)
        inv = sch.get_sblock("inverse")
        n, y, x, k = sch.get_loops(inv)
        th, vh = sch.split(y, [None, m])
        tw, vw = sch.split(x, [None, m])
        ko, ki = sch.split(k, [None, kv])
        sch.reorder(n, th, tw, ko, vh, vw, ki)
        sch.parallel(sch.fuse(n, th))
        sch.unroll(vh)
        sch.unroll(vw)
        sch.vectorize(ki)
        it = sch.get_sblock("inv_tmp")
        sch.compute_at(it, ko)
        _, e1, vw2, k2 = sch.get_loops(it)[-4:]
        sch.unroll(e1)
        sch.unroll(vw2)
        sch.vectorize(k2)

        # crop + NHWC -> NCHW
        o = sch.get_sblock("out")
        n, k, y, x = sch.get_loops(o)
        sch.reorder(n, y, k, x)
        sch.parallel(sch.fuse(n, y))
        return sch.mod["main"]
