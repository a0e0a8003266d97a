"""Direct conv2d for aarch64 NEON: output channels blocked by ``oc_block`` (4 or 8: one or two q registers), a
register tile of ``ow_tile`` output columns x ``oc_block`` channels kept in registers over the whole
(C, KH, KW) reduction, broadcast-input x vector-weight ``fmla`` (the NCHW[x]c scheme of
``topi/nn/conv2d.py:conv2d_NCHWc``, sized for 32 NEON registers)."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import s_tir

from .. import compute
from ..rule import Conv2dRule, Knobs
from ..target import TargetInfo
from ..workload import Conv2dWorkload
from .common import check_divides, has_padding, largest_divisor, row_tile, vector_block, vectors


class DirectArm(Conv2dRule):
    """Knobs: ``oc_block`` (output channels per register block, divides K; 8 = two NEON vectors), ``ow_tile``
    (output columns per register tile, divides OW; ``ow_tile * oc_block / 4 <= 16`` accumulators).
    Supports ``groups == 1``."""

    family = "direct"
    arch = "arm"

    def unsupported_reason(self, wl, target):
        if wl.groups != 1:
            return "grouped/depthwise conv (groups != 1)"
        return None

    def default_knobs(self, wl, target):
        ob = vector_block(wl.out_channels, target.vector_lanes)
        return {"oc_block": ob, "ow_tile": row_tile(wl.out_w, vectors(ob, target.vector_lanes))}

    def candidate_knobs(self, wl, target):
        out = [self.default_knobs(wl, target)]
        for ob in (4, 8, 16):
            if wl.out_channels % ob:
                continue
            for owt in (2, 4, 6, 8, 12):
                if wl.out_w % owt == 0 and owt * vectors(ob, target.vector_lanes) <= 24:
                    k = {"oc_block": ob, "ow_tile": owt}
                    if k not in out:
                        out.append(k)
        return out

    def packed_weight_shape(self, wl, knobs):
        return compute.direct_packed_shape(wl, knobs["oc_block"])

    def pack_weight(self, weight: np.ndarray, wl, knobs):
        return compute.direct_pack_weight(weight, wl, knobs["oc_block"])

    def build(self, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> tvm.tirx.PrimFunc:
        self.check(wl, target)
        ob, owt = knobs["oc_block"], knobs["ow_tile"]
        check_divides("oc_block", ob, wl.out_channels, "K")
        check_divides("ow_tile", owt, wl.out_w, "OW")
        sch = s_tir.Schedule(compute.create_prim_func(compute.direct_nchwc(wl, ob)))
        if has_padding(wl):  # materialise the padded input once (no bounds checks in the FMA loop)
            pad = sch.get_sblock("pad_temp")
            pl = sch.get_loops(pad)
            sch.parallel(sch.fuse(pl[0], pl[1]))
        conv = sch.get_sblock("conv")
        n, ko, y, x, ki, ic, rh, rw = sch.get_loops(conv)
        xo, xi = sch.split(x, [None, owt])
        sch.reorder(n, ko, y, xo, ic, rh, rw, xi, ki)
        sch.parallel(sch.fuse(n, ko, y))
        sch.unroll(rw)
        sch.unroll(xi)
        sch.vectorize(ki)
        # the owt x ob tile lives in a local buffer scoped to one xo iteration: LLVM keeps it in q registers
        sch.set_scope(conv, 0, "local")
        out = sch.get_sblock("out")
        sch.reverse_compute_at(out, xo)
        ol = sch.get_loops(out)
        sch.unroll(ol[-3])  # the oc_block loop of the NCHW[x]c -> NCHW write-back
        if owt % target.vector_lanes == 0:
            sch.vectorize(ol[-1])
        init = sch.decompose_reduction(conv, ic)
        sch.vectorize(sch.get_loops(init)[-1])
        return sch.mod["main"]
