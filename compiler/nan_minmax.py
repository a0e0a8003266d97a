"""NaN-propagating float ``max``/``min``: activations (ReLU, Clip/ReLU6, HardSigmoid, HardSwish's clip, any
element-wise max/min) give NaN for a NaN input, as onnxruntime and PyTorch do, on every target.

Why in ``compiler/``: the pass decides *what* a kernel computes (its NaN semantics), not how it runs; it applies
to every PrimFunc of the module, whichever rule (ours, dlight's, none) scheduled it.

Root cause (verified on TVM 0.27). The activations become TIR ``Max``/``Min`` (TOPI's ``relu`` is
``max(x, 0)``, ``clip`` is ``max(min(x, hi), lo)``, Relax ``maximum``/``minimum`` -- convpipe's ReLU6, see
``compiler/importer.py`` -- are ``max``/``min`` with the scalar constant folded in), and TVM's code generators
drop a NaN operand of those: LLVM (x86, ARM) emits ``Max(a, b)`` as ``select(fcmp ogt a, b), a, b)``
(``src/target/llvm/codegen_llvm.cc``, ``VisitExpr_(const MaxNode*)``; ``Min`` with ``olt``), so
``max(NaN, 0) = 0`` (and ``max(0, NaN) = NaN``: the result depends on the operand order); CUDA C emits
``max(a, b)`` / ``min(a, b)`` (``src/target/source/codegen_c.cc``), i.e. ``fmaxf``/``fminf``, which return the
non-NaN operand whatever the order. Hence ``Relu(NaN) = 0``, ``Clip(NaN, 0, 6) = 0``, ``HardSigmoid(NaN) = 1``
(``min(NaN, 1) = 1``) where onnxruntime gives NaN.

The fix, at one place for every target and every op: :func:`propagate_nan` rewrites each float ``Max``/``Min``
of a scheduled PrimFunc into a ``Select`` that returns a NaN operand (TIR ``Select`` is an ordered compare and a
blend on every backend: LLVM ``select``, CUDA ``?:``):

- against a non-NaN constant ``c`` (``FloatImm``, possibly cast or broadcast; Relu, Clip, ReLU6,
  HardSigmoid/HardSwish's clips): ``max(a, c) -> select(a < c, c, a)``, ``min(a, c) -> select(c < a, c, a)``
  (either operand order). NaN ``a`` fails the compare and is passed through. This is exactly x86's
  ``MAXPS(c, a)`` / ``MINPS(c, a)`` (which return the second operand when either is NaN), so LLVM still emits
  one ``vmaxps``/``vminps`` per vector, operands swapped (ResNet-18's whole x86 assembly differs from the
  unpatched build in the operand order of 172 ``vmaxps`` and nothing else). On AArch64 a ReLU becomes
  ``fcmlt`` + ``bic`` instead of ``fmaxnm`` (which drops NaN), one instruction more per vector; on CUDA
  ``setp`` + ``selp`` in PTX instead of ``max.f32`` (which drops NaN), same registers.
- between two non-constant operands (Relax ``maximum``/``minimum`` of two tensors, or of a tensor and a
  constant tensor or a scalar parameter): ``max(a, b) -> select(isnan(b), b, select(a < b, b, a))`` (``min``
  likewise), NaN from either side, as onnxruntime's element-wise ``Max``/``Min`` do. ``isnan``, not
  ``b != b``: TVM's simplifier folds a float ``x == x`` to true (``src/arith/rewrite_simplify.cc``, "models
  should not encounter NaN").
- a reduction's combiner is left alone: a ``Max``/``Min`` in a store that reads the buffer it writes
  (``acc = max(acc, x)``: max pooling, GlobalMaxPool, ReduceMax, their cross-thread CUDA forms) keeps TVM's
  semantics, so pooling is unchanged. A ``Max``/``Min`` *inside* such a combiner that does not read the
  accumulator (a ReLU inlined into a max pool: ``acc = max(acc, max(x, 0))``) is an activation and is rewritten.
  Integer ``Max``/``Min`` (index arithmetic) are never touched.

Nothing later turns the ``Select`` back into ``Max``: TVM's simplifier has no such rule (its ``Select`` rewrites
are ``select(c, x, x) -> x`` and the distribution of ``+``/``-``/``max``/``min`` over two selects on the same
condition), and LLVM may only form ``maxnum``/``minnum`` from it under ``nnan`` fast-math flags, which TVM sets
only for a target with ``fast-math`` (``src/target/llvm/llvm_instance.cc``; convpipe's targets do not).

What onnxruntime 1.31 (CPU provider, opset 17, ``x = [NaN, +Inf, -Inf, -1.5, 0, 2, 7, -7]``) gives, checked
by hand and in ``tests/test_nan.py``, and what convpipe gave before this pass (``*``: fixed by it):

=============  ===============================================  ==========================================
op             onnxruntime                                      convpipe before this pass
=============  ===============================================  ==========================================
Relu           [NaN, Inf, 0, 0, 0, 2, 7, 0]                     NaN -> 0 *
Clip(0, 6)     [NaN, 6, 0, 0, 0, 2, 6, 0]                       NaN -> 0 * (max then min, or Relax clip)
HardSigmoid    [NaN, 1, 0, .2, .5, .9, 1, 0]                    NaN -> 1 * (clip(a x + b, 0, 1))
HardSwish      [NaN, Inf, NaN, -.375, 0, 1.67, 7, -0]           same (``x * relu6(x + 3) / 6``: NaN * 0)
LeakyRelu      [NaN, Inf, -Inf, -.15, 0, 2, 7, -.7]             same (``select(x > 0, x, a x)``: no max)
PRelu          as LeakyRelu                                     same
Sigmoid        [NaN, 1, 0, .18, .5, .88, .999, 9e-4]            same
Max(x, y)      [NaN, Inf, 1, 1, 1, 2, 7, 1] (y = 1), NaN from   NaN kept only in the last operand, before
               either operand                                   and after: TVM's ONNX frontend makes it a
                                                                reduction over ``stack((x, y))``, left
                                                                alone (a fix belongs in the importer)
Min(x, y)      [NaN, 1, -Inf, -1.5, 0, 1, 1, -7], either side   as Max
MaxPool        NaN kept only as the window's last element       the same on the 2x2 cases tried; a
               (2x2 windows tried): order-dependent             reduction, unchanged
GlobalMaxPool  NaN dropped (4x4 plane, NaN at (1, 1): 3.0)      NaN dropped (0.0 on that case); unchanged
=============  ===============================================  ==========================================

Element-wise Relax ``maximum``/``minimum`` of two tensors (not what the ONNX frontend emits for Max/Min, but
what any other producer of a two-operand ``max`` gets) propagate NaN from either side after this pass.

±Inf: ``Relu(+Inf) = +Inf``, ``Relu(-Inf) = 0``, ``Clip(+Inf, 0, 6) = 6`` (and ``-Inf -> 0``) in both, before
and after (an ordered compare handles infinities like any number). Differences left, outside this pass:
``Clip`` with a default bound leaves ±Inf where onnxruntime clamps to ±FLT_MAX (ONNX's default bounds), and a
max pool window of -Inf only gives -FLT_MAX (TVM's reduction init) where onnxruntime gives -Inf.

Source of the idea: the NaN semantics of x86 ``MAXPS``/``MINPS`` (Intel SDM: "if either value is a NaN, the
second operand is returned") and LLVM's ``llvm.maximum`` (NaN-propagating) vs ``llvm.maxnum``; the pass itself
is a TIR expression rewrite written here with ``tvm_ffi.structural_mutate``.
"""

from __future__ import annotations

import math

import tvm
import tvm_ffi
from tvm import ir, tirx

__all__ = ["PropagateNaN", "nan_dropping_minmax", "propagate_nan"]


def _is_float(expr) -> bool:
    return bool(expr.ty.dtype.is_float)


def _const(expr) -> float | None:
    """The value of a float constant (``FloatImm``, or one cast or broadcast), else ``None``."""
    while isinstance(expr, (tirx.Cast, tirx.Broadcast)):
        expr = expr.value
    if isinstance(expr, (tirx.FloatImm, tirx.IntImm)):
        return float(expr.value)
    return None


def _reads(expr, buffer) -> bool:
    """Whether ``expr`` loads from ``buffer`` (a buffer's data ``Var``)."""
    found = []

    def load(e):
        if e.source.same_as(buffer):
            found.append(True)

    tvm_ffi.structural_walk(expr, (ir.TensorLoad, load))
    return bool(found)


def _combiner(e, accumulator) -> bool:
    """Whether the ``Max``/``Min`` ``e`` reads ``accumulator`` (the buffer its store writes): a reduction's
    combiner, ``acc = max(acc, x)``."""
    return accumulator is not None and (_reads(e.a, accumulator) or _reads(e.b, accumulator))


def _bind(expr, body):
    """``body(v)`` with ``v`` bound to ``expr`` by a ``Let`` (``expr`` itself when it is a ``Var`` or a constant).

    Why: the operand appears two or three times in the ``Select``; bound once, it is computed once whatever the
    backend, and the ``Select``'s branches hold no load, so TVM's ``RewriteUnsafeSelect`` (default TIR pipeline,
    ``src/s_tir/transform/rewrite_unsafe_select.cc``) does not turn a scalar one into an ``if_then_else``
    branch. TVM's simplifier keeps a ``Let`` whose value is not a constant or a variable
    (``RewriteSimplifier::CanInlineLet``)."""
    if isinstance(expr, tirx.Var) or _const(expr) is not None:
        return body(expr)
    v = tirx.Var("nan_arg", str(expr.ty.dtype))
    return tirx.Let(v, expr, body(v))


def _finite_const(expr) -> bool:
    c = _const(expr)
    return c is not None and not math.isnan(c)


def _propagating(a, b, is_max: bool):
    """NaN-propagating ``max(a, b)`` (``is_max``) or ``min(a, b)`` as ``Select`` s: with a constant operand ``c``
    (either side) ``select(x < c, c, x)`` / ``select(c < x, c, x)``; otherwise ``select(isnan(b), b,
    select(a < b, b, a))`` / ``select(isnan(b), b, select(b < a, b, a))``."""

    def pick(x, c):  # x: any value, c: a non-NaN constant
        return tirx.Select(tirx.LT(x, c) if is_max else tirx.LT(c, x), c, x)

    if _finite_const(b):
        return _bind(a, lambda x: pick(x, b))
    if _finite_const(a):
        return _bind(b, lambda x: pick(x, a))

    def general(x, y):
        return tirx.Select(tirx.isnan(y), y, tirx.Select(tirx.LT(x, y) if is_max else tirx.LT(y, x), y, x))

    return _bind(a, lambda x: _bind(b, lambda y: general(x, y)))


def _rewrite(expr, accumulator=None):
    """``expr`` with every float ``Max``/``Min`` made NaN-propagating, except those reading ``accumulator``
    (the buffer the enclosing store writes: a reduction's combiner)."""

    def minmax(e):
        if not _is_float(e) or _combiner(e, accumulator):
            return e
        return _propagating(e.a, e.b, isinstance(e, tirx.Max))

    return tvm_ffi.structural_map(expr, ((tirx.Max, tirx.Min), minmax), order="post")


def propagate_nan(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with its float ``Max``/``Min`` rewritten into NaN-propagating ``Select`` s (see the module
    docstring); reduction combiners (a store reading the buffer it writes) and integer ``Max``/``Min`` are kept.

    Works on any PrimFunc, scheduled or not, any dtype and vector width (``float16``, ``bfloat16``, ``float64``
    too); a function without float ``Max``/``Min`` is returned as is (the same object). Raises nothing of its
    own."""

    def store(s: tirx.BufferStore, _mutator):
        value = _rewrite(s.value, s.buffer)
        return s if value.same_as(s.value) else tirx.BufferStore(s.buffer, value, s.indices, s.span)

    def elsewhere(e, mutator):  # a Max/Min outside any store (a let value, a predicate): no accumulator
        return _rewrite(e)

    return tvm_ffi.structural_mutate(func, [(tirx.BufferStore, store), ((tirx.Max, tirx.Min), elsewhere)])


def nan_dropping_minmax(func: tirx.PrimFunc) -> list[str]:
    """The float ``Max``/``Min`` of ``func`` that :func:`propagate_nan` would rewrite (i.e. that drop a NaN
    operand), as TVMScript strings; empty after the pass. For tests and inspection. Raises nothing."""
    found = []

    def collect(expr, accumulator=None):
        def minmax(e):
            if _is_float(e) and not _combiner(e, accumulator):
                found.append(e.script())

        tvm_ffi.structural_walk(expr, ((tirx.Max, tirx.Min), minmax))

    def store(s: tirx.BufferStore, _mutator):
        collect(s.value, s.buffer)
        return s

    def elsewhere(e, _mutator):
        collect(e)
        return e

    tvm_ffi.structural_mutate(func, [(tirx.BufferStore, store), ((tirx.Max, tirx.Min), elsewhere)])
    return found


def PropagateNaN() -> tvm.transform.Pass:  # noqa: N802 (TVM's naming of pass constructors)
    """A PrimFunc pass applying :func:`propagate_nan` to every PrimFunc of a module (Relax functions untouched).
    :mod:`convpipe.compiler.pipeline` runs it after the schedule rules, before codegen, on CPU and CUDA."""

    @tirx.transform.prim_func_pass(opt_level=0, name="convpipe.PropagateNaN")
    def _pass(func: tirx.PrimFunc, _mod, _ctx) -> tirx.PrimFunc:
        return propagate_nan(func)

    return _pass
