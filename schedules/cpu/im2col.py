"""im2col + GEMM conv2d for CPUs (x86 AVX-512 / AVX2, aarch64 NEON): any stride, padding, dilation and groups
(the universal fallback).

Chellapilla et al. (2006): the input is unrolled into ``col[n, g, (ic, kh, kw), y, x]`` once, then each group is
one GEMM ``[K/G, C/G*KH*KW] x [C/G*KH*KW, OH*OWp]``. The GEMM is register-blocked like a BLAS micro-kernel
(Goto & van de Geijn, "Anatomy of High-Performance Matrix Multiplication", 2008): a ``k_block x x_block`` tile of
accumulators (``k_block`` broadcast weights x ``x_block / lanes`` vectors of output columns) per reduction step,
stored straight to the NCHW output (on NEON each step is ``k_block`` ``fmla v.4s`` per vector).
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from .. import compute
from ..rule import Knobs
from ..target import TargetInfo
from ..workload import Conv2dWorkload
from ._util import (
    CpuRule,
    begin_schedule,
    loops_below,
    register_tile_reason,
    vector_registers,
    vectorize_blocked_store,
    vectors,
)


def _x_block(out_w: int, lanes: int) -> int:
    """Output columns per tile: 1 or 2 vectors, or a narrower power of two for narrow outputs."""
    if out_w <= lanes:
        return max(1 << (out_w - 1).bit_length(), 4) if out_w > 1 else 1
    one = -(-out_w // lanes) * lanes
    two = -(-out_w // (2 * lanes)) * 2 * lanes
    return 2 * lanes if two <= one else lanes


class Im2colCpu(CpuRule):
    """im2col + register-blocked GEMM. Supports every conv2d (any stride, padding, dilation, groups).

    Knobs:
        k_block: output channels per register tile (broadcast operand; ``K/G`` zero-padded up to a multiple).
        x_block: output columns per register tile (vectorised; ``OW`` zero-padded up to a multiple). The tile
            holds ``k_block * ceil(x_block / lanes)`` vector accumulators: at most half the register file (16 on
            AVX-512 and NEON, 8 on AVX2).
    """

    family = "im2col"

    def knob_space(self, wl: Conv2dWorkload, target: TargetInfo):
        """``k_block``: 1 .. K/G (it tiles a group's output channels); ``x_block``: 1 .. max(OW, 2 x lanes) (it
        tiles the output columns, or is up to two whole vectors); together a register tile of
        ``k_block * ceil(x_block / lanes)`` vectors within the register file (:meth:`knob_constraints`)."""
        return {
            "k_block": range(1, wl.out_channels // wl.groups + 1),
            "x_block": range(1, max(wl.out_w, 2 * target.vector_lanes) + 1),
        }

    def knob_constraints(self, wl, target, knobs):
        acc = knobs["k_block"] * vectors(knobs["x_block"], target.vector_lanes)
        return register_tile_reason(acc, target, "k_block x ceil(x_block / lanes)")

    def default_knobs(self, wl: Conv2dWorkload, target: TargetInfo) -> Knobs:
        return self._knobs(wl, target)

    def _knobs(self, wl: Conv2dWorkload, target: TargetInfo, x_block: int | None = None) -> Knobs:
        lanes = target.vector_lanes
        xb = _x_block(wl.out_w, lanes) if x_block is None else x_block
        vecs = -(-xb // lanes)
        kb = max(vector_registers(target) // 2 // vecs, 1)
        kg = wl.out_channels // wl.groups
        if kg < kb:
            kb = kg
        return {"k_block": kb, "x_block": xb}

    def candidate_knobs(self, wl: Conv2dWorkload, target: TargetInfo) -> list[Knobs]:
        lanes = target.vector_lanes
        cands = [self.default_knobs(wl, target)]
        for xb in (lanes, 2 * lanes, lanes // 2):
            k = self._knobs(wl, target, xb)
            for kb in (k["k_block"], max(k["k_block"] // 2, 1)):
                c = {"k_block": kb, "x_block": xb}
                if c not in cands:
                    cands.append(c)
        return cands

    def packed_weight_shape(self, wl, knobs):
        return compute.im2col_blocked_packed_shape(wl, self.read_knobs(knobs)["k_block"])

    def pack_weight(self, weight, wl, knobs):
        return compute.im2col_blocked_pack_weight(weight, wl, self.read_knobs(knobs)["k_block"])

    def build(self, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> tvm.tirx.PrimFunc:
        self.check(wl, target)
        kn = self.check_knobs(wl, target, knobs)
        kb, xb = kn["k_block"], kn["x_block"]
        lanes = target.vector_lanes
        sch = begin_schedule(s_tir.Schedule(compute.create_prim_func(compute.im2col_rows(wl, kb, xb))))
        col = sch.get_sblock("im2col")
        n, g, r, y, x = sch.get_loops(col)
        sch.parallel(sch.fuse(n, g, r))
        if wl.stride_w == 1:  # contiguous source rows: vectorise the copy along x
            sch.vectorize(sch.split(x, [None, xb])[1])

        gemm = sch.get_sblock("gemm")
        n, g, k, y, x, rk = sch.get_loops(gemm)
        ko, ki = sch.split(k, [None, kb])
        xo, xi = sch.split(x, [None, xb])
        if xb > lanes and xb % lanes == 0:
            xj, xl = sch.split(xi, [None, lanes])
            sch.reorder(n, g, ko, y, xo, rk, ki, xj, xl)
            sch.unroll(xj)
        else:
            xl = xi
            sch.reorder(n, g, ko, y, xo, rk, ki, xl)
        sch.parallel(sch.fuse(n, g, ko, y))
        sch.unroll(ki)
        sch.vectorize(xl)
        out = sch.get_sblock("out")
        kg = wl.out_channels // wl.groups
        if wl.groups == 1 or kg % kb == 0:
            sch.reverse_compute_at(out, xo, preserve_unit_loops=True)
            if wl.out_block and kb % wl.out_block == 0 and kg % kb == 0:
                _, k_l, _, x_l = loops_below(sch, out, xo)  # out's (n, k, y, x) within the tile
                vectorize_blocked_store(sch, k_l, [x_l], wl.out_block)
            elif not wl.out_block and wl.out_w % xb == 0 and kg % kb == 0:
                sch.vectorize(sch.get_loops(out)[-1])
            sch.set_scope(gemm, 0, "local")  # the compacted accumulator tile -> stack -> registers
        else:
            # K/G padded to k_block with several groups: the output channels of one (group, k-block) tile are
            # not a contiguous range of K, and TVM's region for a computed-at store would spill into the next
            # group's channels, written by another thread. Store the output in its own parallel pass instead.
            n_, k_, y_, x_ = sch.get_loops(out)
            sch.parallel(sch.fuse(n_, k_))
        sch.decompose_reduction(gemm, rk)
        return sch.mod["main"]
