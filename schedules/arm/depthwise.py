"""Depthwise conv2d (groups == C, any channel multiplier) for aarch64 NEON.

Vectorised along output columns: a register tile of ``oh_tile`` rows x ``ow_tile`` columns (``ow_tile / 4`` q
registers per row, ``<= 16`` accumulators) accumulated over the KH x KW window, each step one broadcast weight x
one input vector ``fmla``. The zero-padded input plane of one channel is built right before its tile loop (small,
cache resident), so the FMA loop has no bounds tests.
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from .. import compute
from ..rule import Conv2dRule, Knobs
from ..target import TargetInfo
from ..workload import Conv2dWorkload
from .common import check_divides, has_padding, row_tile, vector_block, vectors


class DepthwiseArm(Conv2dRule):
    """Knobs: ``ow_tile`` (output columns per register row, divides OW; a multiple of 4 fills NEON vectors),
    ``oh_tile`` (output rows per register tile, divides OH; ``oh_tile * ow_tile / 4 <= 16`` accumulators).
    Supports ``groups == C_in`` (any channel multiplier, stride, dilation, padding)."""

    family = "depthwise"
    arch = "arm"

    def unsupported_reason(self, wl, target):
        if not wl.is_depthwise:
            return "not depthwise (groups != C_in)"
        return None

    def default_knobs(self, wl, target):
        owt = vector_block(wl.out_w, target.vector_lanes, cap_vectors=2)
        return {"ow_tile": owt, "oh_tile": row_tile(wl.out_h, vectors(owt, target.vector_lanes), cap=4)}

    def candidate_knobs(self, wl, target):
        out = [self.default_knobs(wl, target)]
        for owt in (4, 8, 12, 16):
            if wl.out_w % owt:
                continue
            for oht in (1, 2, 4, 7, 8):
                if wl.out_h % oht == 0 and oht * vectors(owt, target.vector_lanes) <= 16:
                    k = {"ow_tile": owt, "oh_tile": oht}
                    if k not in out:
                        out.append(k)
        return out

    def packed_weight_shape(self, wl, knobs):
        return compute.depthwise_packed_shape(wl)

    def pack_weight(self, weight, wl, knobs):
        return compute.depthwise_pack_weight(weight, wl)

    def build(self, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> tvm.tirx.PrimFunc:
        self.check(wl, target)
        owt, oht = knobs["ow_tile"], knobs["oh_tile"]
        check_divides("ow_tile", owt, wl.out_w, "OW")
        check_divides("oh_tile", oht, wl.out_h, "OH")
        sch = s_tir.Schedule(compute.create_prim_func(compute.depthwise(wl)))
        out = sch.get_sblock("out")
        n, k, y, x, rh, rw = sch.get_loops(out)
        yo, yi = sch.split(y, [None, oht])
        xo, xi = sch.split(x, [None, owt])
        sch.reorder(n, k, yo, xo, rh, rw, yi, xi)
        nk = sch.fuse(n, k)
        sch.parallel(nk)
        sch.unroll(rw)
        sch.unroll(yi)
        sch.vectorize(xi)
        acc = sch.cache_write(out, 0, "local")
        sch.reverse_compute_at(acc, xo)
        al = sch.get_loops(acc)
        sch.unroll(al[-2])
        sch.vectorize(al[-1])
        init = sch.decompose_reduction(out, rh)
        il = sch.get_loops(init)
        sch.unroll(il[-2])
        sch.vectorize(il[-1])
        if has_padding(wl):
            pad = sch.get_sblock("pad_temp")
            sch.compute_at(pad, nk)
            sch.vectorize(sch.get_loops(pad)[-1])
        return sch.mod["main"]
