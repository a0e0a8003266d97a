"""The Relax compilation pipeline: TVM's default CPU pipeline (``relax/backend/cpu_generic/pipeline.py``) with
constant folding before conv2d lowering and, after FuseOps/FuseTIR, epilogue fusion into our conv2d kernels
(:class:`convpipe.schedules.epilogue.ConvEpilogueCPU`) and schedules for the kernels TVM would leave
unscheduled (:class:`convpipe.schedules.elementwise.DenseCPU` for the classifier head, dlight's CPU GEMV and
Reduction rules, :class:`convpipe.schedules.elementwise.InjectiveCPU`).
Kernels already scheduled (our conv2d, marked ``tirx.is_scheduled``) are left alone."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu
from tvm.s_tir import dlight

from convpipe.schedules import TargetInfo


def pre_lowering(mod: tvm.IRModule) -> tvm.IRModule:
    """Fold constant subgraphs (e.g. the transpose of a Gemm weight) before our conv2d lowering."""
    return relax.transform.FoldConstant()(mod)


def relax_pipeline(target: TargetInfo) -> tvm.transform.Pass | str:
    """The ``relax_pipeline`` argument for ``tvm.compile``: ours for llvm targets, TVM's default for CUDA."""
    if target.arch == "cuda":
        return "default"
    t = target.target

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with t:
            seq = tvm.transform.Sequential(
                cpu.library_dispatch_passes(t)
                + cpu.legalize_passes(t)
                + [dlight.ApplyDefaultSchedule(*_cpu_rules())]
                + cpu.dataflow_lower_passes(t)
                + cpu.finalize_passes(t)
            )
            return seq(mod)

    return _pipeline


def _cpu_rules():
    from convpipe.schedules.elementwise import DenseCPU, InjectiveCPU
    from convpipe.schedules.epilogue import ConvEpilogueCPU

    return [ConvEpilogueCPU(), DenseCPU(), dlight.cpu.GEMV(), dlight.cpu.Reduction(), InjectiveCPU()]
