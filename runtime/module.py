"""Load and run a convpipe artifact with the TVM runtime and NumPy only (no torch, onnx or onnxruntime).

Usage, in the manner of ``onnxruntime.InferenceSession``::

    import convpipe.runtime as rt
    m = rt.load("resnet18.cpa")
    outputs = m.run({"input": x})          # or m.run([x]); -> {"output": np.ndarray}

Threads: TVM's kernel thread pool uses ``TVM_NUM_THREADS`` threads; :func:`load` sets it to ``threads`` when
given, else (if unset) to ``os.cpu_count()`` -- TVM's own default counts one per physical core pair here. It is
read when the pool starts (the first run in the process).

Thread safety: one :class:`Module` may be shared by several threads. The loaded library (kernels and constant
weights) is shared; each thread gets its own Relax ``VirtualMachine`` (created on that thread's first
:meth:`Module.run`), because a VM keeps per-call state (registers, allocated intermediate tensors).
"""

from __future__ import annotations

import os
import platform
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from convpipe.errors import ConvpipeError

from .artifact import read_manifest, verify_library


@dataclass(frozen=True)
class IOInfo:
    """A model input or output: ONNX name, static shape, NumPy dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str


def _host_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


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


def cuda_gpu_missing() -> str | None:
    """Why this process cannot run CUDA kernels (TVM's CUDA runtime cannot be loaded, see
    :func:`load_cuda_runtime`, or it sees no GPU 0), or ``None`` when it can."""
    why = load_cuda_runtime()
    if why:
        return why
    import tvm

    try:
        return None if tvm.cuda(0).exist else "TVM's CUDA runtime sees no GPU"
    except Exception as e:  # noqa: BLE001 -- a broken driver raises instead of answering
        return f"TVM's CUDA runtime failed: {e}"


def load_cuda_runtime() -> str | None:
    """Make sure TVM's CUDA runtime (``tvm/lib/libtvm_runtime_cuda.so``) is loaded; ``None`` when it is, else why
    it cannot be (e.g. no CUDA driver ``libcuda.so.1``).

    ``import tvm`` loads it itself, except in a runtime-only TVM (``TVM_USE_RUNTIME_LIB=1``, or a deployment
    without ``libtvm_compiler.so``), which loads no device backends: this does what
    ``tvm/backend/cuda/__init__.py: register_backend`` does."""
    import tvm_ffi

    if tvm_ffi.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True) is not None:
        return None
    from pathlib import Path

    from tvm.base import _LOADED_LIBS
    from tvm_ffi.libinfo import load_lib_ctypes

    def load():
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
            package="tvm", target_name="tvm_runtime_cuda",
            extra_lib_paths=[Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent], mode="RTLD_LOCAL",
        )

    try:
        load()
    except (OSError, FileNotFoundError, RuntimeError) as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else str(e)
        if "libcudart" not in msg or not _preload_cudart():
            return f"TVM's CUDA runtime cannot be loaded: {msg}"
        try:
            load()
        except (OSError, FileNotFoundError, RuntimeError) as e2:
            return f"TVM's CUDA runtime cannot be loaded: {str(e2).strip().splitlines()[-1]}"
    return None


def _preload_cudart() -> bool:
    """Load ``libcudart.so.13`` (which ``libtvm_runtime_cuda.so`` links) from a CUDA toolkit (``$CUDA_HOME``,
    ``$CUDA_PATH``, ``/usr/local/cuda``) or a pip ``nvidia-cuda-runtime`` package when the dynamic loader's path
    does not have it; True if one was loaded."""
    import ctypes
    import glob
    import sys

    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    candidates = [os.path.join(r, sub, "libcudart.so.13") for r in roots if r for sub in ("lib64", "lib")]
    for p in sys.path:
        candidates += sorted(glob.glob(os.path.join(p, "nvidia", "*", "lib", "libcudart.so.13")))
    for c in candidates:
        if os.path.isfile(c):
            try:
                ctypes.CDLL(c, mode=ctypes.RTLD_GLOBAL)
                return True
            except OSError:
                continue
    return False


def cuda_arch_mismatch(arch: str, compute_version: str) -> str | None:
    """Why a cubin built for ``arch`` (``"sm_86"``) cannot run on a GPU of ``compute_version`` (``"8.9"``), or
    ``None`` when it can: a cubin runs on GPUs of the same major version and an equal or higher minor version
    (CUDA C Programming Guide, "Binary Compatibility"); ``sm_90a``-style arch-specific code only on that exact
    GPU."""
    digits = arch.removeprefix("sm_")
    specific = digits.endswith("a")
    digits = digits.rstrip("a")
    if not digits.isdigit() or len(digits) < 2:
        return f"artifact has an unknown CUDA arch {arch!r}"
    built = (int(digits[:-1]), int(digits[-1]))
    major, _, minor = compute_version.partition(".")
    gpu = (int(major), int(minor or 0))
    ok = gpu == built if specific else (gpu[0] == built[0] and gpu[1] >= built[1])
    if ok:
        return None
    here = f"sm_{gpu[0]}{gpu[1]}"
    return (
        f"artifact built for CUDA {arch}, this GPU is {here} (compute capability {compute_version}): "
        f"recompile with --target cuda --arch {here}"
    )


def check_inputs(expected: Sequence[IOInfo], inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> list[np.ndarray]:
    """Validate inputs against ``expected`` (by name, or positionally) and return them in input order.

    Raises:
        ConvpipeError: missing, unexpected, wrong-shape or wrong-dtype input (names it, expected vs got).
    """
    names = [i.name for i in expected]
    if isinstance(inputs, Mapping):
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
    for info, a in zip(expected, arrays):
        if not isinstance(a, np.ndarray):
            raise ConvpipeError(f"input {info.name!r}: expected a NumPy array, got {type(a).__name__}")
        if tuple(a.shape) != tuple(info.shape):
            raise ConvpipeError(f"input {info.name!r}: expected shape {list(info.shape)}, got {list(a.shape)}")
        if str(a.dtype) != info.dtype:
            raise ConvpipeError(f"input {info.name!r}: expected dtype {info.dtype}, got {a.dtype}")
        out.append(np.ascontiguousarray(a))
    return out


def io_info(manifest: dict, kind: str) -> list[IOInfo]:
    """The manifest's ``inputs`` or ``outputs`` as :class:`IOInfo`."""
    return [IOInfo(i["name"], tuple(i["shape"]), i["dtype"]) for i in manifest[kind]]


class Module:
    """A loaded artifact. Use :func:`load` to make one.

    Attributes:
        path: the artifact directory.
        manifest: the parsed ``manifest.json`` (see :mod:`convpipe.runtime.artifact`).
        inputs, outputs: lists of :class:`IOInfo` in graph order.
    """

    def __init__(self, path: str, device: str | None = None, threads: int | None = None):
        if threads:
            os.environ["TVM_NUM_THREADS"] = str(threads)
        else:
            os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
        import tvm

        self.path = path
        self.manifest = read_manifest(path)
        device = device or ("cuda" if self.manifest["target"].get("arch") == "cuda" else "cpu")
        lib = verify_library(path, self.manifest)
        check_target(self.manifest, device)
        self.inputs = io_info(self.manifest, "inputs")
        self.outputs = io_info(self.manifest, "outputs")
        self._dev = tvm.cuda(0) if self.manifest["target"]["arch"] == "cuda" else tvm.cpu(0)
        try:
            self._lib = tvm.runtime.load_module(lib)
        except Exception as e:
            raise ConvpipeError(f"{lib}: TVM could not load the library: {e}") from None
        self._local = threading.local()

    # -- running --------------------------------------------------------------------------------------------
    def _vm(self):
        vm = getattr(self._local, "vm", None)
        if vm is None:
            from tvm.runtime.vm import VirtualMachine

            vm = self._local.vm = VirtualMachine(self._lib, self._dev)
        return vm

    def check_inputs(self, inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> list[np.ndarray]:
        """Validate and order inputs (see :func:`check_inputs`)."""
        return check_inputs(self.inputs, inputs)

    def run(self, inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model once.

        Args:
            inputs: ``{name: array}`` or arrays in input order; shapes and dtypes exactly as :attr:`inputs`.

        Returns:
            ``{output name: np.ndarray}`` in graph output order.

        Raises:
            ConvpipeError: see :meth:`check_inputs`.
        """
        import tvm

        arrays = self.check_inputs(inputs)
        res = self._vm()["main"](*[tvm.runtime.tensor(a, self._dev) for a in arrays])
        flat = flatten_outputs(res)
        if len(flat) != len(self.outputs):
            raise ConvpipeError(f"library returned {len(flat)} outputs, manifest lists {len(self.outputs)}")
        return {o.name: t.numpy() for o, t in zip(self.outputs, flat)}

    def time(self, inputs, number: int = 10, repeat: int = 5) -> list[float]:
        """Per-run latency in seconds, ``repeat`` figures each the mean of ``number`` runs (TVM time_evaluator,
        inputs already on the device). Uses a VM of its own: one that was given ``set_input`` only takes
        ``invoke_stateful`` calls afterwards, so the thread's VM for :meth:`run` must not be used."""
        import tvm
        from tvm.runtime.vm import VirtualMachine

        arrays = self.check_inputs(inputs)
        vm = VirtualMachine(self._lib, self._dev)
        args = [tvm.runtime.tensor(a, self._dev) for a in arrays]
        vm.set_input("main", *args)
        fn = vm.time_evaluator("invoke_stateful", self._dev, number=number, repeat=repeat)
        return list(fn("main").results)


def flatten_outputs(res) -> list:
    """A VM result (a tensor or nested tuples of tensors) as a flat list in output order."""
    import tvm

    if isinstance(res, tvm.runtime.Tensor):
        return [res]
    out = []
    for r in res:
        out.extend(flatten_outputs(r))
    return out


def load(path: str | os.PathLike, device: str | None = None, threads: int | None = None) -> Module:
    """Load an artifact directory made by ``convpipe compile``.

    Args:
        path: the artifact directory.
        device: ``"cpu"`` or ``"cuda"``; default: the artifact's (a CUDA artifact runs on ``cuda:0``).
        threads: CPU threads for TVM's pool (see the module docstring).

    Raises:
        ConvpipeError: not an artifact; library missing or its sha256 disagrees with the manifest; built for
            another target or TVM version.
    """
    return Module(os.fspath(path), device, threads)
