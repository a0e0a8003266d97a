"""The base of the CUDA conv2d rules (sm_80, sm_90), in the manner of TVM dlight's ``dlight/gpu/`` rules:
:class:`CudaRule`, the CUDA limits the rules schedule against, and the schedule pieces they share --
cooperative shared-memory fetch (:func:`coop_fetch`), the tiled GEMM used by implicit-GEMM im2col and by
Winograd's batched GEMM (:func:`gemm_tile`), register-tile write-back unrolling (:func:`unroll_inner`) and the
trace replay without thread bindings that the tests run on the CPU (:func:`replay_without_threads`).

All schedules here are pure loop transformations (split/reorder/bind/cache/compute_at/inline) of the
target-independent computes in :mod:`..compute`; they never change what is computed. Compiling and checking the
generated CUDA (nvcc, ptxas figures, occupancy) is the compiler's: :mod:`convpipe.compiler.nvcc`.
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from ..rule import Conv2dRule
from ..target import TargetInfo
from ..workload import Conv2dWorkload

#: CUDA limits we schedule against (sm_80 and sm_90 alike): threads per block, static shared memory per block
#: (bytes).
MAX_THREADS = 1024
MAX_STATIC_SMEM = 48 * 1024
#: Knob domains every CUDA rule shares: threads along one axis of a block (``*_thr``), and a shared-memory slice
#: (``*_step``: elements of the reduction per step, at most what fits the static shared memory as fp32).
THREADS = range(1, MAX_THREADS + 1)
SMEM_SLICE = range(1, MAX_STATIC_SMEM // 4 + 1)


def divisor_domain(n: int, cap: int | None = None) -> tuple[int, ...]:
    """The divisors of ``n`` (at most ``cap``), ascending, as a knob domain."""
    return tuple(d for d in range(1, n + 1) if n % d == 0 and (cap is None or d <= cap))


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive ints."""
    return -(-a // b)


def pow2_at_most(n: int, cap: int) -> int:
    """Largest power of two <= min(n, cap) (at least 1)."""
    v = 1
    while v * 2 <= min(n, cap):
        v *= 2
    return v


def largest_divisor(n: int, cap: int) -> int:
    """Largest divisor of ``n`` that is <= ``cap`` (at least 1)."""
    return max(d for d in range(1, max(1, min(n, cap)) + 1) if n % d == 0)


def halo(tile: int, stride: int, kernel: int, dilation: int) -> int:
    """Input extent one output tile of ``tile`` rows (or columns) reads along that axis, halo included."""
    return (tile - 1) * stride + (kernel - 1) * dilation + 1


def gemm_knob_reason(knobs: dict[str, int], step: str, *thread_knobs: str) -> str | None:
    """The limits of a :func:`gemm_tile` GEMM with knobs ``oc_thr``/``oc_tile`` x ``p_thr``/``p_tile`` staged in
    ``knobs[step]``-element reduction slices (implicit-GEMM im2col, Winograd's batched GEMM): ``None`` when they
    hold, else the first broken one -- at most 1024 threads per block (also each of ``thread_knobs``, the
    threads of a rule's other kernels), both operand slices in 48 KiB of shared memory, at most 64 accumulators
    per thread."""
    threads = knobs["oc_thr"] * knobs["p_thr"]
    if threads > MAX_THREADS:
        return f"oc_thr*p_thr = {threads} threads per block (at most {MAX_THREADS})"
    for name in thread_knobs:
        if knobs[name] > MAX_THREADS:
            return f"{name} = {knobs[name]} threads per block (at most {MAX_THREADS})"
    smem = 4 * knobs[step] * (knobs["oc_thr"] * knobs["oc_tile"] + knobs["p_thr"] * knobs["p_tile"])
    if smem > MAX_STATIC_SMEM:
        return f"{step}={knobs[step]}: {smem} bytes of shared memory (at most {MAX_STATIC_SMEM})"
    if knobs["oc_tile"] * knobs["p_tile"] > 64:
        return "register tile oc_tile*p_tile over 64 accumulators"
    return None


def coop_fetch(sch: s_tir.Schedule, block, n_tx: int, n_ty: int = 1, vec: int = 1) -> None:
    """Cooperative fetch: spread all loops of a shared-memory copy ``block`` over the block's threads.

    ``block`` must already be ``compute_at``-ed under the reduction loop; its own loops are fused and split as
    ``[serial, threadIdx.y, threadIdx.x, vec]`` (vec > 1 only when it divides the copy's contiguous extent; the
    generated code is still correct with a ragged tail because splits add predicates).
    """
    loops = sch.get_loops(block)
    # the copy block's own loops are the trailing ones that were created by cache_read + compute_at
    n_own = len(sch.get(block).iter_vars)
    own = loops[-n_own:]
    fused = sch.fuse(*own)
    factors = [None, n_ty, n_tx] if vec == 1 else [None, n_ty, n_tx, vec]
    parts = sch.split(fused, factors)
    if n_ty > 1:  # a unit threadIdx.y split stays serial (extent 1)
        sch.bind(parts[1], "threadIdx.y")
    sch.bind(parts[2], "threadIdx.x")
    if vec > 1:
        sch.vectorize(parts[3])


def gemm_tile(
    sch: s_tir.Schedule,
    block,
    *,
    m_thr: int,
    m_tile: int,
    n_thr: int,
    n_tile: int,
    k_step: int,
    shared_reads: tuple[int, ...] = (0, 1),
    batch_loops: int = 1,
    gather: str | None = None,
) -> tuple:
    """Tile a GEMM-shaped block ``C[b.., m, n] += A[.., m, k] * B[.., k, n]`` for CUDA.

    The block's loops must be ``(*batch, m, n, k)`` with ``batch_loops`` leading batch loops. The output tile per
    thread block is ``(m_thr*m_tile) x (n_thr*n_tile)``; each thread keeps an ``m_tile x n_tile`` register tile
    (``local`` cache), both operands are staged through shared memory in ``k_step`` slices, fetched
    cooperatively by all ``m_thr*n_thr`` threads (:func:`coop_fetch`). Grid: batch -> blockIdx.z,
    m -> blockIdx.y, n -> blockIdx.x. ``gather``: a block producing an operand (im2col's column gather) inlined
    into its shared-memory fill before the fetch is spread over the threads.

    Returns ``(block, writeback_block, shared_blocks, k_outer_loop)``. Splits need not divide: ragged edges get
    predicates.
    """
    local = sch.cache_write(block, 0, "local")
    loops = sch.get_loops(block)
    batch = loops[:batch_loops]
    m, n, k = loops[batch_loops:]
    mb, mt, mr = sch.split(m, [None, m_thr, m_tile])
    nb, nt, nr = sch.split(n, [None, n_thr, n_tile])
    ko, ki = sch.split(k, [None, k_step])
    sch.reorder(*batch, mb, nb, mt, nt, ko, ki, mr, nr)
    if batch:
        bz = sch.fuse(*batch) if len(batch) > 1 else batch[0]
        sch.bind(bz, "blockIdx.z")
    sch.bind(mb, "blockIdx.y")
    sch.bind(nb, "blockIdx.x")
    sch.bind(mt, "threadIdx.y")
    sch.bind(nt, "threadIdx.x")
    shared = []
    for idx in shared_reads:
        s = sch.cache_read(block, idx, "shared")
        sch.compute_at(s, ko, preserve_unit_loops=True)
        shared.append(s)
    sch.reverse_compute_at(local, nt, preserve_unit_loops=True)
    unroll_inner(sch, local, nt)
    sch.unroll(ki)
    sch.unroll(mr)
    sch.unroll(nr)
    if gather is not None:
        sch.compute_inline(sch.get_sblock(gather))
    for s in shared:
        coop_fetch(sch, s, n_thr, m_thr)
    return block, local, shared, ko


def gemm_knobs(knobs: dict[str, int], m: str, n: str, step: str) -> dict[str, int]:
    """The tile arguments of :func:`gemm_tile` from a rule's knobs: ``<m>_thr``/``<m>_tile`` along the GEMM's M
    axis, ``<n>_thr``/``<n>_tile`` along N, ``knobs[step]`` reduction elements per shared-memory slice."""
    return {
        "m_thr": knobs[f"{m}_thr"],
        "m_tile": knobs[f"{m}_tile"],
        "n_thr": knobs[f"{n}_thr"],
        "n_tile": knobs[f"{n}_tile"],
        "k_step": knobs[step],
    }


def unroll_inner(sch: s_tir.Schedule, block, outer) -> None:
    """Unroll every loop of ``block`` nested below loop ``outer`` (register-tile write-backs: a local array indexed
    by a rolled loop would be demoted to local memory, i.e. a stack frame)."""
    target = sch.get(outer)
    loops = sch.get_loops(block)
    idx = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(target))
    for lp in loops[idx + 1 :]:
        sch.unroll(lp)


def replay_without_threads(sch: s_tir.Schedule, original) -> tvm.tirx.PrimFunc:
    """The same schedule with every ``bind`` dropped: the identical loop nest, shared/local staging, inlining and
    predicates, but with thread/block loops serial, so it compiles for ``llvm`` and runs on a CPU.

    TensorIR schedule primitives preserve semantics and a thread binding only annotates a loop, so running this
    replay against a reference checks the schedule's index arithmetic without a GPU (not the barriers/races).
    ``sch`` is a rule's :meth:`~..rule.Conv2dRule.schedule`, ``original`` the PrimFunc it started from
    (:meth:`~..rule.Conv2dRule.unscheduled`).
    """
    from tvm.s_tir.schedule import Trace

    trace = sch.trace
    insts = [i for i in trace.insts if i.kind.name != "Bind"]
    decisions = {i: d for i, d in trace.decisions.items() if i.kind.name != "Bind"}
    fresh = s_tir.Schedule(original)
    Trace(insts, decisions).apply_to_schedule(fresh, remove_postproc=False)
    return fresh.mod["main"]


class CudaRule(Conv2dRule):
    """Base of the CUDA rules: NCHW data and output only (:meth:`target_reason`); a rule's
    :meth:`~..rule.Conv2dRule.knob_constraints` bounds threads per block (:data:`MAX_THREADS`), static shared
    memory (:data:`MAX_STATIC_SMEM`) and the per-thread register tile. Each family's CUDA rule
    (``cuda/<family>.py``) subclasses it together with its family base (:class:`~..rule.DirectFamily`, ...)."""

    arch = "cuda"

    def target_reason(self, wl: Conv2dWorkload, target: TargetInfo) -> str | None:
        """A CUDA target, and NCHW data and output (``data_block == out_block == 0``)."""
        if target.arch != "cuda":
            return f"the CUDA schedules need a CUDA target (got {target.arch})"
        if wl.data_block or wl.out_block:
            return f"CUDA kernels take NCHW data and output (got {wl.layout})"
        return None

    def add_candidates(self, wl: Conv2dWorkload, target: TargetInfo, out: list, settings) -> list:
        """``out`` (tuning candidates, the default first) extended, in order, by each knob setting of ``settings``
        (an iterable) that is not in it yet and meets :meth:`~..rule.Conv2dRule.knob_constraints`."""
        for kn in settings:
            if kn not in out and self.knob_constraints(wl, target, kn) is None:
                out.append(kn)
        return out
