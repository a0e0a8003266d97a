"""Epilogue fusion: bias add, folded BatchNorm (per-channel scale and shift), activations (ReLU, ReLU6/Clip,
HardSwish, Sigmoid, ...) and the residual add that TVM's FuseOps/FuseTIR group after a convpipe conv2d kernel are
inlined into the kernel's output store, so the conv output is written once, with the epilogue applied, in the
same pass. One walk (:func:`fuse_epilogue`, driven by :class:`ConvEpilogue`) serves every target; the CPU rule
(:class:`ConvEpilogueCPU`, here) and the CUDA rule (:class:`convpipe.schedules.cuda.epilogue.ConvEpilogueCUDA`)
differ in how a consumer the walk could not fuse is scheduled on its own, and in one switch: the CUDA rule
checks each inline against the consumer alone (:func:`consumer_covered`) rather than TVM's whole-scope
stage-pipeline test, which our predicated CUDA kernels fail for reasons internal to the kernel.

How: ``compiler/lower.py`` gives our conv2d PrimFuncs ``op_pattern = kOutEWiseFusable`` (so FuseOps groups the
element-wise consumers with them; FuseTIR keeps our loop nest, thread bindings included) and annotates the block
that writes the conv output with :data:`CONV_OUT`. After FuseTIR, the rule (a TVM dlight ``ScheduleRule``,
``python/tvm/s_tir/dlight/base/schedule_rule.py``, applied by ``dlight.ApplyDefaultSchedule``) finds that
block and ``reverse_compute_inline``s each injective consumer into it, in order. When the output block is a
reduction (it cannot take an inlined consumer), the first consumer is ``reverse_compute_at`` the innermost loop
of the kernel that TVM accepts (right after each finished part of the output) and the rest are inlined into
it. Fused functions without the annotation are not matched (they go to the next rule). Each primitive is tried on
a copy of the schedule first: where TVM fails inside it (rather than refusing with a ``ScheduleError``), the
consumer stays a kernel of its own like any other leftover, and :func:`epilogue_fallbacks` records it.
"""

from __future__ import annotations

import abc
import contextlib
import re
import threading

from tvm import s_tir, tirx
from tvm.s_tir import SBlock
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.s_tir.sblock_scope import DepKind
from tvm.target import Target

#: Block annotation marking the block that writes a convpipe conv2d kernel's NCHW output.
CONV_OUT = "convpipe.conv_out"

_recording = threading.local()


@contextlib.contextmanager
def epilogue_fallbacks():
    """Collect, while the block runs (in this thread), one record per epilogue consumer :func:`fuse_epilogue`
    could not inline because TVM failed inside the primitive (not a plain refusal): a list of dicts
    ``{"stage": "epilogue", "op", "fallback", "why"}`` (the manifest's ``fallbacks`` entries)."""
    stack = _recording.__dict__.setdefault("stack", [])
    found: list[dict] = []
    stack.append(found)
    try:
        yield found
    finally:
        stack.remove(found)


def _note_fallback(op: str, why: str) -> None:
    for found in getattr(_recording, "stack", []):
        found.append({"stage": "epilogue", "op": op, "fallback": "separate kernel (not inlined into the conv)",
                      "why": why})


def _one_line(e: BaseException, limit: int = 300) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    msg = next((ln for ln in reversed(lines) if "Check failed" in ln or "Error" in ln), lines[-1] if lines else "")
    msg = f"{type(e).__name__}: {msg}"
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def _try_inline(sch: s_tir.Schedule, consumer, producer) -> str:
    """``reverse_compute_inline`` ``consumer`` when TVM accepts it: ``"done"``, ``"refused"`` (a
    :class:`ScheduleError`: the primitive's own checks said no) or ``"failed"`` (TVM failed inside the
    primitive, e.g. ``InternalError: Cannot dispatch a null expression`` for a consumer that broadcasts its
    producer over a larger domain; recorded by :func:`epilogue_fallbacks`). The primitive runs on a copy first,
    so a failure half-way through cannot leave ``sch`` modified."""
    probe = sch.copy()
    try:
        probe.reverse_compute_inline(consumer)
    except s_tir.ScheduleError:
        return "refused"
    except Exception as e:  # noqa: BLE001 -- TVM internal errors (InternalError, TVMError, ...)
        _note_fallback(f"{sch.get(consumer).name_hint} (conv2d epilogue, after block {sch.get(producer).name_hint})",
                       _one_line(e))
        return "failed"
    sch.reverse_compute_inline(consumer)
    return "done"


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


def find_conv_out(sch: s_tir.Schedule):
    """The block annotated :data:`CONV_OUT` in ``sch``'s function, or ``None``."""
    for name in block_names(sch.mod["main"]):
        b = sch.get_sblock(name)
        if CONV_OUT in sch.get(b).annotations:
            return b
    return None


def fuse_epilogue(sch: s_tir.Schedule, out_block, kernel_scope_unchecked: bool = False) -> list:
    """Fuse the consumer chain of the conv output block ``out_block`` into it; return the blocks left over.

    Walks from ``out_block`` while the current producer has exactly one consumer: ``reverse_compute_inline`` it
    (the producer then writes the consumer's output, applying its expression), or, when the producer is a
    reduction, compute it right after the producer (:func:`compute_after`) and continue from it. Stops at a
    producer with several consumers (e.g. ``relu(y) + y``) or a consumer neither primitive accepts. Returns those
    consumers and everything downstream of them (breadth first, each once), for the target's rule to schedule
    as standalone loop nests.

    ``kernel_scope_unchecked``: ``sch`` was created with ``enable_check=False`` and each inline is checked by
    :func:`consumer_covered` instead of TVM's whole-scope stage-pipeline test (see there); ``compute_after``
    is not attempted then (its ``decompose_reduction`` probe is unchecked too), so a reduction output block
    keeps its consumers as leftovers."""
    rest = []
    producer = out_block
    while True:
        consumers = sch.get_consumers(producer)
        if len(consumers) != 1:
            rest.extend(consumers)
            break
        wider = _broadcast_consumer(sch, consumers[0], producer)
        if wider:  # e.g. the SE-block Mul of an excite conv's [N, C, 1, 1] output over [N, C, H, W]
            _note_fallback(f"{sch.get(consumers[0]).name_hint} (after conv2d block {sch.get(producer).name_hint})",
                           wider)
            rest.extend(consumers)
            break
        if not kernel_scope_unchecked or consumer_covered(sch, consumers[0]):
            outcome = _try_inline(sch, consumers[0], producer)
            if outcome == "done":
                continue
            if outcome == "failed":  # leave it (and what follows) as kernels of their own
                rest.extend(consumers)
                break
        # the producer is a reduction (its output is final only after its reduction loops): compute the
        # consumer right after it, under the innermost loop that encloses a finished part of the output
        if kernel_scope_unchecked or not compute_after(sch, consumers[0], producer):
            rest.extend(consumers)
            break
        producer = consumers[0]
    leftovers, seen = [], set()
    while rest:
        b = rest.pop(0)
        name = sch.get(b).name_hint
        if name in seen:
            continue
        seen.add(name)
        leftovers.append(b)
        rest.extend(sch.get_consumers(b))
    return leftovers


def _elements(block) -> int | None:
    """Elements of the buffer a block writes (its first), when its shape is constant."""
    n = 1
    for d in block.writes[0].source.shape:
        if not isinstance(d, tirx.IntImm):
            return None
        n *= int(d.value)
    return n


def _broadcast_consumer(sch: s_tir.Schedule, consumer, producer) -> str | None:
    """Why ``consumer`` is no epilogue of ``producer`` (``None`` when it may be one): it writes more elements than
    the producer does, i.e. broadcasts the producer's output over a larger tensor (a squeeze-and-excitation
    scale, an attention map). Inlining it would have to recompute the producer per element of the larger domain;
    ``reverse_compute_inline`` fails inside on such a consumer (``InternalError: ... Cannot dispatch a null
    expression``, TVM 0.27), so it runs as its own vectorised loop nest instead."""
    c, p = sch.get(consumer), sch.get(producer)
    if not c.writes or not p.writes:
        return None
    nc, np_ = _elements(c), _elements(p)
    if nc is None or np_ is None or nc <= np_:
        return None
    return (f"it broadcasts the conv output ({np_} elements) over a larger tensor ({nc} elements), so it is not "
            "an epilogue of this conv: it runs as its own vectorised loop nest")


def consumer_covered(sch: s_tir.Schedule, consumer) -> bool:
    """The parts of TVM's stage-pipeline condition that concern inlining ``consumer`` into its producer.

    ``reverse_compute_inline`` requires the whole scope to be a *stage pipeline*: every block's reads covered by
    its producers' writes (``region_cover``) and no write-after-read or opaque dependency
    (``src/s_tir/schedule/state.cc``). A kernel whose tiles do not divide the output (predicated with
    ``T.where``) fails the region-cover proof *inside the kernel* (e.g. the GEMM update of cuda/im2col on a
    14x14 output: TVM's lower-bound region analysis cannot see through the predicate), which has nothing to do
    with the epilogue. What inlining the consumer needs is that the producer writes everything the consumer
    reads -- the consumer's own ``region_cover`` flag, which TVM computes whatever ``enable_check`` is -- and
    that no dependency in the scope is WAR or opaque. Both are checked here; the primitive itself still checks
    the rest (complete block, single producer, injective body)."""
    sref = sch.get_sref(consumer)
    if not sch.state._get_cached_flags(sref).region_cover:
        return False
    scope = sref.parent
    while not isinstance(scope.stmt, SBlock):
        scope = scope.parent
    deps = sch.state.get_sblock_scope(scope)
    for b in sch.get_child_blocks(sch.get_sblock(scope.stmt.name_hint)):
        for d in deps.get_deps_by_dst(sch.get_sref(b)):
            if d.kind in (DepKind.WAR, DepKind.OPAQUE):
                return False
    return True


def compute_after(sch: s_tir.Schedule, consumer, producer) -> bool:
    """``reverse_compute_at`` the consumer under the innermost loop of the reduction ``producer`` that encloses
    all of its reduction loops (where each output is final). A loop qualifies exactly when
    ``decompose_reduction`` accepts it, which is tried on a copy of the schedule."""
    for loop in reversed(sch.get_loops(producer)):
        probe = sch.copy()
        try:
            probe.decompose_reduction(producer, loop)
        except s_tir.ScheduleError:
            continue
        try:
            sch.copy().reverse_compute_at(consumer, loop, preserve_unit_loops=False)
        except Exception:  # noqa: BLE001 -- ScheduleError, or a TVM failure inside the primitive
            return False
        sch.reverse_compute_at(consumer, loop, preserve_unit_loops=False)
        return True
    return False


class ConvEpilogue(ScheduleRule):
    """Base of the epilogue rules: match a fused function holding a :data:`CONV_OUT` block, fuse its epilogue
    (:func:`fuse_epilogue`), then let the subclass schedule the leftovers (:meth:`schedule_leftovers`).

    :attr:`kernel_scope_unchecked` (False here): check each inline by :func:`consumer_covered` on a schedule
    created with ``enable_check=False`` instead of TVM's whole-scope stage-pipeline test."""

    kernel_scope_unchecked = False

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or CONV_OUT not in func.script():
            return None
        sch = s_tir.Schedule(func, enable_check=not self.kernel_scope_unchecked)
        out_block = find_conv_out(sch)
        if out_block is None:
            return None
        self.schedule_leftovers(sch, fuse_epilogue(sch, out_block, self.kernel_scope_unchecked), target)
        return sch

    @abc.abstractmethod
    def schedule_leftovers(self, sch: s_tir.Schedule, blocks: list, target: Target) -> None:
        """Give each block :func:`fuse_epilogue` left over a loop nest of its own fit for ``target``."""


class ConvEpilogueCPU(ConvEpilogue):
    """Inline the element-wise epilogue of a fused convpipe conv2d function into its output block; a consumer
    that cannot be fused gets a parallel + vectorised loop nest of its own
    (:meth:`convpipe.schedules.elementwise.InjectiveCPU.schedule_block`)."""

    def schedule_leftovers(self, sch: s_tir.Schedule, blocks: list, target: Target) -> None:
        from .elementwise import InjectiveCPU

        for b in blocks:
            InjectiveCPU.schedule_block(sch, b)
