"""Tiled direct conv2d for CUDA: shared-memory tiles of the (padded) input and of the weight per input-channel slice,
fetched cooperatively by all threads of the block, and a register tile per thread
(``oc_block`` output channels x ``oh_tile`` rows x ``ow_tile`` columns).
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from .. import compute
from ..rule import DirectFamily, Knobs
from ..target import TargetInfo
from ..workload import Conv2dWorkload
from . import base as B


class DirectCuda(DirectFamily, B.CudaRule):
    """Direct conv2d on the shared blocked compute (:func:`..compute.direct_blocked` with unit input-channel blocks
    and unit column tiles; ``oc_block`` divides K, so nothing is padded but the input's zero border, which is
    inlined into the shared-memory fill). Supports ``groups == 1`` (any kernel size, stride, padding, dilation).

    Knobs:
        oc_block: output channels per thread (the ``NCHW[oc_block]c`` compute's inner axis; divides K).
        oc_thr, oh_thr, ow_thr: threads per block along output-channel blocks, output rows and output columns
            (threadIdx.z/y/x).
        oh_tile, ow_tile: output rows / columns per thread (the register tile with ``oc_block``).
        ic_step: input channels staged in shared memory per reduction step.

    Block tile: ``oc_thr*oc_block`` channels x ``oh_thr*oh_tile`` rows x ``ow_thr*ow_tile`` columns; it must divide
    the output height/width (TVM's shared-buffer compaction over-allocates ragged tiles of strided convs).
    """

    def knob_space(self, wl: Conv2dWorkload, target: TargetInfo):
        """``oc_block``: a divisor of K up to 64 (the register-tile cap); ``oh_thr``/``oh_tile``: divisors of OH
        and ``ow_thr``/``ow_tile`` divisors of OW (the block tile divides the output); ``oc_thr``: 1 .. 1024
        threads; ``ic_step``: 1 .. 12288 (a shared-memory slice). :meth:`knob_constraints` then bounds threads per
        block (1024), shared memory (48 KiB) and the register tile (64 accumulators)."""
        oh, ow = B.divisor_domain(wl.out_h), B.divisor_domain(wl.out_w)
        return {
            "oc_block": B.divisor_domain(wl.out_channels, 64),
            "oc_thr": B.THREADS,
            "oh_thr": oh,
            "oh_tile": oh,
            "ow_thr": ow,
            "ow_tile": ow,
            "ic_step": B.SMEM_SLICE,
        }

    def knob_constraints(self, wl, target, knobs) -> str | None:
        """``oc_block`` divides K; the block tile divides (OH, OW); at most 1024 threads per block; the input and
        weight slices fit 48 KiB of shared memory; at most 64 accumulators per thread."""
        if wl.out_channels % knobs["oc_block"]:
            return f"knob 'oc_block': expected a divisor of K={wl.out_channels}, got {knobs['oc_block']}"
        # ragged output tiles make TVM's shared-buffer compaction fall back to the whole image on strided convs
        if wl.out_h % (knobs["oh_thr"] * knobs["oh_tile"]) or wl.out_w % (knobs["ow_thr"] * knobs["ow_tile"]):
            return "the block tile (oh_thr*oh_tile, ow_thr*ow_tile) must divide the output (OH, OW)"
        threads = knobs["oc_thr"] * knobs["oh_thr"] * knobs["ow_thr"]
        if threads > B.MAX_THREADS:
            return f"oc_thr*oh_thr*ow_thr = {threads} threads per block (at most {B.MAX_THREADS})"
        th = B.halo(knobs["oh_thr"] * knobs["oh_tile"], wl.stride_h, wl.kernel_h, wl.dilation_h)
        tw = B.halo(knobs["ow_thr"] * knobs["ow_tile"], wl.stride_w, wl.kernel_w, wl.dilation_w)
        smem = 4 * knobs["ic_step"] * (th * tw + knobs["oc_thr"] * knobs["oc_block"] * wl.kernel_h * wl.kernel_w)
        if smem > B.MAX_STATIC_SMEM:
            return f"ic_step={knobs['ic_step']}: {smem} bytes of shared memory (at most {B.MAX_STATIC_SMEM})"
        if knobs["oc_block"] * knobs["oh_tile"] * knobs["ow_tile"] > 64:
            return "register tile oc_block*oh_tile*ow_tile over 64 accumulators"
        return None

    def default_knobs(self, wl, target):
        k = wl.out_channels
        ob = next(b for b in (4, 2, 1) if k % b == 0)
        oc_thr = B.pow2_at_most(k // ob, 4)
        ow_tile = 2 if wl.out_w >= 16 and wl.out_w % 2 == 0 else 1
        ow_thr = B.largest_divisor(wl.out_w // ow_tile, 16)
        oh_tile = 2 if wl.out_h >= 16 and wl.out_h % 2 == 0 else 1
        oh_thr = B.largest_divisor(wl.out_h // oh_tile, max(1, 128 // (oc_thr * ow_thr)))
        taps = wl.kernel_h * wl.kernel_w
        kn = {
            "oc_block": ob,
            "oc_thr": oc_thr,
            "oh_thr": oh_thr,
            "oh_tile": oh_tile,
            "ow_thr": ow_thr,
            "ow_tile": ow_tile,
            # 1x1: more channels per barrier (also dodges an 8-byte ptxas spill seen on sm_80 with ic_step 8)
            "ic_step": min(wl.in_channels, 16 if taps == 1 else 8 if taps <= 9 else 2),
        }
        while self.knob_constraints(wl, target, kn) and kn["ic_step"] > 1:
            kn["ic_step"] //= 2
        return kn

    def candidate_knobs(self, wl, target):
        base = self.default_knobs(wl, target)
        out = self.add_candidates(wl, target, [base], self._tiled_settings(wl, base))
        return self.add_candidates(wl, target, out, (
            {"oc_block": ob, "oc_thr": kt, "oh_thr": yt, "oh_tile": yr, "ow_thr": xt, "ow_tile": xr, "ic_step": ict}
            for ob, kt, yt, yr, xt, xr, ict in (
                (4, 8, 4, 2, 8, 2, 8),
                (8, 4, 4, 2, 8, 2, 8),
                (4, 4, 8, 1, 8, 2, 8),
                (4, 4, 4, 2, 16, 1, 8),
                (8, 8, 2, 2, 8, 2, 4),
                (2, 4, 4, 2, 8, 4, 8),
                (4, 8, 2, 2, 8, 2, 16),
            )
        ))

    @staticmethod
    def _tiled_settings(wl, base):
        """``base`` with register tiles of 1, 2, 4 rows x 1, 2, 4 columns that divide the output, each with four
        (oc_block, oc_thr, thread budget) choices and the most threads along the output the budget allows."""
        for yr in (1, 2, 4):
            for xr in (1, 2, 4):
                if wl.out_h % yr or wl.out_w % xr:
                    continue
                for ob, kt, budget in ((4, 4, 128), (4, 8, 256), (8, 4, 128), (2, 8, 256)):
                    xt = B.largest_divisor(wl.out_w // xr, 16)
                    yt = B.largest_divisor(wl.out_h // yr, max(1, budget // (kt * xt)))
                    yield {**base, "oc_block": ob, "oc_thr": kt, "oh_thr": yt, "oh_tile": yr, "ow_thr": xt,
                           "ow_tile": xr}

    def weight_packing(self, wl, knobs):
        return compute.direct_blocked_packed_shape, compute.direct_blocked_pack_weight, (knobs["oc_block"], 1)

    def unscheduled(self, wl: Conv2dWorkload, knobs: Knobs) -> tvm.tirx.PrimFunc:
        """:func:`..compute.direct_blocked` with ``oc_block`` channel blocks, unit input-channel blocks and unit
        column tiles."""
        return compute.create_prim_func(compute.direct_blocked(wl, knobs["oc_block"], 1, 1))

    def apply(self, sch: s_tir.Schedule, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> None:
        """Grid over (image x channel blocks, row tiles, column tiles), threads over (channel blocks, rows,
        columns); input (zero border inlined) and weight slices of ``ic_step`` channels staged in shared memory;
        the register tile written straight to the NCHW output."""
        conv = sch.get_sblock("conv")
        has_pad = compute.direct_blocked_geometry(wl, knobs["oc_block"], 1, 1)["needs_pack"]
        local = sch.cache_write(conv, 0, "local")
        n, ko, y, x, ki, ic, rh, rw, ci = sch.get_loops(conv)
        kb, kt = sch.split(ko, [None, knobs["oc_thr"]])
        yb, yt, yr = sch.split(y, [None, knobs["oh_thr"], knobs["oh_tile"]])
        xb, xt, xr = sch.split(x, [None, knobs["ow_thr"], knobs["ow_tile"]])
        ico, ici = sch.split(ic, [None, knobs["ic_step"]])
        sch.reorder(n, kb, yb, xb, kt, yt, xt, ico, ici, rh, rw, ci, yr, xr, ki)
        sch.bind(sch.fuse(n, kb), "blockIdx.z")
        sch.bind(yb, "blockIdx.y")
        sch.bind(xb, "blockIdx.x")
        sch.bind(kt, "threadIdx.z")
        sch.bind(yt, "threadIdx.y")
        sch.bind(xt, "threadIdx.x")
        # operand 0 is the padded input (or the data itself without padding), operand 1 the packed weight
        d_s = sch.cache_read(conv, 0, "shared")
        w_s = sch.cache_read(conv, 1, "shared")
        for s in (d_s, w_s):
            sch.compute_at(s, ico, preserve_unit_loops=True)
        if has_pad:  # the zero padding happens while filling shared memory
            sch.compute_inline(sch.get_sblock("data_pack"))
        for s in (d_s, w_s):
            _coop_fetch_3d(sch, s, knobs)
        sch.reverse_compute_at(local, xt, preserve_unit_loops=True)
        sch.reverse_compute_inline(sch.get_sblock("out"))
        B.unroll_inner(sch, local, xt)
        for lp in (rh, rw, ci, yr, xr, ki):
            sch.unroll(lp)
        sch.decompose_reduction(conv, ico)


def _coop_fetch_3d(sch: s_tir.Schedule, block, knobs: Knobs) -> None:
    """Spread a shared-memory fill over the block's (z, y, x) = (oc_thr, oh_thr, ow_thr) threads."""
    n_own = len(sch.get(block).iter_vars)
    fused = sch.fuse(*sch.get_loops(block)[-n_own:])
    _, tz, ty, tx = sch.split(fused, [None, knobs["oc_thr"], knobs["oh_thr"], knobs["ow_thr"]])
    sch.bind(tz, "threadIdx.z")
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
