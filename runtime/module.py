"""Load and run a convpipe artifact with the TVM runtime and NumPy only (no torch, onnx or onnxruntime).

Usage, in the manner of ``onnxruntime.InferenceSession``::

    import convpipe.runtime as rt
    m = rt.load("resnet18.cpa", expected_sha256="9f86d081...")   # pin the library you trust
    outputs = m.run({"input": x})          # or m.run([x]); -> {"output": np.ndarray}

Trust: loading an artifact runs its native code (``dlopen`` of ``model.so``). The sha256 in the manifest only
detects corruption -- anyone who can replace ``model.so`` can rewrite ``manifest.json`` too. Pass
``expected_sha256`` (the library's sha256 obtained through a channel you trust, e.g. ``sha256sum model.so`` on
the machine that built it) and :func:`load` refuses any other library before it is loaded. Without it, load
only artifacts from people you trust. In any case :func:`load` refuses, before ``dlopen``, a manifest that breaks
the schema, a library path leading out of the artifact directory, and a library that is not a well-formed shared
library for this machine (:mod:`convpipe.runtime.artifact`).

Threads: TVM's kernel thread pool uses ``TVM_NUM_THREADS`` threads; :func:`load` sets it to ``threads`` when
given, else (if unset) to ``os.cpu_count()`` -- TVM's own default counts one per physical core pair here. TVM
keeps one pool *per calling OS thread* (``static thread_local ThreadPool`` in ``src/runtime/thread_pool.cc``),
made on that thread's first parallel kernel. When the calling thread ends, the pool's destructor signals its
workers and joins them, but a worker only notices the signal after its busy-wait for work ends
(``TVM_THREAD_POOL_SPIN_COUNT``, default 300000 ``sched_yield`` calls, checking for new work only): with many such
pools yielding to each other on few cores that takes seconds to minutes, during which the ended thread and its
workers all stay alive, spinning. Measured on 2 cores: 1000 short-lived threads calling ``run`` once left 2000 OS
threads (+53 MB RSS). So :meth:`Module.run` uses the calling thread only on the main thread (whose pool lives as
long as the process) or when ``TVM_NUM_THREADS`` is 1 (kernels then run inline and never make a pool); from any
other thread it hands the run to a small process-wide set of long-lived runner threads (:data:`RUNNERS`, at most
:func:`max_runners`, each with its own pool and VMs) and waits for it. OS threads stay bounded whatever the number
of calling threads (1000 threads: +4 OS threads, +1 MB); a hand-off costs about 10-30 microseconds.

Thread safety: one :class:`Module` may be shared by several threads. The loaded library (kernels and constant
weights) is shared; each thread that runs the model (the main thread, each runner) gets its own Relax
``VirtualMachine``, because a VM keeps per-call state (registers, allocated intermediate tensors).
"""

from __future__ import annotations

import collections
import contextlib
import os
import platform
import queue
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from convpipe.errors import ConvpipeError

from .artifact import check_elf, private_copy, read_manifest, verify_libraries, verify_library
from .cuda import cuda_arch_mismatch, cuda_gpu_missing
from .cuda import load_cuda_runtime  # noqa: F401 -- re-exported: importers of convpipe.runtime.module's CUDA helpers


@dataclass(frozen=True)
class IOInfo:
    """A model input or output: ONNX name, static shape, NumPy dtype name (the manifest's ``inputs`` /
    ``outputs`` entries; the compiler's importer describes a graph's inputs and outputs with it too)."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict:
        """The manifest entry: ``{"name", "shape" (a list), "dtype"}``."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def _host_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@dataclass(frozen=True)
class KernelTime:
    """One function the VM called during :meth:`Module.profile`: its symbol (a compiled kernel such as
    ``fused_conv2d_add_relu`` or a VM builtin such as ``vm.builtin.alloc_tensor``), calls per run, ms per run."""

    name: str
    calls: float
    ms: float


def check_target(manifest: dict, device: str) -> None:
    """Refuse an artifact built for another target or TVM version than this process can run.

    Raises:
        ConvpipeError: TVM version differs; an x86 artifact on a non-x86 host or AVX-512 code on a host without
            AVX-512 (AVX2 likewise); an ARM artifact on a non-aarch64 host; a CUDA artifact without a GPU.
    """
    import tvm

    if manifest["tvm_version"] != tvm.__version__:
        raise ConvpipeError(
            f"artifact built with TVM {manifest['tvm_version']}, this runtime has TVM {tvm.__version__}: recompile it"
        )
    tgt = manifest["target"]
    arch, isa = tgt.get("arch"), tgt.get("isa")
    machine = platform.machine().lower()
    if arch == "x86":
        if machine not in ("x86_64", "amd64"):
            raise ConvpipeError(f"artifact built for x86 ({isa}), this host is {machine}")
        flags = _host_flags()
        need = {"avx512": "avx512f", "avx2": "avx2"}.get(isa)
        if need and flags and need not in flags:
            raise ConvpipeError(f"artifact built for x86 {isa}, this CPU lacks {need}: recompile with --target x86 here")
        if device != "cpu":
            raise ConvpipeError(f"artifact built for x86 CPU, asked to run on device {device!r}")
    elif arch == "arm":
        if machine not in ("aarch64", "arm64"):
            raise ConvpipeError(
                f"artifact built for aarch64 ({isa}), this host is {machine}: run it on the board (--remote HOST:PORT)"
            )
    elif arch == "cuda":
        if device != "cuda":
            raise ConvpipeError(f"artifact built for CUDA {isa}, asked to run on device {device!r}")
        why = cuda_gpu_missing()
        if why:
            raise ConvpipeError(f"artifact built for CUDA {isa}, but no CUDA GPU is present ({why})")
        bad = cuda_arch_mismatch(isa, tvm.cuda(0).compute_version)
        if bad:
            raise ConvpipeError(bad)
    else:
        raise ConvpipeError(f"artifact has unknown target arch {arch!r}")


def check_inputs(expected: Sequence[IOInfo], inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray],
                 accepted: Sequence[dict] | None = None) -> list[np.ndarray]:
    """Validate inputs against ``expected`` (by name, or positionally) and return them in input order.

    Args:
        expected: the model's inputs.
        inputs: ``{name: np.ndarray}``, or a list/tuple of arrays in input order.
        accepted: a variable-size artifact's ``dynamic.inputs`` (one ``{"name", "dims", "dtype"}`` per input, a
            dim an int or ``[lo, hi]``): shapes are checked against these dims (:func:`check_shape`) instead of
            ``expected``'s exact shapes.

    Returns:
        C-contiguous arrays in input order.

    Raises:
        ConvpipeError: ``inputs`` is neither a mapping nor a list/tuple (e.g. ``None``, a string, a bare array);
            a missing, unexpected, non-array, wrong-shape or wrong-dtype input (names it, expected vs got; for a
            variable-size artifact the axis, its range and the size given).
    """
    names = [i.name for i in expected]
    if type(inputs) not in (list, tuple, dict) and (  # the common types first: ABC checks cost ~0.3 us each
        isinstance(inputs, (np.ndarray, str, bytes, bytearray)) or not isinstance(inputs, (Mapping, Sequence))
    ):
        got = "a bare ndarray" if isinstance(inputs, np.ndarray) else type(inputs).__name__
        raise ConvpipeError(
            f"inputs: expected {{name: array}} or a list of arrays in input order {names}, got {got}"
            + (f" (wrap it: [array] or {{{names[0]!r}: array}})" if isinstance(inputs, np.ndarray) and names else "")
        )
    if type(inputs) is dict or (type(inputs) not in (list, tuple) and isinstance(inputs, Mapping)):
        extra = [k for k in inputs if k not in names]
        if extra:
            raise ConvpipeError(f"unexpected input(s) {extra}; the model's inputs are {names}")
        missing = [n for n in names if n not in inputs]
        if missing:
            raise ConvpipeError(f"missing input(s) {missing}; the model's inputs are {names}")
        arrays = [inputs[n] for n in names]
    else:
        arrays = list(inputs)
        if len(arrays) != len(names):
            raise ConvpipeError(f"got {len(arrays)} positional input(s), the model takes {len(names)}: {names}")
    out = []
    for k, (info, a) in enumerate(zip(expected, arrays)):
        if not isinstance(a, np.ndarray):
            raise ConvpipeError(f"input {info.name!r}: expected a NumPy array, got {type(a).__name__}")
        if accepted is not None:
            check_shape(info.name, accepted[k]["dims"], a.shape)
        elif a.shape != tuple(info.shape):
            raise ConvpipeError(f"input {info.name!r}: expected shape {list(info.shape)}, got {list(a.shape)}")
        if a.dtype != _np_dtype(info.dtype):
            raise ConvpipeError(f"input {info.name!r}: expected dtype {info.dtype}, got {a.dtype}")
        out.append(a if a.flags.c_contiguous else np.ascontiguousarray(a))  # ascontiguousarray makes 0-d 1-d
    return out


def dims_text(dims: Sequence) -> str:
    """An accepted shape as text: ``[1, 3, 32..1024, 32..1024]``."""
    return "[" + ", ".join(f"{d[0]}..{d[1]}" if isinstance(d, (list, tuple)) else str(d) for d in dims) + "]"


def check_shape(name: str, dims: Sequence, shape: Sequence[int]) -> None:
    """Check an input's ``shape`` against the dims a variable-size artifact accepts (``dims``: an int or an
    inclusive ``[lo, hi]`` per axis).

    Raises:
        ConvpipeError: wrong rank (names the input, the accepted shape and the shape given), or a size outside
            an axis's range or unequal to its exact size (names the input, axis, range and size).
    """
    if len(shape) != len(dims):
        raise ConvpipeError(f"input {name!r}: expected rank {len(dims)} (shape {dims_text(dims)}), got rank "
                            f"{len(shape)} (shape {list(shape)})")
    for axis, (d, s) in enumerate(zip(dims, shape)):
        if isinstance(d, (list, tuple)):
            if not d[0] <= s <= d[1]:
                raise ConvpipeError(f"input {name!r} axis {axis}: expected a size in {d[0]}..{d[1]}, got {s} "
                                    f"(accepted shape {dims_text(dims)})")
        elif s != d:
            raise ConvpipeError(f"input {name!r} axis {axis}: expected {d}, got {s} (accepted shape "
                                f"{dims_text(dims)})")


_NP_DTYPES: dict[str, np.dtype] = {}


def _np_dtype(name: str) -> np.dtype:
    """``np.dtype(name)``, cached: comparing dtypes is ~0.05 us, ``str(a.dtype)`` ~6 us."""
    d = _NP_DTYPES.get(name)
    if d is None:
        d = _NP_DTYPES[name] = np.dtype(name)
    return d


def check_outputs(expected: Sequence[IOInfo], outputs: Sequence[np.ndarray]) -> None:
    """Check what the library returned against the manifest's outputs (count, shapes, dtypes).

    Raises:
        ConvpipeError: names the output, expected (the manifest's) vs got (the library's).
    """
    if len(outputs) != len(expected):
        raise ConvpipeError(f"library returned {len(outputs)} outputs, manifest lists {len(expected)}")
    for info, a in zip(expected, outputs):
        if a.shape != info.shape:
            raise ConvpipeError(f"output {info.name!r}: expected shape {list(info.shape)} (manifest), got "
                                f"{list(a.shape)} from the library")
        if a.dtype != _np_dtype(info.dtype):
            raise ConvpipeError(f"output {info.name!r}: expected dtype {info.dtype} (manifest), got {a.dtype} "
                                "from the library")


def io_info(manifest: dict, kind: str) -> list[IOInfo]:
    """The manifest's ``inputs`` or ``outputs`` as :class:`IOInfo`."""
    return [IOInfo(i["name"], tuple(i["shape"]), i["dtype"]) for i in manifest[kind]]


@dataclass
class Build:
    """One build of a loaded artifact (a one-build artifact has one, ``"default"``): its name, kind
    (``"bucket"``: exact input shapes; ``"generic"``: symbolic dims), the loaded library, its exact ``inputs``
    (``None`` for a generic build) and ``outputs`` (:class:`IOInfo`; a generic build's symbolic dims are the
    expression's text, e.g. ``"(h - 1) // 2 + 1"``)."""

    name: str
    kind: str
    lib: object
    inputs: list | None
    outputs: list

    def check_outputs(self, outputs: Sequence) -> None:
        """:func:`check_outputs`, the symbolic dims of a generic build matching any size.

        Raises:
            ConvpipeError: count, rank, a static dim or a dtype differs from the manifest's (names the output).
        """
        if self.kind != "generic":
            return check_outputs(self.outputs, outputs)
        if len(outputs) != len(self.outputs):
            raise ConvpipeError(f"library returned {len(outputs)} outputs, manifest lists {len(self.outputs)}")
        for info, a in zip(self.outputs, outputs):
            ok = len(a.shape) == len(info.shape) and all(isinstance(d, str) or d == s for d, s in zip(info.shape, a.shape))
            if not ok:
                raise ConvpipeError(f"output {info.name!r}: expected shape {list(info.shape)} (manifest), got "
                                    f"{list(a.shape)} from the library")
            if str(a.dtype) != info.dtype:
                raise ConvpipeError(f"output {info.name!r}: expected dtype {info.dtype} (manifest), got {a.dtype} "
                                    "from the library")


class Module:
    """A loaded artifact. Use :func:`load` to make one (same arguments).

    Attributes:
        path: the artifact directory.
        manifest: the parsed, schema-checked ``manifest.json`` (see :mod:`convpipe.runtime.artifact`).
        inputs, outputs: lists of :class:`IOInfo` in graph order (a variable-size artifact: its default build's).
        input_dims: a variable-size artifact's accepted dims (the manifest's ``dynamic.inputs``: per input
            ``{"name", "dims", "dtype"}``, a dim an int or ``[lo, hi]``); ``None`` for a one-build artifact.
        builds: every :class:`Build` (one, ``"default"``, for a one-build artifact); :meth:`select` picks one.

    Variable-size artifacts (issue 16): every build's library is checked (inside the artifact, its manifest
    sha256, a well-formed ELF) and loaded at load time; ``expected_sha256`` pins all of them at once: it is the
    artifact's :func:`convpipe.runtime.pin_digest` (``convpipe inspect`` prints it), checked before any library
    loads.
    """

    def __init__(self, path: str, device: str | None = None, threads: int | None = None,
                 expected_sha256: str | None = None):
        if threads:
            os.environ["TVM_NUM_THREADS"] = str(threads)
        else:
            os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
        import tvm

        self.path = path
        self.manifest = read_manifest(path)
        device = device or ("cuda" if self.manifest["target"]["arch"] == "cuda" else "cpu")
        lib = verify_libraries(path, self.manifest, expected_sha256=expected_sha256)
        check_target(self.manifest, device)
        self.inputs = io_info(self.manifest, "inputs")
        self.outputs = io_info(self.manifest, "outputs")
        self._dev = tvm.cuda(0) if self.manifest["target"]["arch"] == "cuda" else tvm.cpu(0)
        self._lib = self._load_library(lib, self.manifest["library"]["sha256"])
        dyn = self.manifest.get("dynamic")
        #: a variable-size artifact's accepted dims (the manifest's ``dynamic.inputs``); ``None``: exact shapes
        self.input_dims: list[dict] | None = dyn["inputs"] if dyn else None
        if dyn is None:
            self.builds = [Build("default", "bucket", self._lib, self.inputs, self.outputs)]
        else:
            self.builds = []
            for k, b in enumerate(dyn["builds"]):
                if b["library"]["file"] == self.manifest["library"]["file"]:
                    blib = self._lib
                else:  # each further library: inside the artifact, its manifest sha256 (verify_library)
                    blib = self._load_library(verify_library(path, b), b["library"]["sha256"],
                                              quiet=b["kind"] == "generic")
                ins = io_info(b, "inputs") if b["kind"] == "bucket" else None
                outs = [IOInfo(o["name"], tuple(o["shape"]), o["dtype"]) for o in b["outputs"]]
                self.builds.append(Build(b["name"], b["kind"], blib, ins, outs))
            names = [i.name for i in self.inputs]
            if [i["name"] for i in self.input_dims] != names:
                raise ConvpipeError(f"{path}: malformed manifest: dynamic.inputs names "
                                    f"{[i['name'] for i in self.input_dims]}, inputs {names}")
        self._exact = {tuple(tuple(i.shape) for i in b.inputs): b for b in self.builds if b.kind == "bucket"}
        self._generic = next((b for b in self.builds if b.kind == "generic"), None)
        self._local = threading.local()

    def _load_library(self, lib: str, sha256: str, quiet: bool = False):
        """dlopen a private copy of ``lib`` with the checked bytes (see private_copy: no swap after the check, and
        no stale image when an artifact is rebuilt at the same path). ``quiet``: a generic build's library, whose
        loading makes TVM 0.27 log one ``Warning: Scope Loaded:`` line per memory scope of its executable to the
        process's stderr (:func:`quiet_native_stderr`)."""
        import tvm

        with private_copy(lib, sha256) as private:
            check_elf(private, shown_as=lib)  # what dlopen maps (a CUDA library: host code + device binary)
            try:
                with quiet_native_stderr() if quiet else contextlib.nullcontext():
                    return tvm.runtime.load_module(private)
            except Exception as e:
                raise ConvpipeError(f"{lib}: TVM could not load the library: {' '.join(str(e).split())}") from None

    def select(self, shapes: Sequence[Sequence[int]]) -> Build:
        """The build that serves inputs of these ``shapes`` (in input order, already checked against the accepted
        dims): the bucket whose shapes equal them exactly, else the generic build.

        Raises:
            ConvpipeError: no bucket has these shapes and the artifact has no generic build (names the shapes
                accepted and why there is no generic build).
        """
        key = tuple(tuple(s) for s in shapes)
        b = self._exact.get(key)
        if b is not None:
            return b
        if self._generic is not None:
            return self._generic
        given = "; ".join(f"{i.name}={list(s)}" for i, s in zip(self.inputs, key))
        buckets = " | ".join("; ".join(f"{i.name}={list(s)}" for i, s in zip(self.inputs, k)) for k in self._exact)
        why = (self.manifest.get("dynamic") or {}).get("no_generic")
        raise ConvpipeError(f"input shapes {given}: this artifact accepts only its bucket shapes ({buckets}): it has "
                            f"no generic build" + (f" ({why})" if why else ""))

    # -- running --------------------------------------------------------------------------------------------
    def _vm(self, build: Build | None = None):
        """This OS thread's VirtualMachine for ``build`` (default: the default build; created on first use)."""
        build = build or self.builds[0]
        vms = getattr(self._local, "vms", None)
        if vms is None:
            vms = self._local.vms = {}
        vm = vms.get(build.name)
        if vm is None:
            from tvm.runtime.vm import VirtualMachine

            vm = vms[build.name] = VirtualMachine(build.lib, self._dev)
        return vm

    def check_inputs(self, inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> list[np.ndarray]:
        """Validate and order inputs (see :func:`check_inputs`; a variable-size artifact checks each dim
        against its accepted size or range)."""
        return check_inputs(self.inputs, inputs, self.input_dims)

    def _checked(self, inputs) -> tuple[list[np.ndarray], tuple]:
        """Checked arrays, and ``(build,)`` for a variable-size artifact (``()`` for a one-build artifact, whose
        ``_run_here`` & co. are called as before)."""
        arrays = self.check_inputs(inputs)
        return arrays, (() if self.input_dims is None else (self.select([a.shape for a in arrays]),))

    def run(self, inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model once. On a thread other than the main thread the run is carried out by one of the
        runtime's runner threads while this one waits (see the module docstring: this keeps OS threads bounded).

        Args:
            inputs: ``{name: array}`` or a list/tuple of arrays in input order; NumPy arrays whose shapes and
                dtypes are exactly those of :attr:`inputs` -- for a variable-size artifact, shapes within
                :attr:`input_dims` (served by the bucket build of exactly that shape, else the generic build:
                :meth:`select`).

        Returns:
            ``{output name: np.ndarray}`` in graph output order, shapes and dtypes as :attr:`outputs` (a
            variable-size artifact: as the serving build's outputs, whose sizes follow the input's).

        Raises:
            ConvpipeError: bad inputs (see :func:`check_inputs`); the library failed on inputs the manifest
                accepts, or returned outputs whose count, shapes or dtypes differ from the manifest's (see
                :func:`check_outputs`): the manifest does not describe this library.
        """
        arrays, extra = self._checked(inputs)
        if _runs_here():
            return self._run_here(arrays, *extra)
        return RUNNERS.call(self._run_here, arrays, *extra)

    def _input_buffers(self, build: Build | None = None) -> tuple[list, list[np.ndarray]]:
        """This OS thread's input tensors for a CPU artifact (allocated by TVM, 64-byte aligned, shapes and dtypes
        of :attr:`inputs`) and NumPy views of them: :meth:`run` copies the caller's arrays in with ``np.copyto``
        (``tvm.runtime.tensor`` per call cost ~20-50 us of Python-side allocation and copy on a tiny input)."""
        build = build or self.builds[0]
        cache = getattr(self._local, "inputs", None)
        if cache is None:
            cache = self._local.inputs = {}
        got = cache.get(build.name)
        if got is None:
            import tvm

            bufs = [tvm.runtime.empty(tuple(i.shape), i.dtype, self._dev) for i in build.inputs]
            got = cache[build.name] = (bufs, [np.from_dlpack(b) for b in bufs])
        return got

    def _run_here(self, arrays: list[np.ndarray], build: Build | None = None) -> dict[str, np.ndarray]:
        import tvm

        build = build or self.builds[0]
        cpu = self._dev.dlpack_device_type() == 1
        try:
            if cpu and build.kind == "bucket":
                bufs, views = self._input_buffers(build)
                for view, a in zip(views, arrays):
                    np.copyto(view, a)
                res = self._vm(build)["main"](*bufs)
            elif cpu:  # a generic build: shapes vary per call, so no reused buffers
                views = [a if a.ctypes.data % 64 == 0 else _aligned_copy(a) for a in arrays]
                res = self._vm(build)["main"](*[tvm.runtime.from_dlpack(v) for v in views])
            else:
                res = self._vm(build)["main"](*[tvm.runtime.tensor(a, self._dev) for a in arrays])
        except Exception as e:  # noqa: BLE001 -- inputs passed the manifest's checks, so the artifact disagrees with itself
            msg = " ".join(str(e).split())[:400] or type(e).__name__
            raise ConvpipeError(f"{self.path}: the library failed on inputs that match the manifest (was the "
                                f"manifest edited?): {msg}") from None
        if cpu:  # the VM's output memory itself (DLPack keeps it alive), unless it aliases an input or an output
            out = _distinct(views, [np.from_dlpack(t) for t in flatten_outputs(res)])
        else:
            out = [t.numpy() for t in flatten_outputs(res)]
        build.check_outputs(out)
        return {o.name: a for o, a in zip(build.outputs, out)}

    def run_tensors(self, tensors: Sequence) -> list:
        """Run once on DLPack tensors, without copying what already lives on the artifact's device.

        Args:
            tensors: one per input, in input order: objects with ``__dlpack__`` (``torch.Tensor``, NumPy arrays,
                CuPy, TVM tensors), C-contiguous, with exactly the shapes and dtypes of :attr:`inputs`, on the
                artifact's device (CPU memory for a CPU artifact, ``cuda:0`` for a CUDA one). CPU memory that is not
                64-byte aligned (e.g. ``torch.from_numpy`` of a NumPy array), which TVM does not alias, is copied.

        Returns:
            TVM tensors in output order (shapes and dtypes as :attr:`outputs`); each exports DLPack, so
            ``torch.from_dlpack(t)`` or ``np.from_dlpack(t)`` (CPU) shares its memory.

        Raises:
            ConvpipeError: wrong count, shape, dtype or device (names the input); a non-contiguous tensor; the
                library failed.
        """
        import tvm

        if len(tensors) != len(self.inputs):
            raise ConvpipeError(f"got {len(tensors)} tensor(s), the model takes {len(self.inputs)}: "
                                f"{[i.name for i in self.inputs]}")
        args = []
        for info, x in zip(self.inputs, tensors):
            try:
                t = x if isinstance(x, tvm.runtime.Tensor) else tvm.runtime.from_dlpack(x)
            except Exception as e:  # noqa: BLE001 -- not DLPack, or strides / alignment TVM cannot take
                t = None
                if "aligned" in str(e) and self._dev.dlpack_device_type() == 1:
                    try:  # CPU memory TVM will not alias (it wants 64-byte alignment): copy it once
                        t = tvm.runtime.tensor(np.ascontiguousarray(np.from_dlpack(x)), self._dev)
                    except Exception:  # noqa: BLE001 -- reported below
                        t = None
                if t is None:
                    raise ConvpipeError(f"input {info.name!r}: cannot take it through DLPack (a C-contiguous tensor "
                                        f"is needed): {' '.join(str(e).split())[:200]}") from None
            if self.input_dims is not None:
                check_shape(info.name, self.input_dims[len(args)]["dims"], tuple(t.shape))
            elif tuple(t.shape) != tuple(info.shape):
                raise ConvpipeError(f"input {info.name!r}: expected shape {list(info.shape)}, got {list(t.shape)}")
            if str(t.dtype) != info.dtype:
                raise ConvpipeError(f"input {info.name!r}: expected dtype {info.dtype}, got {t.dtype}")
            if t.device.dlpack_device_type() != self._dev.dlpack_device_type():
                raise ConvpipeError(f"input {info.name!r}: on {t.device}, the artifact runs on {self._dev}")
            args.append(t)
        extra = () if self.input_dims is None else (self.select([tuple(t.shape) for t in args]),)
        if _runs_here():
            return self._run_tensors_here(args, *extra)
        return RUNNERS.call(self._run_tensors_here, args, *extra)

    def _run_tensors_here(self, args: list, build: Build | None = None) -> list:
        build = build or self.builds[0]
        try:
            res = self._vm(build)["main"](*args)
        except Exception as e:  # noqa: BLE001 -- inputs passed the manifest's checks
            msg = " ".join(str(e).split())[:400] or type(e).__name__
            raise ConvpipeError(f"{self.path}: the library failed on inputs that match the manifest: {msg}") from None
        out = flatten_outputs(res)
        build.check_outputs(out)
        return out

    def profile(self, inputs, runs: int = 10) -> tuple[list[KernelTime], float]:
        """Time every kernel call of ``runs`` runs (after one warm-up run), through the Relax VM's instrument hook
        (``VirtualMachine.set_instrument``: called before and after each Call instruction).

        Returns:
            ``(kernels, run_ms)``: one :class:`KernelTime` per called function (compiled kernels and the VM's
            builtins such as allocation), slowest first, ms and calls per run averaged over the runs; ``run_ms``
            the mean wall time of one instrumented run in ms (the kernels' sum plus the VM's own work and the
            hook's ~1-2 us per call).

        Raises:
            ConvpipeError: bad inputs (see :func:`check_inputs`); ``runs`` < 1.
        """
        if runs < 1:
            raise ConvpipeError(f"runs: expected at least 1, got {runs}")
        arrays, extra = self._checked(inputs)
        if _runs_here():
            return self._profile_here(arrays, runs, *extra)
        return RUNNERS.call(self._profile_here, arrays, runs, *extra)

    def _profile_here(self, arrays, runs: int, build: Build | None = None):
        import statistics
        import time as _time

        import tvm
        from tvm.runtime.vm import VirtualMachine

        vm = VirtualMachine((build or self.builds[0]).lib, self._dev)
        args = [tvm.runtime.tensor(a, self._dev) for a in arrays]
        sync = self._dev.sync if self._dev.dlpack_device_type() != 1 else (lambda: None)
        totals: dict[str, list] = {}
        started: list = []

        def hook(func, symbol, before, ret, *call_args):
            if before:
                sync()
                started.append(_time.perf_counter_ns())
            else:
                sync()
                t = _time.perf_counter_ns() - started.pop()
                rec = totals.setdefault(str(symbol), [0, 0])
                rec[0] += 1
                rec[1] += t
            return 0  # VMInstrumentReturnKind.kNoOp

        vm.set_instrument(hook)
        vm["main"](*args)  # warm-up, not counted
        totals.clear()
        walls = []
        for _ in range(runs):
            t0 = _time.perf_counter_ns()
            vm["main"](*args)
            sync()
            walls.append((_time.perf_counter_ns() - t0) / 1e6)
        kernels = [KernelTime(name, calls / runs, ns / runs / 1e6) for name, (calls, ns) in totals.items()]
        kernels.sort(key=lambda k: -k.ms)
        return kernels, statistics.fmean(walls)  # the mean, as the kernels' times: their sum fits inside it

    def time(self, inputs, number: int = 10, repeat: int = 5) -> list[float]:
        """Per-run latency in seconds, ``repeat`` figures each the mean of ``number`` runs (TVM time_evaluator,
        inputs already on the device). Uses a VM of its own: one that was given ``set_input`` only takes
        ``invoke_stateful`` calls afterwards, so the thread's VM for :meth:`run` must not be used. Off the main
        thread it is carried out by a runner thread, as :meth:`run`.

        Raises:
            ConvpipeError: bad inputs (see :func:`check_inputs`).
        """
        arrays, extra = self._checked(inputs)
        if _runs_here():
            return self._time_here(arrays, number, repeat, *extra)
        return RUNNERS.call(self._time_here, arrays, number, repeat, *extra)

    def _time_here(self, arrays, number, repeat, build: Build | None = None) -> list[float]:
        import tvm
        from tvm.runtime.vm import VirtualMachine

        vm = VirtualMachine((build or self.builds[0]).lib, self._dev)
        args = [tvm.runtime.tensor(a, self._dev) for a in arrays]
        vm.set_input("main", *args)
        fn = vm.time_evaluator("invoke_stateful", self._dev, number=number, repeat=repeat)
        return list(fn("main").results)


def quiet_native_stderr():
    """Send what native code writes to file descriptor 2 to ``/dev/null`` while active (Python's ``sys.stderr``
    is flushed first and restored after). Used around TVM calls that log noise through ``LOG(WARNING)``, which no
    setting turns off: saving and loading a Relax executable with symbolic shapes logs ``Warning: Scope
    Saving:`` / ``Scope Loaded:`` per memory scope (``src/runtime/vm/executable.cc``). Errors still arrive as
    exceptions. Other threads' writes to fd 2 in that window are lost too, so keep it short."""
    return quiet_native_fd(2)


@contextlib.contextmanager
def quiet_native_fd(fd: int):
    """Send what is written to file descriptor ``fd`` (1: stdout, 2: stderr) to ``/dev/null`` while active, native
    code included (the matching Python stream is flushed first); see :func:`quiet_native_stderr`."""
    import sys

    try:
        (sys.stdout if fd == 1 else sys.stderr).flush()
        saved = os.dup(fd)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)
        yield
    finally:
        (sys.stdout if fd == 1 else sys.stderr).flush()
        os.dup2(saved, fd)
        os.close(saved)


def _aligned_copy(a: np.ndarray) -> np.ndarray:
    """A 64-byte aligned C-contiguous copy of ``a`` (TVM aliases only aligned CPU memory through DLPack)."""
    raw = np.empty(a.nbytes + 64, np.uint8)
    off = (-raw.ctypes.data) % 64
    out = raw[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
    np.copyto(out, a)
    return out


def _distinct(inputs: list[np.ndarray], outputs: list[np.ndarray]) -> list[np.ndarray]:
    """``outputs`` with a copy of each one whose memory overlaps a reused input buffer (an output that is a graph
    input, or a view of one, would change at the next run) or an earlier output (the same tensor returned twice).
    ``np.may_share_memory`` compares the arrays' address ranges only (``max_work=0``): ~0.3 us a pair, where
    reading ``__array_interface__`` cost ~4 us an array (a dict built per call)."""
    result: list[np.ndarray] = []
    for a in outputs:
        if any(np.may_share_memory(a, b) for b in inputs) or any(np.may_share_memory(a, b) for b in result):
            a = a.copy()
        result.append(a)
    return result


def flatten_outputs(res) -> list:
    """A VM result (a tensor or nested tuples of tensors) as a flat list in output order."""
    import tvm

    if isinstance(res, tvm.runtime.Tensor):
        return [res]
    out = []
    for r in res:
        out.extend(flatten_outputs(r))
    return out


# ---- runner threads -----------------------------------------------------------------------------------------
_main_ident = threading.main_thread().ident


def _runs_here() -> bool:
    """Whether a run may use the calling thread: the main thread (its TVM pool lives as long as the process), or
    any thread when TVM runs single-threaded (``TVM_NUM_THREADS=1``: kernels never start a pool)."""
    return threading.get_ident() == _main_ident or os.environ.get("TVM_NUM_THREADS") == "1"


def max_runners() -> int:
    """How many runner threads :data:`RUNNERS` may start: enough to keep the cores busy with
    ``TVM_NUM_THREADS``-thread runs (``cpu_count // TVM_NUM_THREADS``), at least 2 and at most 8."""
    cpus = os.cpu_count() or 1
    try:
        per_run = max(1, int(os.environ.get("TVM_NUM_THREADS") or cpus))
    except ValueError:
        per_run = cpus
    return max(2, min(8, cpus // per_run))


class _Job:
    __slots__ = ("fn", "args", "result", "error", "done")

    def __init__(self, fn, args):
        self.fn, self.args, self.result, self.error = fn, args, None, None
        self.done = threading.Lock()
        self.done.acquire()

    def run(self) -> None:
        try:
            self.result = self.fn(*self.args)
        except BaseException as e:  # noqa: BLE001 -- handed to the caller, which re-raises it
            self.error = e
        self.fn = self.args = None  # keep no Module alive from a runner's last job
        self.done.release()


class Runners:
    """A bounded, process-wide set of long-lived threads that carry out runs for other threads.

    Runner threads start on demand, up to ``size`` (:func:`max_runners`, fixed when the first one starts); a call
    goes to the most recently idle runner (whose TVM pool is the warmest), else to a new one, else waits in a FIFO
    backlog. Runner threads never end (daemon threads), so the TVM pool each one makes lives on and is reused.
    """

    def __init__(self):
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue] = []  # inboxes of idle runners, most recently idle last
        self._backlog: collections.deque[_Job] = collections.deque()
        self.started = 0
        self.size = 0

    def call(self, fn, *args):
        """``fn(*args)`` on a runner thread; returns its result or raises its exception, in the calling thread."""
        job = _Job(fn, args)
        with self._lock:
            if self._idle:
                self._idle.pop().put(job)
            else:
                if not self.size:
                    self.size = max_runners()
                if self.started < self.size:
                    self.started += 1
                    threading.Thread(target=self._serve, args=(job,), daemon=True,
                                     name=f"convpipe-runner-{self.started}").start()
                else:
                    self._backlog.append(job)
        job.done.acquire()
        if job.error is not None:
            raise job.error
        return job.result

    def _serve(self, job: _Job) -> None:
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        while True:
            job.run()
            with self._lock:
                job = self._backlog.popleft() if self._backlog else None  # no reference kept while idle
                if job is None:
                    self._idle.append(inbox)
            if job is None:
                job = inbox.get()


#: The process's runner threads (see :class:`Runners`).
RUNNERS = Runners()


def _after_fork_in_child() -> None:
    global _main_ident
    _main_ident = threading.get_ident()  # the forking thread is the child's only, and main, thread
    RUNNERS._reset()  # the runner threads were not copied


os.register_at_fork(after_in_child=_after_fork_in_child)


def load(path: str | os.PathLike, device: str | None = None, threads: int | None = None,
         expected_sha256: str | None = None) -> Module:
    """Load an artifact directory made by ``convpipe compile``.

    Loading runs the library's native code. The manifest's sha256 only detects corruption (whoever can replace
    ``model.so`` can rewrite the manifest): to load only the library you trust, pass its ``expected_sha256``.

    Args:
        path: the artifact directory.
        device: ``"cpu"`` or ``"cuda"``; default: the artifact's (a CUDA artifact runs on ``cuda:0``).
        threads: CPU threads for TVM's pool (see the module docstring).
        expected_sha256: if given, the sha256 (64 hex digits, any case) the library must have; checked before the
            library is loaded.

    Raises:
        ConvpipeError: not an artifact; a manifest breaking the schema (one line listing every problem); a library
            path leading outside the artifact; library missing, its sha256 differs from ``expected_sha256`` or
            from the manifest's; built for another target or TVM version; a library that is not a well-formed
            shared library for this machine (e.g. truncated); TVM failed to load it.
    """
    return Module(os.fspath(path), device, threads, expected_sha256)
