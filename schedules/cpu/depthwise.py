"""Depthwise conv2d (groups == C, any channel multiplier, stride, padding, dilation, kernel size) for CPUs
(x86 AVX-512 / AVX2, aarch64 NEON).

Layout NCHW in and out (``topi/nn/depthwise_conv2d.py:depthwise_conv2d_nchw`` with a channel multiplier). Schedule:

- parallel over (batch, output channel);
- per channel, the zero-padded input plane is built once (``pad_temp``, computed at the channel loop, so the
  bounds test runs once per input pixel and never in the FMA loop); for horizontal stride ``s > 1`` its columns
  are de-interleaved by ``s`` so every tap reads unit-stride vectors;
- each output row is a register tile of ``x_vec`` columns (vectorised; LLVM splits a 56-wide vector into
  3.5 zmm), ``y_block`` rows unrolled together; the KH x KW taps are unrolled as broadcast(weight) x vector(input)
  FMAs (``fmla v.4s`` on NEON) into a local accumulator.

In NCHW[x]c (:func:`..compute.depthwise_blocked`, channel multiplier 1) the vector runs along the ``x`` channels
of a pixel instead: parallel over (batch, channel block), the padded plane of one channel block built once per
block, register tiles of ``x_tile`` output pixels of one row x ``x`` channels, taps unrolled. Strides and
dilations then cost nothing extra (every tap still reads whole vectors).
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from .. import compute
from ..rule import Knobs
from ..target import TargetInfo
from ..workload import Conv2dWorkload
from ._util import CpuRule, divisors, has_block, largest_divisor, register_tile_reason, vector_registers, vectors


class DepthwiseCpu(CpuRule):
    """Depthwise conv2d, ``groups == C_in`` (``K = multiplier * C``), NCHW.

    Knobs:
        x_vec: output columns per vector register tile; divides OW (its largest divisor <= 4 x lanes). ``0``
            selects the LLVM-vectorised schedule (:meth:`_build_auto`), the default for stride > 1 and for
            OW outside 8..32, where it measured faster on AVX-512.
        y_block: output rows computed together (unrolled); divides OH.

    NCHW[x]c knob (channel multiplier 1): ``x_tile``, output pixels of a row per register tile (divides OW).

    Packed weight: ``float32[K, KH, KW]`` (NCHW[x]c: ``float32[C/x, KH, KW, x]``).
    """

    family = "depthwise"

    def knob_space(self, wl: Conv2dWorkload, target: TargetInfo):
        """NCHW: ``x_vec``: 0 (the LLVM-vectorised schedule) or a divisor of OW; ``y_block``: a divisor of OH;
        with ``x_vec > 0`` the register tile ``y_block * ceil(x_vec / lanes)`` fits the register file.
        NCHW[x]c: ``x_tile``: a divisor of OW whose register tile ``x_tile * ceil(x / lanes)`` fits the register
        file (or 1, one pixel of a block wider than the whole file). See :meth:`knob_constraints`."""
        if wl.data_block:
            return {"x_tile": tuple(divisors(wl.out_w))}
        return {"x_vec": (0, *divisors(wl.out_w)), "y_block": tuple(divisors(wl.out_h))}

    def knob_constraints(self, wl, target, knobs):
        lanes = target.vector_lanes
        if wl.data_block:
            if knobs["x_tile"] == 1:
                return None
            return register_tile_reason(knobs["x_tile"] * vectors(wl.data_block, lanes), target, "x_tile x ceil(x / lanes)")
        if knobs["x_vec"] == 0:
            return None
        acc = knobs["y_block"] * vectors(knobs["x_vec"], lanes)
        return register_tile_reason(acc, target, "y_block x ceil(x_vec / lanes)")

    def default_knobs(self, wl, target):
        if wl.data_block:
            return {"x_tile": self._x_tile(wl, target)}
        if wl.stride_w != 1 or not 8 <= wl.out_w <= 32:
            return {"x_vec": 0, "y_block": 1}
        cap = 4 * target.vector_lanes
        x_vec = max(d for d in divisors(wl.out_w) if d <= cap)
        # rows per block: enough vector work per block (about 2 zmm-rows of accumulators)
        want = max(1, (2 * target.vector_lanes) // x_vec)
        y_block = max(d for d in divisors(wl.out_h) if d <= want)
        return {"x_vec": x_vec, "y_block": y_block}

    @staticmethod
    def _x_tile(wl, target, cap: int | None = None) -> int:
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
                c = {"x_tile": self._x_tile(wl, target, max(cap, 1))}
                if c not in out:
                    out.append(c)
            return out
        out = [d]
        cap = 4 * target.vector_lanes
        for xv in sorted({d["x_vec"], 0, *[v for v in divisors(wl.out_w) if 7 <= v <= cap]}, reverse=True):
            for yb in (1, 2, 4):
                c = {"x_vec": xv, "y_block": yb}
                if wl.out_h % yb == 0 and c not in out:
                    out.append(c)
        return out[:8]

    def packed_weight_shape(self, wl, knobs):
        if wl.data_block:
            return compute.depthwise_blocked_packed_shape(wl)
        return compute.depthwise_packed_shape(wl)

    def pack_weight(self, weight, wl, knobs):
        if wl.data_block:
            return compute.depthwise_blocked_pack_weight(weight, wl)
        return compute.depthwise_pack_weight(weight, wl)

    def build(self, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> tvm.tirx.PrimFunc:
        self.check(wl, target)
        kn = self.check_knobs(wl, target, knobs)
        if wl.data_block:
            return self._build_blocked(wl, kn)
        xv, yb = kn["x_vec"], kn["y_block"]
        if xv == 0:
            return self._build_auto(wl)
        sch = s_tir.Schedule(compute.create_prim_func(compute.depthwise(wl)))
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
        return sch.mod["main"]

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
    def _build_blocked(cls, wl: Conv2dWorkload, kn: Knobs) -> tvm.tirx.PrimFunc:
        xt = kn["x_tile"]  # validated by build: a divisor of OW
        sch = s_tir.Schedule(compute.create_prim_func(compute.depthwise_blocked(wl)))
        out = sch.get_sblock("out")
        n, co, y, x, ci, rh, rw = sch.get_loops(out)
        xo, xi = sch.split(x, [None, xt])
        sch.reorder(n, co, y, xo, rh, rw, xi, ci)
        nco = sch.fuse(n, co)
        sch.parallel(nco)
        cls._register_tile(sch, out, xo, rh, rw, xi, ci)
        if has_block(sch, "pad_temp"):
            pad = sch.get_sblock("pad_temp")
            sch.compute_at(pad, nco)
            sch.vectorize(sch.get_loops(pad)[-1])
        return sch.mod["main"]

    @staticmethod
    def _build_auto(wl: Conv2dWorkload) -> tvm.tirx.PrimFunc:
        """``x_vec == 0``: plain padded input computed per output row, inner loops left to LLVM's loop
        vectoriser (which turns stride-2 column reads into wide loads + shuffles; measured faster than explicit
        TIR vectors for strided, very wide or very narrow outputs)."""
        sch = s_tir.Schedule(compute.create_prim_func(compute.depthwise(wl, deinterleave=False)))
        out = sch.get_sblock("out")
        n, k, y, x, rh, rw = sch.get_loops(out)
        sch.parallel(sch.fuse(n, k))
        if wl.pad_top or wl.pad_left or wl.pad_bottom or wl.pad_right:
            sch.compute_at(sch.get_sblock("pad_temp"), y)
        return sch.mod["main"]
