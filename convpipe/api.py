"""The Python API: ``convpipe.compile(model, example)`` -> a callable compiled module, ``convpipe.load(path)``, and
the ``torch.compile(model, backend="convpipe")`` Dynamo backend. The CLI's ``export`` + ``compile`` + ``verify``
are the same functions (:func:`convpipe.compiler.export.export_onnx`,
:func:`convpipe.compiler.build.compile_model`, :func:`convpipe.compiler.verify.run_onnxruntime`), one call away.

Importing this module imports nothing heavy: PyTorch is imported only when a torch object is passed, TVM and ONNX
only when something is compiled or loaded.

Tensors: float32 NCHW images for an exported ``nn.Module`` (one or several inputs); an ONNX model takes what its
graph inputs declare. A compiled module called with ``torch.Tensor`` s returns ``torch.Tensor`` s, sharing memory
with TVM's outputs through DLPack (inputs that are already C-contiguous on the artifact's device are not copied
either); called with NumPy arrays it returns NumPy arrays. Several outputs come back as a tuple.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import tempfile
import weakref
from collections.abc import Mapping, Sequence

from convpipe.errors import ConvpipeError

__all__ = ["CompiledModule", "VerifyReport", "compile", "dynamo_backend", "load"]


def _is_torch(x) -> bool:
    """A torch tensor (without importing torch)."""
    return type(x).__module__.split(".")[0] == "torch"


def _is_module(x) -> bool:
    """A ``torch.nn.Module`` (user subclasses included; torch is imported already if one exists)."""
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.nn.Module)


def _host_target() -> str:
    return "arm" if platform.machine().lower() in ("aarch64", "arm64") else "x86"


@dataclasses.dataclass(frozen=True)
class OutputReport:
    """One output: ``max_abs = max|ours - ref|`` and ``max_rel = max_abs / max|ref|`` against onnxruntime and, when
    the source module is known, against it (``None`` otherwise); ``ok``: within ``1e-4 * max|ref| + 1e-5`` of
    onnxruntime (issue 10's tolerance)."""

    name: str
    shape: tuple[int, ...]
    ort_max_abs: float
    ort_max_rel: float
    torch_max_abs: float | None
    torch_max_rel: float | None
    ok: bool


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """:meth:`CompiledModule.verify`'s result: one :class:`OutputReport` per output; ``ok`` when all are."""

    outputs: list[OutputReport]

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    def __str__(self) -> str:
        """One line per output (:func:`convpipe.report.verify_report_text`)."""
        from convpipe.report import verify_report_text

        return verify_report_text(self)


def _errors(ours, ref) -> tuple[float, float]:
    import numpy as np

    a, b = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    diff = float(np.abs(a - b).max(initial=0.0))
    scale = float(np.abs(b).max(initial=0.0))
    return diff, diff / scale if scale else diff


class CompiledModule:
    """A loaded convpipe artifact, callable like the model it came from.

    ``cm(x)`` / ``cm(x1, x2)`` run it: ``torch.Tensor`` in -> ``torch.Tensor`` out (zero-copy through DLPack, same
    device), NumPy in -> NumPy out; one output is returned bare, several as a tuple in graph-output order.
    ``cm.run({name: array})`` returns ``{output name: array}`` (:meth:`convpipe.runtime.Module.run`).

    Attributes:
        module: the :class:`convpipe.runtime.Module`.
        path: the artifact directory (a temporary one, removed with this object, unless ``output`` was given).
        onnx_path: the ONNX the artifact was compiled from, when known (for :meth:`verify`).
        source: the ``torch.nn.Module`` it was exported from, when there is one.
    """

    def __init__(self, module, path: str, onnx_path: str | None = None, source=None, tempdir: str | None = None):
        self.module = module
        self.path = path
        self.onnx_path = onnx_path
        self.source = source
        if tempdir is not None:
            self._cleanup = weakref.finalize(self, shutil.rmtree, tempdir, True)

    @property
    def inputs(self):
        """Input names, shapes, dtypes (:class:`convpipe.runtime.IOInfo`)."""
        return self.module.inputs

    @property
    def outputs(self):
        return self.module.outputs

    @property
    def manifest(self) -> dict:
        return self.module.manifest

    def run(self, inputs: Mapping | Sequence) -> dict:
        """``{name: array}`` or arrays in input order -> ``{output name: array}`` (NumPy)."""
        return self.module.run(inputs)

    def __call__(self, *args):
        if len(args) == 1 and isinstance(args[0], (list, tuple)):
            args = tuple(args[0])
        if args and all(_is_torch(a) for a in args):
            import torch

            out = self.module.run_tensors([a.detach().contiguous() for a in args])
            res = tuple(torch.from_dlpack(t) for t in out)
        elif args and any(_is_torch(a) for a in args):
            raise ConvpipeError("inputs mix torch tensors and other arrays: pass all torch or all NumPy")
        else:
            got = self.module.run(list(args))
            res = tuple(got[o.name] for o in self.module.outputs)
        return res[0] if len(res) == 1 else res

    def verify(self, *examples, rtol: float = 1e-4, atol: float = 1e-5) -> VerifyReport:
        """Run ``examples`` (default: seeded N(0, 1) inputs) through this module, onnxruntime (on
        :attr:`onnx_path`) and the source ``nn.Module`` when there is one; per output the max abs/rel error.

        Raises:
            ConvpipeError: no ONNX file is known (an artifact loaded by path whose source ONNX moved), or onnxruntime
                cannot run it.
        """
        import numpy as np

        from convpipe.compiler.importer import random_inputs
        from convpipe.compiler.verify import run_onnxruntime

        onnx_path = self.onnx_path
        if not onnx_path or not os.path.exists(onnx_path):
            raise ConvpipeError(f"{self.path}: no ONNX model to verify against (source {onnx_path!r} is missing)")
        if len(examples) == 1 and isinstance(examples[0], (list, tuple)):
            examples = tuple(examples[0])
        if examples:
            arrays = [a.detach().cpu().numpy() if _is_torch(a) else np.asarray(a) for a in examples]
        else:
            feed = random_inputs(self.inputs)
            arrays = [feed[i.name] for i in self.inputs]
        feed = {i.name: a for i, a in zip(self.inputs, arrays)}
        ours = self.module.run(feed)
        ref = run_onnxruntime(onnx_path, feed)
        theirs = None
        if self.source is not None:
            import torch

            with torch.no_grad():
                y = self.source.eval()(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
            ys = y if isinstance(y, (tuple, list)) else (y,)
            theirs = [t.detach().cpu().numpy() for t in ys]
        reports = []
        for k, o in enumerate(self.outputs):
            oa, orel = _errors(ours[o.name], ref[o.name])
            scale = float(np.abs(np.asarray(ref[o.name], np.float64)).max(initial=0.0))
            ta = tr = None
            if theirs is not None and k < len(theirs):
                ta, tr = _errors(ours[o.name], theirs[k])
            reports.append(OutputReport(o.name, tuple(np.shape(ours[o.name])), oa, orel, ta, tr,
                                        oa <= rtol * scale + atol))
        return VerifyReport(reports)

    def __repr__(self) -> str:
        t = self.manifest["target"]
        return (f"CompiledModule({self.path!r}, {t['arch']}/{t.get('isa', '?')}, inputs="
                f"{[(i.name, list(i.shape)) for i in self.inputs]})")


def _example_shapes(example) -> list[tuple[int, ...]]:
    if example is None:
        raise ConvpipeError("compiling an nn.Module needs an example input (a tensor, or a tuple of tensors)")
    examples = example if isinstance(example, (list, tuple)) else (example,)
    shapes = []
    for k, e in enumerate(examples):
        if not _is_torch(e) and not hasattr(e, "shape"):
            raise ConvpipeError(f"example input {k}: expected a tensor or array, got {type(e).__name__}")
        shapes.append(tuple(int(d) for d in e.shape))
    return shapes


def _index(d) -> int | None:
    """``d`` as an int when it is an integer (Python or NumPy), else ``None``."""
    import operator

    try:
        return operator.index(d)
    except TypeError:
        return None


def _dims(name: str, dims, what: str, ranges: bool) -> tuple:
    """``input_shapes`` / ``buckets`` dims as the compiler takes them: ints, and ``(lo, hi)`` ranges where allowed."""
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence):
        raise ConvpipeError(f"{what}[{name!r}]: expected a sequence of dims, got {type(dims).__name__}")
    out = []
    for axis, d in enumerate(dims):
        if isinstance(d, (list, tuple)) and ranges:
            lo_hi = [_index(x) if not isinstance(x, bool) else None for x in d]
            if len(d) != 2 or None in lo_hi or not 1 <= lo_hi[0] <= lo_hi[1]:
                raise ConvpipeError(f"{what}[{name!r}] axis {axis}: expected a range (lo, hi) with 1 <= lo <= hi, "
                                    f"got {d!r}")
            out.append(tuple(lo_hi) if lo_hi[0] != lo_hi[1] else lo_hi[0])
        elif not isinstance(d, bool) and _index(d) is not None and _index(d) >= 1:
            out.append(_index(d))
        else:
            raise ConvpipeError(f"{what}[{name!r}] axis {axis}: expected a positive int"
                                f"{' or a range (lo, hi)' if ranges else ''}, got {d!r}")
    return tuple(out)


def compile(model, example=None, *, input_shapes: Mapping[str, Sequence] | None = None, target: str | None = None,
            schedule: str = "auto", layout: str = "auto", db: str | None = None, output: str | os.PathLike | None = None,
            arch: str | None = None, fast_math: bool = False, threads: int | None = None,
            buckets: Sequence[Mapping[str, Sequence[int]]] | None = None,
            accuracy_guard: bool = True) -> CompiledModule:
    """Compile a ``torch.nn.Module`` (with example inputs) or an ONNX file into a loaded :class:`CompiledModule`.

    Args:
        model: an ``nn.Module`` (exported with ``torch.onnx.export`` at the examples' shapes, float32, eval mode)
            or the path of an ``.onnx`` file.
        example: for a module: a tensor or a tuple of tensors (their shapes are compiled in; values unused).
        input_shapes: dims to pin by input name (as ``--input-shape``); a dim may be an inclusive range
            ``(lo, hi)``, e.g. ``{"x": (1, 3, (32, 1024), (32, 1024))}``: the artifact then takes any size in range
            (a generic build with symbolic dims, :func:`convpipe.compiler.build.compile_dynamic`). For a module the
            inputs are named ``input`` (or ``input0``, ``input1``, ...); its ranged axes are exported as dynamic
            axes, traced at the example's shape (which should lie in range).
        buckets: exact shapes compiled ahead with the full fixed-shape pipeline, one
            ``{input name: shape}`` per bucket (as ``--buckets``), e.g. ``[{"x": (1, 3, 224, 224)}]``; a run at a
            bucket's shape uses that build, any other size in range the generic one.
        target: ``"x86"``, ``"arm"``, ``"cuda"`` or a TVM target JSON; default: this host's CPU.
        schedule, layout, db, arch, fast_math: as ``convpipe compile`` (``db``: a tuning database path).
        accuracy_guard: ``False`` as ``--no-accuracy-guard`` (skip the compile-time Winograd accuracy check against
            onnxruntime, :mod:`convpipe.compiler.accuracy`).
        output: also keep the artifact directory there (written atomically; an existing directory is replaced only
            when it is a convpipe artifact); default: a temporary directory removed with the returned object.
        threads: CPU threads for TVM's pool when loading.

    Returns:
        The compiled module, loaded on this machine (a CUDA artifact needs a GPU to load: with none, compile with
        ``output=`` and load it where the GPU is).

    Raises:
        ConvpipeError: no example for a module; ``input_shapes``/``buckets`` naming an input the module does not
            have; a bad dim in ``input_shapes``/``buckets`` (names the input and axis); the export,
            import or build failed (the message names the op, node or input); ``output`` must not be written.
    """
    from convpipe.compiler.build import compile_model
    from convpipe.compiler.tune import TuningDatabase
    from convpipe.runtime import load as load_artifact

    specs = {k: _dims(k, v, "input_shapes", True) for k, v in (input_shapes or {}).items()}
    if buckets is not None and (isinstance(buckets, Mapping) or not isinstance(buckets, Sequence)):
        raise ConvpipeError(f"buckets: expected a list of {{input name: shape}}, got {type(buckets).__name__}")
    bucket_list = []
    for b in buckets or []:
        if not isinstance(b, Mapping):
            raise ConvpipeError(f"buckets: expected a list of {{input name: shape}}, got an item {type(b).__name__}")
        bucket_list.append({k: _dims(k, v, "buckets", False) for k, v in b.items()})
    dynamic_axes = {k: [a for a, d in enumerate(v) if isinstance(d, tuple)] for k, v in specs.items()}
    dynamic_axes = {k: v for k, v in dynamic_axes.items() if v}
    tmp = tempfile.mkdtemp(prefix="convpipe-")
    try:
        source = None
        if isinstance(model, (str, os.PathLike)):
            onnx_path = os.fspath(model)
            if example is not None:
                raise ConvpipeError("for an ONNX file, give input_shapes={name: shape}, not example inputs")
        else:
            if not _is_module(model):
                raise ConvpipeError(f"model: expected a torch.nn.Module or an .onnx path, got {type(model).__name__}")
            from convpipe.compiler.export import export_onnx

            source = model
            onnx_path = os.path.join(tmp, "model.onnx")
            shapes = _example_shapes(example)
            names = ["input"] if len(shapes) == 1 else [f"input{k}" for k in range(len(shapes))]
            unknown = sorted(set(specs) - set(names)) + sorted({k for b in bucket_list for k in b} - set(names))
            if unknown:
                raise ConvpipeError(f"input_shapes/buckets name {unknown}: the exported module's inputs are {names}")
            # ranged dims are exported as dynamic axes (traced at the example's shape), the rest as the example's
            export_onnx(model, shapes, onnx_path, dynamic_axes=dynamic_axes)
        art = os.fspath(output) if output is not None else os.path.join(tmp, "model.cpa")
        compile_model(onnx_path, art, target or _host_target(), schedule, specs, TuningDatabase(db) if db else None,
                      arch, layout, fast_math=fast_math, buckets=bucket_list or None, accuracy_guard=accuracy_guard)
        module = load_artifact(art, threads=threads)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CompiledModule(module, art, onnx_path, source, tempdir=tmp)


def load(path: str | os.PathLike, device: str | None = None, threads: int | None = None,
         expected_sha256: str | None = None) -> CompiledModule:
    """Load an artifact directory (:func:`convpipe.runtime.load`, same arguments and errors) as a callable
    :class:`CompiledModule`; :meth:`CompiledModule.verify` uses the ONNX file its manifest names."""
    from convpipe.runtime import load as load_artifact

    module = load_artifact(path, device, threads, expected_sha256)
    src = module.manifest.get("source_onnx", {}).get("file")
    return CompiledModule(module, os.fspath(path), src)


def dynamo_backend(gm, example_inputs):
    """``torch.compile(model, backend="convpipe")``: compile each graph Dynamo captures through ONNX and convpipe for
    this host. Each distinct set of input shapes is compiled once and cached (a graph Dynamo made shape-dynamic,
    with SymInt inputs, is compiled per concrete shape on first call); the parameters Dynamo passes as graph inputs
    are baked in as constants, as convpipe pre-packs weights (changing weights needs ``torch._dynamo.reset()``).

    A graph convpipe cannot take -- an op outside ONNX, inputs that are not float32 tensors, an export, import or
    build failure -- runs eagerly instead (``gm.forward``), with one warning naming the reason; never an error.
    """
    import warnings

    import torch

    params = {i for i, x in enumerate(example_inputs) if isinstance(x, torch.nn.Parameter)}
    cache: dict = {}
    warned = []

    def entry_for(args):
        key = tuple((tuple(a.shape), str(a.dtype)) if isinstance(a, torch.Tensor) else ("value", a)
                    for i, a in enumerate(args) if i not in params)
        if key in cache:
            return cache[key]
        acts = [i for i, a in enumerate(args) if i not in params and isinstance(a, torch.Tensor)]
        fixed = {i: a for i, a in enumerate(args) if i in params or not isinstance(a, torch.Tensor)}
        try:
            if not acts or not all(args[i].dtype == torch.float32 for i in acts):
                raise ConvpipeError("convpipe compiles graphs whose tensor inputs are all float32")
            with torch.no_grad():
                ref = gm(*args)
            as_tuple = isinstance(ref, (tuple, list))
            if not all(isinstance(r, torch.Tensor) for r in (ref if as_tuple else (ref,))):
                raise ConvpipeError("the graph returns something other than tensors")
            cm = compile(_BoundGraph(gm, len(args), fixed), tuple(args[i] for i in acts))
            cache[key] = (cm, acts, as_tuple)
        except Exception as e:  # noqa: BLE001 -- any failure: this graph runs eagerly
            if not warned:
                warned.append(True)
                warnings.warn(f"convpipe: graph left to eager PyTorch: {' '.join(str(e).split())[:300]}",
                              stacklevel=3)
            cache[key] = None
        return cache[key]

    concrete = all(isinstance(x, torch.Tensor) and not isinstance(x, torch.SymInt) for x in example_inputs)
    if concrete and entry_for(tuple(example_inputs)) is None:
        return gm.forward

    def run(*args):
        entry = entry_for(args)
        if entry is None:
            return gm(*args)
        cm, acts, as_tuple = entry
        out = cm(*[args[i] for i in acts])
        outs = out if isinstance(out, tuple) else (out,)
        return outs if as_tuple else outs[0]

    run.cache = cache  # {input shapes: (CompiledModule, activation positions, tuple output?) or None}
    return run


def _bound_graph_class():
    import torch

    class BoundGraph(torch.nn.Module):
        """A Dynamo graph with some inputs fixed (its parameters, SymInt sizes): ``forward(*tensor_inputs)``."""

        def __init__(self, gm, n_args: int, fixed: dict):
            super().__init__()
            self.gm = gm
            self.n_args = n_args
            self.fixed_values = {i: v for i, v in fixed.items() if not isinstance(v, torch.Tensor)}
            tensor_slots = sorted(i for i, v in fixed.items() if isinstance(v, torch.Tensor))
            self.tensor_slots = tensor_slots
            self.fixed_tensors = torch.nn.ParameterList(
                [v if isinstance(v, torch.nn.Parameter) else torch.nn.Parameter(v, requires_grad=False)
                 for v in (fixed[i] for i in tensor_slots)])

        def forward(self, *acts):
            it = iter(acts)
            tensors = dict(zip(self.tensor_slots, self.fixed_tensors))
            full = [tensors[i] if i in tensors else self.fixed_values[i] if i in self.fixed_values else next(it)
                    for i in range(self.n_args)]
            return self.gm(*full)

    return BoundGraph


def _BoundGraph(gm, n_args: int, fixed: dict):  # noqa: N802 -- a class made on first use (torch imported late)
    return _bound_graph_class()(gm, n_args, fixed)
