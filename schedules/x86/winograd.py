"""Winograd F(m x m, 3 x 3) conv2d for x86 (Lavin & Gray 2016), m in {2, 4, 6}; kernel transform at compile time."""

from __future__ import annotations

import tvm
from tvm import s_tir

from .. import compute
from ..rule import Conv2dRule, Knobs
from ..target import TargetInfo
from ..workload import Conv2dWorkload


class WinogradX86(Conv2dRule):
    """Knobs: ``tile`` (m, output tile size: 2 or 4; 6 when the error bound allows). Supports 3x3, stride 1,
    dilation 1, groups 1."""

    family = "winograd"
    arch = "x86"

    def unsupported_reason(self, wl, target):
        if not wl.is_winograd_shape():
            return "Winograd needs a 3x3, stride-1, dilation-1, groups-1 conv"
        return None

    def default_knobs(self, wl, target):
        return {"tile": 4 if min(wl.out_h, wl.out_w) >= 8 else 2}

    def packed_weight_shape(self, wl, knobs):
        return compute.winograd_packed_shape(wl, knobs["tile"])

    def pack_weight(self, weight, wl, knobs):
        return compute.winograd_pack_weight(weight, wl, knobs["tile"])

    def build(self, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> tvm.tirx.PrimFunc:
        self.check(wl, target)
        sch = s_tir.Schedule(compute.create_prim_func(compute.winograd(wl, knobs["tile"])))
        for name in ("A", "B", "input_tile"):
            sch.compute_inline(sch.get_sblock(name))
        try:
            sch.compute_inline(sch.get_sblock("pad_temp"))
        except Exception:
            pass
        out_loops = sch.get_loops(sch.get_sblock("out"))
        sch.parallel(sch.fuse(out_loops[0], out_loops[1]))
        for name in ("data_pack", "bgemm", "inverse"):
            blk = sch.get_sblock(name)
            loops = sch.get_loops(blk)
            sch.parallel(sch.fuse(loops[0], loops[1]) if name != "inverse" else loops[0])
        return sch.mod["main"]
