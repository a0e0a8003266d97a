"""Knob heuristics shared by the ARM (aarch64 NEON) rules.

NEON has 32 128-bit registers (``v0``-``v31``), 4 fp32 lanes each. A register tile of ``rows x (cols / 4)``
vector accumulators plus the operand vectors must fit in them; the rules keep accumulators <= 16 (half the file),
which leaves room for the broadcast operands and the loads the FMA chain needs.
"""

from __future__ import annotations

#: fp32 lanes of a NEON register.
NEON_LANES = 4
#: vector accumulators a register tile may use (of 32 NEON registers).
MAX_ACCUMULATORS = 16


def largest_divisor(n: int, cap: int) -> int:
    """Largest ``d <= cap`` dividing ``n`` (1 when nothing larger does)."""
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def vector_block(n: int, lanes: int = NEON_LANES, cap_vectors: int = 2) -> int:
    """A vector-friendly block of ``n``: the largest multiple of ``lanes`` (up to ``cap_vectors`` vectors)
    dividing ``n``, else the largest divisor below ``lanes`` (a partial vector; LLVM pads it)."""
    for v in range(cap_vectors, 0, -1):
        if n % (v * lanes) == 0:
            return v * lanes
    return largest_divisor(n, lanes)


def row_tile(n: int, vectors_per_row: int, cap: int = 8) -> int:
    """Rows of a register tile: a divisor of ``n`` with ``rows * vectors_per_row <= MAX_ACCUMULATORS``."""
    return largest_divisor(n, max(1, min(cap, MAX_ACCUMULATORS // max(1, vectors_per_row))))


def vectors(width: int, lanes: int = NEON_LANES) -> int:
    return -(-width // lanes)


def has_padding(wl) -> bool:
    return bool(wl.pad_top or wl.pad_left or wl.pad_bottom or wl.pad_right)


def check_divides(name: str, knob: int, extent: int, what: str) -> None:
    if knob < 1 or extent % knob:
        raise ValueError(f"knob {name}={knob} must divide {what}={extent}")
