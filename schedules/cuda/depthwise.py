"""Depthwise conv2d (groups == C, any channel multiplier) for CUDA: one thread block per (image, channel, output
tile); the input tile with its halo is fetched cooperatively into shared memory, each thread computes an
``oh_tile x ow_tile`` register tile.
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from .. import compute
from ..rule import DepthwiseFamily, Knobs
from ..target import TargetInfo
from ..workload import Conv2dWorkload
from . import base as B


class DepthwiseCuda(DepthwiseFamily, B.CudaRule):
    """Depthwise conv2d on :func:`..compute.depthwise` (NCHW, ``groups == C_in``, any channel multiplier).

    Knobs:
        oh_thr, ow_thr: threads per block along output rows and columns (threadIdx.y, threadIdx.x).
        oh_tile, ow_tile: output rows / columns per thread (the register tile).

    Block tile ``oh_thr*oh_tile`` x ``ow_thr*ow_tile`` of one output channel; it must divide the output (TVM's
    shared-buffer compaction over-allocates ragged tiles of strided convs).
    """

    def knob_space(self, wl: Conv2dWorkload, target: TargetInfo):
        """``oh_thr``/``oh_tile``: divisors of OH, ``ow_thr``/``ow_tile``: divisors of OW (the block tile divides
        the output); :meth:`knob_constraints` bounds threads per block, shared memory and the register tile
        (32 outputs)."""
        oh, ow = B.divisor_domain(wl.out_h), B.divisor_domain(wl.out_w)
        return {"oh_thr": oh, "oh_tile": oh, "ow_thr": ow, "ow_tile": ow}

    def knob_constraints(self, wl, target, knobs) -> str | None:
        """The block tile divides (OH, OW); at most 1024 threads per block; the input tile with its halo fits
        48 KiB of shared memory; at most 32 outputs per thread."""
        if wl.out_h % (knobs["oh_thr"] * knobs["oh_tile"]) or wl.out_w % (knobs["ow_thr"] * knobs["ow_tile"]):
            return "the block tile (oh_thr*oh_tile, ow_thr*ow_tile) must divide the output (OH, OW)"
        threads = knobs["oh_thr"] * knobs["ow_thr"]
        if threads > B.MAX_THREADS:
            return f"oh_thr*ow_thr = {threads} threads per block (at most {B.MAX_THREADS})"
        th = B.halo(knobs["oh_thr"] * knobs["oh_tile"], wl.stride_h, wl.kernel_h, wl.dilation_h)
        tw = B.halo(knobs["ow_thr"] * knobs["ow_tile"], wl.stride_w, wl.kernel_w, wl.dilation_w)
        if 4 * th * tw > B.MAX_STATIC_SMEM:
            return f"the input tile takes {4 * th * tw} bytes of shared memory (at most {B.MAX_STATIC_SMEM})"
        if knobs["oh_tile"] * knobs["ow_tile"] > 32:
            return "register tile oh_tile*ow_tile over 32 outputs"
        return None

    def default_knobs(self, wl, target):
        ow_tile = 2 if wl.out_w >= 32 and wl.out_w % 2 == 0 else 1
        ow_thr = B.largest_divisor(wl.out_w // ow_tile, 32)
        oh_tile = 2 if wl.out_h >= 32 and wl.out_h % 2 == 0 else 1
        oh_thr = B.largest_divisor(wl.out_h // oh_tile, max(1, 256 // ow_thr))
        return {"oh_thr": oh_thr, "oh_tile": oh_tile, "ow_thr": ow_thr, "ow_tile": ow_tile}

    def candidate_knobs(self, wl, target):
        return self.add_candidates(wl, target, [self.default_knobs(wl, target)], self._tiled_settings(wl))

    @staticmethod
    def _tiled_settings(wl):
        """Register tiles of rows x columns that divide the output, each with the most threads along the output
        its thread budget allows."""
        for yr, xr, budget in ((1, 1, 256), (2, 2, 128), (1, 2, 128), (2, 1, 256), (4, 2, 64), (1, 4, 128)):
            if wl.out_h % yr or wl.out_w % xr:
                continue
            xt = B.largest_divisor(wl.out_w // xr, 32)
            yt = B.largest_divisor(wl.out_h // yr, max(1, budget // xt))
            yield {"oh_thr": yt, "oh_tile": yr, "ow_thr": xt, "ow_tile": xr}

    def weight_packing(self, wl, knobs):
        return compute.depthwise_packed_shape, compute.depthwise_pack_weight, ()

    def unscheduled(self, wl: Conv2dWorkload, knobs: Knobs) -> tvm.tirx.PrimFunc:
        """:func:`..compute.depthwise` (stride-de-interleaved padded input)."""
        return compute.create_prim_func(compute.depthwise(wl))

    def apply(self, sch: s_tir.Schedule, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> None:
        """Grid over (image x channel, row tiles, column tiles), threads over (rows, columns); the input tile with
        its halo (zero padding inlined) staged in shared memory; the register tile written back per thread."""
        out = sch.get_sblock("out")
        has_pad = any((wl.pad_top, wl.pad_left, wl.pad_bottom, wl.pad_right))
        local = sch.cache_write(out, 0, "local")
        n, k, y, x, rh, rw = sch.get_loops(out)
        yb, yt, yr = sch.split(y, [None, knobs["oh_thr"], knobs["oh_tile"]])
        xb, xt, xr = sch.split(x, [None, knobs["ow_thr"], knobs["ow_tile"]])
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
        B.coop_fetch(sch, d_s, knobs["ow_thr"], knobs["oh_thr"])
        sch.reverse_compute_at(local, xt, preserve_unit_loops=True)
        B.unroll_inner(sch, local, xt)
        for lp in (rh, rw, yr, xr):
            sch.unroll(lp)
        sch.decompose_reduction(out, rh)
