"""ONNX import: load and check a model, pin its dynamic dims, make ``auto_pad`` explicit, simplify the graph so
exporter shape chains fold, then convert it to a TVM Relax module.

Every failure is a :class:`~convpipe.errors.ConvpipeError` naming the file, node, input or axis at fault.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, shape_inference

from convpipe.errors import ConvpipeError
from convpipe.runtime.module import IOInfo

from .convert import convpipe_converters

#: ONNX element types convpipe can feed and return (ONNX TensorProto enum -> NumPy dtype name).
_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT16: "int16",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT64: "uint64",
    onnx.TensorProto.UINT32: "uint32",
    onnx.TensorProto.UINT16: "uint16",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.BOOL: "bool",
}


@dataclass
class ImportedModel:
    """A checked, shape-pinned, simplified ONNX model ready for :func:`to_relax`."""

    model: onnx.ModelProto
    inputs: list[IOInfo]
    outputs: list[IOInfo]
    path: str


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` -> ``(1, 3, 224, 224)``.

    Raises:
        ConvpipeError: not a comma-separated list of positive integers.
    """
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise ConvpipeError(f"bad shape {text!r}: expected comma-separated integers such as 1,3,224,224") from None
    if not dims or any(d < 1 for d in dims):
        raise ConvpipeError(f"bad shape {text!r}: every dim must be a positive integer")
    return dims


def parse_input_shapes(specs: list[str] | None) -> dict[str, tuple[int, ...]]:
    """``["input=1,3,224,224", ...]`` -> ``{"input": (1, 3, 224, 224)}``; a bare shape keys the first input as ``""``."""
    out: dict[str, tuple[int, ...]] = {}
    for spec in specs or []:
        name, sep, dims = spec.rpartition("=")
        out[name if sep else ""] = parse_shape(dims)
    return out


def load_onnx(path: str) -> onnx.ModelProto:
    """Read and check an ONNX file (``onnx.checker``).

    Raises:
        ConvpipeError: the file is missing, unreadable, not ONNX, or fails the checker.
    """
    if not os.path.exists(path):
        raise ConvpipeError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ConvpipeError(f"{path}: is a directory, expected an .onnx file")
    try:
        model = onnx.load(path)
    except Exception as e:  # protobuf DecodeError and friends
        raise ConvpipeError(f"{path}: not a valid ONNX model (corrupt or truncated?): {e}") from None
    if not model.graph.node:
        raise ConvpipeError(f"{path}: not a valid ONNX model: the graph has no nodes")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
        raise ConvpipeError(f"{path}: ONNX checker rejected the model: {first}") from None
    return model


def _by_input_name(path: str, inputs, given: dict, option: str = "--input-shape") -> dict:
    """``given`` (``option``'s values by input name; ``""``: a bare shape) keyed by graph input name: a bare shape
    goes to the only input. ``inputs``: the graph inputs (``.name``) or their names.

    Raises:
        ConvpipeError: a bare shape for a model with several inputs, or a name that is not a graph input.
    """
    names = [i if isinstance(i, str) else i.name for i in inputs]
    given = dict(given)
    if "" in given:
        if len(names) != 1:
            raise ConvpipeError(f"{path}: a bare {option}{' shape' if option == '--buckets' else ''} needs a model "
                                f"with one input; inputs are {names}")
        given[names[0]] = given.pop("")
    for name in given:
        if name not in names:
            raise ConvpipeError(f"{path}: {option} names {name!r}, which is not a graph input; inputs are {names}")
    return given


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _elem_dtype(vi: onnx.ValueInfoProto, where: str) -> str:
    et = vi.type.tensor_type.elem_type
    if et not in _ONNX_DTYPES:
        raise ConvpipeError(f"{where} {vi.name!r}: unsupported element type {onnx.TensorProto.DataType.Name(et)}")
    return _ONNX_DTYPES[et]


def pin_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], path: str = "model") -> None:
    """Fix every graph input's dims in place: from ``shapes`` where given, else the model's static dims.

    Raises:
        ConvpipeError: a name in ``shapes`` is not a graph input, a rank or static dim disagrees, or a dynamic
            dim is left unpinned (the message names the input and axis and how to pin it).
    """
    inputs = _graph_inputs(model)
    shapes = _by_input_name(path, inputs, shapes)
    for vi in inputs:
        dims = vi.type.tensor_type.shape.dim
        given = shapes.get(vi.name)
        if given is not None and len(given) != len(dims):
            raise ConvpipeError(
                f"{path}: input {vi.name!r} has rank {len(dims)}, --input-shape gives {len(given)} dims {given}"
            )
        for axis, d in enumerate(dims):
            if given is not None:
                if d.HasField("dim_value") and d.dim_value != given[axis]:
                    raise ConvpipeError(
                        f"{path}: input {vi.name!r} axis {axis} is static {d.dim_value}, --input-shape gives {given[axis]}"
                    )
                d.Clear()
                d.dim_value = given[axis]
            elif d.HasField("dim_value") and d.dim_value == 0:
                raise ConvpipeError(f"{path}: input {vi.name!r} axis {axis} has size 0: convpipe does not compile "
                                    "zero-size tensors")
            elif not d.HasField("dim_value") or d.dim_value < 1:
                sym = d.dim_param or "?"
                raise ConvpipeError(
                    f"{path}: input {vi.name!r} axis {axis} is dynamic ({sym!r}); pin it with "
                    f"--input-shape {vi.name}=D0,D1,..."
                )


def make_conv_pads_explicit(model: onnx.ModelProto) -> None:
    """Replace ``auto_pad`` SAME_UPPER / SAME_LOWER / VALID on 2-D Conv nodes by explicit ``pads`` (ONNX Conv
    spec: total pad = max(0, (ceil(in / s) - 1) * s + (k - 1) * d + 1 - in); SAME_UPPER puts the odd pixel at the
    end, SAME_LOWER at the beginning). Needs inferred shapes; leaves nodes it cannot resolve untouched."""
    shapes = _static_shapes(model)
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        attrs = {a.name: a for a in node.attribute}
        if "auto_pad" not in attrs:
            continue
        mode = attrs["auto_pad"].s.decode()
        x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
        if mode == "NOTSET" or x is None or w is None or len(x) != 4:
            continue
        kernel = list(attrs["kernel_shape"].ints) if "kernel_shape" in attrs else w[2:]
        strides = list(attrs["strides"].ints) if "strides" in attrs else [1, 1]
        dil = list(attrs["dilations"].ints) if "dilations" in attrs else [1, 1]
        if mode == "VALID":
            pads = [0, 0, 0, 0]
        else:
            begin, end = [], []
            for i in range(2):
                total = max(0, (-(-x[2 + i] // strides[i]) - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - x[2 + i])
                small, big = total // 2, total - total // 2
                begin.append(small if mode == "SAME_UPPER" else big)
                end.append(big if mode == "SAME_UPPER" else small)
            pads = begin + end
        keep = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend(keep + [helper.make_attribute("pads", pads)])


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """``{tensor name: static shape}`` from the graph's inputs, outputs, inferred value_info and initializers."""
    shapes: dict[str, list[int]] = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def make_conv_transpose_pads_explicit(model: onnx.ModelProto, path: str = "model") -> None:
    """Replace ``output_shape`` and ``auto_pad`` SAME_UPPER / SAME_LOWER / VALID on 2-D ConvTranspose nodes by
    explicit ``pads`` and ``output_padding``, in place. TVM's converter ignores ``output_shape`` (the output came
    out 9x7 where the model says 10x8) and clamps a negative total padding to 0.

    ONNX ConvTranspose spec, per spatial axis: natural = s * (in - 1) + output_padding + (k - 1) * d + 1, target =
    ``output_shape`` (or in * s for SAME_*), total = natural - target; SAME_UPPER puts the odd pixel of the total
    at the end (begin = total // 2), NOTSET and SAME_LOWER at the beginning. A negative total (the target is
    larger than the natural size) becomes extra ``output_padding`` (zeros + bias at the high end) when
    ``output_shape`` asked for it, and no padding for SAME_* alone (the output keeps its natural size). All
    verified against onnxruntime 1.23 (tests/test_activations.py). Needs inferred shapes; leaves nodes it cannot
    resolve untouched.

    Raises:
        ConvpipeError: ``output_shape`` has the wrong length (names the node).
    """
    shapes = _static_shapes(model)
    for i, node in enumerate(model.graph.node):
        if node.op_type != "ConvTranspose":
            continue
        attrs = {a.name: a for a in node.attribute}
        mode = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
        if "output_shape" not in attrs and mode == "NOTSET":
            continue
        x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
        if x is None or w is None or len(x) != 4:
            continue
        kernel = list(attrs["kernel_shape"].ints) if "kernel_shape" in attrs else w[2:]
        strides = list(attrs["strides"].ints) if "strides" in attrs else [1, 1]
        dil = list(attrs["dilations"].ints) if "dilations" in attrs else [1, 1]
        adj = list(attrs["output_padding"].ints) if "output_padding" in attrs else [0, 0]
        if "output_shape" in attrs:
            target = list(attrs["output_shape"].ints)
            if len(target) != 2:  # the spatial dims only (onnxruntime refuses 4 as well)
                raise ConvpipeError(f"{path}: node {node.name or i!r} (ConvTranspose): output_shape "
                                    f"{list(attrs['output_shape'].ints)} should give the 2 spatial dims")
        elif mode == "VALID":
            target = None
        else:
            target = [x[2 + a] * strides[a] for a in range(2)]
        begin, end, out_pad = [0, 0], [0, 0], list(adj)
        if target is not None:
            for a in range(2):
                natural = strides[a] * (x[2 + a] - 1) + adj[a] + (kernel[a] - 1) * dil[a] + 1
                total = natural - target[a]
                if total < 0 and "output_shape" not in attrs:  # SAME_* alone: the natural size (onnxruntime)
                    continue
                if total < 0:
                    out_pad[a] = adj[a] - total
                    continue
                begin[a] = total // 2 if mode == "SAME_UPPER" else total - total // 2
                end[a] = total - begin[a]
        keep = [a for a in node.attribute if a.name not in ("auto_pad", "pads", "output_shape", "output_padding")]
        del node.attribute[:]
        node.attribute.extend(keep + [helper.make_attribute("pads", begin + end),
                                      helper.make_attribute("output_padding", out_pad)])


def _check_inference_graph(model: onnx.ModelProto, path: str) -> None:
    """Refuse nodes in training mode, which TVM's converters would silently run in inference mode (a wrong
    answer): BatchNormalization with ``training_mode=1`` (batch statistics) and Dropout whose ``training_mode``
    input is not a constant false.

    Raises:
        ConvpipeError: names the file, the node and what to change.
    """
    inits = {t.name: t for t in model.graph.initializer}
    consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant" and n.output}
    for i, node in enumerate(model.graph.node):
        where = f"{path}: node {node.name or i!r} ({node.op_type})"
        if node.op_type == "BatchNormalization":
            if any(a.name == "training_mode" and a.i != 0 for a in node.attribute):
                raise ConvpipeError(f"{where} has training_mode=1 (normalises with batch statistics): convpipe "
                                    "compiles inference graphs; export the model in eval mode")
        elif node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
            name = node.input[2]
            if name in inits:
                value = bool(onnx.numpy_helper.to_array(inits[name]).any())
            elif name in consts:
                value = bool(any(onnx.numpy_helper.to_array(a.t).any() for a in consts[name].attribute
                                 if a.name == "value"))
            else:
                raise ConvpipeError(f"{where}: training_mode comes from {name!r}, which is not a constant: convpipe "
                                    "compiles inference graphs")
            if value:
                raise ConvpipeError(f"{where} has training_mode=true (random dropout): convpipe compiles inference "
                                    "graphs; export the model in eval mode")


def _check_supported_ops(model: onnx.ModelProto, path: str) -> None:
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    from .convert import overrides

    supported = {**_get_convert_map(), **overrides()}
    for i, node in enumerate(model.graph.node):
        if node.domain not in ("", "ai.onnx"):
            raise ConvpipeError(
                f"{path}: node {node.name or i!r} uses op {node.domain}::{node.op_type}, a custom domain TVM cannot import"
            )
        if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
            raise ConvpipeError(f"{path}: node {node.name or i!r} (MaxPool) uses its second output, Indices "
                                f"({node.output[1]!r}), which TVM's ONNX importer does not produce")
        if node.op_type not in supported:
            raise ConvpipeError(
                f"{path}: node {node.name or i!r} uses op {node.op_type!r}, which TVM's ONNX importer does not support"
            )


def _infer(model: onnx.ModelProto, path: str) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
        raise ConvpipeError(f"{path}: ONNX shape inference failed: {msg}") from None


def _static_info(vis, where: str, path: str) -> list[IOInfo]:
    out = []
    for vi in vis:
        dims = vi.type.tensor_type.shape.dim
        if not all(d.HasField("dim_value") for d in dims):
            raise ConvpipeError(f"{path}: {where} {vi.name!r} has a shape that does not resolve to static dims")
        if any(d.dim_value == 0 for d in dims):
            raise ConvpipeError(f"{path}: {where} {vi.name!r} has shape {[d.dim_value for d in dims]}: convpipe "
                                "does not compile zero-size tensors")
        out.append(IOInfo(vi.name, tuple(d.dim_value for d in dims), _elem_dtype(vi, where)))
    return out


_ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint64": 8,
             "uint32": 4, "uint16": 2, "uint8": 1, "bool": 1}


def machine_memory() -> int:
    """This machine's physical memory in bytes (``sysconf``); 0 where it cannot be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def format_bytes(n: float) -> str:
    """``3.2e9`` -> ``"3.0 GiB"`` (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def check_tensor_sizes(model: onnx.ModelProto, path: str, limit: int | None = None) -> None:
    """Refuse a model one of whose tensors with a known static shape (graph inputs, outputs, inferred
    intermediates, initializers) needs more than ``limit`` bytes (default: :func:`machine_memory`): such a model
    cannot run here, and finding out at run time costs a traceback from the allocator.

    Raises:
        ConvpipeError: names the file, the tensor, its shape and dtype, its size and the limit.
    """
    limit = limit if limit is not None else machine_memory()
    if limit <= 0:
        return
    kinds = [("input", model.graph.input), ("output", model.graph.output), ("tensor", model.graph.value_info)]
    for kind, vis in kinds:
        for vi in vis:
            tt = vi.type.tensor_type
            dims = tt.shape.dim
            if not dims or not all(d.HasField("dim_value") for d in dims):
                continue
            shape = [d.dim_value for d in dims]
            nbytes = int(np.prod(shape, dtype=object)) * _ITEMSIZE.get(_ONNX_DTYPES.get(tt.elem_type, ""), 4)
            if nbytes > limit:
                raise ConvpipeError(
                    f"{path}: {kind} {vi.name!r} of shape {shape} needs {format_bytes(nbytes)}, over the limit of "
                    f"{format_bytes(limit)} (this machine's memory unless --max-memory says otherwise): pin smaller "
                    "shapes with --input-shape, or raise the limit with --max-memory"
                )


def _check_conv_dtypes(model: onnx.ModelProto, path: str) -> None:
    """Refuse a Conv node whose data or weight is not float32, naming the file and the node."""
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    for i, node in enumerate(model.graph.node):
        if node.op_type != "Conv":
            continue
        for role, name in zip(("data", "weight", "bias"), node.input):
            et = types.get(name)
            if et is not None and et != onnx.TensorProto.FLOAT:
                raise ConvpipeError(
                    f"{path}: node {node.name or i!r} (Conv) has a {onnx.TensorProto.DataType.Name(et).lower()} "
                    f"{role} {name!r}: convpipe compiles float32 convolutions only (convert the model to float32)"
                )


def import_onnx(path: str, input_shapes: dict[str, tuple[int, ...]] | None = None, simplify: bool = True,
                max_memory: int | None = None) -> ImportedModel:
    """Load, check, pin, infer, make Conv pads explicit and simplify an ONNX model.

    Args:
        path: the ``.onnx`` file.
        input_shapes: dims to pin, by input name (``""`` for the only input).
        simplify: run onnxslim (constant folding, shape-chain folding, dead-node removal).
        max_memory: bytes a single tensor may take (see :func:`check_tensor_sizes`).

    Raises:
        ConvpipeError: see :func:`load_onnx`, :func:`pin_input_shapes`, :func:`check_tensor_sizes`; an op TVM
            cannot import (names the op and node); a Conv that is not float32 (names the node); shapes that do
            not resolve statically.
    """
    model = load_onnx(path)
    pin_input_shapes(model, input_shapes or {}, path)
    check_tensor_sizes(model, path, max_memory)  # before inference and folding, which would allocate
    model = _infer(model, path)
    check_tensor_sizes(model, path, max_memory)
    if simplify:
        import onnxslim

        # onnxslim's output is checked: after an earlier failing run it has returned unsorted graphs; its Conv +
        # BatchNorm fusion (0.1.98) drops a conv whose output also feeds another node (the graph then reads a
        # tensor nothing produces), so a failed slim is retried without graph fusion; and its shape inference
        # writes wrong output shapes for ReduceSum with empty `axes` (reduce all) and for Split with
        # `num_outputs` on an uneven length, which ONNX's strict inference then refuses
        import logging

        errors = []
        for options in ({}, {"skip_optimizations": ["graph_fusion"]}):
            try:
                slimmed = onnxslim.slim(model, **options)
                onnx.checker.check_model(slimmed)
                model = _infer(slimmed, path)
                break
            except Exception as e:  # noqa: BLE001 -- retried, or the unsimplified graph is kept
                errors.append(" ".join(str(e).split())[:300])
        else:
            logging.getLogger("convpipe.importer").warning(f"{path}: onnxslim failed ({errors[-1]}); importing the "
                                                           "graph unsimplified")
    if not _graph_inputs(model):
        raise ConvpipeError(f"{path}: the model has no graph inputs (its outputs are constants): nothing to compile")
    make_conv_pads_explicit(model)
    make_conv_transpose_pads_explicit(model, path)
    _check_supported_ops(model, path)
    _check_inference_graph(model, path)
    _check_conv_dtypes(model, path)
    inputs = _static_info(_graph_inputs(model), "input", path)
    outputs = _static_info(model.graph.output, "output", path)
    return ImportedModel(model, inputs, outputs, path)


_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
#: Names a graph input must not keep even though they are identifiers: C/C++ keywords (the CUDA C TVM writes is
#: C++), the CUDA built-in variables and vector/scalar type names of TVM's CUDA preamble, and names of TVM's
#: generated code (``main``, the ``T_``/``v_``/``p_`` prefixes checked separately).
_RESERVED = frozenset("""
    alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t char16_t char32_t class
    compl concept const consteval constexpr constinit const_cast continue co_await co_return co_yield decltype
    default delete do double dynamic_cast else enum explicit export extern false float for friend goto if inline
    int long mutable namespace new noexcept not not_eq nullptr operator or or_eq private protected public register
    reinterpret_cast requires restrict return short signed sizeof static static_assert static_cast struct switch
    template this thread_local throw true try typedef typeid typename union unsigned using virtual void volatile
    wchar_t while xor xor_eq threadIdx blockIdx blockDim gridDim warpSize half nv_bfloat16 uint ushort uchar
    int8_t int16_t int32_t int64_t uint8_t uint16_t uint32_t uint64_t size_t std main NULL
""".split())


def _needs_rename(name: str) -> bool:
    return (not _IDENT.fullmatch(name) or name in _RESERVED or name.startswith(("T_", "v_", "p_"))
            or len(name) > 64)


def identifier_names(model: onnx.ModelProto) -> dict[str, str]:
    """``{ONNX input name: identifier}`` for every graph input whose name cannot safely name a variable in the code
    TVM generates: anything but ``[A-Za-z][A-Za-z0-9_]*`` (``gpu_0/data_0``, spaces, ``:``, ``.``, ``-``, a
    leading digit, non-ASCII), C/C++ keywords and CUDA built-ins (:data:`_RESERVED`), and TVM's own prefixes.
    The identifier is ``in{i}_`` plus the name's ASCII letters/digits/underscores (at most 40), made unique
    against every tensor name in the graph.

    Why: TVM's ONNX frontend names each Relax parameter after its graph input and only replaces ``.`` and
    prefixes a name that does not start with a letter (``relax/frontend/onnx/onnx_frontend.py``:
    ``_sanitize_name``); FuseTIR carries the name into the fused kernel's parameters, and the CUDA codegen writes
    it verbatim (``float* __restrict__ gpu_0/data_0``: nvcc ``expected a ")"``)."""
    taken = {vi.name for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info)}
    taken |= {t.name for t in model.graph.initializer}
    taken |= {o for n in model.graph.node for o in n.output}
    mapping: dict[str, str] = {}
    for i, vi in enumerate(_graph_inputs(model)):
        if not _needs_rename(vi.name):
            continue
        cleaned = re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9_]", "_", vi.name)).strip("_")[:40]
        base = f"in{i}_{cleaned}" if cleaned else f"in{i}"
        new, k = base, 1
        while new in taken:
            new, k = f"{base}_{k}", k + 1
        taken.add(new)
        mapping[vi.name] = new
    return mapping


def _rename_values(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    """Rename tensors in ``graph`` in place: its inputs, outputs, value_info and every node input (subgraphs of
    If/Loop/Scan included, which may read an outer tensor by name)."""
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.name in mapping:
            vi.name = mapping[vi.name]
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in mapping:
                node.input[k] = mapping[name]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename_values(sub, mapping)


def with_identifier_names(imported: ImportedModel) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of the model whose graph inputs are renamed by :func:`identifier_names`, and that mapping (ONNX name
    -> identifier; empty when every name is safe, and the model is then not copied). Only the code TVM generates
    sees the identifiers: the manifest, ``run({name: x})`` and error messages keep the ONNX names, and the VM's
    ``main`` takes its inputs positionally in graph-input order (:mod:`convpipe.runtime.module`), which renaming
    does not change."""
    mapping = identifier_names(imported.model)
    if not mapping:
        return imported.model, mapping
    model = onnx.ModelProto()
    model.CopyFrom(imported.model)
    _rename_values(model.graph, mapping)
    return model, mapping


def to_relax(imported: ImportedModel):
    """Convert to a Relax ``IRModule`` (weights become constants, so the compiler can pre-pack them). Graph inputs
    whose names are not safe identifiers reach TVM renamed (:func:`with_identifier_names`).

    Raises:
        ConvpipeError: TVM's ONNX frontend failed (the message names the op it was converting).
    """
    from tvm.relax.frontend.onnx import from_onnx

    model, mapping = with_identifier_names(imported)
    shape_dict = {mapping.get(i.name, i.name): list(i.shape) for i in imported.inputs}
    dtype_dict = {mapping.get(i.name, i.name): i.dtype for i in imported.inputs}
    try:
        with convpipe_converters():
            mod = from_onnx(model, shape_dict=shape_dict, dtype_dict=dtype_dict, keep_params_in_input=False)
    except Exception as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
        raise ConvpipeError(f"{imported.path}: TVM's ONNX frontend failed: {msg}") from None
    _reconcile_output_shapes(mod, imported)
    return mod


def _reconcile_output_shapes(mod, imported: ImportedModel) -> None:
    """Make ``imported.outputs`` the shapes the converted graph returns where ONNX shape inference says otherwise,
    with one warning per output naming both. The known case: MaxPool/AveragePool with ``ceil_mode=1`` whose last
    window would start in the end padding -- ONNX's inference counts it (W 9, k 2, s 2, p 1: 6), onnxruntime,
    PyTorch and TVM drop it (5) (verified on onnxruntime 1.23). ``verify`` then compares the artifact with
    onnxruntime, shapes included.

    Raises:
        ConvpipeError: the converted graph returns a different number of outputs, or a non-static shape.
    """
    import logging

    ty = mod["main"].body.ty
    fields = list(ty.fields) if hasattr(ty, "fields") else [ty]
    if len(fields) != len(imported.outputs):
        raise ConvpipeError(f"{imported.path}: the converted graph returns {len(fields)} outputs, the model declares "
                            f"{len(imported.outputs)}")
    for k, (info, field) in enumerate(zip(imported.outputs, fields)):
        shape = getattr(field, "shape", None)
        try:
            dims = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise ConvpipeError(f"{imported.path}: output {info.name!r} has no static shape after conversion "
                                f"({shape})") from None
        if dims != tuple(info.shape):
            logging.getLogger("convpipe.importer").warning(
                f"{imported.path}: output {info.name!r}: ONNX shape inference gives {list(info.shape)}, the graph "
                f"computes {list(dims)} (as onnxruntime does for ceil_mode pooling); the artifact returns the latter")
            imported.outputs[k] = IOInfo(info.name, dims, info.dtype)


def random_inputs(infos: list[IOInfo], seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs per dtype: floats ~ N(0, 1), ints in [0, 10), bools at random."""
    rng = np.random.default_rng(seed)
    out = {}
    for info in infos:
        if info.dtype.startswith("float"):
            out[info.name] = rng.standard_normal(info.shape).astype(info.dtype)
        elif info.dtype == "bool":
            out[info.name] = rng.integers(0, 2, info.shape).astype(bool)
        else:
            out[info.name] = rng.integers(0, 10, info.shape).astype(info.dtype)
    return out


# ---- variable input sizes (issue 16) ---------------------------------------------------------------------------
def parse_dim(text: str, spec: str) -> int | tuple[int, int]:
    """``"224"`` -> ``224``; ``"32..1024"`` -> ``(32, 1024)`` (inclusive; ``LO..LO`` is the exact size ``LO``).

    Raises:
        ConvpipeError: not a positive integer or ``LO..HI`` with ``1 <= LO <= HI`` (names ``spec``).
    """
    lo_s, sep, hi_s = text.strip().partition("..")
    try:
        lo = int(lo_s)
        hi = int(hi_s) if sep else lo
    except ValueError:
        raise ConvpipeError(f"bad shape {spec!r}: dim {text.strip()!r} is neither an integer nor a range LO..HI "
                            "such as 32..1024") from None
    if lo < 1 or hi < lo:
        raise ConvpipeError(f"bad shape {spec!r}: dim {text.strip()!r}: expected 1 <= LO <= HI")
    return (lo, hi) if hi != lo else lo


def parse_shape_spec(text: str) -> tuple:
    """``"1,3,32..1024,32..1024"`` -> ``(1, 3, (32, 1024), (32, 1024))``: exact dims and inclusive ranges.

    Raises:
        ConvpipeError: an empty shape, or a dim that is neither a positive integer nor ``LO..HI`` (see
            :func:`parse_dim`).
    """
    parts = [d for d in text.split(",") if d.strip()]
    if not parts:
        raise ConvpipeError(f"bad shape {text!r}: expected comma-separated dims such as 1,3,32..1024,32..1024")
    return tuple(parse_dim(d, text) for d in parts)


def parse_input_specs(specs: list[str] | None) -> dict[str, tuple]:
    """``["x=1,3,32..1024,32..1024", ...]`` -> ``{"x": (1, 3, (32, 1024), (32, 1024))}`` (``--input-shape`` with
    ranges); a bare shape keys the first input as ``""``. Exact specs give the same as :func:`parse_input_shapes`."""
    out: dict[str, tuple] = {}
    for spec in specs or []:
        name, sep, dims = spec.rpartition("=")
        out[name if sep else ""] = parse_shape_spec(dims) if ".." in dims else parse_shape(dims)
    return out


def parse_buckets(specs: list[str] | None) -> list[dict[str, tuple[int, ...]]]:
    """``--buckets`` values -> one ``{input name: exact shape}`` per bucket. A value names every input it fixes,
    ``;``-separated (``"x=1,3,224,224"``, ``"a=1,3,64,64;b=1,8"``); a bare shape keys the first input as ``""``.

    Raises:
        ConvpipeError: a dim that is a range or not a positive integer (buckets are exact shapes), an input named
            twice in one bucket.
    """
    buckets = []
    for spec in specs or []:
        bucket: dict[str, tuple[int, ...]] = {}
        for part in [p for p in spec.split(";") if p.strip()]:
            name, sep, dims = part.strip().rpartition("=")
            key = name if sep else ""
            if key in bucket:
                raise ConvpipeError(f"--buckets {spec!r}: input {key!r} given twice")
            shape = parse_shape_spec(dims)
            if any(isinstance(d, tuple) for d in shape):
                raise ConvpipeError(f"--buckets {spec!r}: a bucket is an exact shape; ranges go in --input-shape")
            bucket[key] = shape
        if not bucket:
            raise ConvpipeError(f"--buckets {spec!r}: expected NAME=D0,D1,...")
        buckets.append(bucket)
    return buckets


def has_ranges(specs: dict[str, tuple] | None) -> bool:
    """Whether an input spec (:func:`parse_input_specs`) holds a range ``(lo, hi)``."""
    return any(isinstance(d, (tuple, list)) for dims in (specs or {}).values() for d in dims)


def _sym_name(name: str, axis: int, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_]", "_", f"{name}_d{axis}")
    base = base if base[:1].isalpha() else "d_" + base
    new, k = base, 1
    while new in taken:
        new, k = f"{base}_{k}", k + 1
    taken.add(new)
    return new


def resolve_input_dims(model: onnx.ModelProto, specs: dict[str, tuple], path: str = "model") -> list[dict]:
    """Each graph input's accepted dims: ``[{"name", "dims": [int | [lo, hi]], "dtype"}]`` (the manifest's
    ``dynamic.inputs``), from ``specs`` (:func:`parse_input_specs`) where given, else the model's static dims.

    Raises:
        ConvpipeError: a name that is not a graph input, a rank that disagrees, a range or size given for an axis
            the model has static with another size, a dynamic axis given neither a size nor a range (names the
            input and axis and how to give one).
    """
    inputs = _graph_inputs(model)
    specs = _by_input_name(path, inputs, specs)
    out = []
    for vi in inputs:
        dims = vi.type.tensor_type.shape.dim
        given = specs.get(vi.name)
        if given is not None and len(given) != len(dims):
            raise ConvpipeError(f"{path}: input {vi.name!r} has rank {len(dims)}, --input-shape gives {len(given)} "
                                f"dims {_spec_text(given)}")
        accepted = []
        for axis, d in enumerate(dims):
            static = d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            if given is not None:
                g = given[axis]
                if static is not None and g != static:
                    raise ConvpipeError(f"{path}: input {vi.name!r} axis {axis} is static {static}, --input-shape "
                                        f"gives {_dim_text(g)}")
                accepted.append(list(g) if isinstance(g, tuple) else g)
            elif static is not None:
                accepted.append(static)
            else:
                raise ConvpipeError(f"{path}: input {vi.name!r} axis {axis} is dynamic ({d.dim_param or '?'!r}); give "
                                    f"it a size or a range LO..HI: --input-shape {vi.name}=D0,D1,... (e.g. 32..1024)")
        out.append({"name": vi.name, "dims": accepted, "dtype": _elem_dtype(vi, "input")})
    return out


def _dim_text(d) -> str:
    return f"{d[0]}..{d[1]}" if isinstance(d, (tuple, list)) else str(d)


def _spec_text(dims) -> str:
    return ",".join(_dim_text(d) for d in dims)


def bucket_shapes(dims: list[dict], bucket: dict[str, tuple[int, ...]], path: str = "model") -> dict[str, tuple]:
    """A bucket's exact shape for every input: those ``bucket`` names, and the exact dims of the others.

    Raises:
        ConvpipeError: the bucket names an input the model lacks, has the wrong rank, or a size outside the range
            (or unequal to the exact size) the input accepts on some axis; an input with a range is not named.
    """
    bucket = _by_input_name(path, [d["name"] for d in dims], bucket, "--buckets")
    out = {}
    for inp in dims:
        accepted = inp["dims"]
        shape = bucket.get(inp["name"])
        if shape is None:
            if any(isinstance(d, list) for d in accepted):
                raise ConvpipeError(f"{path}: bucket {_bucket_text(bucket)} does not give input {inp['name']!r}, "
                                    f"whose shape {_spec_text(accepted)} has ranges")
            out[inp["name"]] = tuple(accepted)
            continue
        if len(shape) != len(accepted):
            raise ConvpipeError(f"{path}: bucket input {inp['name']!r}: expected rank {len(accepted)} "
                                f"({_spec_text(accepted)}), got {len(shape)} dims {list(shape)}")
        for axis, (a, s) in enumerate(zip(accepted, shape)):
            ok = a[0] <= s <= a[1] if isinstance(a, list) else a == s
            if not ok:
                raise ConvpipeError(f"{path}: bucket input {inp['name']!r} axis {axis}: expected "
                                    f"{'a size in ' if isinstance(a, list) else ''}{_dim_text(a)}, got {s}")
        out[inp["name"]] = tuple(shape)
    return out


def _bucket_text(bucket: dict) -> str:
    return ";".join(f"{k}={','.join(map(str, v))}" for k, v in bucket.items())


@dataclass
class GenericModel:
    """A checked, simplified ONNX model whose ranged input dims stay symbolic (``dim_param``), for
    :func:`to_relax_generic`. ``dims``: :func:`resolve_input_dims`'s list; ``outputs``: ``IOInfo`` whose shape
    is filled in after conversion (:func:`to_relax_generic`: an int per static dim, the symbolic expression's text
    per other dim)."""

    model: onnx.ModelProto
    dims: list[dict]
    outputs: list
    path: str


def import_onnx_generic(path: str, specs: dict[str, tuple], simplify: bool = True,
                        max_memory: int | None = None) -> GenericModel:
    """Load and check a model, pin its exact dims and leave each ranged dim symbolic (its ONNX ``dim_param``, or a
    new name ``<input>_d<axis>``), then the steps of :func:`import_onnx` that work on symbolic shapes: ONNX shape
    inference, onnxslim, explicit Conv/ConvTranspose pads (nodes whose shapes stay symbolic keep their
    ``auto_pad``: TVM's converter resolves it), the op, training-mode and dtype checks. Tensor sizes are checked
    with every range at its upper end.

    Raises:
        ConvpipeError: see :func:`resolve_input_dims`, :func:`import_onnx`.
    """
    model = load_onnx(path)
    dims = resolve_input_dims(model, specs, path)
    high = onnx.ModelProto()
    high.CopyFrom(model)
    pin_input_shapes(high, {d["name"]: tuple(x[1] if isinstance(x, list) else x for x in d["dims"]) for d in dims},
                     path)
    check_tensor_sizes(_infer(high, path), path, max_memory)
    del high
    taken = {d.dim_param for vi in _graph_inputs(model) for d in vi.type.tensor_type.shape.dim if d.dim_param}
    by_name = {d["name"]: d["dims"] for d in dims}
    for vi in _graph_inputs(model):
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            want = by_name[vi.name][axis]
            if isinstance(want, list):
                name = d.dim_param if d.dim_param and _IDENT.fullmatch(d.dim_param) else _sym_name(vi.name, axis, taken)
                d.Clear()
                d.dim_param = name
            else:
                d.Clear()
                d.dim_value = want
    model = _infer(model, path)
    if simplify:
        model = _slim(model, path)
    make_conv_pads_explicit(model)
    make_conv_transpose_pads_explicit(model, path)
    _check_supported_ops(model, path)
    _check_inference_graph(model, path)
    _check_conv_dtypes(model, path)
    outputs = [IOInfo(vi.name, (), _elem_dtype(vi, "output")) for vi in model.graph.output]
    return GenericModel(model, dims, outputs, path)


def _slim(model: onnx.ModelProto, path: str) -> onnx.ModelProto:
    """onnxslim with the checks and retry of :func:`import_onnx` (the unsimplified graph when it fails)."""
    import logging

    import onnxslim

    errors = []
    for options in ({}, {"skip_optimizations": ["graph_fusion"]}):
        try:
            slimmed = onnxslim.slim(model, **options)
            onnx.checker.check_model(slimmed)
            return _infer(slimmed, path)
        except Exception as e:  # noqa: BLE001 -- retried, or the unsimplified graph is kept
            errors.append(" ".join(str(e).split())[:300])
    logging.getLogger("convpipe.importer").warning(f"{path}: onnxslim failed ({errors[-1]}); importing the graph "
                                                   "unsimplified")
    return model


def _generic_converters(stepped_aside: list[str]):
    """The converter table for a symbolic-shape import: convpipe's, except that a Resize/Upsample whose input
    shape is not static (convpipe's exact planner needs it) uses TVM's own converter; each such node's name is
    appended to ``stepped_aside``."""
    from tvm.relax.frontend.onnx import onnx_frontend as fe

    from .convert import overrides

    table = overrides()
    for op in ("Resize", "Upsample"):
        ours, base = table[op], getattr(fe, op)

        def get_converter(cls, opset, ours=ours, base=base, op=op):
            mine, theirs = ours.get_converter(opset), base.get_converter(opset)

            def convert(bb, inputs, attr, params):
                try:
                    [int(d) for d in inputs[0].ty.shape]
                except (TypeError, ValueError, AttributeError):
                    stepped_aside.append(f"{op} {attr.get('tvm_custom', {}).get('name', '')}".strip())
                    return theirs(bb, inputs, attr, params)
                return mine(bb, inputs, attr, params)

            return convert

        table[op] = type(f"Generic{op}", (ours,), {"get_converter": classmethod(get_converter)})
    return table


def sym_text(expr) -> str:
    """A symbolic dim as text for people: TVM's script form without its ``T.int64(...)`` wrappers
    (``"(h - 1) // 2 + 1"``)."""
    return re.sub(r"T\.int(?:32|64)\((-?\d+)\)", r"\1", str(expr))


def to_relax_generic(gm: GenericModel, resize_fallbacks: list[str] | None = None):
    """Convert a :class:`GenericModel` to a Relax ``IRModule`` whose ranged input dims are ``tirx`` variables
    (TVM's frontend makes one per ``dim_param``). Fills ``gm.outputs`` shapes (an int per static dim, the
    expression's text, e.g. ``"(h - 1) // 2 + 1"``, per symbolic dim). Resize/Upsample nodes on symbolic shapes
    use TVM's converter (their names appended to ``resize_fallbacks``).

    Raises:
        ConvpipeError: TVM's ONNX frontend failed, or the graph returns a different number of outputs.
    """
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.tirx import IntImm

    holder = ImportedModel(gm.model, [], [], gm.path)
    model, mapping = with_identifier_names(holder)
    dtype_dict = {mapping.get(d["name"], d["name"]): d["dtype"] for d in gm.dims}
    stepped: list[str] = []
    try:
        with convpipe_converters(_generic_converters(stepped)):
            mod = from_onnx(model, dtype_dict=dtype_dict, keep_params_in_input=False)
    except Exception as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
        raise ConvpipeError(f"{gm.path}: TVM's ONNX frontend failed on the symbolic shapes: {msg}") from None
    if resize_fallbacks is not None:
        resize_fallbacks.extend(stepped)
    ty = mod["main"].body.ty
    fields = list(ty.fields) if hasattr(ty, "fields") else [ty]
    if len(fields) != len(gm.outputs):
        raise ConvpipeError(f"{gm.path}: the converted graph returns {len(fields)} outputs, the model declares "
                            f"{len(gm.outputs)}")
    for k, (info, field) in enumerate(zip(gm.outputs, fields)):
        shape = getattr(field, "shape", None)
        shape = getattr(shape, "values", shape)
        if shape is None or not hasattr(shape, "__iter__"):
            raise ConvpipeError(f"{gm.path}: output {info.name!r} has no known rank after conversion ({shape})")
        dims = tuple(int(d) if isinstance(d, IntImm) else sym_text(d) for d in shape)
        gm.outputs[k] = IOInfo(info.name, dims, info.dtype)
    return mod
