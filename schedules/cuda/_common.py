"""Shared pieces of the CUDA conv2d schedules: cooperative shared-memory fetch, the tiled GEMM used by implicit-GEMM
im2col and by Winograd's batched GEMM, knob checks, and the nvcc/ptxas resource report used by tests and
``scripts/check_cuda.py``.

All schedules here are pure loop transformations (split/reorder/bind/cache/compute_at/inline) of the
target-independent computes in :mod:`..compute`; they never change what is computed.
"""

from __future__ import annotations

import abc

import math
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import tvm
from tvm import s_tir

from ..rule import Conv2dRule, Knobs
from ..target import TargetInfo
from ..workload import Conv2dWorkload

#: CUDA limits we schedule against (sm_80 and sm_90 alike): threads per block, static shared memory per block.
MAX_THREADS = 1024
MAX_STATIC_SMEM = 48 * 1024
#: Knob domains every CUDA rule shares: threads along one axis of a block, and a shared-memory slice (elements of
#: the reduction per step: at most what fits the static shared memory as fp32).
THREADS = range(1, MAX_THREADS + 1)
SMEM_SLICE = range(1, MAX_STATIC_SMEM // 4 + 1)


def divisor_domain(n: int, cap: int | None = None) -> tuple[int, ...]:
    """The divisors of ``n`` (at most ``cap``), as a knob domain."""
    return tuple(d for d in range(1, n + 1) if n % d == 0 and (cap is None or d <= cap))


def ceil_div(a: int, b: int) -> int:
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


def check_threads(n: int, family: str) -> None:
    if n < 1 or n > MAX_THREADS:
        raise ValueError(f"cuda/{family}: {n} threads per block (must be 1..{MAX_THREADS})")


def check_smem(nbytes: int, family: str) -> None:
    if nbytes > MAX_STATIC_SMEM:
        raise ValueError(f"cuda/{family}: {nbytes} bytes of shared memory per block (static limit {MAX_STATIC_SMEM})")


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
    if n_ty > 1:
        sch.bind(parts[1], "threadIdx.y")
    else:
        # a unit threadIdx.y split still needs no binding; keep it serial (extent 1)
        pass
    sch.bind(parts[2], "threadIdx.x")
    if vec > 1:
        sch.vectorize(parts[3])


def gemm_tile(
    sch: s_tir.Schedule,
    block,
    *,
    m_thr: int,
    m_reg: int,
    n_thr: int,
    n_reg: int,
    k_tile: int,
    shared_reads: tuple[int, ...] = (0, 1),
    batch_loops: int = 1,
) -> tuple:
    """Tile a GEMM-shaped block ``C[b.., m, n] += A[.., m, k] * B[.., k, n]`` for CUDA.

    The block's loops must be ``(*batch, m, n, k)`` with ``batch_loops`` leading batch loops. The output tile per
    thread block is ``(m_thr*m_reg) x (n_thr*n_reg)``; each thread keeps an ``m_reg x n_reg`` register tile
    (``local`` cache), both operands are staged through shared memory in ``k_tile`` slices, fetched
    cooperatively by all ``m_thr*n_thr`` threads. Grid: batch -> blockIdx.z, m -> blockIdx.y, n -> blockIdx.x.

    Returns ``(block, writeback_block, shared_blocks)``. Splits need not divide: ragged edges get predicates.
    """
    local = sch.cache_write(block, 0, "local")
    loops = sch.get_loops(block)
    batch = loops[:batch_loops]
    m, n, k = loops[batch_loops:]
    mb, mt, mr = sch.split(m, [None, m_thr, m_reg])
    nb, nt, nr = sch.split(n, [None, n_thr, n_reg])
    ko, ki = sch.split(k, [None, k_tile])
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
    return block, local, shared, ko


def replay_without_threads(sch: s_tir.Schedule, original) -> tvm.tirx.PrimFunc:
    """The same schedule with every ``bind`` dropped: the identical loop nest, shared/local staging, inlining and
    predicates, but with thread/block loops serial, so it compiles for ``llvm`` and runs on a CPU.

    TensorIR schedule primitives preserve semantics and a thread binding only annotates a loop, so running this
    replay against a reference checks the schedule's index arithmetic without a GPU (not the barriers/races).
    """
    from tvm.s_tir.schedule import Trace

    trace = sch.trace
    insts = [i for i in trace.insts if i.kind.name != "Bind"]
    decisions = {i: d for i, d in trace.decisions.items() if i.kind.name != "Bind"}
    fresh = s_tir.Schedule(original)
    Trace(insts, decisions).apply_to_schedule(fresh, remove_postproc=False)
    return fresh.mod["main"]


def unroll_inner(sch: s_tir.Schedule, block, outer) -> None:
    """Unroll every loop of ``block`` nested below loop ``outer`` (register-tile write-backs: a local array indexed
    by a rolled loop would be demoted to local memory, i.e. a stack frame)."""
    target = sch.get(outer)
    loops = sch.get_loops(block)
    idx = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(target))
    for lp in loops[idx + 1 :]:
        sch.unroll(lp)


# ------------------------------------------------------------------------------------------------------------
# nvcc / ptxas checks (offline: no GPU needed)
# ------------------------------------------------------------------------------------------------------------
NVCC = os.environ.get("CONVPIPE_NVCC", "nvcc")
TVM_PTXAS_FLAGS = ["--ptxas-options=-v,--register-usage-level=10,--warn-on-local-memory-usage"]


def nvcc_available() -> bool:
    import shutil

    return shutil.which(NVCC) is not None


@dataclass
class PtxasReport:
    """ptxas ``-v`` figures of one kernel (``__global__`` function)."""

    kernel: str
    registers: int
    smem_bytes: int
    spill_stores: int
    spill_loads: int
    stack_bytes: int
    threads: int = 0  #: threads per block (the kernel's ``__launch_bounds__``), 0 if unknown
    occupancy: float = 0.0  #: theoretical occupancy (:func:`occupancy`), 0.0 if unknown

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads


#: Per-SM limits: 32-bit registers, resident threads, resident blocks, shared memory usable by blocks (bytes).
#: CUDA C Programming Guide, "Technical Specifications per Compute Capability" (table 21 in CUDA 13.0).
SM_LIMITS = {
    "sm_80": (65536, 2048, 32, 164 * 1024),
    "sm_86": (65536, 1536, 16, 100 * 1024),
    "sm_89": (65536, 1536, 24, 100 * 1024),
    "sm_90": (65536, 2048, 32, 228 * 1024),
}


def occupancy(arch: str, threads: int, registers: int, smem_bytes: int) -> float:
    """Theoretical occupancy (resident warps / the SM's maximum, 0..1) of a kernel with ``threads`` per block,
    ``registers`` per thread and ``smem_bytes`` of static shared memory per block, by the rules of NVIDIA's
    CUDA Occupancy Calculator: registers allocated per warp in units of 256, 1 KiB of shared memory reserved per
    block by the system (sm_80 and later), and the per-SM limits of :data:`SM_LIMITS`.

    Raises:
        ValueError: an arch not in :data:`SM_LIMITS`, or ``threads`` < 1.
    """
    if arch.rstrip("a") not in SM_LIMITS:
        raise ValueError(f"occupancy: unknown arch {arch!r} (known: {sorted(SM_LIMITS)})")
    if threads < 1:
        raise ValueError(f"occupancy: {threads} threads per block")
    regs_sm, threads_sm, blocks_sm, smem_sm = SM_LIMITS[arch.rstrip("a")]
    warps = ceil_div(threads, 32)
    regs_per_warp = ceil_div(max(registers, 1) * 32, 256) * 256
    by_regs = (regs_sm // regs_per_warp) // warps
    by_smem = smem_sm // (smem_bytes + 1024) if smem_bytes else blocks_sm
    blocks = min(by_regs, by_smem, blocks_sm, threads_sm // (warps * 32))
    return blocks * warps * 32 / threads_sm


def cuda_source(func, target) -> str:
    """CUDA C source of a scheduled PrimFunc compiled standalone for ``target`` (a CUDA ``tvm.target.Target``)."""
    import tvm

    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    with target:
        ex = tvm.compile(mod, target=target)
    for m in ex.mod.imports:
        if m.kind == "cuda":
            return m.inspect_source("cuda")
    raise RuntimeError("no CUDA module in the compiled executable")


_FN_RE = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'")
_SPILL_RE = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_BOUNDS_RE = re.compile(r"__launch_bounds__\((\d+)\)\s+(\w+)\(")
_USED_RE = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def ptxas_report(source: str, arch: str) -> list[PtxasReport]:
    """Compile CUDA ``source`` to a cubin for ``arch`` with ``nvcc -Xptxas -v`` and parse the per-kernel figures.

    Raises:
        RuntimeError: nvcc failed (its output is in the message).
    """
    return compile_cubin(source, arch)[1]


def nvcc_flags(arch: str, fast_math: bool = False) -> list[str]:
    """nvcc options (after ``nvcc``, before ``-o``) for a cubin of TVM-generated CUDA for ``arch``: ``-O3``, the ptxas
    options TVM uses (:data:`TVM_PTXAS_FLAGS`: ``-v`` for the per-kernel figures)
    and either IEEE-exact math (``--fmad=true --ftz=false --prec-div=true --prec-sqrt=true``, nvcc's defaults
    spelled out) or, with ``fast_math``, ``--use_fast_math`` (what ``tvm/support/nvcc.py`` always passes)."""
    math = ["--use_fast_math"] if fast_math else ["--fmad=true", "--ftz=false", "--prec-div=true", "--prec-sqrt=true"]
    return [f"-arch={arch}", "-O3", *math, *TVM_PTXAS_FLAGS]


def compile_cubin(source: str, arch: str) -> tuple[bytes, list[PtxasReport]]:
    """``(cubin bytes, per-kernel ptxas figures)`` of CUDA ``source`` compiled by nvcc for ``arch`` (``sm_90``).

    Raises:
        RuntimeError: nvcc failed (its output is in the message).
    """
    with tempfile.TemporaryDirectory() as d:
        cu = os.path.join(d, "k.cu")
        with open(cu, "w") as f:
            f.write(source)
        # the flags convpipe's artifacts are built with (IEEE-exact math; see nvcc_flags)
        cmd = [NVCC, "--cubin", *nvcc_flags(arch)]
        cmd += ["-o", os.path.join(d, "k.cubin"), cu]
        r = subprocess.run(cmd, capture_output=True, text=True)
        cubin = open(os.path.join(d, "k.cubin"), "rb").read() if r.returncode == 0 else b""
    out = r.stdout + r.stderr
    if r.returncode != 0:
        raise RuntimeError(f"nvcc failed ({' '.join(cmd)}):\n{out}")
    reports, cur, stack = [], None, None
    for line in out.splitlines():
        if mm := _FN_RE.search(line):
            cur, stack = mm.group(1), None
        elif (mm := _SPILL_RE.search(line)) and cur:
            stack = tuple(int(x) for x in mm.groups())
        elif (mm := _USED_RE.search(line)) and cur:
            st = stack or (0, 0, 0)
            reports.append(PtxasReport(cur, int(mm.group(1)), int(mm.group(2) or 0), st[1], st[2], st[0]))
            cur = None
    if not reports:
        raise RuntimeError(f"could not parse ptxas output:\n{out}")
    bounds = {name: int(n) for n, name in _BOUNDS_RE.findall(source)}
    for rep in reports:
        rep.threads = bounds.get(rep.kernel, 0)
        if rep.threads and arch.rstrip("a") in SM_LIMITS:
            rep.occupancy = occupancy(arch, rep.threads, rep.registers, rep.smem_bytes)
    return cubin, reports


def prod(xs) -> int:
    return math.prod(xs)


class CudaRule(Conv2dRule):
    """Base of the CUDA rules: ``build`` is the PrimFunc of :meth:`schedule`, whose trace the tests also replay on
    the CPU without thread bindings. Subclasses implement :meth:`unscheduled`, :meth:`_valid` and
    :meth:`schedule` (the transformations applied to :meth:`start`'s fresh schedule)."""

    arch = "cuda"

    def unsupported_reason(self, wl: Conv2dWorkload, target: TargetInfo) -> str | None:
        if wl.data_block or wl.out_block:
            return f"CUDA kernels take NCHW data and output (got {wl.layout})"
        return super().unsupported_reason(wl, target)

    @abc.abstractmethod
    def unscheduled(self, wl: Conv2dWorkload, knobs: Knobs) -> tvm.tirx.PrimFunc:
        """The shared target-independent compute this rule schedules."""

    @staticmethod
    @abc.abstractmethod
    def _valid(wl: Conv2dWorkload, knobs: Knobs) -> str | None:
        """``None`` when ``knobs`` (complete, each an ``int``) fit ``wl``, else why not: the conditions between
        knobs (threads per block, shared memory, register tile, tiles dividing the output)."""

    def knob_constraints(self, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> str | None:
        """:meth:`_valid` (the CUDA limits: :data:`MAX_THREADS`, :data:`MAX_STATIC_SMEM`, register tile)."""
        return self._valid(wl, knobs)

    def start(self, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> s_tir.Schedule:
        """A fresh schedule of :meth:`unscheduled` after checking the workload and the knobs
        (:meth:`~..rule.Conv2dRule.validate_knobs`).

        Raises:
            ValueError: unsupported workload or invalid knobs (names both).
        """
        self.check(wl, target)
        self.check_knobs(wl, target, knobs)
        return s_tir.Schedule(self.unscheduled(wl, knobs))

    @abc.abstractmethod
    def schedule(self, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> s_tir.Schedule:
        """:meth:`start`'s schedule with this rule's transformations applied (what :meth:`build` returns and
        the tests replay without thread bindings)."""

    def build(self, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> tvm.tirx.PrimFunc:
        return self.schedule(wl, target, knobs).mod["main"]
