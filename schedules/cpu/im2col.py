"""im2col + GEMM conv2d for CPUs (x86 AVX-512 / AVX2, aarch64 NEON): any stride, padding, dilation and groups
(the universal fallback).

Chellapilla et al. (2006): the input is unrolled into ``col[n, g, (ic, kh, kw), y, x]`` once, then each group is
one GEMM ``[K/G, C/G*KH*KW] x [C/G*KH*KW, OH*OWp]``. The GEMM is register-blocked like a BLAS micro-kernel
(Goto & van de Geijn, "Anatomy of High-Performance Matrix Multiplication", 2008): an ``oc_block x ow_tile`` tile of
accumulators (``oc_block`` broadcast weights x ``ow_tile / lanes`` vectors of output columns) per reduction step,
stored straight to the NCHW output (on NEON each step is ``oc_block`` ``fmla v.4s`` per vector).
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from .. import compute
from ..rule import Im2colFamily, Knobs
from ..target import TargetInfo
from ..workload import Conv2dWorkload
from .base import (
    CpuRule,
    begin_schedule,
    loops_below,
    register_tile_reason,
    vector_registers,
    vectorize_blocked_store,
    vectors,
)


def _ow_tile(out_w: int, lanes: int) -> int:
    """Output columns per tile: 1 or 2 vectors, or a narrower power of two for narrow outputs."""
    if out_w <= lanes:
        return max(1 << (out_w - 1).bit_length(), 4) if out_w > 1 else 1
    one = -(-out_w // lanes) * lanes
    two = -(-out_w // (2 * lanes)) * 2 * lanes
    return 2 * lanes if two <= one else lanes


class Im2colCpu(Im2colFamily, CpuRule):
    """im2col + register-blocked GEMM. Supports every conv2d (any stride, padding, dilation, groups).

    Knobs:
        oc_block: output channels per register tile, unrolled (the broadcast operand) and per panel of the
            packed weight ``[G, ceil((K/G) / oc_block), C/G*KH*KW, oc_block]`` (``K/G`` zero-padded up to a
            multiple).
        ow_tile: output columns per register tile, vectorised (``OW`` zero-padded up to a multiple). The tile
            holds ``oc_block * ceil(ow_tile / lanes)`` vector accumulators; the defaults use at most half the
            register file (16 on AVX-512 and NEON, 8 on AVX2).
    """

    def knob_space(self, wl: Conv2dWorkload, target: TargetInfo):
        """``oc_block``: 1 .. K/G (it tiles a group's output channels); ``ow_tile``: 1 .. max(OW, 2 x lanes) (it
        tiles the output columns, or is up to two whole vectors); together a register tile of
        ``oc_block * ceil(ow_tile / lanes)`` vectors within the register file (:meth:`knob_constraints`)."""
        return {
            "oc_block": range(1, wl.out_channels // wl.groups + 1),
            "ow_tile": range(1, max(wl.out_w, 2 * target.vector_lanes) + 1),
        }

    def knob_constraints(self, wl, target, knobs):
        """The register tile ``oc_block * ceil(ow_tile / lanes)`` fits the vector register file."""
        acc = knobs["oc_block"] * vectors(knobs["ow_tile"], target.vector_lanes)
        return register_tile_reason(acc, target, "oc_block x ceil(ow_tile / lanes)")

    def default_knobs(self, wl: Conv2dWorkload, target: TargetInfo) -> Knobs:
        return self._knobs(wl, target)

    def _knobs(self, wl: Conv2dWorkload, target: TargetInfo, ow_tile: int | None = None) -> Knobs:
        lanes = target.vector_lanes
        xb = _ow_tile(wl.out_w, lanes) if ow_tile is None else ow_tile
        vecs = -(-xb // lanes)
        kb = max(vector_registers(target) // 2 // vecs, 1)
        kg = wl.out_channels // wl.groups
        if kg < kb:
            kb = kg
        return {"oc_block": kb, "ow_tile": xb}

    def candidate_knobs(self, wl: Conv2dWorkload, target: TargetInfo) -> list[Knobs]:
        lanes = target.vector_lanes
        cands = [self.default_knobs(wl, target)]
        for xb in (lanes, 2 * lanes, lanes // 2):
            k = self._knobs(wl, target, xb)
            for kb in (k["oc_block"], max(k["oc_block"] // 2, 1)):
                c = {"oc_block": kb, "ow_tile": xb}
                if c not in cands:
                    cands.append(c)
        return cands

    def weight_packing(self, wl, knobs):
        return compute.im2col_blocked_packed_shape, compute.im2col_blocked_pack_weight, (knobs["oc_block"],)

    def unscheduled(self, wl: Conv2dWorkload, knobs: Knobs) -> tvm.tirx.PrimFunc:
        """:func:`..compute.im2col_rows` with the knobs' channel panel and column tile."""
        return compute.create_prim_func(compute.im2col_rows(wl, knobs["oc_block"], knobs["ow_tile"]))

    def apply(self, sch: s_tir.Schedule, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> None:
        """im2col copy parallel over (n, g, r); GEMM parallel over (n, g, K/oc_block, y), each step an
        ``oc_block x ow_tile`` accumulator tile (broadcast weight x vectors of columns) stored straight to
        ``out``."""
        kb, xb = knobs["oc_block"], knobs["ow_tile"]
        lanes = target.vector_lanes
        begin_schedule(sch)
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
            # K/G padded to oc_block with several groups: the output channels of one (group, k-block) tile are
            # not a contiguous range of K, and TVM's region for a computed-at store would spill into the next
            # group's channels, written by another thread. Store the output in its own parallel pass instead.
            n_, k_, y_, x_ = sch.get_loops(out)
            sch.parallel(sch.fuse(n_, k_))
        sch.decompose_reduction(gemm, rk)
