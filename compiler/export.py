"""``torch.nn.Module`` -> ONNX.

Uses PyTorch's TorchScript-based exporter (``dynamo=False``) first: on torch 2.13 it is fast and exports every
``nn.Conv2d`` argument (stride, padding int/tuple/'same'/'valid', dilation, groups, bias, padding_mode
zeros/reflect/replicate/circular: non-zero modes become Pad or Slice/Concat before a pad-free Conv). The result
is checked with ``onnx.checker`` and shape inference; Conv ``auto_pad`` is rewritten to explicit ``pads``.
Where it refuses a graph (timm ``halonet26t``: "Unsupported: ONNX export of operator Unfold, input size not
accessible"), the ``torch.export``-based exporter (``dynamo=True``, opset >= 18) is tried; the model's
``metadata_props`` record which one wrote it (``convpipe.exporter``).
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from convpipe.errors import ConvpipeError
from convpipe.runtime.module import quiet_native_fd

DEFAULT_OPSET = 17
#: Protocol Buffers' 2 GiB message limit: one ``.onnx`` file without external data holds less
PROTOBUF_LIMIT = 2**31


def export_onnx(
    model,
    input_shape: tuple[int, ...] | list[tuple[int, ...]],
    path: str,
    opset: int = DEFAULT_OPSET,
    input_name: str = "input",
    output_names: list[str] | None = None,
    source: str | None = None,
    dynamic_axes: dict[str, list[int]] | None = None,
) -> list[str]:
    """Export ``model`` (eval mode) for one float32 NCHW input of ``input_shape`` to ``path`` -- or, given a list of
    shapes, for that many float32 inputs (named ``input_name`` + ``0``, ``1``, ... unless there is one).

    Output names: ``output_names`` if given, else ``output`` for a single output and ``output0``, ``output1``,
    ... otherwise. ``source`` (a zoo name or ``package.module:factory``) is recorded in the model's
    ``metadata_props`` as ``convpipe.source`` with ``convpipe.input_shape``, for information only: no command
    reads code to run from a file (``convpipe bench --torch-model`` names the PyTorch model explicitly). The file
    is written atomically (:func:`.output.write_file_atomically`).

    ``dynamic_axes`` (``{input name: [axis, ...]}``): those input axes are exported as dynamic (``dim_param``
    ``<name>_<axis>``; the exporter propagates them to the outputs), for a variable-size compile (issue 16); the
    model is traced at ``input_shape``.

    Returns:
        The output names.

    Raises:
        ConvpipeError: the exporter failed (the message carries its reason), the result fails the checker,
            ``path`` cannot be written, or the weights exceed the 2 GiB protobuf limit (:data:`PROTOBUF_LIMIT`;
            torchvision ``vit_h_14`` and ``regnet_y_128gf``: external data is not supported).
    """
    import onnx
    import torch

    model = model.eval()
    shapes = list(input_shape) if input_shape and isinstance(input_shape[0], (tuple, list)) else [input_shape]
    xs = tuple(torch.zeros(tuple(s), dtype=torch.float32) for s in shapes)
    input_names = [input_name] if len(xs) == 1 else [f"{input_name}{k}" for k in range(len(xs))]
    try:
        with torch.no_grad():
            y = model(*xs)
    except Exception as e:  # the model's own forward refuses the shape (e.g. an assert on the feature-map size)
        msg = " ".join(str(e).split())[:300]
        raise ConvpipeError(f"the model's forward failed on float32 input(s) of shape "
                            f"{' and '.join(str(list(s)) for s in shapes)}: {type(e).__name__}"
                            + (f": {msg}" if msg else "") + " (try another --input-shape)") from e
    n_out = len(y) if isinstance(y, (tuple, list)) else 1
    names = output_names or (["output"] if n_out == 1 else [f"output{i}" for i in range(n_out)])
    weight_bytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    if weight_bytes >= PROTOBUF_LIMIT:
        raise ConvpipeError(f"the model holds {weight_bytes / 2**30:.2f} GiB of parameters and buffers: over the 2 GiB "
                            "a single ONNX protobuf can hold, and convpipe does not export ONNX external data yet")
    axes = {n: {a: f"{n}_{a}" for a in ax} for n, ax in (dynamic_axes or {}).items()} or None
    buf = io.BytesIO()
    exporter = "torchscript"
    try:
        with warnings.catch_warnings(), quiet_native_fd(1):  # a failure prints the whole graph (C++, to stdout)
            warnings.simplefilter("ignore")
            torch.onnx.export(model, xs, buf, input_names=input_names, output_names=names, opset_version=opset,
                              dynamic_axes=axes, dynamo=False, do_constant_folding=True)
        proto = onnx.load_from_string(buf.getvalue())
    except Exception as e:  # e.g. Unfold with sizes unknown to the tracer (timm halonet26t): try torch.export's
        first = " ".join(f"{type(e).__name__}: {e}".split())[:400]
        proto = _export_dynamo(model, xs, input_names, names, opset, axes, first)
        exporter = "dynamo"
        import logging

        logging.getLogger("convpipe.export").warning(
            f"the TorchScript ONNX exporter refused the model ({first[:200]}); exported with PyTorch's "
            f"torch.export-based exporter (dynamo=True, opset {max(opset, 18)}) instead")
    # torch exports padding='same' as auto_pad=SAME_UPPER, which onnxruntime refuses with dilation > 1:
    # write the explicit pads instead (same semantics, portable).
    from .importer import make_conv_pads_explicit

    proto = onnx.shape_inference.infer_shapes(proto)
    make_conv_pads_explicit(proto)
    props = {"convpipe.exporter": exporter}
    if source:
        props.update({"convpipe.source": source,
                      "convpipe.input_shape": ";".join(",".join(map(str, s)) for s in shapes)})
    onnx.helper.set_model_props(proto, props)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise ConvpipeError(f"exported ONNX fails the checker: {e}") from None
    from .output import write_file_atomically

    write_file_atomically(path, proto.SerializeToString())
    return names


def _export_dynamo(model, xs, input_names, output_names, opset, dynamic_axes, first_error: str):
    """PyTorch's ``torch.export``-based ONNX exporter (``dynamo=True``, onnxscript; opset >= 18), the fallback for
    graphs the TorchScript exporter refuses. Returns the ``onnx.ModelProto``.

    Raises:
        ConvpipeError: this exporter failed too (both reasons are given).
    """
    import logging

    import torch

    try:
        with warnings.catch_warnings(), quiet_native_fd(1):  # its progress lines
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            prog = torch.onnx.export(model, xs, input_names=input_names, output_names=output_names,
                                     opset_version=max(opset, 18), dynamic_axes=dynamic_axes, dynamo=True,
                                     verbose=False)
        return prog.model_proto
    except Exception as e:
        second = " ".join(f"{type(e).__name__}: {e}".split())[:400]
        raise ConvpipeError(f"torch.onnx.export failed: TorchScript exporter: {first_error}; torch.export-based "
                            f"(dynamo) exporter: {second}") from None


def torch_outputs(model, x: np.ndarray) -> list[np.ndarray]:
    """Run ``model`` eagerly on ``x`` and return its outputs as NumPy arrays (flattened tuple order)."""
    import torch

    with torch.no_grad():
        y = model(torch.from_numpy(x))
    ys = y if isinstance(y, (tuple, list)) else [y]
    return [t.numpy() for t in ys]
