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
common to both.

**Exact math by default** (issue 10). Neither TVM's CPU nor its CUDA default pipeline applies
``relax.transform.FastMathTransform`` (``relax/transform/fast_math.py``: Softmax/Exp/Erf/Tanh to topi's
``fast_softmax``/``fast_exp``/``fast_erf``/``fast_tanh``), and ``LowerIntrin`` uses its ``*.fastmath.FLowerIntrinsic``
rules only when the ``tirx.enable_fast_math`` pass option is set (``src/tirx/transform/lower_intrin.cc``; default
off). On llvm, ``exp``/``log``/``pow``/``sqrt`` are LLVM intrinsics (libm), ``erf`` a libm call (``default.
FLowerIntrinsic``, ``src/target/intrin_rule.cc``) and ``tanh`` the exp-based ``DispatchNumericalStableTanh``; LLVM
fast-math flags are off unless the target asks (``src/target/llvm/llvm_instance.cc``; it sets FMA contraction,
``AllowFPOpFusion::Fast``). The approximations convpipe used to ship came from nvcc's ``--use_fast_math``
(:mod:`convpipe.compiler.cuda_device`). With ``fast_math=True`` (opt-in) both pipelines run
``FastMathTransform`` first, :func:`pass_config` enables TVM's fast-math intrinsic rules and nvcc gets
``--use_fast_math``."""

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


def relax_pipeline(target: TargetInfo, fast_math: bool = False) -> tvm.transform.Pass:
    """The ``relax_pipeline`` argument for ``tvm.compile``: :func:`cpu_pipeline` or :func:`cuda_pipeline`
    (``fast_math``: see :func:`fast_math_passes`)."""
    return cuda_pipeline(target, fast_math) if target.arch == "cuda" else cpu_pipeline(target, fast_math)


def fast_math_passes(fast_math: bool) -> list[tvm.transform.Pass]:
    """``[relax.transform.FastMathTransform()]`` when ``fast_math`` (Softmax, Exp, Erf, Tanh become topi's
    approximate ``fast_*`` computes; ``relax/transform/fast_math.py``), else ``[]``: exact by default. The
    pipelines run it first, which matters only for a module whose ops are not legalised yet; convpipe's build
    applies it before conv2d lowering (:func:`fast_math_transform`)."""
    return [relax.transform.FastMathTransform()] if fast_math else []


def fast_math_transform(mod: tvm.IRModule, fast_math: bool) -> tvm.IRModule:
    """``mod`` through :func:`fast_math_passes`: call it *before* conv2d lowering, whose ``LegalizeOps``
    (:mod:`convpipe.compiler.lower`) turns every Relax op into ``call_tir`` -- after it ``FastMathTransform`` finds
    no ``relax.exp``/``relax.nn.softmax`` left. Identity when not ``fast_math``."""
    return tvm.transform.Sequential(fast_math_passes(fast_math))(mod) if fast_math else mod


def pass_config(fast_math: bool = False) -> dict:
    """``PassContext`` options for ``tvm.compile``: ``tirx.enable_fast_math`` (``src/tirx/transform/lower_intrin.cc``:
    lowers ``exp``/``log``/``tanh``/``pow``/``sin``/``cos`` through ``<target>.fastmath.FLowerIntrinsic``, e.g.
    ``__expf`` on CUDA, ``src/backend/cuda/codegen/intrin_rule_cuda.cc``) set to ``fast_math``; TVM's default is
    off, and convpipe states it explicitly so an enclosing context cannot switch it on."""
    return {"tirx.enable_fast_math": bool(fast_math)}


def _in_target_scope(target: TargetInfo, passes) -> tvm.transform.Pass:
    """A module pass running ``passes(t)`` (``t`` the TVM target) in sequence inside ``with t`` (dlight rules and
    legalisations read the current target)."""
    t = target.target

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with t:
            return tvm.transform.Sequential(passes(t))(mod)

    return _pipeline


def cpu_pipeline(target: TargetInfo, fast_math: bool = False) -> tvm.transform.Pass:
    """TVM's CPU pipeline with convpipe's schedules after FuseTIR (epilogue fusion, dense head, injective), then
    NaN-propagating ``max``/``min`` (:func:`convpipe.compiler.nan_minmax.PropagateNaN`); ``fast_math``:
    :func:`fast_math_passes` first."""
    from .nan_minmax import PropagateNaN

    return _in_target_scope(
        target,
        lambda t: fast_math_passes(fast_math) + cpu.library_dispatch_passes(t)
        + cpu.legalize_passes(t)
        + [dlight.ApplyDefaultSchedule(*_cpu_rules()), PropagateNaN()]
        + cpu.dataflow_lower_passes(t)
        + cpu.finalize_passes(t),
    )


def _cpu_rules():
    from convpipe.schedules.elementwise import DenseCPU, InjectiveCPU
    from convpipe.schedules.epilogue import ConvEpilogueCPU

    return [ConvEpilogueCPU(), DenseCPU(), dlight.cpu.GEMV(), dlight.cpu.Reduction(), InjectiveCPU()]


def cuda_schedule_passes(target: TargetInfo, fast_math: bool = False) -> list[tvm.transform.Pass]:
    """TVM's CUDA passes up to and including the schedule stage: library dispatch, legalisation, op-pattern
    annotation, FoldConstant, FuseOps, FuseTIR (``cuda.legalize_passes`` without its final
    ``ApplyDefaultSchedule``), then ``ApplyDefaultSchedule`` with :class:`convpipe.schedules.cuda.ConvEpilogueCUDA`
    ahead of TVM's own dlight GPU rules (Matmul, GEMV, Reduction, GeneralReduction, Fallback) for the kernels that
    are not ours (pooling, classifier head, ...). Run them inside ``with target.target`` (the dlight rules read
    the current target); the result's PrimFuncs are the fused, scheduled kernels. ``fast_math``:
    :func:`fast_math_passes` first."""
    from convpipe.schedules.cuda import ConvEpilogueCUDA

    t = target.target
    legalize = cuda.legalize_passes(t)
    # TVM's list ends with its own ApplyDefaultSchedule (without our rule): replaced below, so check it is there
    assert legalize[-1].info.name == "ApplyDefaultSchedule", [p.info.name for p in legalize]
    rules = [ConvEpilogueCUDA(), dlight.gpu.Matmul(), dlight.gpu.GEMV(), dlight.gpu.Reduction(),
             dlight.gpu.GeneralReduction(), dlight.gpu.Fallback()]
    return (fast_math_passes(fast_math) + cuda.library_dispatch_passes(t) + legalize[:-1]
            + [dlight.ApplyDefaultSchedule(*rules)])


def cuda_pipeline(target: TargetInfo, fast_math: bool = False) -> tvm.transform.Pass:
    """TVM's CUDA pipeline (``relax/backend/cuda/pipeline.py``: ``get_default_pipeline``) with convpipe's
    epilogue fusion among its dlight rules (:func:`cuda_schedule_passes`), NaN-propagating ``max``/``min``
    (:func:`convpipe.compiler.nan_minmax.PropagateNaN`), then its dataflow lowering and finalisation passes
    unchanged. Device code is compiled by nvcc without ``--use_fast_math`` unless ``fast_math``
    (:func:`convpipe.compiler.nvcc.nvcc_flags`)."""
    from .nan_minmax import PropagateNaN

    return _in_target_scope(
        target,
        lambda t: cuda_schedule_passes(target, fast_math) + [PropagateNaN()] + cuda.dataflow_lower_passes(t)
        + cuda.finalize_passes(t),
    )
