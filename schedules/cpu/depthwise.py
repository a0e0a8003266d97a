"""Depthwise conv2d (groups == C, any channel multiplier, stride, padding, dilation, kernel size) for CPUs
(x86 AVX-512 / AVX2, aarch64 NEON).

Layout NCHW in and out (``topi/nn/depthwise_conv2d.py:depthwise_conv2d_nchw`` with a channel multiplier). Schedule:

- parallel over (batch, output channel);
- per channel, the zero-padded input plane is built once (``pad_temp``, computed at the channel loop, so the
  bounds test runs once per input pixel and never in the FMA loop); for horizontal stride ``s > 1`` its columns
  are de-interleaved by ``s`` so every tap reads unit-stride vectors;
- each output row is a register tile of ``ow_tile`` columns (vectorised; LLVM splits a 56-wide vector into
  3.5 zmm), ``oh_tile`` rows unrolled together; the KH x KW taps are unrolled as broadcast(weight) x vector(input)
  FMAs (``fmla v.4s`` on NEON) into a local accumulator.

In NCHW[x]c (:func:`..compute.depthwise_blocked`, channel multiplier 1) the vector runs along the ``x`` channels
of a pixel instead: parallel over (batch, channel block), the padded plane of one channel block built once per
block, register tiles of ``ow_tile`` output pixels of one row x ``x`` channels, taps unrolled. Strides and
dilations then cost nothing extra (every tap still reads whole vectors).
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from .. import compute
from ..rule import DepthwiseFamily, Knobs
from ..target import TargetInfo
from ..workload import Conv2dWorkload
from .base import CpuRule, divisors, has_block, largest_divisor, register_tile_reason, vector_registers, vectors


class DepthwiseCpu(DepthwiseFamily, CpuRule):
    """Depthwise conv2d, ``groups == C_in`` (``K = multiplier * C``), NCHW or (multiplier 1) NCHW[x]c.

    Knobs, NCHW:
        ow_tile: output columns per register tile, vectorised; divides OW (default: its largest divisor
            <= 4 x lanes). ``0`` selects the LLVM-vectorised variant (:meth:`_apply_auto`), the default for
            stride > 1 and for OW outside 8..32, where it measured faster on AVX-512.
        oh_tile: output rows per register tile, unrolled; divides OH.

    Knobs, NCHW[x]c:
        ow_tile: output pixels of a row per register tile, unrolled, each a vector of the ``x`` channels;
            divides OW.

    Packed weight: ``float32[K, KH, KW]`` (NCHW[x]c: ``float32[C/x, KH, KW, x]``).
    """

    def knob_space(self, wl: Conv2dWorkload, target: TargetInfo):
        """NCHW: ``ow_tile``: 0 (the LLVM-vectorised variant) or a divisor of OW; ``oh_tile``: a divisor of OH;
        with ``ow_tile > 0`` the register tile ``oh_tile * ceil(ow_tile / lanes)`` fits the register file.
        NCHW[x]c: ``ow_tile``: a divisor of OW whose register tile ``ow_tile * ceil(x / lanes)`` fits the register
        file (or 1, one pixel of a block wider than the whole file). See :meth:`knob_constraints`."""
        if wl.data_block:
            return {"ow_tile": tuple(divisors(wl.out_w))}
        return {"ow_tile": (0, *divisors(wl.out_w)), "oh_tile": tuple(divisors(wl.out_h))}

    def knob_constraints(self, wl, target, knobs):
        """The register tile fits the vector register file (see :meth:`knob_space`)."""
        lanes = target.vector_lanes
        if wl.data_block:
            if knobs["ow_tile"] == 1:
                return None
            acc = knobs["ow_tile"] * vectors(wl.data_block, lanes)
            return register_tile_reason(acc, target, "ow_tile x ceil(x / lanes)")
        if knobs["ow_tile"] == 0:
            return None
        acc = knobs["oh_tile"] * vectors(knobs["ow_tile"], lanes)
        return register_tile_reason(acc, target, "oh_tile x ceil(ow_tile / lanes)")

    def default_knobs(self, wl, target):
        if wl.data_block:
            return {"ow_tile": self._blocked_ow_tile(wl, target)}
        if wl.stride_w != 1 or not 8 <= wl.out_w <= 32:
            return {"ow_tile": 0, "oh_tile": 1}
        cap = 4 * target.vector_lanes
        ow_tile = max(d for d in divisors(wl.out_w) if d <= cap)
        # rows per tile: enough vector work per tile (about 2 zmm-rows of accumulators)
        want = max(1, (2 * target.vector_lanes) // ow_tile)
        oh_tile = max(d for d in divisors(wl.out_h) if d <= want)
        return {"ow_tile": ow_tile, "oh_tile": oh_tile}

    @staticmethod
    def _blocked_ow_tile(wl, target, cap: int | None = None) -> int:
        """Output pixels per register tile in NCHW[x]c: a divisor of OW, at most a quarter of the register
        file of accumulators (``ceil(x / lanes)`` registers each)."""
        regs = -(-wl.data_block // target.vector_lanes)
        cap = cap or max(vector_registers(target) // (4 * regs), 1)
        return largest_divisor(wl.out_w, cap)

    def candidate_knobs(self, wl, target):
        d = self.default_knobs(wl, target)
        if wl.data_block:
            regs = -(-wl.data_block // target.vector_lanes)
            # the last: nearly the whole register file (28 pixels of one vector each on AVX-512 and NEON)
            caps = (
                vector_registers(target) // (8 * regs),
                vector_registers(target) // (2 * regs),
                (vector_registers(target) - 4) // regs,
            )
            out = [d]
            for cap in caps:
                c = {"ow_tile": self._blocked_ow_tile(wl, target, max(cap, 1))}
                if c not in out:
                    out.append(c)
            return out
        out = [d]
        cap = 4 * target.vector_lanes
        for xv in sorted({d["ow_tile"], 0, *[v for v in divisors(wl.out_w) if 7 <= v <= cap]}, reverse=True):
            for yb in (1, 2, 4):
                c = {"ow_tile": xv, "oh_tile": yb}
                if wl.out_h % yb == 0 and c not in out:
                    out.append(c)
        return out[:8]

    def weight_packing(self, wl, knobs):
        if wl.data_block:
            return compute.depthwise_blocked_packed_shape, compute.depthwise_blocked_pack_weight, ()
        return compute.depthwise_packed_shape, compute.depthwise_pack_weight, ()

    def unscheduled(self, wl: Conv2dWorkload, knobs: Knobs) -> tvm.tirx.PrimFunc:
        """:func:`..compute.depthwise_blocked` for NCHW[x]c; for NCHW :func:`..compute.depthwise`, with the
        stride-de-interleaved padded input except for the LLVM-vectorised variant (``ow_tile == 0``)."""
        if wl.data_block:
            return compute.create_prim_func(compute.depthwise_blocked(wl))
        return compute.create_prim_func(compute.depthwise(wl, deinterleave=knobs["ow_tile"] != 0))

    def apply(self, sch: s_tir.Schedule, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> None:
        """Parallel over (batch, channel [block]), the padded plane built per channel [block], then the register
        tile of the module docstring (:meth:`_apply_blocked` for NCHW[x]c, :meth:`_apply_auto` for
        ``ow_tile == 0``)."""
        if wl.data_block:
            self._apply_blocked(sch, wl, knobs["ow_tile"])
            return
        xv, yb = knobs["ow_tile"], knobs["oh_tile"]
        if xv == 0:
            self._apply_auto(sch, wl)
            return
        out = sch.get_sblock("out")
        n, k, y, x, rh, rw = sch.get_loops(out)
        yo, yi = sch.split(y, [None, yb])
        xo, xi = sch.split(x, [None, xv])
        sch.reorder(n, k, yo, xo, rh, rw, yi, xi)
        nk = sch.fuse(n, k)
        sch.parallel(nk)
        self._register_tile(sch, out, xo, rh, rw, yi, xi)
        if has_block(sch, "pad_temp"):  # absent with no padding and unit stride
            pad = sch.get_sblock("pad_temp")
            sch.compute_at(pad, nk)
            if wl.stride_w == 1:
                sch.vectorize(sch.get_loops(pad)[-1])

    @staticmethod
    def _register_tile(sch: s_tir.Schedule, out, tile_loop, rh, rw, unrolled, vector) -> None:
        """The register tile shared by both layouts: ``out`` accumulates in a local buffer written back under
        ``tile_loop``; the KH x KW taps and the ``unrolled`` loop (rows in NCHW, pixels in NCHW[x]c) are unrolled,
        ``vector`` (columns in NCHW, the x channels in NCHW[x]c) is vectorised, in the FMA loop and the write-back."""
        acc = sch.cache_write(out, 0, "local")
        sch.reverse_compute_at(acc, tile_loop, preserve_unit_loops=True)
        for loop in (rh, rw, unrolled):
            sch.unroll(loop)
        sch.vectorize(vector)
        a_unrolled, a_vector = sch.get_loops(acc)[-2:]
        sch.unroll(a_unrolled)
        sch.vectorize(a_vector)
        sch.decompose_reduction(out, rh)

    @classmethod
    def _apply_blocked(cls, sch: s_tir.Schedule, wl: Conv2dWorkload, ow_tile: int) -> None:
        """NCHW[x]c: ``ow_tile`` pixels (a divisor of OW) x the ``x`` channels per register tile."""
        out = sch.get_sblock("out")
        n, co, y, x, ci, rh, rw = sch.get_loops(out)
        xo, xi = sch.split(x, [None, ow_tile])
        sch.reorder(n, co, y, xo, rh, rw, xi, ci)
        nco = sch.fuse(n, co)
        sch.parallel(nco)
        cls._register_tile(sch, out, xo, rh, rw, xi, ci)
        if has_block(sch, "pad_temp"):
            pad = sch.get_sblock("pad_temp")
            sch.compute_at(pad, nco)
            sch.vectorize(sch.get_loops(pad)[-1])

    @staticmethod
    def _apply_auto(sch: s_tir.Schedule, wl: Conv2dWorkload) -> None:
        """``ow_tile == 0``: plain padded input computed per output row, inner loops left to LLVM's loop
        vectoriser (which turns stride-2 column reads into wide loads + shuffles; measured faster than explicit
        TIR vectors for strided, very wide or very narrow outputs)."""
        out = sch.get_sblock("out")
        n, k, y, x, rh, rw = sch.get_loops(out)
        sch.parallel(sch.fuse(n, k))
        if wl.pad_top or wl.pad_left or wl.pad_bottom or wl.pad_right:
            sch.compute_at(sch.get_sblock("pad_temp"), y)
