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
"""

from __future__ import annotations

import re

import numpy as np
import tvm
from tvm import relax

from convpipe.errors import ConvpipeError
from convpipe.schedules import Conv2dWorkload, TargetInfo

#: accepted values of ``layout`` (``--layout``) besides ``nchw{x}c``
LAYOUT_CHOICES = ("auto", "nchw")


def conv2d_calls(mod: tvm.IRModule) -> list[relax.Call]:
    """Every ``relax.nn.conv2d`` call of the module's Relax functions, in program order."""
    calls = []
    for func in mod.functions.values():
        if not isinstance(func, relax.Function):
            continue
        for block in func.body.blocks:
            for binding in block.bindings:
                call = binding.value
                if isinstance(call, relax.Call) and getattr(call.op, "name", "") == "relax.nn.conv2d":
                    calls.append(call)
    return calls


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


def convert_layout(mod: tvm.IRModule, target: TargetInfo, layout: str = "auto") -> tuple[tvm.IRModule, int]:
    """Rewrite ``mod`` (after constant folding) so its convs run in NCHW[x]c where they can.

    Args:
        mod: Relax module with NCHW/OIHW ``relax.nn.conv2d`` calls and constant weights.
        target: CPU targets get a blocked layout under ``"auto"``; CUDA always keeps NCHW.
        layout: ``"auto"`` (choose ``x`` per model), ``"nchw"`` (no change) or ``"nchw{x}c"``.

    Returns:
        The rewritten module (constants folded) and ``x`` (0: unchanged, NCHW).

    Raises:
        ConvpipeError: a malformed ``layout``, or ``nchw{x}c`` requested for a CUDA target.
    """
    from .lower import workload_of

    choice = parse_layout(layout)
    if target.arch == "cuda":
        if isinstance(choice, int):
            raise ConvpipeError(f"layout nchw{choice}c: CUDA kernels take NCHW (use --layout nchw or auto)")
        return mod, 0
    if choice == "nchw":
        return mod, 0
    calls = conv2d_calls(mod)
    workloads = [workload_of(c) for c in calls]
    block = choose_block(workloads, target) if choice == "auto" else choice
    if not block or not any(all(blockable(wl, block)) for wl in workloads):
        return mod, 0

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

    with target.target:
        converted = relax.transform.ConvertLayout({}, layout_cb=layout_cb)(mod)
        converted = relax.transform.FoldConstant()(converted)
    return converted, block


def layout_block_of(layout: str, what: str) -> int:
    """``x`` of ``"NCHW{x}c"``, 0 for ``"NCHW"``.

    Raises:
        ConvpipeError: any other layout (``what`` names the conv in the message).
    """
    if layout == "NCHW":
        return 0
    m = re.fullmatch(r"NCHW(\d+)c", layout)
    if not m:
        raise ConvpipeError(f"{what}: data layout {layout}, expected NCHW or NCHW<x>c")
    return int(m.group(1))


def weight_to_oihw(weight: np.ndarray, kernel_layout: str, block: int, what: str) -> np.ndarray:
    """Undo ConvertLayout's weight blocking: ``OIHW`` as is; ``OIHW{x}i{x}o`` ``[K/x, C/x, KH, KW, x_i, x_o]``
    and ``OIHW{x}o`` ``[K/x, C/g, KH, KW, x_o]`` back to OIHW ``[K, C/g, KH, KW]``.

    Raises:
        ConvpipeError: another kernel layout.
    """
    if kernel_layout == "OIHW":
        return weight
    if kernel_layout == f"OIHW{block}i{block}o" and weight.ndim == 6:
        ko, co, kh, kw, bi, bo = weight.shape
        return weight.transpose(0, 5, 1, 4, 2, 3).reshape(ko * bo, co * bi, kh, kw)
    if kernel_layout == f"OIHW{block}o" and weight.ndim == 5:
        ko, cg, kh, kw, bo = weight.shape
        return weight.transpose(0, 4, 1, 2, 3).reshape(ko * bo, cg, kh, kw)
    raise ConvpipeError(f"{what}: kernel layout {kernel_layout} with data NCHW{block}c is not supported")
