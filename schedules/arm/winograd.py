"""Winograd F(m x m, 3 x 3) for aarch64 NEON: the shared CPU schedule (:mod:`..cpu.winograd`) with NEON's own
defaults: F(4, 3) from 6 x 6 outputs up (the AVX-512 defaults keep F(2, 3) up to 8 x 8, where its weight bandwidth
was measured to dominate), a ``p_tile`` x ``oc_block`` register tile of ``p_tile * oc_block / 4 <= 16`` q-register
accumulators (half the NEON register file), preferring a ``p_tile`` that divides the tile count (no padded
tiles). Knobs as :class:`..cpu.WinogradCpu` (``m``, ``oc_block``, ``p_tile``)."""

from __future__ import annotations

from ..cpu import WinogradCpu
from ..cpu.base import largest_divisor, vector_registers
from .. import compute


class WinogradArm(WinogradCpu):
    arch = "arm"

    @staticmethod
    def _default_m(wl) -> int:
        return 4 if min(wl.out_h, wl.out_w) >= 6 else 2

    def default_knobs(self, wl, target):
        lanes = target.vector_lanes
        m = self._default_m(wl)
        oc_block = 2 * lanes if wl.out_channels > lanes else lanes
        n_h, n_w = compute.winograd_tiles(wl, m)
        tiles = wl.batch * n_h * n_w
        p_tile = min(vector_registers(target) // 2 // (oc_block // lanes), tiles)
        p_tile = max(largest_divisor(tiles, p_tile), min(4, p_tile))
        return {"m": m, "oc_block": oc_block, "p_tile": p_tile}

    def candidate_knobs(self, wl, target):
        lanes = target.vector_lanes
        out = [self.default_knobs(wl, target)]
        for m in (2, 4, 6):
            for kb, pb in ((lanes, 8), (lanes, 12), (2 * lanes, 4), (2 * lanes, 6), (2 * lanes, 8), (3 * lanes, 4)):
                cand = {"m": m, "oc_block": kb, "p_tile": pb}
                if cand not in out:
                    out.append(cand)
        return out
