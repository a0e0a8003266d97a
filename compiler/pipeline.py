"""The Relax compilation pipelines, one per target kind. Both fuse the element-wise epilogue of each conv2d (bias,
folded BatchNorm, activation, residual add) into our conv2d kernels after FuseOps/FuseTIR
(:mod:`convpipe.schedules.epilogue`), and both leave kernels already scheduled (our unfused conv2d, marked
``tirx.is_scheduled``) alone: dlight's ``ApplyDefaultSchedule`` skips functions carrying that attribute and
sets it on every function a rule schedules.

- CPU (llvm): TVM's default CPU pipeline (``relax/backend/cpu_generic/pipeline.py``) with, after FuseTIR,
  :class:`convpipe.schedules.epilogue.ConvEpilogueCPU` and schedules for the kernels TVM would leave unscheduled
  (:class:`convpipe.schedules.elementwise.DenseCPU` for the classifier head, dlight's CPU GEMV and Reduction
  rules, :class:`convpipe.schedules.elementwise.InjectiveCPU`).
- CUDA: TVM's default CUDA pipeline (``relax/backend/cuda/pipeline.py``) with
  :class:`convpipe.schedules.cuda.ConvEpilogueCUDA` first among its dlight rules (:func:`cuda_schedule_passes`).

Both then make every float ``max``/``min`` NaN-propagating (:func:`convpipe.compiler.nan_minmax.PropagateNaN`,
right after the schedule stage, before codegen): TVM's codegens drop a NaN operand of ``max``/``min``, so a NaN
reaching a ReLU/Clip would come out as 0 where onnxruntime gives NaN.

Constant folding and the decomposition of inference BatchNorm before conv2d lowering (:func:`pre_lowering`) are
common to both."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu
from tvm.relax.backend.cuda import pipeline as cuda
from tvm.s_tir import dlight

from convpipe.schedules import TargetInfo


def pre_lowering(mod: tvm.IRModule) -> tvm.IRModule:
    """Before conv2d lowering: rewrite inference-mode ``nn.batch_norm`` (an ONNX BatchNormalization the exporter
    could not fold into a conv, e.g. one after a ReLU) into element-wise ops on constants
    (``DecomposeOpsForInference``; ``CanonicalizeBindings`` unpacks the tuple it leaves, which would otherwise
    stop FuseOps), so FuseOps groups them into the preceding conv2d's epilogue; then fold constant subgraphs
    (BatchNorm's ``sqrt(var + eps)``, the transpose of a Gemm weight, ...)."""
    seq = tvm.transform.Sequential(
        [relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings(), relax.transform.FoldConstant()]
    )
    return seq(mod)


def relax_pipeline(target: TargetInfo) -> tvm.transform.Pass:
    """The ``relax_pipeline`` argument for ``tvm.compile``: :func:`cpu_pipeline` or :func:`cuda_pipeline`."""
    return cuda_pipeline(target) if target.arch == "cuda" else cpu_pipeline(target)


def _in_target_scope(target: TargetInfo, passes) -> tvm.transform.Pass:
    """A module pass running ``passes(t)`` (``t`` the TVM target) in sequence inside ``with t`` (dlight rules and
    legalisations read the current target)."""
    t = target.target

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with t:
            return tvm.transform.Sequential(passes(t))(mod)

    return _pipeline


def cpu_pipeline(target: TargetInfo) -> tvm.transform.Pass:
    """TVM's CPU pipeline with convpipe's schedules after FuseTIR (epilogue fusion, dense head, injective), then
    NaN-propagating ``max``/``min`` (:func:`convpipe.compiler.nan_minmax.PropagateNaN`)."""
    from .nan_minmax import PropagateNaN

    return _in_target_scope(
        target,
        lambda t: cpu.library_dispatch_passes(t)
        + cpu.legalize_passes(t)
        + [dlight.ApplyDefaultSchedule(*_cpu_rules()), PropagateNaN()]
        + cpu.dataflow_lower_passes(t)
        + cpu.finalize_passes(t),
    )


def _cpu_rules():
    from convpipe.schedules.elementwise import DenseCPU, InjectiveCPU
    from convpipe.schedules.epilogue import ConvEpilogueCPU

    return [ConvEpilogueCPU(), DenseCPU(), dlight.cpu.GEMV(), dlight.cpu.Reduction(), InjectiveCPU()]


def cuda_schedule_passes(target: TargetInfo) -> list[tvm.transform.Pass]:
    """TVM's CUDA passes up to and including the schedule stage: library dispatch, legalisation, op-pattern
    annotation, FoldConstant, FuseOps, FuseTIR (``cuda.legalize_passes`` without its final
    ``ApplyDefaultSchedule``), then ``ApplyDefaultSchedule`` with :class:`convpipe.schedules.cuda.ConvEpilogueCUDA`
    ahead of TVM's own dlight GPU rules (Matmul, GEMV, Reduction, GeneralReduction, Fallback) for the kernels that
    are not ours (pooling, classifier head, ...). Run them inside ``with target.target`` (the dlight rules read
    the current target); the result's PrimFuncs are the fused, scheduled kernels."""
    from convpipe.schedules.cuda import ConvEpilogueCUDA

    t = target.target
    legalize = cuda.legalize_passes(t)
    # TVM's list ends with its own ApplyDefaultSchedule (without our rule): replaced below, so check it is there
    assert legalize[-1].info.name == "ApplyDefaultSchedule", [p.info.name for p in legalize]
    rules = [ConvEpilogueCUDA(), dlight.gpu.Matmul(), dlight.gpu.GEMV(), dlight.gpu.Reduction(),
             dlight.gpu.GeneralReduction(), dlight.gpu.Fallback()]
    return cuda.library_dispatch_passes(t) + legalize[:-1] + [dlight.ApplyDefaultSchedule(*rules)]


def cuda_pipeline(target: TargetInfo) -> tvm.transform.Pass:
    """TVM's CUDA pipeline (``relax/backend/cuda/pipeline.py``: ``get_default_pipeline``) with convpipe's
    epilogue fusion among its dlight rules (:func:`cuda_schedule_passes`), NaN-propagating ``max``/``min``
    (:func:`convpipe.compiler.nan_minmax.PropagateNaN`), then its dataflow lowering and finalisation passes
    unchanged."""
    from .nan_minmax import PropagateNaN

    return _in_target_scope(
        target,
        lambda t: cuda_schedule_passes(target) + [PropagateNaN()] + cuda.dataflow_lower_passes(t)
        + cuda.finalize_passes(t),
    )
