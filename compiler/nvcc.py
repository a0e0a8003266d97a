"""nvcc and ptxas for CUDA device code: the flags artifacts are built with, compiling TVM-generated CUDA C to a
cubin (or PTX), and reading ptxas' per-kernel resource figures (registers, shared memory, spills, stack) with the
theoretical occupancy they allow. Works offline: nvcc needs no GPU.

Used by the build (:func:`convpipe.compiler.cuda_device.cuda_build` compiles every CUDA module through
:func:`compile_device_code` and records the figures in the manifest), by the tests that check the schedules'
kernels for spills, and by ``scripts/check_cuda.py``.

The nvcc executable is ``$CONVPIPE_NVCC``, else ``nvcc`` on ``PATH`` (:data:`NVCC`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

NVCC = os.environ.get("CONVPIPE_NVCC", "nvcc")
#: ptxas options TVM passes (``tvm/support/nvcc.py``): ``-v`` prints the per-kernel figures :func:`parse_ptxas` reads.
TVM_PTXAS_FLAGS = ["--ptxas-options=-v,--register-usage-level=10,--warn-on-local-memory-usage"]


def nvcc_available() -> bool:
    """Whether :data:`NVCC` names an executable (on ``PATH`` or as a path)."""
    return shutil.which(NVCC) is not None


def nvcc_flags(arch: str, fast_math: bool = False) -> list[str]:
    """nvcc options (after ``nvcc``, before ``-o``) for a cubin of TVM-generated CUDA for ``arch`` (``"sm_90"``):
    ``-O3``, the ptxas options TVM uses (:data:`TVM_PTXAS_FLAGS`: ``-v`` for the per-kernel figures) and either
    IEEE-exact math (``--fmad=true --ftz=false --prec-div=true --prec-sqrt=true``, nvcc's defaults spelled out) or,
    with ``fast_math``, ``--use_fast_math`` (what ``tvm/support/nvcc.py`` always passes). One set of flags for
    artifacts and for the schedules' ptxas checks."""
    math = ["--use_fast_math"] if fast_math else ["--fmad=true", "--ftz=false", "--prec-div=true", "--prec-sqrt=true"]
    return [f"-arch={arch}", "-O3", *math, *TVM_PTXAS_FLAGS]


@dataclass
class PtxasReport:
    """ptxas ``-v`` figures of one kernel (``__global__`` function): ``registers`` per thread, static shared memory
    ``smem_bytes`` per block, spill stores/loads and stack frame in bytes."""

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
        """Spilled bytes, stores plus loads."""
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
    warps = -(-threads // 32)
    regs_per_warp = -(-max(registers, 1) * 32 // 256) * 256
    by_regs = (regs_sm // regs_per_warp) // warps
    by_smem = smem_sm // (smem_bytes + 1024) if smem_bytes else blocks_sm
    blocks = min(by_regs, by_smem, blocks_sm, threads_sm // (warps * 32))
    return blocks * warps * 32 / threads_sm


_FN_RE = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'")
_SPILL_RE = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_BOUNDS_RE = re.compile(r"__launch_bounds__\((\d+)\)\s+(\w+)\(")
_USED_RE = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas(output: str, source: str, arch: str) -> list[PtxasReport]:
    """Per-kernel figures (:class:`PtxasReport`) from nvcc's ``-Xptxas -v`` ``output`` for CUDA ``source``
    compiled for ``arch``; threads per block come from the source's ``__launch_bounds__``, occupancy from
    :func:`occupancy` (archs in :data:`SM_LIMITS` only).

    Raises:
        RuntimeError: no kernel figures in ``output``.
    """
    reports, cur, stack = [], None, None
    for line in output.splitlines():
        if mm := _FN_RE.search(line):
            cur, stack = mm.group(1), None
        elif (mm := _SPILL_RE.search(line)) and cur:
            stack = tuple(int(x) for x in mm.groups())
        elif (mm := _USED_RE.search(line)) and cur:
            st = stack or (0, 0, 0)
            reports.append(PtxasReport(cur, int(mm.group(1)), int(mm.group(2) or 0), st[1], st[2], st[0]))
            cur = None
    if not reports:
        raise RuntimeError(f"could not parse ptxas output:\n{output}")
    bounds = {name: int(n) for n, name in _BOUNDS_RE.findall(source)}
    for rep in reports:
        rep.threads = bounds.get(rep.kernel, 0)
        if rep.threads and arch.rstrip("a") in SM_LIMITS:
            rep.occupancy = occupancy(arch, rep.threads, rep.registers, rep.smem_bytes)
    return reports


def compile_device_code(
    source: str, arch: str, fast_math: bool = False, fmt: str = "cubin"
) -> tuple[bytes, list[PtxasReport]]:
    """``(binary, per-kernel ptxas figures)`` of CUDA ``source`` compiled by nvcc with :func:`nvcc_flags`;
    ``fmt`` ``"cubin"`` (what artifacts embed) or ``"ptx"`` (for inspection: no ptxas figures, ``[]``).

    Raises:
        RuntimeError: nvcc failed (its command and output are in the message).
    """
    flags = nvcc_flags(arch, fast_math)
    if fmt == "ptx":
        flags = [f for f in flags if not f.startswith("--ptxas-options")]
    with tempfile.TemporaryDirectory() as d:
        cu, out_path = os.path.join(d, "k.cu"), os.path.join(d, f"k.{fmt}")
        with open(cu, "w") as f:
            f.write(source)
        cmd = [NVCC, f"--{fmt}", *flags, "-o", out_path, cu]
        r = subprocess.run(cmd, capture_output=True, text=True)
        binary = open(out_path, "rb").read() if r.returncode == 0 else b""
    out = r.stdout + r.stderr
    if r.returncode != 0:
        raise RuntimeError(f"nvcc failed ({' '.join(cmd)}):\n{out}")
    return binary, ([] if fmt == "ptx" else parse_ptxas(out, source, arch))


def ptxas_report(source: str, arch: str) -> list[PtxasReport]:
    """The per-kernel ptxas figures of CUDA ``source`` compiled for ``arch`` with the artifact flags
    (:func:`compile_device_code`, IEEE-exact math).

    Raises:
        RuntimeError: nvcc failed (its output is in the message).
    """
    return compile_device_code(source, arch)[1]


def cuda_source(func, target) -> str:
    """CUDA C source of a scheduled ``tvm.tirx.PrimFunc`` compiled standalone for ``target`` (a CUDA
    ``tvm.target.Target``), as TVM's codegen emits it (before nvcc).

    Raises:
        RuntimeError: the compiled executable holds no CUDA module.
    """
    import tvm

    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    with target:
        ex = tvm.compile(mod, target=target)
    for m in ex.mod.imports:
        if m.kind == "cuda":
            return m.inspect_source("cuda")
    raise RuntimeError("no CUDA module in the compiled executable")
