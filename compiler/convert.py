"""convpipe's own ONNX -> Relax converters, used in place of TVM's where TVM's are inexact or block the layout
pass. TVM's ONNX frontend looks its converters up in ``onnx_frontend._get_convert_map()`` at each call;
:func:`convpipe_converters` swaps entries of that table for the duration of one import and restores it.

Each override names the upstream converter it replaces (``python/tvm/relax/frontend/onnx/onnx_frontend.py``) and
why.
"""

from __future__ import annotations

import contextlib


def _core_overrides() -> dict:
    """convpipe's converters for core ONNX ops. TVM's ONNX frontend converts ``Clip`` with constant bounds (ReLU6
    and friends) to the Relax operators ``relax.op.maximum(x, lo)`` / ``relax.op.minimum(., hi)`` with 0-d
    constants instead of its default, two opaque ``call_tir`` (``topi.maximum``/``minimum``, ``relax/frontend/onnx/onnx_frontend.py:Clip``).
    ``ConvertLayout`` carries neither those nor ``relax.op.clip`` through a blocked layout (verified on 0.27),
    so every ReLU6 would leave and re-enter NCHW[x]c (:mod:`.layout`); binary ops with a 0-d constant it does.
    Other Clips keep the default conversion. Also swaps in a LayerNormalization converter that accepts a scale/bias
    broadcast over the normalised axes and computes the optional Mean / InvStdDev outputs (``LayerNormOp``), and
    converters for Softplus, Mish, Tanh, Elu, Selu, Celu, Pow, Dropout, SpaceToDepth and bool ReduceMax/Min (each
    says why).

    Returns ``{ONNX op type: converter class}``."""
    import numpy as _np
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import onnx_frontend as fe

    def _bound(expr, default: float):
        if expr is None:
            return default
        if isinstance(expr, tvm.ir.expr.Constant) and expr.value.numpy().size == 1:
            v = float(expr.value.numpy().reshape(()))
            return None if _np.isnan(v) else v
        return None

    class ClipOp(fe.Clip):
        @staticmethod
        def _clip(bb, x, lo: float, hi: float):
            dtype = str(x.ty.dtype)
            if lo != -_np.inf:
                x = bb.emit(relax.op.maximum(x, relax.const(lo, dtype)))
            if hi != _np.inf:
                x = bb.emit(relax.op.minimum(x, relax.const(hi, dtype)))
            return x

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            lo, hi = float(attr.get("min", -_np.inf)), float(attr.get("max", _np.inf))
            return cls._clip(bb, inputs[0], lo, hi)

        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):
            lo = _bound(inputs[1] if len(inputs) > 1 else None, -_np.inf)
            hi = _bound(inputs[2] if len(inputs) > 2 else None, _np.inf)
            if lo is None or hi is None or str(inputs[0].ty.dtype) not in ("float32", "float16", "float64"):
                return super()._impl_v13(bb, inputs, attr, params)
            return cls._clip(bb, inputs[0], lo, hi)

    class LayerNormOp(fe.LayerNormalization):
        """ONNX LayerNormalization normalises over every axis from ``axis`` to the last, with ``Scale``/``B``
        *broadcastable* to that shape (ONNX operator spec). TVM's converter takes the axes from the scale's rank
        (``axis`` extended by ``len(scale.shape) - 1`` axes), so a scale of shape ``[D]`` with ``axis=1`` on a
        rank-3 input fails ("requires the input gamma ... same as the lengths of the data on the given axes"):
        broadcast scale and bias to the normalised shape first."""

        @classmethod
        def _impl_v17(cls, bb, inputs, attr, params):
            data = inputs[0]
            shape = [int(d) for d in fe.get_const_tuple(data.ty.shape)]
            axis = int(attr.get("axis", -1))
            norm = shape[axis + len(shape) if axis < 0 else axis:]
            fixed = list(inputs) + [None] * (3 - len(inputs))
            for k in (1, 2):
                v = fixed[k]
                if v is not None and [int(d) for d in fe.get_const_tuple(v.ty.shape)] != norm:
                    fixed[k] = bb.emit(relax.op.broadcast_to(v, norm))
            result = super()._impl_v17(bb, fixed, attr, params)
            # ONNX's optional outputs Mean and InvStdDev (shape: data's with the normalised axes kept as 1,
            # float32 = stash_type 1); TVM returns 0-d placeholders. Left unbound here, so unused ones cost nothing.
            axes = list(range(len(shape) - len(norm), len(shape)))
            eps = float(attr.get("epsilon", 1e-5))
            x = data if str(data.ty.dtype) == "float32" else relax.op.astype(data, "float32")
            mean = relax.op.mean(x, axes, keepdims=True)
            inv_std = relax.op.divide(relax.const(1.0, "float32"), relax.op.sqrt(
                relax.op.add(relax.op.variance(x, axes, keepdims=True), relax.const(eps, "float32"))))
            return relax.Tuple([result[0], mean, inv_std])

    def _step(a, c: float, dtype: str):
        """0 where ``a <= c``, 1 where ``a >= c + 2**-40`` (a blend in between), from ``min``/``max``/``*`` only:
        a comparison would make a bool tensor, which the blocked layout cannot carry (:mod:`.layout` converts
        back to NCHW around it), so the small-argument branches below select arithmetically."""
        t = relax.op.multiply(relax.op.subtract(a, relax.const(c, dtype)), relax.const(2.0 ** 40, dtype))
        return relax.op.minimum(relax.op.maximum(t, relax.const(0.0, dtype)), relax.const(1.0, dtype))

    def _blend(small, big, m, dtype: str):
        """``small * (1 - m) + big * m``: exactly one of them where ``m`` is 0 or 1 (both branches are accurate
        in the blend band). The small branch is evaluated on a clamped argument, so it stays finite."""
        keep = relax.op.subtract(relax.const(1.0, dtype), m)
        return relax.op.add(relax.op.multiply(small, keep), relax.op.multiply(big, m))

    def _log1p(y, dtype: str):
        """log(1 + y) for y in [0, 1] to ~1e-7 relative: the series y - y^2/2 + ... - y^10/10 (Horner) below 0.1
        (truncation < 1e-10 relative), ``log(1 + y)`` above (rounding 1 + y costs < 6e-7 relative there). Relax has
        no log1p operator, and Goldberg's ``log(u) * y / (u - 1)`` does not survive the x86 build: LLVM folds
        ``(1 + y) - 1`` to ``y`` in the vectorised kernel (measured: softplus(-16.57) came out 1.19e-7, not 6.39e-8)."""
        ys = relax.op.minimum(y, relax.const(0.1, dtype))
        acc = relax.const(-1.0 / 10, dtype)
        for k in range(9, 0, -1):
            acc = relax.op.add(relax.const((-1.0) ** (k + 1) / k, dtype), relax.op.multiply(ys, acc))
        series = relax.op.multiply(ys, acc)
        direct = relax.op.log(relax.op.add(relax.const(1.0, dtype), y))
        return _blend(series, direct, _step(y, 0.1, dtype), dtype)

    def _softplus(bb, x):
        dtype = str(x.ty.dtype)
        e = relax.op.exp(relax.op.negative(relax.op.abs(x)))
        return relax.op.add(relax.op.maximum(x, relax.const(0, dtype)), _log1p(e, dtype))

    def _tanh(x):
        """tanh with a small-argument branch: TVM lowers tanh to (1 - e^-2|x|) / (1 + e^-2|x|) (``src/target/
        intrin_rule.cc``: DispatchNumericalStableTanh), which cancels to 0 below |x| ~ 3e-8 (tanh(-1e-8) came out
        0) and loses ~8 ulp near 0.06; up to |x| = 0.0625 the series x - x^3/3 + 2x^5/15 - 17x^7/315 is exact to
        ~3e-12 relative."""
        dtype = str(x.ty.dtype) if getattr(x, "ty", None) is not None else "float32"
        c = 0.0625
        xs = relax.op.minimum(relax.op.maximum(x, relax.const(-c, dtype)), relax.const(c, dtype))
        x2 = relax.op.multiply(xs, xs)
        poly = relax.const(-17.0 / 315, dtype)
        for k in (2.0 / 15, -1.0 / 3, 1.0):
            poly = relax.op.add(relax.const(k, dtype), relax.op.multiply(x2, poly))
        return _blend(relax.op.multiply(xs, poly), relax.op.tanh(x), _step(relax.op.abs(x), c, dtype), dtype)

    class TanhOp(fe.Tanh):
        """Tanh through :func:`_tanh` (exact near 0)."""

        @classmethod
        def _impl_v7(cls, bb, inputs, attr, params):
            return _tanh(inputs[0])

        _impl_v1 = _impl_v7

    def _expm1(x, dtype: str):
        """exp(x) - 1 for x <= 0 to ~1e-7 relative: the series x + x^2/2! + ... + x^8/8! (Horner) from -0.1 up
        (truncation < 3e-12 relative), ``exp(x) - 1`` below (no cancellation there). TVM's converters write
        ``exp(x) - 1``, which loses every digit below |x| ~ 1e-7 (Elu at x = -8.8e-5 was 6.8e-4 off, relative)."""
        xs = relax.op.maximum(x, relax.const(-0.1, dtype))
        acc = relax.const(1.0 / 40320, dtype)
        for k in (5040, 720, 120, 24, 6, 2, 1):
            acc = relax.op.add(relax.const(1.0 / k, dtype), relax.op.multiply(xs, acc))
        series = relax.op.multiply(xs, acc)
        direct = relax.op.subtract(relax.op.exp(x), relax.const(1.0, dtype))
        return _blend(series, direct, _step(relax.op.negative(x), 0.1, dtype), dtype)

    def _elu(x, alpha: float):
        """alpha * expm1(min(x, 0)) + max(x, 0) (ONNX Elu)."""
        dtype = str(x.ty.dtype)
        zero = relax.const(0.0, dtype)
        neg = relax.op.multiply(relax.const(alpha, dtype), _expm1(relax.op.minimum(x, zero), dtype))
        return relax.op.add(neg, relax.op.maximum(x, zero))

    class EluOp(fe.Elu):
        """ONNX Elu with :func:`_expm1` (exact near 0)."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            return _elu(inputs[0], float(attr.get("alpha", 1.0)))

    class SeluOp(fe.Selu):
        """ONNX Selu = gamma * Elu(x, alpha), with :func:`_expm1`."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            x = inputs[0]
            alpha = float(attr.get("alpha", 1.67326319217681884765625))
            gamma = float(attr.get("gamma", 1.05070102214813232421875))
            return relax.op.multiply(relax.const(gamma, str(x.ty.dtype)), _elu(x, alpha))

    class SoftplusOp(fe.Softplus):
        """softplus(x) = max(x, 0) + log1p(exp(-|x|)) (exp(-|x|) in (0, 1]), as onnxruntime computes it
        (``onnxruntime/core/providers/cpu/activation/activations.h``: Softplus). TVM writes ``log(1 + exp(-|x|))``,
        which loses the digits of exp(-|x|) below float32's epsilon: relative errors ~1e-3 at softplus ~ 1e-4."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            return _softplus(bb, inputs[0])

    class MishOp(fe.Mish):
        """mish(x) = x * tanh(softplus(x)) with the exact softplus of :class:`SoftplusOp` (TVM writes
        ``log(1 + exp(x))``: ``test_mish`` deviated by 1.3e-3 relative at x ~ -9)."""

        @classmethod
        def _impl_v18(cls, bb, inputs, attr, params):
            return relax.op.multiply(inputs[0], _tanh(bb.emit(_softplus(bb, inputs[0]))))

    class CeluOp(fe.OnnxOpConverter):
        """ONNX Celu (opset 12): max(0, x) + min(0, alpha * (exp(x / alpha) - 1)) (with :func:`_expm1`); TVM 0.27
        has no converter.
        float32 only, as the ONNX type constraint says."""

        @classmethod
        def _impl_v12(cls, bb, inputs, attr, params):
            x = inputs[0]
            dtype = str(x.ty.dtype)
            alpha = float(attr.get("alpha", 1.0))
            zero = relax.const(0.0, dtype)
            t = relax.op.minimum(relax.op.divide(x, relax.const(alpha, dtype)), zero)
            neg = relax.op.multiply(relax.const(alpha, dtype), _expm1(t, dtype))
            return relax.op.add(relax.op.maximum(x, zero), neg)

    class PowOp(fe.Pow):
        """ONNX Pow lets the exponent's type differ from the base's (T, T1); TVM's ``relax.op.power`` needs one
        float type ("Binary operators must have the same datatype"). A float base takes the exponent cast to its
        type; an integer base is computed in float64 and cast back (exact while |result| < 2**53)."""

        @classmethod
        def _impl_v7(cls, bb, inputs, attr, params):
            x, y = inputs[0], inputs[1]
            tx, ty = str(x.ty.dtype), str(y.ty.dtype)
            if tx.startswith("float"):
                if ty != tx:
                    y = relax.op.astype(y, tx)
                return relax.op.power(x, y)
            out = relax.op.power(relax.op.astype(x, "float64"), relax.op.astype(y, "float64"))
            return relax.op.astype(relax.op.round(out), tx)

    class DropoutOp(fe.Dropout):
        """Inference Dropout: ``output = data`` and ``mask`` all true (ONNX Dropout; bool since opset 10, data's
        type before). TVM's ``relax.op.nn.dropout`` returns a float32 mask. Training mode is refused before
        conversion (``importer._check_inference_graph``)."""

        @staticmethod
        def _outputs(x, mask_dtype):
            shape = [int(d) for d in fe.get_const_tuple(x.ty.shape)]
            return relax.Tuple([x, relax.op.full(shape, relax.const(True if mask_dtype == "bool" else 1, mask_dtype),
                                                 mask_dtype)])

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            return cls._outputs(inputs[0], str(inputs[0].ty.dtype))

        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):
            return cls._outputs(inputs[0], "bool")

        _impl_v12 = _impl_v10

    class SpaceToDepthOp(fe.SpaceToDepth):
        """ONNX SpaceToDepth with its ``mode`` (opset 28): DCR (default) puts the block offset before the channel
        in the output channel index, ``(i * bs + j) * C + c``; CRD after it, ``c * bs * bs + i * bs + j``. TVM's
        converter ignores ``mode`` (the CRD conformance case came out permuted)."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            mode = attr.get("mode", b"DCR")
            mode = mode.decode() if isinstance(mode, bytes) else str(mode)
            if mode == "DCR":
                return super()._impl_v1(bb, inputs, attr, params)
            bs = int(attr["blocksize"])
            b, c, h, w = (int(d) for d in fe.get_const_tuple(inputs[0].ty.shape))
            x = relax.op.reshape(inputs[0], (b, c, h // bs, bs, w // bs, bs))
            x = relax.op.permute_dims(x, [0, 1, 3, 5, 2, 4])
            return relax.op.reshape(x, (b, c * bs * bs, h // bs, w // bs))

    def _bool_as_uint8(base):
        """A Reduce converter that reduces a bool tensor as uint8 and casts back (max = any, min = all): TVM's
        reductions have no identity for bool ("Cannot decide min_value for type bool")."""

        class BoolReduce(base):
            @classmethod
            def _run(cls, impl, bb, inputs, attr, params):
                x = inputs[0]
                if x is None or str(x.ty.dtype) != "bool":
                    return impl(bb, inputs, attr, params)
                out = impl(bb, [bb.emit(relax.op.astype(x, "uint8"))] + list(inputs[1:]), attr, params)
                return relax.op.astype(out, "bool")

            @classmethod
            def _impl_v11(cls, bb, inputs, attr, params):
                return cls._run(super()._impl_v11, bb, inputs, attr, params)

            @classmethod
            def _impl_v18(cls, bb, inputs, attr, params):
                return cls._run(super()._impl_v18, bb, inputs, attr, params)

        BoolReduce.__name__ = base.__name__ + "Op"
        return BoolReduce

    return {"Clip": ClipOp, "LayerNormalization": LayerNormOp, "Softplus": SoftplusOp, "Mish": MishOp,
            "Celu": CeluOp, "Pow": PowOp, "Dropout": DropoutOp, "Tanh": TanhOp,
            "Elu": EluOp, "Selu": SeluOp, "SpaceToDepth": SpaceToDepthOp,
            "ReduceMax": _bool_as_uint8(fe.ReduceMax), "ReduceMin": _bool_as_uint8(fe.ReduceMin)}


def overrides() -> dict:
    """``{ONNX op type: converter class}`` of every converter convpipe uses in place of TVM's (imports TVM)."""
    from . import resize

    table = _core_overrides()
    table.update(resize.converters())
    return table


@contextlib.contextmanager
def convpipe_converters(table: dict | None = None):
    """While active, TVM's ONNX frontend uses ``table`` (default :func:`overrides`) in place of its own converters
    (the generic build of a variable-size artifact passes its own, :func:`.importer._generic_converters`). The frontend looks
    its converters up in ``onnx_frontend._get_convert_map()`` at each call; this wraps that function for the
    duration of one import and restores it (not thread-safe: imports are serialised by the caller)."""
    from tvm.relax.frontend.onnx import onnx_frontend as fe

    mine = overrides() if table is None else table
    original = fe._get_convert_map

    def patched():
        table = original()
        table.update(mine)
        return table

    fe._get_convert_map = patched
    try:
        yield
    finally:
        fe._get_convert_map = original
