"""Epilogue fusion into the CUDA conv2d kernels: bias add, folded BatchNorm (per-channel scale and shift),
activations (ReLU, ReLU6 as max/min, Clip, ...) and the residual add (another tensor read at the same index) that
TVM's FuseOps/FuseTIR group after a convpipe CUDA conv2d kernel are applied in the kernel's own output store,
so each conv writes its activated output once instead of a chain of element-wise kernels each reading and
writing the whole tensor again.

What is fused and how: every CUDA family (:mod:`.direct`, :mod:`.im2col`, :mod:`.winograd`, :mod:`.depthwise`)
ends in a block executed per thread under the kernel's blockIdx/threadIdx loops that writes the NCHW output
(for direct/im2col/depthwise the register tile's ``local`` -> global write-back, for Winograd the crop of the
inverse transform); ``compiler/lower.py`` marks it :data:`..epilogue.CONV_OUT`. :class:`ConvEpilogueCUDA`
runs the walk shared with the CPU rule (:func:`..epilogue.fuse_epilogue`): each injective consumer is
``reverse_compute_inline``d into that block, so the store becomes ``out[...] = epilogue(acc, bias[k],
residual[...])`` inside the same thread, with the same predicates; no loop is added and no thread binding
changes. Kernels whose tiles do not divide the output (im2col and Winograd allow that; the ragged edge is
predicated) are not a TVM "stage pipeline" -- the region-cover proof fails inside the kernel, between its
shared-memory tiles and the GEMM update -- which makes TVM refuse every inline in the function; this rule
therefore schedules with ``enable_check=False`` and checks each inline by what it actually needs
(:func:`..epilogue.consumer_covered`: the consumer's reads are covered by the conv output store, no WAR or
opaque dependency).

What cannot be fused (a conv output read by two consumers, such as ``relu(y) + y``; anything downstream of
that; or, should FuseOps ever put one there, an element-wise stage before the kernel) gets a standalone GPU
loop nest in the same PrimFunc: spatial loops fused, split by :attr:`ConvEpilogueCUDA.threads` and bound to
blockIdx.x/threadIdx.x (reduction loops, if any, stay serial inside each thread), i.e. a kernel of its own
launched after the conv kernel. Every block of the result is under a thread binding: a CUDA PrimFunc with an
unbound loop nest fails TVM's memory verification (or would run on one thread).

Source: the TVM dlight ``ScheduleRule`` API (``python/tvm/s_tir/dlight/base/schedule_rule.py``; applied by
``dlight.ApplyDefaultSchedule``, which marks the result ``tirx.is_scheduled`` so no later rule touches it) and
the block/grid mapping of dlight's GPU ``Fallback`` rule (``python/tvm/s_tir/dlight/gpu/fallback.py``), which we
cannot call on these functions as a whole: its ``normalize_prim_func`` does not accept our thread-bound kernel.
"""

from __future__ import annotations

import tvm_ffi
from tvm import s_tir, tirx
from tvm.target import Target

from ..epilogue import ConvEpilogue, block_names

_get_sblock_realize = tvm_ffi.get_global_func("s_tir.schedule.GetSBlockRealize")


def loop_kinds(sch: s_tir.Schedule, block) -> list[str]:
    """Per loop of ``block`` (outermost first): ``"R"`` when a reduction iterator of the block is bound to an
    expression of it, else ``"S"`` (spatial, or unused)."""
    realize = _get_sblock_realize(sch, block)
    bindings = list(zip(sch.get(block).iter_vars, realize.iter_values))
    kinds = []
    for loop in sch.get_loops(block):
        var = sch.get(loop).loop_var
        kind = "S"
        for iv, value in bindings:
            if iv.iter_type != tirx.IterVar.DataPar and _uses(value, var):
                kind = "R"
        kinds.append(kind)
    return kinds


def _uses(expr, var) -> bool:
    found = []
    tvm_ffi.structural_walk(expr, (tirx.Var, lambda v: found.append(True) if v.same_as(var) else None))
    return bool(found)


def thread_bound(sch: s_tir.Schedule, block) -> bool:
    """Whether any loop around ``block`` is bound to a GPU thread axis."""
    return any(sch.get(lp).thread_binding is not None for lp in sch.get_loops(block))


def bind_standalone(sch: s_tir.Schedule, block, threads: int) -> None:
    """A GPU loop nest of its own for ``block``: spatial loops fused and split into ``[blockIdx.x,
    threadIdx.x]`` (``threads`` per block, fewer when the nest is smaller), reduction loops serial inside."""
    loops = sch.get_loops(block)
    kinds = loop_kinds(sch, block) if loops else []
    spatial = [lp for lp, k in zip(loops, kinds) if k == "S"]
    reduce = [lp for lp, k in zip(loops, kinds) if k == "R"]
    if not spatial:
        spatial = [sch.add_unit_loop(block)]
    if reduce:
        sch.reorder(*spatial, *reduce)
    fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    extent = sch.get(fused).extent
    n = min(threads, int(extent)) if isinstance(extent, tirx.IntImm) else threads
    bx, tx = sch.split(fused, [None, n])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")


class ConvEpilogueCUDA(ConvEpilogue):
    """Inline the element-wise epilogue of a fused convpipe CUDA conv2d function into the kernel's per-thread
    output store; give anything left (and any block not under a thread binding) a standalone bound nest.

    Knob: ``threads``, threads per block of those standalone nests (default 256).
    """

    kernel_scope_unchecked = True

    def __init__(self, threads: int = 256):
        self.threads = threads

    def schedule_leftovers(self, sch: s_tir.Schedule, blocks: list, target: Target) -> None:
        names = {sch.get(b).name_hint for b in blocks}
        todo = list(blocks)
        for name in block_names(sch.mod["main"]):
            if name not in names:
                b = sch.get_sblock(name)
                if not thread_bound(sch, b):
                    todo.append(b)
        for b in todo:
            if not thread_bound(sch, b):
                bind_standalone(sch, b, self.threads)
