"""Depthwise conv2d for aarch64 NEON: the shared CPU schedule (:mod:`..cpu.depthwise`) with NEON's own defaults.

A register tile of ``oh_tile`` rows x ``ow_tile`` columns (``ow_tile / 4`` q registers per row, ``<= 16``
accumulators, half the NEON register file) accumulated over the KH x KW window, each step one broadcast weight x
one input vector ``fmla``. Unlike on AVX-512, the defaults never pick the LLVM-vectorised variant (``ow_tile = 0``:
measured faster there for strided or very wide/narrow outputs, unmeasured on ARM).
"""

from __future__ import annotations

from ..cpu import DepthwiseCpu
from ..cpu.base import largest_divisor, vector_registers
from ..cpu.base import vectors as _vectors


def _vector_block(n: int, lanes: int, cap_vectors: int = 2) -> int:
    """The largest multiple of ``lanes`` (up to ``cap_vectors`` vectors) dividing ``n``, else the largest divisor
    below ``lanes`` (a partial vector)."""
    for v in range(cap_vectors, 0, -1):
        if n % (v * lanes) == 0:
            return v * lanes
    return largest_divisor(n, lanes)


class DepthwiseArm(DepthwiseCpu):
    """Knobs as :class:`..cpu.DepthwiseCpu` (NCHW: ``ow_tile``, ``oh_tile``; NCHW[x]c: ``ow_tile``) with NEON
    defaults in NCHW (never the x86-only LLVM-vectorised variant ``ow_tile = 0``)."""

    arch = "arm"

    def default_knobs(self, wl, target):
        if wl.data_block:  # NCHW[x]c: the shared blocked schedule's knob
            return super().default_knobs(wl, target)
        lanes = target.vector_lanes
        xv = _vector_block(wl.out_w, lanes)
        rows = max(1, min(4, vector_registers(target) // 2 // _vectors(xv, lanes)))
        return {"ow_tile": xv, "oh_tile": largest_divisor(wl.out_h, rows)}

    def candidate_knobs(self, wl, target):
        if wl.data_block:
            return super().candidate_knobs(wl, target)
        lanes, budget = target.vector_lanes, vector_registers(target) // 2
        out = [self.default_knobs(wl, target)]
        for xv in (lanes, 2 * lanes, 3 * lanes, 4 * lanes):
            if wl.out_w % xv:
                continue
            for yb in (1, 2, 4, 7, 8):
                if wl.out_h % yb == 0 and yb * _vectors(xv, lanes) <= budget:
                    k = {"ow_tile": xv, "oh_tile": yb}
                    if k not in out:
                        out.append(k)
        return out
