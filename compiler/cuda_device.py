"""CUDA device code for an artifact: the kernels are compiled by nvcc for the requested arch at build time and the
binary is embedded in the exported library, so loading the artifact needs no compiler (no nvcc, no NVRTC).

How TVM 0.27 decides what its CUDA module holds (``src/backend/cuda/codegen/codegen_cuda.cc``: ``BuildCUDA`` ->
``cuda_fallback_module.h``: ``CUDAModuleCreateWithFallback``):

- when the real CUDA runtime (``libtvm_runtime_cuda.so``) is loaded, the registered ``ffi.Module.create.cuda``
  compiles the source through the ``tvm_callback_cuda_compile`` callback and the module (and the library
  exported from it) holds the binary (``fmt`` ``cubin``);
- otherwise a ``CUDAFallbackModuleNode`` keeps the CUDA C *source* (``fmt`` ``cuda``), and the loader on the GPU
  machine JIT-compiles it at load time (``cuda_module.cc``: ``JitCompileFromSource``, NVRTC by default).

``libtvm_runtime_cuda.so`` links ``libcuda.so.1`` (the driver), so on a build machine without a driver TVM's
autoload skips it silently and every CUDA artifact would carry source only. :func:`cuda_build` therefore makes
sure the real module factory is registered -- loading, where no driver exists, a *stub* ``libcuda.so.1`` built
here from :data:`STUB_SOURCE` (the nine driver entry points the runtime links, each returning
``CUDA_ERROR_NO_DEVICE``; nothing is ever launched at build time) -- and, for the duration of the build,
replaces ``tvm_callback_cuda_compile`` by nvcc for the target's arch (:func:`.nvcc.compile_device_code`), recording
each kernel's ptxas figures for the manifest. nvcc itself (flags, ptxas figures, occupancy) is :mod:`.nvcc`; loading
TVM's CUDA runtime is :mod:`convpipe.runtime.cuda`.

**No fast-math by default.** TVM's own nvcc and NVRTC paths (``tvm/support/nvcc.py``: ``_compile_cuda_nvcc`` and the
NVRTC options) pass ``--use_fast_math``, which implies ``--ftz=true --prec-div=false --prec-sqrt=false`` and maps
``expf``/``logf``/``tanhf``/``powf``/``sinf``/``cosf`` to the hardware approximations (``__expf``: ``ex2.approx.ftz``
on ``x * log2(e)`` without range reduction, so its error grows with ``|x|``; ``tanh.approx.f32``;
``lg2.approx.ftz``; ``div.approx.ftz``; ``sqrt.approx.ftz``) -- an attention model's Softmax/GELU/LayerNorm then
deviates from onnxruntime by ~1e-4 of the output range. :func:`~convpipe.compiler.nvcc.nvcc_flags` (one
set of flags for artifacts and the schedules' ptxas checks) compiles IEEE-exact by default
(``--fmad=true`` kept explicitly: FMA contraction is exact per operation and what the conv kernels are scheduled
for) and adds ``--use_fast_math`` only when asked (``fast_math=True``). The CUDA C that TVM generates names the
precise functions (``expf``, ``erff``, ``tanhf``: ``src/backend/cuda/codegen/intrin_rule_cuda.cc``, ``cuda.
FLowerIntrinsic``) unless the ``tirx.enable_fast_math`` pass option selects its ``cuda.fastmath.FLowerIntrinsic``
rules (``__expf``, ``__tanhf``, ...; ``src/tirx/transform/lower_intrin.cc``), which convpipe sets only with
``fast_math`` too (:func:`convpipe.compiler.pipeline.pass_config`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field

from convpipe.errors import ConvpipeError
from convpipe.runtime.cuda import load_cuda_runtime

from .nvcc import NVCC, compile_device_code, nvcc_available, nvcc_flags

#: C source of the build-time driver stub: exactly the ``cu*`` symbols ``libtvm_runtime_cuda.so`` (apache-tvm
#: 0.27.0.post1) imports (``nm -D --undefined-only``); each fails with CUDA_ERROR_NO_DEVICE (100).
STUB_SOURCE = r"""
typedef int CUresult;
#define CONVPIPE_NO_DEVICE 100
static const char convpipe_msg[] = "convpipe build-time CUDA driver stub: no device";
CUresult cuGetErrorName(CUresult e, const char **s) { (void)e; *s = convpipe_msg; return 0; }
CUresult cuGetErrorString(CUresult e, const char **s) { (void)e; *s = convpipe_msg; return 0; }
CUresult cuDeviceGetName(char *n, int len, int d) { (void)n; (void)len; (void)d; return CONVPIPE_NO_DEVICE; }
CUresult cuFuncSetAttribute(void *f, int a, int v) { (void)f; (void)a; (void)v; return CONVPIPE_NO_DEVICE; }
CUresult cuLaunchKernelEx(const void *c, void *f, void **p, void **e) { (void)c; (void)f; (void)p; (void)e; return CONVPIPE_NO_DEVICE; }
CUresult cuModuleGetFunction(void **f, void *m, const char *n) { (void)f; (void)m; (void)n; return CONVPIPE_NO_DEVICE; }
CUresult cuModuleLoadData(void **m, const void *img) { (void)m; (void)img; return CONVPIPE_NO_DEVICE; }
CUresult cuModuleUnload(void *m) { (void)m; return CONVPIPE_NO_DEVICE; }
CUresult cuTensorMapEncodeTiled(void *t, ...) { (void)t; return CONVPIPE_NO_DEVICE; }
"""

_FACTORY = "ffi.Module.create.cuda"
_CALLBACK = "tvm_callback_cuda_compile"
_stub_handle = None  # keeps the stub loaded for the life of the process


def factory_registered() -> bool:
    """Whether TVM's real CUDA module factory (``libtvm_runtime_cuda.so``) is loaded in this process."""
    import tvm_ffi

    return tvm_ffi.get_global_func(_FACTORY, allow_missing=True) is not None


def _driver_present() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
        return True
    except OSError:
        return False


def stub_library(cache_dir: str | None = None) -> str:
    """Path of the build-time stub ``libcuda.so.1``, compiled with the host C compiler on first use into
    ``cache_dir`` (default ``$XDG_CACHE_HOME/convpipe`` or ``~/.cache/convpipe``), keyed by the source's hash.

    Raises:
        ConvpipeError: no C compiler (``$CC`` or ``cc``), or it failed.
    """
    base = cache_dir or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "convpipe")
    digest = hashlib.sha256(STUB_SOURCE.encode()).hexdigest()[:16]
    path = os.path.join(base, f"cuda-driver-stub-{digest}", "libcuda.so.1")
    if os.path.isfile(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as d:
        src, out = os.path.join(d, "stub.c"), os.path.join(d, "libcuda.so.1")
        with open(src, "w") as f:
            f.write(STUB_SOURCE)
        cmd = [cc, "-shared", "-fPIC", "-O2", "-Wl,-soname,libcuda.so.1", "-o", out, src]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True)
        except FileNotFoundError:
            raise ConvpipeError(
                f"--target cuda on a machine without a CUDA driver needs a C compiler ({cc!r} not found) to build "
                "the build-time driver stub"
            ) from None
        if r.returncode != 0:
            raise ConvpipeError(f"building the CUDA driver stub failed ({' '.join(cmd)}):\n{r.stdout}{r.stderr}")
        os.replace(out, path)  # atomic: concurrent builds never load a half-written file
    return path


def ensure_module_factory() -> str:
    """Make TVM's real CUDA module factory available in this process, so CUDA modules built here hold binaries.

    Returns ``"loaded"`` (it already was: a machine with a driver), ``"driver"`` (loaded now against the driver)
    or ``"stub"`` (loaded against the build-time stub, :func:`stub_library`).

    Raises:
        ConvpipeError: ``libtvm_runtime_cuda.so`` cannot be loaded (e.g. ``libcudart.so.13`` missing).
    """
    global _stub_handle
    # once the factory is loaded, *every* CUDA build in this process compiles through tvm_callback_cuda_compile;
    # outside cuda_build that is TVM's own, whose default NVRTC needs cuda-bindings (not installed): use nvcc
    os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")
    if factory_registered():
        return "loaded"
    how = "driver"
    if not _driver_present():
        _stub_handle = ctypes.CDLL(stub_library(), mode=ctypes.RTLD_GLOBAL)
        how = "stub"
    why = load_cuda_runtime()
    if why:
        raise ConvpipeError(
            f"cannot embed CUDA device code: {why}. TVM's CUDA runtime needs the CUDA 13 runtime library "
            "libcudart.so.13 (CUDA toolkit, or pip nvidia-cuda-runtime)"
        )
    if not factory_registered():
        raise ConvpipeError(f"libtvm_runtime_cuda.so loaded but registered no {_FACTORY!r}")
    return how


@dataclass
class DeviceCode:
    """What the nvcc callback compiled during one build: per CUDA module, its source and binary, and the ptxas
    figures of every kernel (:class:`.nvcc.PtxasReport`); ``flags``: the nvcc options used
    (:func:`.nvcc.nvcc_flags`)."""

    arch: str
    flags: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    binaries: list[bytes] = field(default_factory=list)
    reports: list = field(default_factory=list)


@contextmanager
def cuda_build(arch: str, fast_math: bool = False):
    """Context for ``tvm.compile`` of a CUDA module whose device code must be embedded as a binary for ``arch``
    (``"sm_80"``, ``"sm_90"``): yields a :class:`DeviceCode` filled while TVM's codegen calls back. nvcc compiles
    with :func:`.nvcc.nvcc_flags` (IEEE-exact math unless ``fast_math``).

    Raises:
        ConvpipeError: nvcc missing or failing (raised from inside ``tvm.compile``), or see
            :func:`ensure_module_factory`.
    """
    import tvm_ffi

    if not nvcc_available():
        raise ConvpipeError(f"--target cuda needs nvcc ({NVCC}; CUDA toolkit, or set CONVPIPE_NVCC) to compile device code")
    ensure_module_factory()
    code = DeviceCode(arch, nvcc_flags(arch, fast_math))

    def compile_callback(source: str) -> bytes:
        try:
            binary, reports = compile_device_code(source, arch, fast_math)
        except RuntimeError as e:
            raise ConvpipeError(f"nvcc failed on the generated CUDA code: {e}") from None
        code.sources.append(source)
        code.binaries.append(binary)
        code.reports.extend(reports)
        return binary

    previous = tvm_ffi.get_global_func(_CALLBACK, allow_missing=True)
    tvm_ffi.register_global_func(_CALLBACK, compile_callback, override=True)
    try:
        yield code
    finally:
        if previous is not None:
            tvm_ffi.register_global_func(_CALLBACK, previous, override=True)
        else:
            tvm_ffi.remove_global_func(_CALLBACK)
