"""ONNX file -> artifact directory: import, lower every conv2d through our schedules, build with TVM, write the
library and manifest atomically (a failed compile leaves nothing behind)."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import tvm

import convpipe
from convpipe.errors import ConvpipeError
from convpipe.runtime.artifact import FORMAT, LIBRARY, MANIFEST, sha256_file
from convpipe.runtime.module import quiet_native_stderr
from convpipe.schedules import TargetError, TargetInfo, resolve_target

from .cuda_device import DeviceCode, cuda_build
from .importer import (ImportedModel, bucket_shapes, has_ranges, import_onnx, import_onnx_generic, load_onnx,
                       resolve_input_dims, sym_text, to_relax, to_relax_generic)
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
                fast_math: bool = False, fallbacks: list[Fallback] | None = None, winograd_m_max: int | None = None):
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

    ``winograd_m_max``: the accuracy guard's cap on Winograd tiles (:func:`.select.choose`, :mod:`.accuracy`).

    Raises:
        ConvpipeError: import or lowering failed (see :mod:`.importer`, :mod:`.layout`, :mod:`.lower`), or the
            CUDA device code could not be compiled.
    """
    taken: list[Fallback] = []
    mod, block = prepare(imported, target, layout, taken)
    try:
        ex, layers, code = _lower_and_compile(mod, target, schedule, db, fast_math, taken, winograd_m_max)
    except ConvpipeError:
        raise
    except Exception as e:  # a TVM error in the blocked build: the whole model in NCHW instead
        if not block:
            raise
        taken = [Fallback("layout", "model", "NCHW for the whole model",
                          f"the NCHW{block}c build failed after ConvertLayout: {one_line(e)}")]
        mod, _ = prepare(imported, target, "nchw")
        ex, layers, code = _lower_and_compile(mod, target, schedule, db, fast_math, taken, winograd_m_max)
    if fallbacks is not None:
        fallbacks.extend(taken)
    return ex, layers, code


def _lower_and_compile(mod, target: TargetInfo, schedule: str, db, fast_math: bool, taken: list[Fallback],
                       winograd_m_max: int | None = None):
    """Lower the convs of a prepared module and ``tvm.compile`` it; epilogue fallbacks go to ``taken``."""
    from convpipe.schedules.epilogue import epilogue_fallbacks

    lowered, layers = lower_conv2d(fast_math_transform(mod, fast_math), target, schedule, db, winograd_m_max)
    device = contextlib.nullcontext() if target.arch != "cuda" else cuda_build(target.isa, fast_math)
    ctx = tvm.transform.PassContext.current()  # the caller's, with the fast-math option stated
    scope = tvm.transform.PassContext(ctx.opt_level, list(ctx.required_pass), list(ctx.disabled_pass),
                                      list(ctx.instruments), {**dict(ctx.config.items()), **pass_config(fast_math)})
    with device as code, target.target, scope, epilogue_fallbacks() as epi:
        ex = tvm.compile(lowered, target=target.target, relax_pipeline=relax_pipeline(target, fast_math))
    taken.extend(Fallback(**f) for f in epi)
    return ex, layers, code


def build_guarded(imported: ImportedModel, onnx_path: str, target: TargetInfo, scratch: str, schedule: str = "auto",
                  db=None, layout: str = "auto", fast_math: bool = False, accuracy_guard: bool = True,
                  tolerance: tuple[float, float] | None = None):
    """:func:`build_relax` and :func:`export_library` into the directory ``scratch``, then the Winograd accuracy
    guard (:func:`.accuracy.guard`, which runs the exported library): returns ``(executable, layer records, device
    code, fallbacks, the kept library's path in scratch, the manifest's accuracy entry)``. ``accuracy_guard=False``
    skips the guard (the entry then says so); ``tolerance``: ``(rtol, atol)``, default
    :data:`.verify.NETWORK_RTOL`, :data:`.verify.NETWORK_ATOL`."""
    from .accuracy import guard
    from .verify import NETWORK_ATOL, NETWORK_RTOL

    def build(cap):
        taken: list[Fallback] = []
        ex, layers, code = build_relax(imported, target, schedule, db, layout, fast_math, taken, cap)
        k = len(os.listdir(scratch))
        lib, workspace = os.path.join(scratch, f"{k}.so"), os.path.join(scratch, f"{k}.build")
        os.mkdir(workspace)
        export_library(ex, lib, target, workspace)
        shutil.rmtree(workspace)
        return ex, layers, code, taken, lib

    first = build(None)
    if not accuracy_guard:
        return (*first, {"checked": False, "why": "turned off (--no-accuracy-guard)"})
    rtol, atol = tolerance or (NETWORK_RTOL, NETWORK_ATOL)
    kept, entry, changed = guard(build, first, imported, onnx_path, target, schedule, rtol, atol)
    ex, layers, code, taken, lib = kept
    return ex, layers, code, taken + changed, lib, entry


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
    buckets: list[dict[str, tuple[int, ...]]] | None = None,
    accuracy_guard: bool = True,
    tolerance: tuple[float, float] | None = None,
) -> CompileResult:
    """Compile an ONNX model into an artifact directory (see :mod:`convpipe.runtime.artifact`).

    Variable input sizes (issue 16): when ``input_shapes`` gives a dim as a range ``(lo, hi)`` or ``buckets``
    is given, the artifact holds several builds (:func:`compile_dynamic`): one exact-shape build per bucket made by
    the fixed-shape pipeline below, and one generic build with symbolic dims serving every other size in range.

    Args:
        onnx_path: the source ``.onnx``.
        output: artifact directory to create (replaced atomically if it exists).
        target: ``"x86"``, ``"arm"``, ``"cuda"``, a TVM target JSON, or a :class:`TargetInfo`.
        schedule: ``"auto"`` or a family (``direct``, ``im2col``, ``winograd``, ``depthwise``).
        input_shapes: dims to pin by input name; a dim may be an inclusive range ``(lo, hi)``.
        buckets: exact shapes (``{input name: shape}`` each; inputs not named keep their exact dims) to compile
            ahead with the full fixed-shape pipeline in one variable-size artifact.
        db: an optional tuning database (measured per-layer choices take precedence).
        arch: CUDA arch for ``target="cuda"``.
        layout: ``"auto"`` (NCHW[x]c through the network on CPU targets, :mod:`.layout`), ``"nchw"`` or
            ``"nchw{x}c"``.
        max_memory: bytes one tensor of the model (input, output or intermediate, at the pinned shapes) may
            take; default: this machine's physical memory (:func:`.importer.check_tensor_sizes`).
        fast_math: allow approximate math (``--fast-math``): TVM's fast Softmax/Exp/Erf/Tanh and, for CUDA, nvcc
            ``--use_fast_math``; off by default, where the non-conv ops match onnxruntime to ~1e-6.
        accuracy_guard: run the Winograd accuracy guard (:mod:`.accuracy`: when the build has Winograd layers and
            runs here, a comparison with onnxruntime; F(4, 3) -> F(2, 3) -> direct until the whole network is within
            ``tolerance``); the manifest's ``accuracy`` entry records what it measured.
        tolerance: ``(rtol, atol)`` of the guard (default ``(1e-4, 1e-5)``: ``max |ours - ref| <= rtol *
            max |ref| + atol``).

    Raises:
        ConvpipeError: bad model, bad target, an output path that must not be written (see
            :func:`.output.check_output_dir`: an existing directory is replaced only when it is a convpipe
            artifact), tensors over ``max_memory``, or a failure while building; nothing is written then.
    """
    check_output_dir(output, (onnx_path,))
    if buckets or has_ranges(input_shapes):
        return compile_dynamic(onnx_path, output, target, schedule, input_shapes, buckets, db, arch, layout,
                               max_memory, fast_math, accuracy_guard, tolerance)
    times = {}
    t0 = time.perf_counter()
    try:
        tinfo = target if isinstance(target, TargetInfo) else resolve_target(target, arch)
    except TargetError as e:
        raise ConvpipeError(str(e)) from None
    imported = import_onnx(onnx_path, input_shapes, max_memory=max_memory)
    times["import"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="convpipe-build-") as scratch:
        ex, layers, device_code, fallbacks, built, accuracy = build_guarded(
            imported, onnx_path, tinfo, scratch, schedule, db, layout, fast_math, accuracy_guard, tolerance)
        block = max((layer.workload.out_block for layer in layers), default=0)
        times["build"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with atomic_directory(output, (onnx_path,)) as tmp:
            lib = os.path.join(tmp, LIBRARY)
            shutil.copyfile(built, lib)
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
                "accuracy": accuracy,
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


# ---- variable input sizes (issue 16) ---------------------------------------------------------------------------
@dataclass
class _Build:
    """One build of a variable-size artifact, before it is written."""

    name: str
    kind: str  # "bucket" | "generic"
    ex: object
    inputs: list  # IOInfo (bucket: exact shapes) or the manifest's dynamic.inputs dicts (generic)
    outputs: list  # IOInfo; generic: shapes hold an expression's text per symbolic dim
    layers: list
    fallbacks: list
    device_code: object = None
    accuracy: dict | None = None  # the bucket's accuracy-guard entry (:mod:`.accuracy`)
    built: str | None = None  # the bucket's library, exported already (by :func:`build_guarded`)

    @property
    def library(self) -> str:
        return LIBRARY if self.name == "default" else f"model.{self.name}.so"


def _accepted_dims(onnx_path: str, input_shapes: dict | None, buckets: list[dict]) -> list[dict]:
    """The manifest's ``dynamic.inputs``: from ``input_shapes`` (ranges kept); a dynamic axis given neither a size
    nor a range takes the sizes the buckets give it (one size, or the span ``[min, max]`` of theirs)."""
    model = load_onnx(onnx_path)
    specs = dict(input_shapes or {})
    if buckets:
        from .importer import _graph_inputs

        inputs = _graph_inputs(model)
        names = [i.name for i in inputs]
        if "" in specs and len(names) == 1:
            specs[names[0]] = specs.pop("")
        for vi in inputs:
            if vi.name in specs:
                continue
            dims = vi.type.tensor_type.shape.dim
            given = [b.get(vi.name, b.get("", None) if len(names) == 1 else None) for b in buckets]
            if any(g is None or len(g) != len(dims) for g in given):
                continue  # resolve_input_dims / bucket_shapes name the problem
            spec = []
            for axis, d in enumerate(dims):
                sizes = sorted({g[axis] for g in given})
                static = d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                spec.append(static if static is not None else (sizes[0] if len(sizes) == 1 else (sizes[0], sizes[-1])))
            specs[vi.name] = tuple(spec)
    return resolve_input_dims(model, specs, onnx_path)


def compile_dynamic(onnx_path: str, output: str, target: str | TargetInfo = "x86", schedule: str = "auto",
                    input_shapes: dict | None = None, buckets: list[dict] | None = None, db=None,
                    arch: str | None = None, layout: str = "auto", max_memory: int | None = None,
                    fast_math: bool = False, accuracy_guard: bool = True,
                    tolerance: tuple[float, float] | None = None) -> CompileResult:
    """A variable-size artifact (issue 16): one exact-shape build per bucket, by the fixed-shape pipeline
    (:func:`build_relax`: convpipe's conv schedules, the blocked layout, exact Resize), and -- when
    ``input_shapes`` gives a range -- one *generic* build whose ranged dims stay symbolic (:func:`build_generic`).
    The runtime runs a bucket's build on its exact shape and the generic build on any other shape in range.

    Measured (README, "Variable input sizes"; a 4-conv net, x86, 1 thread): a bucket runs as fast as a fixed-shape
    artifact (0.63 / 2.6 / 10.8 ms at 64² / 128² / 224²); the generic build, whose convs are TVM's legalization
    under :func:`_generic_conv_rule`, ~10x slower (7.3 / 24 / 101 ms; with no schedule at all 188 / 727 / 2564 ms).
    Buckets are how the common sizes keep the fast pipeline.

    Manifest (:mod:`convpipe.runtime.artifact`): the top-level ``inputs``/``outputs``/``library``/``conv2d``/
    ``layout``/``fallbacks`` describe the *default* build (the first bucket, else the generic build at the low
    end of every range), so a reader of fixed artifacts still finds one runnable build; ``dynamic`` holds the
    accepted dims (``inputs``: an int or ``[lo, hi]`` per axis), every build (``builds``: name, kind, library,
    exact inputs of a bucket, outputs, layout, conv2d, fallbacks) and, when there is no generic build,
    ``no_generic`` (why).

    Args: as :func:`compile_model`; ``input_shapes`` dims may be ``(lo, hi)``; ``buckets``: ``{input: shape}``
    each (inputs not named keep their exact dims).

    Raises:
        ConvpipeError: a bucket outside the ranges or of the wrong rank (names the input, axis, range and size);
            no bucket and no range; no range and no bucket; the generic build failed or disagreed with
            onnxruntime and there is no bucket to fall back on (names why); anything :func:`compile_model` raises.
            Nothing is written then.
    """
    times: dict = {}
    t0 = time.perf_counter()
    try:
        tinfo = target if isinstance(target, TargetInfo) else resolve_target(target, arch)
    except TargetError as e:
        raise ConvpipeError(str(e)) from None
    buckets = list(buckets or [])
    dims = _accepted_dims(onnx_path, input_shapes, buckets)
    ranged = has_ranges(input_shapes)  # buckets alone (their span recorded in dims) make no generic build
    shapes: list[dict] = []
    for b in buckets:
        s = bucket_shapes(dims, b, onnx_path)
        if s not in shapes:
            shapes.append(s)
    builds: list[_Build] = []
    with tempfile.TemporaryDirectory(prefix="convpipe-build-") as scratch:  # bucket libraries until copied
        for k, s in enumerate(shapes):
            imported = import_onnx(onnx_path, s, max_memory=max_memory)
            ex, layers, code, taken, built, accuracy = build_guarded(imported, onnx_path, tinfo, scratch, schedule,
                                                                     db, layout, fast_math, accuracy_guard, tolerance)
            name = "default" if k == 0 else "b" + "_".join("x".join(map(str, v)) for v in s.values())
            builds.append(_Build(name, "bucket", ex, imported.inputs, imported.outputs, layers, taken, code, accuracy,
                                 built))
        times["buckets"] = time.perf_counter() - t0
        no_generic = None
        t0 = time.perf_counter()
        if not ranged:
            no_generic = "no input dim was given a range (give one as LO..HI in --input-shape)"
        elif tinfo.arch == "cuda":
            no_generic = "generic (symbolic-shape) builds are made for CPU targets only; CUDA artifacts take buckets"
        else:
            try:
                builds.append(build_generic(onnx_path, dims, tinfo, fast_math, max_memory, name="default" if not builds
                                            else "generic"))
            except ConvpipeError as e:
                no_generic = str(e)
            except Exception as e:  # noqa: BLE001 -- a TVM error in the symbolic build
                no_generic = f"TVM could not build it: {one_line(e)}"
        times["generic"] = time.perf_counter() - t0
        if not builds:
            raise ConvpipeError(f"{onnx_path}: no generic (symbolic-shape) build is possible: {no_generic}; give the "
                                "exact shapes to serve with --buckets")
        if no_generic and ranged:
            import logging

            logging.getLogger("convpipe.build").warning(
                f"{onnx_path}: no generic build ({no_generic}); the artifact accepts only its bucket shapes")
        default = builds[0]
        if default.kind == "generic":  # the top-level entries describe the generic build at the low end of each range
            low = {i["name"]: tuple(d[0] if isinstance(d, list) else d for d in i["dims"]) for i in dims}
            at_low = import_onnx(onnx_path, low, max_memory=max_memory)
            top_inputs, top_outputs = at_low.inputs, at_low.outputs
        else:
            top_inputs, top_outputs = default.inputs, default.outputs
        t0 = time.perf_counter()
        with atomic_directory(output, (onnx_path,)) as tmp:
            entries = []
            for b in builds:
                lib = os.path.join(tmp, b.library)
                workspace = os.path.join(tmp, ".build")
                os.mkdir(workspace)
                if b.built:
                    shutil.copyfile(b.built, lib)
                else:
                    with quiet_native_stderr():  # TVM logs "Scope Saving" lines for symbolic shapes
                        export_library(b.ex, lib, tinfo, workspace)
                shutil.rmtree(workspace)
                block = max((layer.workload.out_block for layer in b.layers), default=0)
                entry = {
                    "name": b.name, "kind": b.kind,
                    "library": {"file": b.library, "sha256": sha256_file(lib)},
                    "outputs": [o.to_dict() for o in b.outputs],
                    "layout": f"NCHW{block}c" if block else "NCHW",
                    "conv2d": [layer.to_dict() for layer in b.layers],
                    "fallbacks": [f.to_dict() for f in b.fallbacks],
                }
                if b.kind == "bucket":
                    entry["inputs"] = [i.to_dict() for i in b.inputs]
                    entry["accuracy"] = b.accuracy
                entries.append(entry)
            first = entries[0]
            manifest = {
                "format": FORMAT,
                "convpipe_version": convpipe.__version__,
                "tvm_version": tvm.__version__,
                "target": tinfo.to_json(),
                "library": dict(first["library"]),
                "source_onnx": {"file": os.path.abspath(onnx_path), "sha256": sha256_file(onnx_path)},
                "inputs": [i.to_dict() for i in top_inputs],
                "outputs": [o.to_dict() for o in top_outputs],
                "schedule": schedule,
                "layout": first["layout"],
                "conv2d": first["conv2d"],
                "fallbacks": first["fallbacks"],
                "accuracy": first.get("accuracy") or {"checked": False, "why": "the generic build has no Winograd layer"},
                "dynamic": {"inputs": dims, "builds": entries},
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
            if no_generic:
                manifest["dynamic"]["no_generic"] = no_generic
            if default.device_code is not None:
                manifest["device_code"] = write_cuda_source(default.device_code, tmp)
            if fast_math:
                manifest["fast_math"] = True
            with open(os.path.join(tmp, MANIFEST), "w") as f:
                json.dump(manifest, f, indent=2)
        times["export"] = time.perf_counter() - t0
        return CompileResult(os.path.abspath(output), manifest, default.layers, times)


def build_generic(onnx_path: str, dims: list[dict], target: TargetInfo, fast_math: bool = False,
                  max_memory: int | None = None, name: str = "generic", check: bool = True) -> _Build:
    """The generic build of a variable-size artifact: the model imported with its ranged dims symbolic
    (:func:`.importer.import_onnx_generic`, :func:`.importer.to_relax_generic`) and compiled by convpipe's
    CPU pipeline (:func:`.pipeline.cpu_pipeline`: the injective/dense/reduction schedules handle symbolic
    extents) with one more dlight rule first (:func:`_generic_conv_rule`). Steps that need exact shapes step
    aside, each recorded as a fallback of stage ``"generic"``: the NCHW[x]c layout pass (the generic build runs
    NCHW), convpipe's conv2d schedules (each conv2d is left to TVM's own legalization, ``topi`` NCHW conv2d, run
    under :func:`_generic_conv_rule`'s any-size schedule), and the exact Resize planner where a Resize's input
    shape is symbolic (TVM's converter instead).

    ``check``: on an x86 target that this host can run, the build is run at the low end of every range (and at
    the high end when that input is small, at most 2**18 elements) and compared with onnxruntime (rtol 1e-4,
    atol 1e-5); a mismatch refuses the build.

    Raises:
        ConvpipeError: import, conversion or the onnxruntime check failed (names why).
    """
    from .conv_calls import conv2d_calls

    gm = import_onnx_generic(onnx_path, {d["name"]: tuple(tuple(x) if isinstance(x, list) else x for x in d["dims"])
                                         for d in dims}, max_memory=max_memory)
    resized: list[str] = []
    mod = pre_lowering(to_relax_generic(gm, resized))
    fallbacks = [Fallback("generic", "model", "NCHW throughout",
                          "the NCHW[x]c layout pass plans blocks for exact shapes")]
    for k, call in enumerate(conv2d_calls(mod)):
        shape = [sym_text(d) for d in call.args[0].ty.shape]
        fallbacks.append(Fallback("generic", f"conv2d #{k} (data [{', '.join(shape)}])",
                                  "TVM's conv2d legalization (topi NCHW) under a simple any-size schedule",
                                  "convpipe's conv2d schedules are built for exact shapes"))
    for r in resized:
        fallbacks.append(Fallback("generic", r, "TVM's Resize converter",
                                  "convpipe's exact Resize planner needs a static input shape"))
    ctx = tvm.transform.PassContext.current()
    scope = tvm.transform.PassContext(ctx.opt_level, list(ctx.required_pass), list(ctx.disabled_pass),
                                      list(ctx.instruments), {**dict(ctx.config.items()), **pass_config(fast_math)})
    with target.target, scope:
        ex = tvm.compile(fast_math_transform(mod, fast_math), target=target.target,
                         relax_pipeline=_generic_pipeline(target, fast_math))
    if check:
        _check_generic(ex, onnx_path, dims, target)
    return _Build(name, "generic", ex, dims, gm.outputs, [], fallbacks)


def _check_generic(ex, onnx_path: str, dims: list[dict], target: TargetInfo) -> None:
    """Run the generic build at the low end (and, for small inputs, the high end) of each range and compare it
    with onnxruntime; raise :class:`ConvpipeError` naming the size and the error on a mismatch. Skipped where this
    host cannot run the target (ARM, CUDA, an ISA this CPU lacks)."""
    import platform

    import numpy as np

    from convpipe.runtime.module import flatten_outputs

    from .importer import random_inputs
    from .verify import compare, run_onnxruntime

    if target.arch != "x86" or platform.machine().lower() not in ("x86_64", "amd64"):
        return
    from convpipe.runtime.module import IOInfo, _host_flags

    need = {"avx512": "avx512f", "avx2": "avx2"}.get(target.isa)
    if need and need not in _host_flags():
        return
    ends = [0]
    high = [tuple(d[1] if isinstance(d, list) else d for d in i["dims"]) for i in dims]
    if all(int(np.prod(s)) <= 1 << 18 for s in high):
        ends.append(1)
    vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
    for end in ends:
        infos = [IOInfo(i["name"], tuple(d[end] if isinstance(d, list) else d for d in i["dims"]), i["dtype"])
                 for i in dims]
        inputs = random_inputs(infos)
        res = flatten_outputs(vm["main"](*[tvm.runtime.tensor(inputs[i.name]) for i in infos]))
        ref = run_onnxruntime(onnx_path, inputs)
        ours = {name: t.numpy() for name, t in zip(ref, res)}
        bad = [c for c in compare(ours, ref, 1e-4, 1e-5) if not c.ok]
        shape = "; ".join(f"{i.name}={list(i.shape)}" for i in infos)
        for name in ref:
            if ours[name].shape != ref[name].shape:
                raise ConvpipeError(f"the generic build returns {name!r} of shape {list(ours[name].shape)} at {shape}, "
                                    f"onnxruntime {list(ref[name].shape)}")
        if bad:
            c = bad[0]
            raise ConvpipeError(f"the generic build disagrees with onnxruntime at {shape}: output {c.name!r} max abs "
                                f"error {c.max_abs:.3g} (max rel {c.max_rel:.3g})")


def _generic_conv_rule():
    """A dlight rule for the generic build's conv2d (TVM's ``topi`` NCHW ``conv2d_nchw`` block, symbolic H/W,
    fused with its element-wise consumers): parallel over (batch, output channel), the output row's ``x`` loop
    innermost under the reduction loops (contiguous, so LLVM vectorises it for stride 1), padding materialised
    once and every other block parallel over its two outer loops. Not convpipe's exact-shape schedules: a cheap
    schedule that works for any extent (measured in :func:`compile_dynamic`'s docstring)."""
    from tvm import s_tir, tirx
    from tvm.s_tir.dlight.base import ScheduleRule

    UNROLL_OC = 8

    class GenericConvCPU(ScheduleRule):
        def apply(self, func, target, _tunable):
            if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
                return None
            sch = s_tir.Schedule(func)
            try:
                conv = sch.get_sblock("conv2d_nchw")
            except Exception:  # noqa: BLE001 -- not a conv function
                return None
            loops = sch.get_loops(conv)
            if len(loops) != 7:
                return None
            nn, ff, yy, xx, rc, ry, rx = loops
            try:
                extent = sch.get(ff).extent
                oc = int(extent) if isinstance(extent, tirx.IntImm) else 1
                block = next((b for b in (UNROLL_OC, 4, 2) if oc % b == 0), 1)
                if block > 1:
                    ff, fi = sch.split(ff, [None, block])
                    sch.reorder(nn, ff, yy, rc, ry, rx, fi, xx)
                    sch.unroll(fi)
                else:
                    sch.reorder(nn, ff, yy, rc, ry, rx, xx)
                sch.parallel(sch.fuse(nn, ff))
                sch.decompose_reduction(conv, rc)
                for block in sch.get_child_blocks(sch.get_sblock("root")):
                    if sch.get(block).name_hint.startswith("conv2d_nchw"):
                        continue
                    outer = sch.get_loops(block)
                    if len(outer) >= 2:
                        sch.parallel(sch.fuse(outer[0], outer[1]))
            except Exception:  # noqa: BLE001 -- leave the function to the next rule
                return None
            return sch

    return GenericConvCPU()


def _generic_pipeline(target: TargetInfo, fast_math: bool = False):
    """:func:`.pipeline.cpu_pipeline` with :func:`_generic_conv_rule` first among the dlight rules."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm.s_tir import dlight

    from .nan_minmax import PropagateNaN
    from .pipeline import _cpu_rules, _in_target_scope, fast_math_passes

    return _in_target_scope(
        target,
        lambda t: fast_math_passes(fast_math) + cpu.library_dispatch_passes(t) + cpu.legalize_passes(t)
        + [dlight.ApplyDefaultSchedule(_generic_conv_rule(), *_cpu_rules()), PropagateNaN()]
        + cpu.dataflow_lower_passes(t) + cpu.finalize_passes(t),
    )
