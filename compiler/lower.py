"""Lower every ``relax.nn.conv2d`` of a Relax module through convpipe's schedules.

``relax.transform.LegalizeOps`` with a custom legalisation for ``relax.nn.conv2d``: for each call it builds the
workload (:func:`.conv_calls.workload_of`: NCHW, or NCHW[x]c after :mod:`.layout`), asks :mod:`.select` for a
family and knobs, pre-packs the constant weight (un-blocked to OIHW first, :func:`.conv_calls.weight_to_oihw`)
with the rule's NumPy packing,
adds the rule's scheduled PrimFunc with ``bb.add_func`` and returns ``relax.call_tir``. On every target the
PrimFunc is fusable with its element-wise consumers, which the epilogue rule of :mod:`.pipeline`
(:mod:`convpipe.schedules.epilogue` on CPU, :mod:`convpipe.schedules.cuda.epilogue` on CUDA) then inlines
into its output store (epilogue fusion). Everything else keeps TVM's lowering plus the schedules of
:mod:`.pipeline`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from convpipe.errors import ConvpipeError
from convpipe.schedules import Conv2dWorkload, TargetInfo, rules_for
from convpipe.schedules.epilogue import mark_output_block

from .conv_calls import conv2d_calls, weight_to_oihw, workload_of
from .select import choose

#: ``OpPatternKind`` kOutEWiseFusable: FuseOps groups the element-wise consumers (bias, BN, activation, residual
#: add) with our kernel, FuseTIR keeps the kernel's loop nest (CUDA thread bindings included), and the epilogue
#: rule inlines them into its output block (:data:`convpipe.schedules.epilogue.CONV_OUT`). The fused function
#: loses ``tirx.is_scheduled``, so dlight's ``ApplyDefaultSchedule`` offers it to the rules, ours first.
_OUT_EWISE_FUSABLE = 4


@dataclass
class LayerRecord:
    """One lowered conv2d: its workload and the schedule chosen (what ``inspect`` and the manifest show)."""

    index: int
    workload: Conv2dWorkload
    family: str
    knobs: dict
    reason: str
    kernel: str

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "workload": self.workload.to_dict(),
            "family": self.family,
            "knobs": dict(self.knobs),
            "reason": self.reason,
            "kernel": self.kernel,
            "gflop": self.workload.gflop,
        }


def lower_conv2d(
    mod: tvm.IRModule, target: TargetInfo, schedule: str = "auto", db=None, winograd_m_max: int | None = None
) -> tuple[tvm.IRModule, list[LayerRecord]]:
    """Replace every ``relax.nn.conv2d`` in ``mod`` by a call to a convpipe-scheduled kernel.

    Args:
        mod: Relax module from :func:`convpipe.compiler.importer.to_relax` (conv weights constant), possibly
            converted by :func:`.layout.convert_layout`.
        target: where the kernels will run.
        schedule: ``"auto"`` or a family name (see :mod:`.select`).
        db: optional :class:`convpipe.compiler.tune.TuningDatabase` whose records take precedence.
        winograd_m_max: the accuracy guard's cap on Winograd tiles (:func:`.select.choose`, :mod:`.accuracy`).

    Returns:
        The lowered module and one :class:`LayerRecord` per conv2d, in program order.

    Raises:
        ConvpipeError: a conv2d whose weight is not a constant, or with unsupported layout/dtype; an invalid
            record of a strict ``db`` (see :class:`convpipe.compiler.tune.TuningDatabase`).
    """
    rules = rules_for(target.arch)
    records: list[LayerRecord] = []
    kernels: dict[tuple, relax.GlobalVar] = {}
    errors: list[ConvpipeError] = []  # raised inside LegalizeOps: TVM's FFI turns them into RuntimeError

    def legalize_conv2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        try:
            return _legalize_conv2d(bb, call)
        except ConvpipeError as e:
            errors.append(e)
            raise

    def _legalize_conv2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        wl = workload_of(call)
        weight = call.args[1]
        if not isinstance(weight, tvm.ir.expr.Constant):
            raise ConvpipeError(
                f"conv2d #{len(records)} ({wl.describe()}): its weight is computed at run time; convpipe needs "
                "constant (initializer) weights to pre-pack them"
            )
        try:
            choice = choose(wl, target, rules, schedule, db, winograd_m_max)
        except ValueError as e:
            raise ConvpipeError(str(e)) from None
        key = (wl, choice.family, tuple(sorted(choice.knobs.items())))
        if key not in kernels:
            func = choice.rule.build(wl, target, choice.knobs)
            func = mark_output_block(func).with_attr("op_pattern", _OUT_EWISE_FUSABLE)
            func = func.with_attr("tirx.is_scheduled", True)
            name = f"conv2d_{choice.family}_{len(kernels)}"
            kernels[key] = bb.add_func(func, name)
        gv = kernels[key]
        oihw = weight_to_oihw(
            weight.value.numpy(), str(call.attrs.kernel_layout), wl.data_block, f"conv2d #{len(records)}"
        )
        packed = choice.rule.pack_weight(oihw, wl, choice.knobs).astype(np.float32)
        records.append(LayerRecord(len(records), wl, choice.family, choice.knobs, choice.reason, gv.name_hint))
        return relax.call_tir(
            gv, [call.args[0], relax.const(packed)], relax.TensorType(list(wl.out_tensor_shape), "float32")
        )

    if db is not None:  # check every layer's record first: a strict database fails here, before TVM's pass runs
        for call in conv2d_calls(mod):
            db.lookup(workload_of(call), target)
    with target.target:
        try:
            lowered = relax.transform.LegalizeOps(customize_legalize_map={"relax.nn.conv2d": legalize_conv2d})(mod)
        except Exception:
            if errors:  # re-raise ours as it was (the user-facing message, no traceback)
                raise errors[0] from None
            raise
    return lowered, records
