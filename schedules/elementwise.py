"""A CPU schedule for the non-conv2d kernels TVM's default pipeline leaves unscheduled: injective (elementwise,
broadcast, layout) fused functions get their loops fused, split into a parallel outer loop and a vectorised
inner loop. A TVM dlight ``ScheduleRule`` (``python/tvm/s_tir/dlight/base/schedule_rule.py``), applied by
``compiler/pipeline.py`` after FuseTIR together with dlight's own CPU GEMV and Reduction rules.

Shapes and layouts are whatever the fused function has; only all-spatial (injective) functions match.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.s_tir.dlight.base.common_schedules import try_inline
from tvm.target import Target


class InjectiveCPU(ScheduleRule):
    """Parallel + vectorised loop nest for an injective PrimFunc on an llvm target.

    Knobs: ``vector`` (inner extent, default 16 fp32 lanes; the largest divisor of the fused extent up to it),
    ``min_parallel`` (no ``parallel`` below this many elements: thread start-up costs more than it saves).
    """

    def __init__(self, vector: int = 16, min_parallel: int = 4096):
        self.vector = vector
        self.min_parallel = min_parallel

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos or not all(i.is_injective() for i in infos):
            return None
        infos = try_inline(sch, infos)
        if len(infos) != 1:
            return None
        return sch if self.schedule_block(sch, infos[0].block_rv, self.vector, self.min_parallel) else None

    @staticmethod
    def schedule_block(sch: s_tir.Schedule, block, vector: int = 16, min_parallel: int = 4096) -> bool:
        """Fuse ``block``'s loops, split off a vector-wide inner loop, parallelise the outer one; ``False`` when
        its extents are not static."""
        loops = sch.get_loops(block)
        if not loops:
            return False
        extents = [sch.get(lp).extent for lp in loops]
        if not all(isinstance(e, tirx.IntImm) for e in extents):
            return False
        total = 1
        for e in extents:
            total *= int(e)
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        vec = max(d for d in range(1, min(vector, total) + 1) if total % d == 0)
        outer, inner = sch.split(fused, [None, vec])
        if total >= min_parallel:
            sch.parallel(outer)
        if vec > 1:
            sch.vectorize(inner)
        return True
