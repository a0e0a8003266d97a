"""im2col + GEMM conv2d for aarch64 NEON: any stride, padding, dilation and groups (the universal fallback).

The GEMM ``gemm[n, g, k, p] = sum_r W[g, k, r] * col[n, g, r, p]`` is tiled ``k_tile x p_vec`` into a NEON
register block (``p_vec`` output pixels = ``p_vec / 4`` q registers per row, ``k_tile`` rows), accumulated in
registers over the whole ``r`` reduction: each step broadcasts one weight and ``fmla``s one ``col`` vector
(Chellapilla et al. 2006; the blocking is the BLIS micro-kernel's, Van Zee & van de Geijn 2015).
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from .. import compute
from ..rule import Conv2dRule, Knobs
from ..target import TargetInfo
from ..workload import Conv2dWorkload
from .common import check_divides, has_padding, row_tile, vector_block, vectors


class Im2colArm(Conv2dRule):
    """Knobs: ``p_vec`` (GEMM columns = output pixels per register row, divides OH*OW; a multiple of 4 is one
    or more full NEON vectors), ``k_tile`` (output channels per register block, divides K/groups;
    ``k_tile * p_vec / 4 <= 16`` accumulators). Supports every conv2d."""

    family = "im2col"
    arch = "arm"

    def unsupported_reason(self, wl, target):
        return None

    def default_knobs(self, wl, target):
        p = wl.out_h * wl.out_w
        pv = vector_block(p, target.vector_lanes, cap_vectors=2)
        return {"p_vec": pv, "k_tile": row_tile(wl.out_channels // wl.groups, vectors(pv, target.vector_lanes))}

    def candidate_knobs(self, wl, target):
        p, kg = wl.out_h * wl.out_w, wl.out_channels // wl.groups
        out = [self.default_knobs(wl, target)]
        for pv in (4, 8, 12, 16):
            if p % pv:
                continue
            for kt in (1, 2, 4, 6, 8):
                if kg % kt == 0 and kt * vectors(pv, target.vector_lanes) <= 24:
                    k = {"p_vec": pv, "k_tile": kt}
                    if k not in out:
                        out.append(k)
        return out

    def packed_weight_shape(self, wl, knobs):
        return compute.im2col_packed_shape(wl)

    def pack_weight(self, weight, wl, knobs):
        return compute.im2col_pack_weight(weight, wl)

    def build(self, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> tvm.tirx.PrimFunc:
        pv, kt = knobs["p_vec"], knobs["k_tile"]
        check_divides("p_vec", pv, wl.out_h * wl.out_w, "OH*OW")
        check_divides("k_tile", kt, wl.out_channels // wl.groups, "K/groups")
        sch = s_tir.Schedule(compute.create_prim_func(compute.im2col_gemm(wl)))
        if has_padding(wl):
            sch.compute_inline(sch.get_sblock("pad_temp"))
        col = sch.get_sblock("im2col")
        cl = sch.get_loops(col)
        sch.parallel(sch.fuse(*cl[:3]))
        gemm = sch.get_sblock("gemm")
        n, g, k, p, r = sch.get_loops(gemm)
        ko, ki = sch.split(k, [None, kt])
        po, pi = sch.split(p, [None, pv])
        sch.reorder(n, g, ko, po, r, ki, pi)
        sch.parallel(sch.fuse(n, g, ko))
        sch.unroll(ki)
        sch.vectorize(pi)
        # accumulate the kt x pv tile in a local buffer scoped to one po iteration (kept in q registers)
        acc = sch.cache_write(gemm, 0, "local")
        sch.reverse_compute_at(acc, po)
        al = sch.get_loops(acc)
        sch.unroll(al[-2])
        sch.vectorize(al[-1])
        init = sch.decompose_reduction(gemm, r)
        il = sch.get_loops(init)
        sch.unroll(il[-2])
        sch.vectorize(il[-1])
        out_loops = sch.get_loops(sch.get_sblock("out"))
        sch.parallel(sch.fuse(out_loops[0], out_loops[1]))
        sch.vectorize(out_loops[-1]) if wl.out_w % target.vector_lanes == 0 else None
        return sch.mod["main"]
