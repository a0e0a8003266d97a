"""Depthwise conv2d (groups == C, any channel multiplier) for CUDA: one thread block per (image, channel, output
tile); the input tile with its halo is fetched cooperatively into shared memory, each thread computes a
``y_reg x x_reg`` register tile.
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from .. import compute
from ..rule import Knobs
from ..target import TargetInfo
from ..workload import Conv2dWorkload
from . import _common as C
from ._common import divisor_domain


def _halo(t: int, stride: int, k: int, dil: int) -> int:
    return (t - 1) * stride + (k - 1) * dil + 1


class DepthwiseCuda(C.CudaRule):
    """Knobs: ``y_thr``/``x_thr`` threads per block (threadIdx.y/x), ``y_reg``/``x_reg`` outputs per thread along
    rows/columns. Block tile ``y_thr*y_reg`` x ``x_thr*x_reg`` of one output channel; it must divide the output
    (TVM's shared-buffer compaction over-allocates ragged tiles of strided convs). Supports ``groups == C_in``.
    """

    family = "depthwise"

    def knob_space(self, wl: Conv2dWorkload, target: TargetInfo):
        """``y_thr``/``y_reg``: divisors of OH, ``x_thr``/``x_reg``: divisors of OW (the block tile divides the
        output); :meth:`_valid` bounds threads per block, shared memory and the register tile (32 outputs)."""
        oh, ow = divisor_domain(wl.out_h), divisor_domain(wl.out_w)
        return {"y_thr": oh, "y_reg": oh, "x_thr": ow, "x_reg": ow}

    def default_knobs(self, wl, target):
        x_reg = 2 if wl.out_w >= 32 and wl.out_w % 2 == 0 else 1
        x_thr = C.largest_divisor(wl.out_w // x_reg, 32)
        y_reg = 2 if wl.out_h >= 32 and wl.out_h % 2 == 0 else 1
        y_thr = C.largest_divisor(wl.out_h // y_reg, max(1, 256 // x_thr))
        return {"y_thr": y_thr, "y_reg": y_reg, "x_thr": x_thr, "x_reg": x_reg}

    def candidate_knobs(self, wl, target):
        out = [self.default_knobs(wl, target)]
        for yr, xr, budget in ((1, 1, 256), (2, 2, 128), (1, 2, 128), (2, 1, 256), (4, 2, 64), (1, 4, 128)):
            if wl.out_h % yr or wl.out_w % xr:
                continue
            xt = C.largest_divisor(wl.out_w // xr, 32)
            yt = C.largest_divisor(wl.out_h // yr, max(1, budget // xt))
            kn = {"y_thr": yt, "y_reg": yr, "x_thr": xt, "x_reg": xr}
            if kn not in out and self._valid(wl, kn) is None:
                out.append(kn)
        return out

    @staticmethod
    def _valid(wl, kn) -> str | None:
        if wl.out_h % (kn["y_thr"] * kn["y_reg"]) or wl.out_w % (kn["x_thr"] * kn["x_reg"]):
            return "the block tile must divide the output (OH, OW)"
        threads = kn["y_thr"] * kn["x_thr"]
        if threads > C.MAX_THREADS:
            return f"{threads} threads per block"
        th = _halo(kn["y_thr"] * kn["y_reg"], wl.stride_h, wl.kernel_h, wl.dilation_h)
        tw = _halo(kn["x_thr"] * kn["x_reg"], wl.stride_w, wl.kernel_w, wl.dilation_w)
        if 4 * th * tw > C.MAX_STATIC_SMEM:
            return f"{4 * th * tw} bytes of shared memory"
        if kn["y_reg"] * kn["x_reg"] > 32:
            return "register tile over 32 outputs"
        return None

    def packed_weight_shape(self, wl, knobs):
        return compute.depthwise_packed_shape(wl)

    def pack_weight(self, weight, wl, knobs):
        return compute.depthwise_pack_weight(weight, wl)

    def unscheduled(self, wl: Conv2dWorkload, knobs: Knobs) -> tvm.tirx.PrimFunc:
        """The shared target-independent compute this rule schedules."""
        return compute.create_prim_func(compute.depthwise(wl))

    def schedule(self, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> s_tir.Schedule:
        """The traced schedule behind :meth:`build` (tests replay its trace on CPU without thread bindings)."""
        sch = self.start(wl, target, knobs)
        out = sch.get_sblock("out")
        has_pad = any((wl.pad_top, wl.pad_left, wl.pad_bottom, wl.pad_right))
        local = sch.cache_write(out, 0, "local")
        n, k, y, x, rh, rw = sch.get_loops(out)
        yb, yt, yr = sch.split(y, [None, knobs["y_thr"], knobs["y_reg"]])
        xb, xt, xr = sch.split(x, [None, knobs["x_thr"], knobs["x_reg"]])
        sch.reorder(n, k, yb, xb, yt, xt, rh, rw, yr, xr)
        sch.bind(sch.fuse(n, k), "blockIdx.z")
        sch.bind(yb, "blockIdx.y")
        sch.bind(xb, "blockIdx.x")
        sch.bind(yt, "threadIdx.y")
        sch.bind(xt, "threadIdx.x")
        d_s = sch.cache_read(out, 0, "shared")
        sch.compute_at(d_s, xb, preserve_unit_loops=True)
        if has_pad:
            sch.compute_inline(sch.get_sblock("pad_temp"))
        C.coop_fetch(sch, d_s, knobs["x_thr"], knobs["y_thr"])
        sch.reverse_compute_at(local, xt, preserve_unit_loops=True)
        C.unroll_inner(sch, local, xt)
        for lp in (rh, rw, yr, xr):
            sch.unroll(lp)
        sch.decompose_reduction(out, rh)
        return sch
