"""Small helpers shared by the x86 rules: divisors, register-tile sizing, loop utilities."""

from __future__ import annotations


def largest_divisor(n: int, cap: int) -> int:
    """The largest divisor of ``n`` that is ``<= cap`` (at least 1)."""
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def vector_registers(lanes: int) -> int:
    """Architectural SIMD registers: 32 zmm with AVX-512 (16 lanes), 16 ymm/xmm otherwise."""
    return 32 if lanes >= 16 else 16


def best_tile(extent: int, cap: int, overhead: float = 2.0) -> int:
    """A tile size ``t <= cap`` for a loop of ``extent`` that may be padded up to a multiple of ``t``.

    Minimises ``ceil(extent / t) * (t + overhead)`` -- padded work plus a fixed per-tile cost (loop setup, the
    weight loads of one reduction step) -- and prefers the larger tile on ties.
    """
    best, best_cost = 1, float("inf")
    for t in range(min(cap, extent), 0, -1):
        cost = -(-extent // t) * (t + overhead)
        if cost < best_cost - 1e-9:
            best, best_cost = t, cost
    return best


def channel_block(channels: int, lanes: int, max_waste: float = 0.125) -> int:
    """Block size for a vectorised channel axis that is zero-padded up to whole blocks.

    ``channels <= lanes``: the next power of two (one partial vector). Otherwise ``lanes`` when padding wastes at
    most ``max_waste`` of the work, else ``lanes / 2`` when that wastes at most ``max_waste``, else ``lanes``.
    """
    if channels <= lanes:
        return 1 << (channels - 1).bit_length()
    for b in (lanes, lanes // 2):
        padded = -(-channels // b) * b
        if (padded - channels) / padded <= max_waste:
            return b
    return lanes
