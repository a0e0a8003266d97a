"""Tiled direct conv2d for x86: output channels blocked by the vector width (NCHW[x]c tile), register tile over
output columns, broadcast-input x vector-weight FMA (the layout of ``topi/nn/conv2d.py:conv2d_NCHWc``)."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import s_tir

from .. import compute
from ..rule import Conv2dRule, Knobs
from ..target import TargetInfo
from ..workload import Conv2dWorkload


def _largest_divisor(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


class DirectX86(Conv2dRule):
    """Knobs: ``oc_block`` (output channels per vector, divides K), ``ow_tile`` (output columns per register
    tile, divides OW). Supports ``groups == 1``."""

    family = "direct"
    arch = "x86"

    def unsupported_reason(self, wl, target):
        if wl.groups != 1:
            return "grouped/depthwise conv (groups != 1)"
        return None

    def default_knobs(self, wl, target):
        return {
            "oc_block": _largest_divisor(wl.out_channels, target.vector_lanes),
            "ow_tile": _largest_divisor(wl.out_w, 8),
        }

    def packed_weight_shape(self, wl, knobs):
        return compute.direct_packed_shape(wl, knobs["oc_block"])

    def pack_weight(self, weight: np.ndarray, wl, knobs):
        return compute.direct_pack_weight(weight, wl, knobs["oc_block"])

    def build(self, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> tvm.tirx.PrimFunc:
        self.check(wl, target)
        ob, owt = knobs["oc_block"], knobs["ow_tile"]
        sch = s_tir.Schedule(compute.create_prim_func(compute.direct_nchwc(wl, ob)))
        conv = sch.get_sblock("conv")
        n, ko, y, x, ki, ic, rh, rw = sch.get_loops(conv)
        xo, xi = sch.split(x, [None, owt])
        sch.reorder(n, ko, y, xo, ic, rh, rw, xi, ki)
        outer = sch.fuse(n, ko, y)
        sch.parallel(outer)
        sch.vectorize(ki)
        sch.unroll(xi)
        out = sch.get_sblock("out")
        sch.reverse_compute_at(out, xo)
        sch.decompose_reduction(conv, ic)
        return sch.mod["main"]
