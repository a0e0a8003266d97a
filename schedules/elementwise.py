"""A CPU schedule for the non-conv2d kernels TVM's default pipeline leaves unscheduled: injective (elementwise,
broadcast, layout) fused functions get a vectorised innermost loop under one parallel loop. A TVM dlight ``ScheduleRule`` (``python/tvm/s_tir/dlight/base/schedule_rule.py``), applied by
``compiler/pipeline.py`` after FuseTIR together with dlight's own CPU GEMV and Reduction rules.

Shapes and layouts are whatever the fused function has; only all-spatial (injective) functions match.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.s_tir.dlight.base.common_schedules import try_inline
from tvm.target import Target


def _normalized_llvm(func, target: Target) -> tuple:
    """``(schedule, block infos)`` of ``func`` (dlight's ``normalize_prim_func``: ``None`` when it cannot
    analyse it), or ``(None, None)`` unless ``func`` is a PrimFunc and ``target`` an llvm one (what the rules
    here schedule)."""
    if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
        return None, None
    sch = s_tir.Schedule(func)
    return sch, normalize_prim_func(sch)


class InjectiveCPU(ScheduleRule):
    """Parallel + vectorised loop nest for an injective PrimFunc on an llvm target.

    Knobs: ``vector`` (inner extent, default 16 fp32 lanes; the largest divisor of the innermost extent up to it),
    ``min_parallel`` (no ``parallel`` below this many elements: thread start-up costs more than it saves).
    """

    def __init__(self, vector: int = 16, min_parallel: int = 4096):
        self.vector = vector
        self.min_parallel = min_parallel

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        sch, infos = _normalized_llvm(func, target)
        if not infos or not all(i.is_injective() for i in infos):
            return None
        infos = try_inline(sch, infos)
        if len(infos) != 1:
            return None
        return sch if self.schedule_block(sch, infos[0].block_rv, self.vector, self.min_parallel) else None

    @staticmethod
    def schedule_block(sch: s_tir.Schedule, block, vector: int = 16, min_parallel: int = 4096) -> bool:
        """Vectorise the innermost loop by its largest divisor up to ``vector`` and parallelise the fusion of the
        loops above it (the innermost axis stays unfused, so vector lanes need no div/mod index arithmetic);
        ``False`` when the extents are not static."""
        loops = sch.get_loops(block)
        if not loops:
            return False
        extents = [sch.get(lp).extent for lp in loops]
        if not all(isinstance(e, tirx.IntImm) for e in extents):
            return False
        total = 1
        for e in extents:
            total *= int(e)
        *outer, last = loops
        n_last = int(extents[-1])
        vec = max(d for d in range(1, min(vector, n_last) + 1) if n_last % d == 0)
        if vec > 1:
            last_outer, last_inner = sch.split(last, [None, vec])
            sch.vectorize(last_inner)
            outer.append(last_outer)
        else:
            outer.append(last)
        if total >= min_parallel:
            sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
        return True


class DenseCPU(ScheduleRule):
    """The fully-connected head of a CNN: ``matmul[m, n] = sum_k A[m, k] * B[k, n]`` (B constant, N contiguous,
    as the Gemm weight is after constant folding its transpose), plus an injective epilogue (bias).

    Schedule: N split into ``n_block``-wide strips (run in parallel), each a loop over vectors of up to 16 lanes;
    inside a strip the reduction over K is the outer loop, so B is streamed row after row, contiguously (dlight's
    CPU GEMV rule instead reduces along K and reads B with a stride of N). Knob: ``n_block``, default 4096, i.e.
    one strip of whole rows for every classifier up to 4096 classes: the head's weight is cold in cache at
    inference (the convs before it evicted it), so the kernel is bound by streaming B from memory, and one
    sequential stream measured fastest at 1 and 2 threads (MobileNetV2's 1280x1000 head in the model: 0.18 ms
    with whole rows vs 0.66 ms with 64-wide strips at 1 thread; 0.16 vs 0.26 ms with 40-wide strips at 2).
    """

    def __init__(self, n_block: int = 4096):
        self.n_block = n_block

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        sch, infos = _normalized_llvm(func, target)
        # normalize_prim_func drops unit loops: [S, R] is a GEMV (M = 1), [S, S, R] a small-M GEMM
        if not infos or infos[0].name != "matmul" or [i.kind for i in infos[0].iters] not in (["S", "R"], ["S", "S", "R"]):
            return None
        if not all(i.is_injective() for i in infos[1:]):
            return None
        block = infos[0].block_rv
        loops = [i.loop_rv for i in infos[0].iters]
        *ms, n, k = loops
        extents = [sch.get(lp).extent for lp in loops]
        if not all(isinstance(e, tirx.IntImm) for e in extents) or (ms and int(extents[0]) > 8):
            return None
        n_ext = int(extents[-2])
        nb = max(d for d in range(1, min(self.n_block, n_ext) + 1) if n_ext % d == 0)
        vec = max(v for v in (1, 2, 4, 8, 16) if nb % v == 0)
        no, nj, ni = sch.split(n, [None, nb // vec, vec])
        sch.reorder(no, *ms, k, nj, ni)
        sch.parallel(no)
        sch.vectorize(ni)
        for info in infos[1:]:
            sch.reverse_compute_at(info.block_rv, no)
        for info in infos[1:]:
            inner = sch.get_loops(info.block_rv)[-1]
            sch.vectorize(inner)
        sch.decompose_reduction(block, k)
        return sch
