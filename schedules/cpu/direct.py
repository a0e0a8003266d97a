"""Direct conv2d for CPUs (x86 AVX-512 / AVX2, aarch64 NEON), register-tiled on channel-blocked data.

The NCHW[x]c scheme of ``topi/nn/conv2d.py:conv2d_NCHWc`` and of the AutoTVM x86 templates
(``topi/x86/conv2d_avx_common.py`` in TVM <= 0.16): output channels blocked by the vector width, input
channels blocked too, each reduction step is ``ow_tile x oc_tile`` broadcast-input x vector-weight FMAs into
accumulators that stay in registers. Padding and input-channel blocking happen once, in a ``data_pack`` pass;
the accumulator tile is written straight to the NCHW output (or, in NCHW[x]c, as whole vectors to the blocked
output, and a 1x1 conv reads the blocked input in place). Sized by the target's vector lanes and register
file (:func:`.base.vector_registers`): on NEON each FMA is an ``fmla v.4s``.
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from .. import compute
from ..rule import DirectFamily, Knobs
from ..target import TargetInfo
from ..workload import Conv2dWorkload
from .base import (
    CpuRule,
    begin_schedule,
    register_tile_reason,
    best_tile,
    channel_block,
    largest_divisor,
    loops_below,
    vector_registers,
    vectorize_blocked_store,
)


def _ic_block(channels: int, lanes: int) -> int:
    if channels <= lanes:
        return channels
    d = largest_divisor(channels, lanes)
    return d if d >= 4 else lanes


class DirectCpu(DirectFamily, CpuRule):
    """Register-tiled direct conv2d. Supports ``groups == 1`` with any kernel, stride, padding, dilation.

    Knobs:
        oc_block: output channels per block: the vectorised axis of the accumulators and the innermost axis of
            the packed weight ``OIHW[ib]i[ob]o`` and of the ``conv`` stage (``K`` zero-padded up to a multiple).
        ic_block: input channels per block of the packed input ``[N, C/ib, Hp, Wp, ib]`` (``C`` zero-padded);
            1 with no padding reads the NCHW input in place. Optional, default 1.
        ow_tile: output columns per register tile, unrolled (``OW`` is padded up to a multiple; the extra
            columns are computed and dropped).
        oc_tile: output-channel *blocks* (of ``oc_block`` channels) per register tile, unrolled; divides
            ``ceil(K / oc_block)``. Optional, default 1.

    The register tile holds ``ow_tile * oc_tile * ceil(oc_block / lanes)`` vector accumulators; the defaults keep
    that within half the register file: 16 of the 32 zmm (AVX-512) or NEON q registers, 8 of the 16 ymm (AVX2).
    """

    optional_knobs = {"ic_block": 1, "oc_tile": 1}

    def knob_space(self, wl: Conv2dWorkload, target: TargetInfo):
        """``oc_block``: 1 .. max(lanes, the output layout's block) (one vector, or one NCHW[x]c block of
        channels); ``ic_block``: 1 .. C (it blocks the input channels); ``ow_tile``: 1 .. OW (it tiles the output
        columns); ``oc_tile``: 1 .. K, and it must divide ``ceil(K / oc_block)`` (:meth:`knob_constraints`)."""
        return {
            "oc_block": range(1, max(target.vector_lanes, wl.out_block) + 1),
            "ic_block": range(1, wl.in_channels + 1),
            "ow_tile": range(1, wl.out_w + 1),
            "oc_tile": range(1, wl.out_channels + 1),
        }

    def knob_constraints(self, wl, target, knobs):
        """``oc_tile`` divides ``ceil(K / oc_block)`` (the register tile takes whole channel blocks) and the
        register tile ``ow_tile * oc_tile`` (in vectors of ``oc_block``) fits the vector register file."""
        k_outer = -(-wl.out_channels // knobs["oc_block"])
        if k_outer % knobs["oc_tile"]:
            return (
                f"knob 'oc_tile': expected a divisor of ceil(K / oc_block) = {k_outer} "
                f"(K={wl.out_channels}, oc_block={knobs['oc_block']}), got {knobs['oc_tile']}"
            )
        return register_tile_reason(knobs["ow_tile"] * knobs["oc_tile"], target, "ow_tile x oc_tile")

    def default_knobs(self, wl: Conv2dWorkload, target: TargetInfo) -> Knobs:
        return self._knobs(wl, target)

    def _knobs(
        self, wl: Conv2dWorkload, target: TargetInfo, oc_tile: int | None = None, ic_block: int | None = None
    ) -> Knobs:
        ob = channel_block(wl.out_channels, target.vector_lanes)
        if wl.out_block:  # NCHW[x]c output: whole vectors of x channels, no padded channels
            ob = target.vector_lanes if wl.out_channels % target.vector_lanes == 0 else wl.out_block
        if wl.data_block and ic_block is None:
            ic_block = wl.data_block  # reads the blocked input in place (1x1) or copies whole vectors (padding)
        k_outer = -(-wl.out_channels // ob)
        if oc_tile is None:
            oc_tile = 2 if k_outer % 2 == 0 else 1
        budget = vector_registers(target) // 2
        return {
            "oc_block": ob,
            "ic_block": 1 if ic_block is None else ic_block,
            "ow_tile": best_tile(wl.out_w, max(budget // oc_tile, 1)),
            "oc_tile": oc_tile,
        }

    def candidate_knobs(self, wl: Conv2dWorkload, target: TargetInfo) -> list[Knobs]:
        lanes = target.vector_lanes
        default = self.default_knobs(wl, target)
        cands = [default]
        budget = vector_registers(target) // 2
        k_outer = -(-wl.out_channels // default["oc_block"])
        for oc_tile in (1, 2, 3, 4):
            if k_outer % oc_tile:
                continue
            for ib in {default["ic_block"], _ic_block(wl.in_channels, lanes)}:
                base = self._knobs(wl, target, oc_tile, ib)
                cap = max(budget // oc_tile, 1)
                for owt in {base["ow_tile"], best_tile(wl.out_w, max(cap // 2, 1)), largest_divisor(wl.out_w, cap)}:
                    k = {**base, "ow_tile": owt}
                    if k not in cands:
                        cands.append(k)
        return cands

    def weight_packing(self, wl, knobs):
        pack = (compute.direct_blocked_packed_shape, compute.direct_blocked_pack_weight)
        return (*pack, (knobs["oc_block"], knobs["ic_block"]))

    def unscheduled(self, wl: Conv2dWorkload, knobs: Knobs) -> tvm.tirx.PrimFunc:
        """:func:`..compute.direct_blocked` with the knobs' channel blocks and column tile."""
        return compute.create_prim_func(
            compute.direct_blocked(wl, knobs["oc_block"], knobs["ic_block"], knobs["ow_tile"])
        )

    def apply(self, sch: s_tir.Schedule, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> None:
        """Pack pass parallel (vectorised for a plain zero-padding copy); ``conv`` as ``(n, ko/oc_tile, y,
        ow/ow_tile)`` parallel, reduction ``(co, rh, rw, ci)``, then the ``oc_tile x ow_tile x oc_block``
        accumulator tile unrolled/vectorised in registers, written straight to ``out``."""
        ob, ib, owt, noc = knobs["oc_block"], knobs["ic_block"], knobs["ow_tile"], knobs["oc_tile"]
        lanes = target.vector_lanes
        geo = compute.direct_blocked_geometry(wl, ob, ib, owt)
        begin_schedule(sch)

        if geo["needs_pack"]:
            pack = sch.get_sblock("data_pack")
            n, co, h, w, ci = sch.get_loops(pack)
            sch.parallel(sch.fuse(n, co, h))
            if ib == 1 and geo["wp"] % lanes == 0:  # plain zero-padding copy: vectorise along the row
                sch.vectorize(sch.split(w, [None, lanes])[1])

        conv = sch.get_sblock("conv")
        n, ko, y, x, ki, co, rh, rw, ci = sch.get_loops(conv)
        koo, koi = sch.split(ko, [None, noc])
        xo, xi = sch.split(x, [None, owt])
        sch.reorder(n, koo, y, xo, co, rh, rw, ci, koi, xi, ki)
        sch.parallel(sch.fuse(n, koo, y))
        sch.unroll(koi)
        sch.unroll(xi)
        sch.vectorize(ki)
        out = sch.get_sblock("out")
        sch.reverse_compute_at(out, xo, preserve_unit_loops=True)
        b = wl.out_block
        if b and (noc * ob) % b == 0 and geo["k_outer"] * ob == wl.out_channels:
            _, k_l, _, x_l = loops_below(sch, out, xo)  # out's (n, k, y, x) within the tile
            vectorize_blocked_store(sch, k_l, [x_l], b)
        elif not b and geo["ow_padded"] == wl.out_w and geo["k_outer"] * ob == wl.out_channels:
            sch.vectorize(sch.get_loops(out)[-1])
        sch.set_scope(conv, 0, "local")  # the compacted accumulator tile -> stack -> registers
        sch.decompose_reduction(conv, co)
