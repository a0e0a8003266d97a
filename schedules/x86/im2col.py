"""im2col + GEMM conv2d for x86: any stride, padding, dilation and groups (the universal fallback)."""

from __future__ import annotations

import tvm
from tvm import s_tir

from .. import compute
from ..rule import Conv2dRule, Knobs
from ..target import TargetInfo
from ..workload import Conv2dWorkload


def _largest_divisor(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


class Im2colX86(Conv2dRule):
    """Knobs: ``p_vec`` (GEMM columns = output pixels per vector, divides OH*OW). Supports every conv2d."""

    family = "im2col"
    arch = "x86"

    def unsupported_reason(self, wl, target):
        return None

    def default_knobs(self, wl, target):
        return {"p_vec": _largest_divisor(wl.out_h * wl.out_w, target.vector_lanes)}

    def packed_weight_shape(self, wl, knobs):
        return compute.im2col_packed_shape(wl)

    def pack_weight(self, weight, wl, knobs):
        return compute.im2col_pack_weight(weight, wl)

    def build(self, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> tvm.tirx.PrimFunc:
        sch = s_tir.Schedule(compute.create_prim_func(compute.im2col_gemm(wl)))
        if wl.pad_top or wl.pad_left or wl.pad_bottom or wl.pad_right:
            sch.compute_inline(sch.get_sblock("pad_temp"))
        out_loops = sch.get_loops(sch.get_sblock("out"))
        sch.parallel(sch.fuse(out_loops[0], out_loops[1]))
        gemm = sch.get_sblock("gemm")
        n, g, k, p, r = sch.get_loops(gemm)
        po, pi = sch.split(p, [None, knobs["p_vec"]])
        sch.reorder(n, g, k, po, r, pi)
        sch.parallel(sch.fuse(n, g, k))
        sch.vectorize(pi)
        sch.decompose_reduction(gemm, r)
        col = sch.get_sblock("im2col")
        cl = sch.get_loops(col)
        sch.parallel(sch.fuse(*cl[:3]))
        return sch.mod["main"]
