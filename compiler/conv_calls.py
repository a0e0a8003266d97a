"""The ``relax.nn.conv2d`` calls of a Relax module: finding them, reading each one's
:class:`~convpipe.schedules.Conv2dWorkload`, its data layout and its (possibly blocked) weight.

One module shared by :mod:`.layout` (which chooses the NCHW[x]c block from the workloads and rewrites the calls),
:mod:`.lower` (which replaces each call by a scheduled kernel), :mod:`.tune` and ``scripts/bench_x86.py`` (which
list a model's distinct workloads). It imports nothing of :mod:`convpipe.compiler`, so neither of those modules
imports the other for these helpers.

Layouts read here: data and output NCHW or NCHW[x]c (``[N, C/x, H, W, x]``); weights OIHW, or after
:func:`.layout.convert_layout` ``OIHW{x}i{x}o`` (``[K/x, C/x, KH, KW, x_i, x_o]``, groups == 1) or ``OIHW{x}o``
(``[K/x, C/g, KH, KW, x_o]``, depthwise). All float32.
"""

from __future__ import annotations

import re

import numpy as np
import tvm
from tvm import relax

from convpipe.errors import ConvpipeError
from convpipe.schedules import Conv2dWorkload


def conv2d_calls(mod: tvm.IRModule) -> list[relax.Call]:
    """Every ``relax.nn.conv2d`` call bound in the dataflow/binding blocks of the module's Relax functions, in
    program order (functions in the module's order; TIR functions are skipped). Raises nothing."""
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


def layout_block_of(layout: str, what: str) -> int:
    """``x`` of a data/output layout ``"NCHW{x}c"`` (an int > 0), 0 for ``"NCHW"``.

    Raises:
        ConvpipeError: any other layout (``what`` names the conv in the message).
    """
    if layout == "NCHW":
        return 0
    m = re.fullmatch(r"NCHW(\d+)c", layout)
    if not m:
        raise ConvpipeError(f"{what}: data layout {layout}, expected NCHW or NCHW<x>c")
    return int(m.group(1))


def _ints(xs) -> list[int]:
    return [int(x) for x in xs]


def workload_of(call: relax.Call) -> Conv2dWorkload:
    """The :class:`Conv2dWorkload` of a ``relax.nn.conv2d`` call with static shapes: data and output each NCHW or
    NCHW[x]c (from :func:`.layout.convert_layout`; NCHW[x]c data comes with weights ``OIHW{x}i{x}o`` or
    ``OIHW{x}o``). Channel counts are the logical (un-blocked) ones; ``data_block``/``out_block`` carry ``x``
    (0: NCHW). Padding is expanded to (top, left, bottom, right).

    Raises:
        ConvpipeError: other layouts, dynamic shapes, or a dtype other than float32.
    """
    attrs = call.attrs
    what = f"conv2d {attrs.data_layout}/{attrs.kernel_layout}/{attrs.out_layout}"
    block = layout_block_of(str(attrs.data_layout), what)
    out_block = layout_block_of(str(attrs.out_layout) or str(attrs.data_layout), what)
    kernels = ("OIHW",) if not block else (f"OIHW{block}i{block}o", f"OIHW{block}o")
    if (block and out_block != block) or str(attrs.kernel_layout) not in kernels:
        raise ConvpipeError(
            f"{what}: expected NCHW/OIHW (output NCHW or NCHW<x>c) or NCHW<x>c with OIHW<x>i<x>o / OIHW<x>o"
        )
    data, weight = call.args
    try:
        dshape = _ints(data.ty.shape)
        wshape = _ints(weight.ty.shape)
    except (TypeError, ValueError, AttributeError):
        raise ConvpipeError(f"conv2d with non-static shapes {data.ty} x {weight.ty}: pin input shapes") from None
    dtype = str(data.ty.dtype)
    out_dtype = str(attrs.out_dtype) if attrs.out_dtype is not None else ""
    if dtype != "float32" or str(weight.ty.dtype) != "float32" or out_dtype not in ("", "void", "float32"):
        raise ConvpipeError(f"conv2d on {dtype} x {weight.ty.dtype} -> {out_dtype}: only float32 is supported")
    strides, padding, dilation = _ints(attrs.strides), _ints(attrs.padding), _ints(attrs.dilation)
    if len(padding) == 2:
        padding = padding * 2
    in_channels = dshape[1] * (block or 1)
    out_channels = wshape[0] * (wshape[-1] if block else 1)
    return Conv2dWorkload(
        batch=dshape[0],
        in_channels=in_channels,
        in_h=dshape[2],
        in_w=dshape[3],
        out_channels=out_channels,
        kernel_h=wshape[2],
        kernel_w=wshape[3],
        stride_h=strides[0],
        stride_w=strides[1],
        pad_top=padding[0],
        pad_left=padding[1],
        pad_bottom=padding[2],
        pad_right=padding[3],
        dilation_h=dilation[0],
        dilation_w=dilation[1],
        groups=int(attrs.groups),
        data_block=block,
        out_block=out_block,
    )


def workload_uses(mod: tvm.IRModule) -> dict[Conv2dWorkload, int]:
    """The module's distinct conv2d workloads (:func:`workload_of` of each :func:`conv2d_calls` entry), in
    first-use order, each with the number of calls that have it. Pass the module as ``compile`` lowers it
    (:func:`convpipe.compiler.build.prepare`) to get the workloads in the layout the model runs in.

    Raises:
        ConvpipeError: as :func:`workload_of`, for the first call it rejects.
    """
    uses: dict[Conv2dWorkload, int] = {}
    for call in conv2d_calls(mod):
        wl = workload_of(call)
        uses[wl] = uses.get(wl, 0) + 1
    return uses


def distinct_workloads(mod: tvm.IRModule) -> list[Conv2dWorkload]:
    """The keys of :func:`workload_uses`: each distinct conv2d workload once, in first-use order.

    Raises:
        ConvpipeError: as :func:`workload_of`.
    """
    return list(workload_uses(mod))


def weight_to_oihw(weight: np.ndarray, kernel_layout: str, block: int, what: str) -> np.ndarray:
    """Undo ConvertLayout's weight blocking: ``OIHW`` as is; ``OIHW{x}i{x}o`` ``[K/x, C/x, KH, KW, x_i, x_o]``
    and ``OIHW{x}o`` ``[K/x, C/g, KH, KW, x_o]`` back to OIHW ``[K, C/g, KH, KW]`` (same dtype; a view or a copy).
    ``block`` is the call's data block ``x`` (0 for NCHW data, where only ``OIHW`` is accepted).

    Raises:
        ConvpipeError: another kernel layout, or a weight whose rank does not match it (``what`` names the conv).
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
