"""Network-wide blocked layout: run a model in NCHW[x]c from its first conv to its last, converting only at the
edges.

The field's standard recipe (onnxruntime's ``NchwcTransformer``, ``onnxruntime/core/optimizer/nchwc_transformer.cc``;
TVM's ``AlterOpLayout`` to ``conv2d_NCHWc`` for x86): activations stay channel-blocked ``[N, C/x, H, W, x]``
between convs, so no conv re-lays out its input or writes a transposed NCHW output, and the element-wise ops in
between (bias, activation, residual add, pooling) run on the blocked tensors. Here the propagation is TVM's
``relax.transform.ConvertLayout`` driven by a per-call callback that asks for NCHW[x]c on every conv2d that
can take it; ConvertLayout inserts ``layout_transform`` only where a tensor enters or leaves the blocked region
(model input, the flatten before the classifier, a conv kept in NCHW), and ``FoldConstant`` then turns the
transforms of constant weights and biases into blocked constants. :mod:`.lower` un-blocks each conv weight to
OIHW at compile time and hands the rule an NCHW[x]c :class:`~convpipe.schedules.Conv2dWorkload`.

Choice of ``x``: the largest of (vector lanes, lanes/2, lanes/4; at least 4) that covers the most conv FLOPs,
where a conv is covered when its ``C`` and ``K`` are multiples of ``x`` (e.g. AVX-512: 16 for ResNets, 8 for
MobileNetV2, whose 24- and 144-channel layers 16 does not divide). A conv whose ``K`` blocks but ``C`` does not
(the first conv, ``C = 3``) reads NCHW and writes NCHW[x]c (ConvertLayout's third desired layout, the output's),
so the model input is never re-laid out. Convs left in NCHW: ``K`` not a multiple of ``x``, grouped convs other
than depthwise, depthwise with a channel multiplier. CUDA targets keep NCHW.

Where the blocked layout cannot be carried (:func:`convert_layout_checked`). ConvertLayout asks each op's
``FRelaxInferLayout`` how to carry a layout through it, and several of those functions in TVM 0.27 mishandle a
sub-indexed (blocked) layout: ``split`` at channel indices keeps the indices in channels while the blocked axis
counts blocks (wrong shapes: "The channel size of the data should equal ..."), ``conv2d_transpose`` and the
norms transpose a 4-letter layout like a 5-letter one ("Layouts must have the same size"), a reduction over the
channel axis builds an invalid layout, an operand of another rank or with a channel count the block does not
divide ("Invalid layout axis 16b", "Invalid SLayout"), and a blocked ``bool`` tensor (a comparison) gets a
``layout_transform`` that TVM cannot legalise. A pre-analysis (:func:`plan_barriers`) follows the tensors that
may be blocked through the Relax dataflow and, in front of each op it does not know to carry them, converts
that operand back to NCHW locally: a same-shape ``reshape`` (an op ConvertLayout does not carry, so it converts
its input to NCHW) is inserted as a barrier and removed again after the pass. Ops without layout inference
(reshape, pad, where, ...) need nothing: ConvertLayout already converts their inputs back. As a safety net,
when ConvertLayout still raises, the op at fault is found by bisection over the remaining candidates and
given a barrier too; the final fallback is NCHW for the whole model. Each fallback is a :class:`Fallback`
record for the manifest.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import tvm
from tvm import relax

from convpipe.errors import ConvpipeError
from convpipe.schedules import Conv2dWorkload, TargetInfo

from .conv_calls import conv2d_calls, workload_of

#: accepted values of ``layout`` (``--layout``) besides ``nchw{x}c``
LAYOUT_CHOICES = ("auto", "nchw")


def blockable(wl: Conv2dWorkload, block: int) -> tuple[bool, bool]:
    """Whether ``wl`` (NCHW) can take NCHW[``block``]c data, and produce NCHW[``block``]c output.

    Plain convs (``groups == 1``): data when ``block`` divides ``C``, output when it divides ``K`` (a first conv
    on 3 channels reads NCHW and writes the blocked layout). Depthwise with channel multiplier 1: both or
    neither (``block`` divides ``C``). Other grouped convs: neither."""
    if wl.groups == 1:
        return wl.in_channels % block == 0, wl.out_channels % block == 0
    ok = wl.is_depthwise and wl.out_channels == wl.in_channels and wl.in_channels % block == 0
    return ok, ok


def choose_block(workloads: list[Conv2dWorkload], target: TargetInfo) -> int:
    """The channel block ``x`` for the network (see the module docstring); 0 when no conv could use one."""
    lanes = target.vector_lanes
    options = [b for b in (lanes, lanes // 2, lanes // 4) if b >= 4]
    coverage = {b: sum(wl.flops for wl in workloads if all(blockable(wl, b))) for b in options}
    best = max(coverage.values(), default=0)
    if best == 0:
        return 0
    return next(b for b in options if coverage[b] == best)


def parse_layout(layout: str) -> int | str:
    """``"auto"`` / ``"nchw"`` as they are, ``"nchw{x}c"`` -> ``x``.

    Raises:
        ConvpipeError: anything else.
    """
    text = layout.lower()
    if text in LAYOUT_CHOICES:
        return text
    m = re.fullmatch(r"nchw(\d+)c", text)
    if m and int(m.group(1)) >= 1:
        return int(m.group(1))
    raise ConvpipeError(f"layout {layout!r}: expected auto, nchw or nchw<x>c (e.g. nchw16c)")


@dataclass(frozen=True)
class Fallback:
    """One place where the compiler did something simpler than planned instead of failing: ``stage``
    (``"layout"`` or ``"epilogue"``), the ``op`` concerned, the ``fallback`` taken and ``why`` (the manifest's
    ``fallbacks`` entries, :mod:`convpipe.runtime.artifact`)."""

    stage: str
    op: str
    fallback: str
    why: str

    def to_dict(self) -> dict:
        """The manifest entry."""
        return {"stage": self.stage, "op": self.op, "fallback": self.fallback, "why": self.why}


def one_line(e: BaseException | str, limit: int = 300) -> str:
    """An exception (or text) as one line for a fallback record: TVM's message without the traceback or the IR
    dump a ``ScheduleError`` carries (its ``Error message:`` line, else a ``Check failed`` line, else the first
    line), prefixed with the exception's type."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    pick = next((ln.split("Error message:", 1)[1].strip() for ln in lines if "Error message:" in ln), None)
    if pick is None:
        pick = next((ln for ln in lines if "Check failed" in ln), lines[0] if lines else "")
    if isinstance(e, BaseException):
        name = type(e).__name__
        pick = pick if pick.startswith(name) else f"{name}: {pick}"
    return pick if len(pick) <= limit else pick[: limit - 3] + "..."


#: ops whose layout inference (``InferLayoutUnaryEwise``) carries any layout, blocked included, unchanged
_UNARY = frozenset(
    f"relax.{n}" for n in (
        "abs acos acosh asin asinh atan atanh ceil cos cosh erf exp floor log negative round rsqrt sigmoid sign "
        "sin sinh sqrt square tan tanh trunc astype nn.relu nn.gelu nn.gelu_tanh nn.silu nn.selu nn.dropout"
    ).split()
)
#: binary element-wise ops (``InferLayoutBinaryEwise``): carried when every operand is 0-d or a 4-D tensor whose
#: channel count the block divides (otherwise TVM 0.27 fails: "Invalid layout axis", "Invalid SLayout")
_BINARY = frozenset(f"relax.{n}" for n in "add subtract multiply divide maximum minimum power".split())
_POOL = frozenset(("relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d"))
#: reductions (``InferLayoutStatistical``): carried when the channel axis is not reduced
_REDUCE = frozenset(("relax.mean", "relax.sum", "relax.max", "relax.min"))
#: ops whose layout inference falls back to the plain layout by itself for a blocked input (checked in TVM's
#: sources: ``ndim() != ndim_primal()`` -> initial layout)
_SELF_FALLBACK = frozenset((
    "relax.strided_slice", "relax.expand_dims", "relax.permute_dims", "relax.squeeze", "relax.repeat",
    "relax.tile", "relax.nn.prelu", "relax.nn.softmax", "relax.image.resize2d",
))


def _has_layout_inference(op_name: str) -> bool:
    try:
        return tvm.ir.Op.get(op_name).get_attr("FRelaxInferLayout") is not None
    except Exception:  # not a registered op
        return False


def _static_shape(expr) -> list[int] | None:
    try:
        return [int(d) for d in expr.ty.shape]
    except (TypeError, ValueError, AttributeError):
        return None


def _dtype(expr) -> str:
    return str(getattr(expr.ty, "dtype", ""))


def _var_key(v) -> int:
    return v.__hash__()


def _main_bindings(mod: tvm.IRModule):
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            for block in func.body.blocks:
                yield from ((gv, b) for b in block.bindings)


def _channel_blockable(expr, block: int) -> bool:
    """``expr`` may be converted to NCHW[block]c: 0-d, or 4-D float32 with ``block`` dividing its channels."""
    shape = _static_shape(expr)
    if shape == []:
        return True
    return shape is not None and len(shape) == 4 and shape[1] % block == 0 and _dtype(expr) == "float32"


def _split_sections(call: relax.Call, shape: list[int]) -> int | None:
    """Number of equal parts of a channel split (``indices_or_sections`` an int, or evenly spaced indices)."""
    ios = call.attrs.indices_or_sections
    if isinstance(ios, (int, tvm.tirx.IntImm)):
        return int(ios)
    idx = [int(i) for i in ios]
    step = idx[0] if idx else 0
    if step > 0 and idx == [step * (i + 1) for i in range(len(idx))] and shape[1] == step * (len(idx) + 1):
        return len(idx) + 1
    return None


def _carry_problem(call: relax.Call, name: str, blocked_args: list, block: int) -> str | None:
    """``None`` when ConvertLayout carries NCHW[block]c through ``call`` correctly; else why it does not."""
    out_dtype = _dtype(call) if not isinstance(call.ty, relax.TupleType) else "float32"
    if out_dtype != "float32" and name not in _SELF_FALLBACK:
        return f"its {out_dtype} output cannot be blocked (TVM legalises a non-float32 layout_transform wrongly)"
    if name in _UNARY or name in _POOL or name in _SELF_FALLBACK:
        return None
    if name in _BINARY:
        for a in call.args:
            if not _channel_blockable(a, block):
                return f"an operand of shape {_static_shape(a)} cannot share the NCHW{block}c layout"
        return None
    if name in _REDUCE:
        shape = _static_shape(call.args[0])
        axes = call.attrs.axis
        axes = list(range(len(shape or []))) if axes is None else [int(a) % len(shape or [1]) for a in axes]
        if shape is None or len(shape) != 4 or 1 in axes:
            return "it reduces over the channel axis (TVM's layout inference builds an invalid blocked layout)"
        return None
    if name == "relax.concat":
        fields = call.args[0].fields if isinstance(call.args[0], relax.Tuple) else None
        if fields is None or not all(_channel_blockable(f, block) for f in fields):
            return f"a part of the concatenation has a channel count NCHW{block}c cannot hold"
        return None
    if name == "relax.split":
        shape = _static_shape(call.args[0])
        if shape is None or len(shape) != 4:
            return "split of a tensor of unknown shape"
        if int(call.attrs.axis) % 4 != 1:
            return None
        n = _split_sections(call, shape)
        if n and isinstance(call.attrs.indices_or_sections, (int, tvm.tirx.IntImm)) and (shape[1] // block) % n == 0:
            return None
        return (f"split of the channel axis at {[int(i) for i in call.attrs.indices_or_sections]} (TVM's layout "
                f"inference keeps channel indices on the axis of NCHW{block}c blocks)"
                if not isinstance(call.attrs.indices_or_sections, (int, tvm.tirx.IntImm))
                else f"split of {shape[1]} channels in {n} parts that are not whole NCHW{block}c blocks")
    return f"TVM 0.27's layout inference for {name} does not handle a blocked (NCHW{block}c) input"


@dataclass
class _Barrier:
    """A planned conversion back to NCHW in front of one call: its binding var (every tensor operand of the call,
    tuple fields included, is converted), the op's name and why (empty for a safety-net candidate)."""

    var: relax.Var
    op: str
    why: str


def plan_barriers(mod: tvm.IRModule, block: int, out_blocked) -> tuple[list[_Barrier], list[_Barrier]]:
    """The pre-analysis of :func:`convert_layout_checked`: follow which tensors may be NCHW[``block``]c
    (the output of a conv for which ``out_blocked(call)`` holds, then whatever ConvertLayout carries it to) and
    return ``(barriers, candidates)``: the calls ConvertLayout would carry the layout into but cannot
    (:func:`_carry_problem`), and every other non-conv call with layout inference that receives a tensor that may
    be blocked (the safety net's search space), in program order."""
    blocked: set[int] = set()
    barriers, candidates = [], []

    def is_blocked(e) -> bool:
        if isinstance(e, relax.Var):
            return _var_key(e) in blocked
        if isinstance(e, relax.Tuple):
            return any(is_blocked(f) for f in e.fields)
        return False

    for _, b in _main_bindings(mod):
        v = b.value
        out = False
        if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op):
            name = v.op.name
            args = [a for a in v.args if is_blocked(a)]
            if name == "relax.nn.conv2d":
                out = out_blocked(v)
            elif args and _has_layout_inference(name):
                why = _carry_problem(v, name, args, block)
                if why is None:
                    out = True
                    candidates.append(_Barrier(b.var, name, ""))
                else:
                    barriers.append(_Barrier(b.var, name, why))
        elif isinstance(v, relax.TupleGetItem):
            out = is_blocked(v.tuple_value)
        elif isinstance(v, (relax.Tuple, relax.Var)):
            out = is_blocked(v)
        if out:
            blocked.add(_var_key(b.var))
    return barriers, candidates


def _insert_barriers(mod: tvm.IRModule, at: set[int]) -> tvm.IRModule:
    """Insert ``reshape(x, shape(x))`` in front of every tensor operand (tuple fields included) of the calls bound
    to the vars in ``at``; ConvertLayout does not carry a layout through ``reshape``, so it converts the operand to
    NCHW there."""

    @relax.expr_functor.mutator
    class _Insert(relax.PyExprMutator):
        def visit_var_binding_(self, binding):
            if _var_key(binding.var) in at:
                self._barrier_now = True
            try:
                return super().visit_var_binding_(binding)
            finally:
                self._barrier_now = False

        def visit_call_(self, call):
            new = self.visit_expr_post_order(call)
            if not getattr(self, "_barrier_now", False) or not isinstance(new, relax.Call):
                return new
            self._barrier_now = False  # only the binding's own call, not nested ones
            args = [self._wrap(a) for a in new.args]
            return relax.Call(new.op, args, new.attrs, new.ty_args)

        def _wrap(self, a):
            if isinstance(a, relax.Tuple):
                return relax.Tuple([self._wrap(f) for f in a.fields])
            shape = _static_shape(a)
            if shape is None or not isinstance(a.ty, relax.TensorType) or not shape:
                return a
            return self.builder_.emit(relax.op.reshape(a, shape))

    return _map_relax_functions(mod, lambda f: _Insert(mod).visit_expr(f))


def _drop_barriers(mod: tvm.IRModule) -> tvm.IRModule:
    """Remove the same-shape reshapes again (after ConvertLayout), then the aliases they leave."""

    @relax.expr_functor.mutator
    class _Drop(relax.PyExprMutator):
        def visit_call_(self, call):
            new = self.visit_expr_post_order(call)
            if (isinstance(new, relax.Call) and getattr(new.op, "name", "") == "relax.reshape"
                    and _static_shape(new.args[0]) is not None
                    and _static_shape(new.args[0]) == _static_shape(new)):
                return new.args[0]
            return new

    return relax.transform.CanonicalizeBindings()(_map_relax_functions(mod, lambda f: _Drop(mod).visit_expr(f)))


def _rewrite_for_convert_layout(mod: tvm.IRModule) -> tvm.IRModule:
    """Equivalent forms ConvertLayout handles, before it runs:

    - ``split(x, [k, 2k, ...], axis=1)`` into equal ``sections``, which ConvertLayout carries through a blocked
      layout when the parts are whole blocks (YOLOv8's C2f halves); with indices it cannot (see
      :func:`_carry_problem`).
    - a size-1 constant operand of a binary element-wise op (``[1]``, ``[1, 1, 1, 1]``: tf2onnx and Keras
      exports) into a 0-d one -- the same result when the other operand has at least its rank -- which
      ConvertLayout carries through a blocked layout (a ``[1]`` operand it cannot).
    - ``stack((a, b, ...), axis)`` into ``concat((expand_dims(a, axis), ...), axis)``: TVM 0.27's stack layout
      inference names the new axis ``S`` (``relax/op/tensor/manipulate.cc``, ``InferLayoutStack``), a letter no
      other op's layout inference knows, so the reduction after it (the ONNX frontend's 2-input Max/Min is
      ``stack`` + ``max``) fails with "Invalid SLayout: can't find S in source layout ABCDE" -- blocked layout or
      not."""

    @relax.expr_functor.mutator
    class _Rewrite(relax.PyExprMutator):
        def visit_call_(self, call):
            new = self.visit_expr_post_order(call)
            name = getattr(new.op, "name", "") if isinstance(new, relax.Call) else ""
            if name == "relax.split":
                shape = _static_shape(new.args[0])
                ios = new.attrs.indices_or_sections
                if (shape and len(shape) == 4 and int(new.attrs.axis) % 4 == 1
                        and not isinstance(ios, (int, tvm.tirx.IntImm))):
                    n = _split_sections(new, shape)
                    if n:
                        return relax.op.split(new.args[0], n, axis=1)
            if name in _BINARY and len(new.args) == 2:
                a, b = new.args
                for i, (c, other) in enumerate(((a, b), (b, a))):
                    shape, other_shape = _static_shape(c), _static_shape(other)
                    if (isinstance(c, tvm.ir.expr.Constant) and shape and math.prod(shape) == 1
                            and other_shape is not None and len(shape) <= len(other_shape)):
                        scalar = relax.const(c.value.numpy().reshape(()), str(c.value.dtype))
                        args = [scalar, b] if i == 0 else [a, scalar]
                        return relax.Call(new.op, args, new.attrs, new.ty_args)
            if name == "relax.stack" and isinstance(new.args[0], relax.Tuple):
                fields = new.args[0].fields
                shape = _static_shape(fields[0]) if fields else None
                if shape is not None:
                    axis = int(new.attrs.axis) if new.attrs.axis is not None else 0
                    axis = axis % (len(shape) + 1)
                    parts = [self.builder_.emit(relax.op.expand_dims(f, [axis])) for f in fields]
                    return relax.op.concat(parts, axis=axis)
            return new

    return _map_relax_functions(mod, lambda f: _Rewrite(mod).visit_expr(f))


def _map_relax_functions(mod: tvm.IRModule, fn) -> tvm.IRModule:
    """A new module: ``fn`` applied to each Relax function, everything else (PrimFuncs, attrs, global infos) kept."""
    funcs = {gv: fn(f) if isinstance(f, relax.Function) else f for gv, f in mod.functions.items()}
    return tvm.IRModule(funcs, attrs=mod.attrs, global_infos=mod.global_infos)


def convert_layout_checked(
    mod: tvm.IRModule, target: TargetInfo, layout: str = "auto"
) -> tuple[tvm.IRModule, int, list[Fallback]]:
    """Rewrite ``mod`` (after constant folding) so its convs run in NCHW[x]c where they can, converting back to
    NCHW locally in front of every op the blocked layout cannot be carried into (see the module docstring).

    Args:
        mod: Relax module with NCHW/OIHW ``relax.nn.conv2d`` calls and constant weights.
        target: CPU targets get a blocked layout under ``"auto"``; CUDA always keeps NCHW.
        layout: ``"auto"`` (choose ``x`` per model), ``"nchw"`` (no change) or ``"nchw{x}c"``.

    Returns:
        The rewritten module (constants folded), ``x`` (0: unchanged, NCHW) and the :class:`Fallback` records
        (``stage="layout"``): one per op converted back to NCHW, or one for the whole model.

    Raises:
        ConvpipeError: a malformed ``layout``, or ``nchw{x}c`` requested for a CUDA target. Never a TVM error
            from ConvertLayout: the last resort is the unchanged (NCHW) module.
    """
    choice = parse_layout(layout)
    if target.arch == "cuda":
        if isinstance(choice, int):
            raise ConvpipeError(f"layout nchw{choice}c: CUDA kernels take NCHW (use --layout nchw or auto)")
        return mod, 0, []
    if choice == "nchw":
        return mod, 0, []
    calls = conv2d_calls(mod)
    workloads = [workload_of(c) for c in calls]
    block = choose_block(workloads, target) if choice == "auto" else choice
    if not block or not any(all(blockable(wl, block)) for wl in workloads):
        return mod, 0, []

    def layout_cb(call: relax.Call) -> dict:
        if getattr(call.op, "name", "") != "relax.nn.conv2d":
            return {}
        wl = workload_of(call)
        data_ok, out_ok = blockable(wl, block)
        if data_ok and out_ok:
            kernel = f"OIHW{block}i{block}o" if wl.groups == 1 else f"OIHW{block}o"
            return {"relax.nn.conv2d": [f"NCHW{block}c", kernel]}
        if out_ok:  # e.g. the first conv (C = 3): NCHW in, blocked out
            return {"relax.nn.conv2d": ["NCHW", "OIHW", f"NCHW{block}c"]}
        return {"relax.nn.conv2d": ["NCHW", "OIHW"]}

    def out_blocked(call: relax.Call) -> bool:
        try:
            return blockable(workload_of(call), block)[1]
        except ConvpipeError:
            return False

    def attempt(barrier_keys: set[int], fold: bool = True) -> tvm.IRModule:
        # fold=False: ConvertLayout alone, for the bisection (FoldConstant takes seconds on a real network)
        staged = _insert_barriers(src, barrier_keys) if barrier_keys else src
        with target.target:
            converted = relax.transform.ConvertLayout({}, layout_cb=layout_cb)(staged)
            if barrier_keys:
                converted = _drop_barriers(converted)
            if fold:
                converted = relax.transform.FoldConstant()(converted)
        relax.analysis.well_formed(converted)  # raises on the first violation
        for c in conv2d_calls(converted):
            workload_of(c)  # every conv in a layout lower.py takes
        return converted

    src = _rewrite_for_convert_layout(mod)
    barriers, candidates = plan_barriers(src, block, out_blocked)
    fallbacks = [Fallback("layout", _op_label(b), "NCHW input (converted back from the blocked layout)", b.why)
                 for b in barriers]
    keys = {_var_key(b.var) for b in barriers}
    for _ in range(16):  # safety net: each round finds one more op at fault
        fold = False
        try:
            attempt(keys, fold=False)
            fold = True  # ConvertLayout went through: the failure, if any, is in FoldConstant's legalisation
            return attempt(keys), block, fallbacks
        except Exception as e:  # TVM raises InternalError / ValueError / ScheduleError from inside the pass
            error = e
        rest = [c for c in candidates if _var_key(c.var) not in keys]

        def works(with_keys: set[int]) -> bool:
            return _succeeds(lambda k: attempt(k, fold=fold), with_keys)

        if not rest or not works(keys | {_var_key(c.var) for c in rest}):
            break
        # the shortest tail of the remaining candidates (in program order) whose barriers make it succeed: its
        # first op is one TVM cannot carry the layout into (barriers in front of earlier ops would also "work",
        # by keeping the layout from reaching it, but convert more of the network back)
        lo, hi = 0, len(rest) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if works(keys | {_var_key(c.var) for c in rest[mid:]}):
                lo = mid
            else:
                hi = mid - 1
        culprit = rest[lo]
        keys.add(_var_key(culprit.var))
        stage = "FoldConstant after ConvertLayout" if fold else "ConvertLayout"
        fallbacks.append(Fallback("layout", _op_label(culprit), "NCHW input (converted back from the blocked layout)",
                                  f"{stage} failed with NCHW{block}c carried into it: {one_line(error)}"))
    return mod, 0, [Fallback("layout", "model", "NCHW for the whole model",
                             f"ConvertLayout to NCHW{block}c failed: {one_line(error)}")]


def _succeeds(attempt, keys: set[int]) -> bool:
    try:
        attempt(keys)
        return True
    except Exception:
        return False


def _op_label(b: _Barrier) -> str:
    return f"{b.op} ({b.var.name})"


def convert_layout(mod: tvm.IRModule, target: TargetInfo, layout: str = "auto") -> tuple[tvm.IRModule, int]:
    """:func:`convert_layout_checked` without the fallback records: ``(module, x)``."""
    converted, block, _ = convert_layout_checked(mod, target, layout)
    return converted, block
