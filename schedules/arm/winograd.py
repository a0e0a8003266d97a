"""Winograd F(m x m, 3 x 3) for aarch64 NEON: the shared CPU schedule (:mod:`..cpu.winograd`) with NEON's own
defaults: F(4, 3) from 6 x 6 outputs up (the AVX-512 defaults keep F(2, 3) up to 8 x 8, where its weight bandwidth
was measured to dominate), a ``p_block`` x ``k_block`` register tile of ``p_block * k_block / 4 <= 16`` q-register
accumulators (half the NEON register file), preferring a ``p_block`` that divides the tile count (no padded
tiles)."""

from __future__ import annotations

from ..cpu import WinogradCpu
from ..cpu._util import largest_divisor, vector_registers
from .. import compute


class WinogradArm(WinogradCpu):
    arch = "arm"

    @staticmethod
    def _default_tile(wl) -> int:
        return 4 if min(wl.out_h, wl.out_w) >= 6 else 2

    def default_knobs(self, wl, target):
        lanes = target.vector_lanes
        m = self._default_tile(wl)
        k_block = 2 * lanes if wl.out_channels > lanes else lanes
        n_h, n_w = compute.winograd_tiles(wl, m)
        tiles = wl.batch * n_h * n_w
        p_block = min(vector_registers(target) // 2 // (k_block // lanes), tiles)
        p_block = max(largest_divisor(tiles, p_block), min(4, p_block))
        return {"tile": m, "k_block": k_block, "p_block": p_block}

    def candidate_knobs(self, wl, target):
        lanes = target.vector_lanes
        out = [self.default_knobs(wl, target)]
        for m in (2, 4, 6):
            for kb, pb in ((lanes, 8), (lanes, 12), (2 * lanes, 4), (2 * lanes, 6), (2 * lanes, 8), (3 * lanes, 4)):
                cand = {"tile": m, "k_block": kb, "p_block": pb}
                if cand not in out:
                    out.append(cand)
        return out
