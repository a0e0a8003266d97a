"""ONNX file -> artifact directory: import, lower every conv2d through our schedules, build with TVM, write the
library and manifest atomically (a failed compile leaves nothing behind)."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field

import tvm

import convpipe
from convpipe.errors import ConvpipeError
from convpipe.runtime.artifact import FORMAT, LIBRARY, MANIFEST, sha256_file
from convpipe.schedules import TargetError, TargetInfo, resolve_target

from .cuda_device import DeviceCode, cuda_build
from .importer import ImportedModel, import_onnx, to_relax
from .lower import LayerRecord, lower_conv2d
from .output import atomic_directory, check_output_dir
from .layout import Fallback, convert_layout_checked, one_line
from .pipeline import fast_math_transform, pass_config, pre_lowering, relax_pipeline


@dataclass
class CompileResult:
    """What :func:`compile_model` produced: the artifact path, its manifest and the time each phase took (s)."""

    path: str
    manifest: dict
    layers: list[LayerRecord]
    seconds: dict = field(default_factory=dict)


def prepare(imported: ImportedModel, target: TargetInfo, layout: str = "auto",
            fallbacks: list[Fallback] | None = None) -> tuple[tvm.IRModule, int]:
    """Relax module ready for conv2d lowering: imported, constants folded, converted to the network's layout
    (:func:`.layout.convert_layout_checked`). Returns ``(module, x)``, ``x`` the NCHW[x]c block (0: NCHW); the
    layout fallbacks taken are appended to ``fallbacks`` when given."""
    mod, block, taken = convert_layout_checked(pre_lowering(to_relax(imported)), target, layout)
    if fallbacks is not None:
        fallbacks.extend(taken)
    return mod, block


def build_relax(imported: ImportedModel, target: TargetInfo, schedule: str = "auto", db=None, layout: str = "auto",
                fast_math: bool = False, fallbacks: list[Fallback] | None = None):
    """Import + layout + lower + ``tvm.compile``: returns ``(executable, layer records, device code)``.

    Math is IEEE-exact unless ``fast_math`` (:mod:`.pipeline`: TVM's ``FastMathTransform`` and fast-math intrinsic
    rules; nvcc ``--use_fast_math``, :func:`convpipe.compiler.nvcc.nvcc_flags`).

    For CUDA the kernels are compiled by nvcc for ``target.isa`` during ``tvm.compile`` and embedded in the
    executable as a binary (:func:`.cuda_device.cuda_build`); the third element is that
    :class:`.cuda_device.DeviceCode` (``None`` on CPU targets).

    Fallbacks (appended to ``fallbacks`` when given, :class:`.layout.Fallback`): ops the blocked layout could
    not be carried into run on NCHW (:func:`.layout.convert_layout_checked`); when the blocked build still fails
    with a TVM error after ConvertLayout, the whole model is rebuilt in NCHW; an epilogue consumer that cannot be
    inlined into its conv kernel stays a kernel of its own (:func:`convpipe.schedules.epilogue.fuse_epilogue`).

    Raises:
        ConvpipeError: import or lowering failed (see :mod:`.importer`, :mod:`.layout`, :mod:`.lower`), or the
            CUDA device code could not be compiled.
    """
    taken: list[Fallback] = []
    mod, block = prepare(imported, target, layout, taken)
    try:
        ex, layers, code = _lower_and_compile(mod, target, schedule, db, fast_math, taken)
    except ConvpipeError:
        raise
    except Exception as e:  # a TVM error in the blocked build: the whole model in NCHW instead
        if not block:
            raise
        taken = [Fallback("layout", "model", "NCHW for the whole model",
                          f"the NCHW{block}c build failed after ConvertLayout: {one_line(e)}")]
        mod, _ = prepare(imported, target, "nchw")
        ex, layers, code = _lower_and_compile(mod, target, schedule, db, fast_math, taken)
    if fallbacks is not None:
        fallbacks.extend(taken)
    return ex, layers, code


def _lower_and_compile(mod, target: TargetInfo, schedule: str, db, fast_math: bool, taken: list[Fallback]):
    """Lower the convs of a prepared module and ``tvm.compile`` it; epilogue fallbacks go to ``taken``."""
    from convpipe.schedules.epilogue import epilogue_fallbacks

    lowered, layers = lower_conv2d(fast_math_transform(mod, fast_math), target, schedule, db)
    device = contextlib.nullcontext() if target.arch != "cuda" else cuda_build(target.isa, fast_math)
    ctx = tvm.transform.PassContext.current()  # the caller's, with the fast-math option stated
    scope = tvm.transform.PassContext(ctx.opt_level, list(ctx.required_pass), list(ctx.disabled_pass),
                                      list(ctx.instruments), {**dict(ctx.config.items()), **pass_config(fast_math)})
    with device as code, target.target, scope, epilogue_fallbacks() as epi:
        ex = tvm.compile(lowered, target=target.target, relax_pipeline=relax_pipeline(target, fast_math))
    taken.extend(Fallback(**f) for f in epi)
    return ex, layers, code


def export_library(ex, path: str, target: TargetInfo, workspace: str | None = None) -> None:
    """Write the executable as a shared library, cross-compiling for aarch64 when the target is ARM.
    ``workspace``: the directory for the intermediate object files (default: TVM makes one under ``$TMPDIR``,
    which a killed run leaves behind; ``compile_model`` passes one inside the artifact's temporary directory)."""
    if target.arch == "arm":
        from convpipe.remote import export_for_board

        export_for_board(ex, path, workspace=workspace)
    else:
        ex.export_library(path, workspace_dir=workspace)


def write_cuda_source(code: DeviceCode, directory: str) -> dict:
    """Write the CUDA C source of the embedded kernels to ``device.cu`` (for reading; the library holds the
    binary) and return the manifest's ``device_code`` entry: arch, binary format and size, and per-kernel
    ptxas figures (registers, shared memory, spills).

    Raises:
        ConvpipeError: the build produced no CUDA binary.
    """
    if not code.binaries:
        raise ConvpipeError("CUDA build produced no device code (no CUDA kernel was compiled)")
    with open(os.path.join(directory, "device.cu"), "w") as f:
        f.write("\n".join(code.sources))
    return {
        "arch": code.arch,
        "format": "cubin",
        "embedded_in": LIBRARY,
        "binary_sha256": [hashlib.sha256(b).hexdigest() for b in code.binaries],
        "binary_bytes": sum(len(b) for b in code.binaries),
        "source": "device.cu",
        "nvcc_flags": [f for f in code.flags if not f.startswith("--ptxas-options")],
        "kernels": [r.__dict__ for r in code.reports],
    }


def compile_model(
    onnx_path: str,
    output: str,
    target: str | TargetInfo = "x86",
    schedule: str = "auto",
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    db=None,
    arch: str | None = None,
    layout: str = "auto",
    max_memory: int | None = None,
    fast_math: bool = False,
) -> CompileResult:
    """Compile an ONNX model into an artifact directory (see :mod:`convpipe.runtime.artifact`).

    Args:
        onnx_path: the source ``.onnx``.
        output: artifact directory to create (replaced atomically if it exists).
        target: ``"x86"``, ``"arm"``, ``"cuda"``, a TVM target JSON, or a :class:`TargetInfo`.
        schedule: ``"auto"`` or a family (``direct``, ``im2col``, ``winograd``, ``depthwise``).
        input_shapes: dims to pin by input name.
        db: an optional tuning database (measured per-layer choices take precedence).
        arch: CUDA arch for ``target="cuda"``.
        layout: ``"auto"`` (NCHW[x]c through the network on CPU targets, :mod:`.layout`), ``"nchw"`` or
            ``"nchw{x}c"``.
        max_memory: bytes one tensor of the model (input, output or intermediate, at the pinned shapes) may
            take; default: this machine's physical memory (:func:`.importer.check_tensor_sizes`).
        fast_math: allow approximate math (``--fast-math``): TVM's fast Softmax/Exp/Erf/Tanh and, for CUDA, nvcc
            ``--use_fast_math``; off by default, where the non-conv ops match onnxruntime to ~1e-6.

    Raises:
        ConvpipeError: bad model, bad target, an output path that must not be written (see
            :func:`.output.check_output_dir`: an existing directory is replaced only when it is a convpipe
            artifact), tensors over ``max_memory``, or a failure while building; nothing is written then.
    """
    check_output_dir(output, (onnx_path,))
    times = {}
    t0 = time.perf_counter()
    try:
        tinfo = target if isinstance(target, TargetInfo) else resolve_target(target, arch)
    except TargetError as e:
        raise ConvpipeError(str(e)) from None
    imported = import_onnx(onnx_path, input_shapes, max_memory=max_memory)
    times["import"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fallbacks: list[Fallback] = []
    ex, layers, device_code = build_relax(imported, tinfo, schedule, db, layout, fast_math, fallbacks)
    block = max((layer.workload.out_block for layer in layers), default=0)
    times["build"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with atomic_directory(output, (onnx_path,)) as tmp:
        lib = os.path.join(tmp, LIBRARY)
        workspace = os.path.join(tmp, ".build")
        os.mkdir(workspace)
        export_library(ex, lib, tinfo, workspace)
        shutil.rmtree(workspace)
        manifest = {
            "format": FORMAT,
            "convpipe_version": convpipe.__version__,
            "tvm_version": tvm.__version__,
            "target": tinfo.to_json(),
            "library": {"file": LIBRARY, "sha256": sha256_file(lib)},
            "source_onnx": {"file": os.path.abspath(onnx_path), "sha256": sha256_file(onnx_path)},
            "inputs": [i.to_dict() for i in imported.inputs],
            "outputs": [o.to_dict() for o in imported.outputs],
            "schedule": schedule,
            "layout": f"NCHW{block}c" if block else "NCHW",
            "conv2d": [layer.to_dict() for layer in layers],
            "fallbacks": [f.to_dict() for f in fallbacks],
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        if device_code is not None:
            manifest["device_code"] = write_cuda_source(device_code, tmp)
        if fast_math:
            manifest["fast_math"] = True
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=2)
    times["export"] = time.perf_counter() - t0
    return CompileResult(os.path.abspath(output), manifest, layers, times)


