"""Epilogue fusion on CPU: bias add, folded BatchNorm, activations (ReLU, ReLU6/Clip, HardSwish, Sigmoid, ...)
and the residual add that TVM's FuseOps/FuseTIR group after a convpipe conv2d kernel are inlined into the
kernel's output store, so the conv output is written once, with the epilogue applied, in the same pass.

How: ``compiler/lower.py`` gives our conv2d PrimFuncs ``op_pattern = kOutEWiseFusable`` (so FuseOps groups the
element-wise consumers with them; FuseTIR keeps our loop nest) and annotates the block that writes the conv
output with :data:`CONV_OUT`. After FuseTIR, :class:`ConvEpilogueCPU` (a TVM dlight ``ScheduleRule``) finds
that block and ``reverse_compute_inline``s each injective consumer into it, in order. When the output block is
a reduction (it cannot take an inlined consumer), the first consumer is ``reverse_compute_at`` the innermost
loop of the kernel that TVM accepts (right after each finished part of the output) and the rest are inlined
into it. A consumer that fits neither gets a parallel + vectorised loop nest of its own. Fused functions without the annotation are not matched.
"""

from __future__ import annotations

import re

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

#: Block annotation marking the block that writes a convpipe conv2d kernel's NCHW output.
CONV_OUT = "convpipe.conv_out"


def block_names(func: tirx.PrimFunc) -> list[str]:
    return [n for n in re.findall(r'T\.sblock\("([^"]+)"', func.script()) if n != "root"]


def mark_output_block(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Annotate the block of ``func`` that writes its last parameter (the conv output) with :data:`CONV_OUT`."""
    sch = s_tir.Schedule(func)
    out_buf = func.params[-1]
    for name in block_names(func):
        block = sch.get_sblock(name)
        if any(r.source.same_as(out_buf) for r in sch.get(block).writes):
            sch.annotate(block, CONV_OUT, 1)
            return sch.mod["main"]
    raise ValueError("no block writes the kernel's output buffer")


class ConvEpilogueCPU(ScheduleRule):
    """Inline the element-wise epilogue of a fused convpipe conv2d function into its output block."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or CONV_OUT not in func.script():
            return None
        sch = s_tir.Schedule(func)
        out_block = None
        for name in block_names(func):
            b = sch.get_sblock(name)
            if CONV_OUT in sch.get(b).annotations:
                out_block = b
                break
        if out_block is None:
            return None
        from .elementwise import InjectiveCPU

        rest = []
        producer = out_block
        while True:
            consumers = sch.get_consumers(producer)
            if len(consumers) != 1:
                rest.extend(consumers)
                break
            try:
                sch.reverse_compute_inline(consumers[0])
                continue
            except s_tir.ScheduleError:
                pass
            # the producer is a reduction (its output is final only after its reduction loops): compute the
            # consumer right after it, under the innermost loop that encloses a finished part of the output
            if not self._compute_after(sch, consumers[0], producer):
                rest.extend(consumers)
                break
            producer = consumers[0]
        # anything left (and its consumers) gets a parallel + vectorised nest of its own
        seen = set()
        while rest:
            b = rest.pop(0)
            name = sch.get(b).name_hint
            if name in seen:
                continue
            seen.add(name)
            InjectiveCPU.schedule_block(sch, b)
            rest.extend(sch.get_consumers(b))
        return sch

    @staticmethod
    def _compute_after(sch: s_tir.Schedule, consumer, producer) -> bool:
        """``reverse_compute_at`` the consumer under the innermost loop of the reduction ``producer`` that
        encloses all of its reduction loops (where each output is final). A loop qualifies exactly when
        ``decompose_reduction`` accepts it, which is tried on a copy of the schedule."""
        for loop in reversed(sch.get_loops(producer)):
            probe = sch.copy()
            try:
                probe.decompose_reduction(producer, loop)
            except s_tir.ScheduleError:
                continue
            try:
                sch.reverse_compute_at(consumer, loop, preserve_unit_loops=False)
                return True
            except s_tir.ScheduleError:
                return False
        return False
