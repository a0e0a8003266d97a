"""The CUDA side of the deployed runtime: load TVM's CUDA runtime library into this process, tell whether a GPU can
run kernels here, and whether a cubin built for one arch runs on this GPU. TVM + ctypes only (no torch, onnx or
onnxruntime), like the rest of :mod:`convpipe.runtime`.

Why loading is needed: ``import tvm`` loads ``libtvm_runtime_cuda.so`` itself, except in a runtime-only TVM
(``TVM_USE_RUNTIME_LIB=1``, or a deployment without ``libtvm_compiler.so``), which loads no device backends;
:func:`load_cuda_runtime` then does what ``tvm/backend/cuda/__init__.py: register_backend`` does. The compiler
uses it too, to register TVM's CUDA module factory at build time (:mod:`convpipe.compiler.cuda_device`).
"""

from __future__ import annotations

import os


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
