"""Depthwise conv2d (groups == C) for x86, vectorised along output columns."""

from __future__ import annotations

import tvm
from tvm import s_tir

from .. import compute
from ..rule import Conv2dRule, Knobs
from ..target import TargetInfo
from ..workload import Conv2dWorkload


class DepthwiseX86(Conv2dRule):
    """Knobs: none yet. Supports ``groups == C_in`` (any channel multiplier)."""

    family = "depthwise"
    arch = "x86"

    def unsupported_reason(self, wl, target):
        if not wl.is_depthwise:
            return "not depthwise (groups != C_in)"
        return None

    def default_knobs(self, wl, target):
        return {}

    def packed_weight_shape(self, wl, knobs):
        return compute.depthwise_packed_shape(wl)

    def pack_weight(self, weight, wl, knobs):
        return compute.depthwise_pack_weight(weight, wl)

    def build(self, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> tvm.tirx.PrimFunc:
        self.check(wl, target)
        sch = s_tir.Schedule(compute.create_prim_func(compute.depthwise(wl)))
        out = sch.get_sblock("out")
        n, k, y, x, rh, rw = sch.get_loops(out)
        sch.parallel(sch.fuse(n, k))
        if wl.pad_top or wl.pad_left or wl.pad_bottom or wl.pad_right:
            sch.compute_at(sch.get_sblock("pad_temp"), y)
        return sch.mod["main"]
