"""The base of the CPU conv2d rules (x86 AVX-512 / AVX2, aarch64 NEON), in the manner of TVM dlight's
``dlight/cpu/`` rules: :class:`CpuRule`, and what the CPU schedules share -- the register budget of a target
(:func:`vector_registers`, :func:`register_tile_reason`), the NCHW[x]c output store (:func:`begin_schedule`,
:func:`vectorize_blocked_store`) and tile-size helpers."""

from __future__ import annotations

from tvm import s_tir

from ..rule import Conv2dRule
from ..target import TargetInfo


def vector_registers(target: TargetInfo) -> int:
    """Architectural SIMD registers: 32 zmm (AVX-512), 32 q (NEON ``v0``-``v31``), 16 ymm/xmm otherwise.

    The rules budget their register tiles (vector accumulators) from this, leaving the rest for operands."""
    return 32 if target.isa in ("avx512", "neon") else 16


def has_block(sch: s_tir.Schedule, name: str) -> bool:
    """Whether the kernel has a top-level block ``name`` (optional stages such as ``pad_temp``)."""
    return any(sch.get(b).name_hint == name for b in sch.get_child_blocks(sch.get_sblock("root")))


def begin_schedule(sch: s_tir.Schedule) -> s_tir.Schedule:
    """Dissolve the output layout stage of an NCHW[x]c kernel (:func:`convpipe.schedules.compute.output_view`):
    ``out_blocked`` is inlined into the store of ``out``, which then writes the blocked output directly and keeps
    its NCHW loop nest (so the family's schedule of ``out`` applies unchanged). A no-op for NCHW output."""
    if has_block(sch, "out_blocked"):
        sch.reverse_compute_inline(sch.get_sblock("out_blocked"))
    return sch


def loops_below(sch: s_tir.Schedule, block, loop) -> list:
    """The loops of ``block`` nested inside ``loop`` (after a ``reverse_compute_at(block, loop,
    preserve_unit_loops=True)`` these are one per block iterator, in order, unit loops included)."""
    loops = sch.get_loops(block)
    target = sch.get(loop)
    pos = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(target))
    return loops[pos + 1:]


def vectorize_blocked_store(sch: s_tir.Schedule, k_loop, inner_loops: list, block: int) -> None:
    """For an ``out`` block storing NCHW[x]c: split its output-channel loop ``k_loop`` into ``(k / x, x)``, move
    the ``x`` part innermost (below ``inner_loops``) and vectorise it, so each store is one contiguous vector."""
    ko, ki = sch.split(k_loop, [None, block])
    sch.reorder(ko, *inner_loops, ki)
    sch.vectorize(ki)


def largest_divisor(n: int, cap: int) -> int:
    """The largest divisor of ``n`` that is ``<= cap`` (at least 1)."""
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def divisors(n: int) -> list[int]:
    """The divisors of ``n``, ascending."""
    return [d for d in range(1, n + 1) if n % d == 0]


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


def vectors(width: int, lanes: int) -> int:
    """Vector registers holding ``width`` fp32 values (``ceil(width / lanes)``)."""
    return -(-width // lanes)


def register_tile_reason(accumulators: int, target: TargetInfo, what: str) -> str | None:
    """``None`` when a register tile of ``accumulators`` vector accumulators fits the target's vector register
    file (:func:`vector_registers`), else why not. Every CPU rule bounds its unrolled register tile by this: the
    defaults use at most half the file, tuning candidates at most all of it; a larger tile only spills and
    grows the unrolled code."""
    regs = vector_registers(target)
    if accumulators > regs:
        return f"register tile {what} = {accumulators} exceeds the {regs} vector registers of {target.isa}"
    return None


class CpuRule(Conv2dRule):
    """Base of the CPU rules. A family's CPU rule (``cpu/<family>.py``) subclasses it together with its family base
    (:class:`~..rule.DirectFamily`, ...); the per-target rules (``x86/``, ``arm/``) set ``arch`` and override only
    the knob heuristics measured on their ISA. CPU rules take NCHW and NCHW[x]c data and output (no
    :meth:`~..rule.Conv2dRule.target_reason`); every register tile they unroll is bounded by
    :func:`register_tile_reason`."""

    def target_reason(self, wl, target: TargetInfo) -> str | None:
        """An LLVM CPU target (``arch`` ``"x86"`` or ``"arm"``); every workload layout is taken."""
        if target.arch not in ("x86", "arm"):
            return f"the CPU schedules need an x86 or ARM target (got {target.arch})"
        return None
