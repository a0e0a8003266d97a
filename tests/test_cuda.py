"""CUDA conv2d schedules (sm_80, sm_90), checked offline and, where a GPU exists, on it.

Offline (every run, no GPU):
- every family builds for ResNet-18's conv layers, odd/grouped/depthwise shapes, for sm_80 and sm_90, and the
  generated CUDA compiles with nvcc (the flags TVM deploys with) with no register spills / no local memory;
- correctness of the schedules' loop nests: each schedule's trace is replayed with the thread bindings dropped
  (identical tiling, shared/local staging, inlining and predicates, serial thread loops), compiled for llvm and
  run against PyTorch. What this cannot see (barrier placement, races) is covered by the GPU tests.

On a GPU (``gpu`` marker; skipped with reason "no CUDA GPU" when this process cannot run CUDA kernels, ``conftest.has_cuda_gpu``): every family
runs on the device and matches ``torch.nn.functional.conv2d`` on the CPU.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import tvm

from conftest import assert_close, has_cuda_gpu, torch_conv
from convpipe.compiler.kernel import compile_func, run_compiled, run_local
from convpipe.schedules import Conv2dWorkload, resolve_target
from convpipe.schedules.cuda import RULES
from convpipe.compiler.nvcc import NVCC, cuda_source, nvcc_available, occupancy, ptxas_report
from convpipe.schedules.cuda.base import MAX_STATIC_SMEM, replay_without_threads

ARCHES = ("sm_80", "sm_90")
RULE = {r.family: r for r in RULES}
# Winograd F(4x4, 3x3) error grows with the reduction length (Barabasz et al.); direct/GEMM round like cuDNN.
REL = {"direct": 1e-5, "im2col": 1e-5, "depthwise": 1e-5, "winograd": 2e-4}


def W(n, c, h, w, k, kh, kw, s=1, p=0, d=1, g=1, pads=None, sw=None, dw=None) -> Conv2dWorkload:
    pt, pl, pb, pr = pads if pads else (p, p, p, p)
    return Conv2dWorkload(n, c, h, w, k, kh, kw, s, sw or s, pt, pl, pb, pr, d, dw or d, g)


RESNET18 = [
    W(1, 3, 224, 224, 64, 7, 7, s=2, p=3),
    W(1, 64, 56, 56, 64, 3, 3, p=1),
    W(1, 64, 56, 56, 128, 3, 3, s=2, p=1),
    W(1, 64, 56, 56, 128, 1, 1, s=2),
    W(1, 128, 28, 28, 128, 3, 3, p=1),
    W(1, 128, 28, 28, 256, 3, 3, s=2, p=1),
    W(1, 256, 14, 14, 256, 3, 3, p=1),
    W(1, 256, 14, 14, 512, 1, 1, s=2),
    W(1, 512, 7, 7, 512, 3, 3, p=1),
]
ODD = [
    W(2, 12, 13, 11, 18, 3, 5, s=2, sw=1, pads=(1, 2, 0, 1), d=2, dw=1),  # asymmetric everything
    W(1, 5, 9, 7, 7, 3, 3, pads=(1, 0, 1, 0)),  # prime channels, tiny output, Winograd tail tiles
    W(3, 16, 17, 17, 24, 3, 3, p=1),  # batch 3, odd spatial
    W(1, 32, 14, 14, 64, 3, 3, p=1, g=4),  # grouped
    W(1, 32, 112, 112, 32, 3, 3, p=1, g=32),  # MobileNet depthwise
    W(2, 8, 15, 13, 16, 5, 3, s=2, sw=1, pads=(2, 1, 1, 0), dw=2, g=8),  # depthwise, multiplier 2
    W(1, 96, 10, 10, 96, 3, 3, s=2, p=1, g=96),  # depthwise stride 2
]
SHAPES = RESNET18 + ODD
# smaller shapes for the CPU replay (serial thread loops re-run every cooperative fetch per thread)
REPLAY = [
    W(1, 64, 14, 14, 64, 3, 3, p=1),
    W(1, 16, 20, 20, 32, 3, 3, s=2, p=1),
    W(1, 16, 12, 12, 24, 1, 1, s=2),
    W(1, 3, 23, 23, 8, 7, 7, s=2, p=3),
] + ODD[:4] + [W(1, 8, 21, 21, 8, 3, 3, p=1, g=8), ODD[5], W(1, 12, 10, 10, 12, 3, 3, s=2, p=1, g=12)]


def _cases(shapes):
    return [
        pytest.param(fam, wl, id=f"{fam}-{wl.key()}")
        for wl in shapes
        for fam in RULE
        if RULE[fam].supports(wl, resolve_target("cuda", arch="sm_90"))
    ]


@pytest.fixture(scope="module", autouse=True)
def nvcc():
    """CI checks the generated CUDA with nvcc: a missing nvcc is a failure, not a skip."""
    assert nvcc_available(), f"nvcc ({NVCC}) not found: install the CUDA toolkit or set CONVPIPE_NVCC"


@pytest.fixture(scope="module")
def targets():
    return {a: resolve_target("cuda", arch=a) for a in ARCHES}


def test_rules_registered(targets):
    assert sorted(RULE) == ["depthwise", "direct", "im2col", "winograd"]
    t = targets["sm_90"]
    assert t.arch == "cuda" and all(r.arch == "cuda" for r in RULES)
    for wl in SHAPES:
        assert RULE["im2col"].supports(wl, t), "im2col is the universal fallback"
        for r in RULES:
            kn = r.default_knobs(wl, t) if r.supports(wl, t) else None
            if kn is not None:
                assert kn == r.candidate_knobs(wl, t)[0]
                assert tuple(r.pack_weight(np.zeros(wl.weight_shape, "float32"), wl, kn).shape) == tuple(
                    r.packed_weight_shape(wl, kn)
                )


def test_candidate_knobs_build(targets):
    """Every tuning candidate of every family is a valid schedule (builds and lowers for CUDA)."""
    t = targets["sm_90"]
    for wl in (W(1, 64, 56, 56, 64, 3, 3, p=1), W(1, 32, 56, 56, 32, 3, 3, p=1, g=32)):
        for r in RULES:
            if r.supports(wl, t):
                for kn in r.candidate_knobs(wl, t):
                    assert "__global__" in cuda_source(r.build(wl, t, kn), t.target), (r.family, kn)


@pytest.mark.parametrize("family,wl", _cases(SHAPES))
def test_build_nvcc_no_spills(family, wl, targets):
    rule = RULE[family]
    for arch in ARCHES:
        t = targets[arch]
        kn = rule.default_knobs(wl, t)
        src = cuda_source(rule.build(wl, t, kn), t.target)
        reps = ptxas_report(src, arch)
        for rep in reps:
            assert rep.spills == 0 and rep.stack_bytes == 0, f"{arch} {family} {kn}: {rep}"
            assert rep.smem_bytes <= MAX_STATIC_SMEM


@pytest.mark.parametrize("family,wl", _cases(SHAPES))
def test_build_nvcc_exact_math_no_spills(family, wl, targets):
    """Artifacts compile their device code with IEEE-exact math (``compiler/nvcc.nvcc_flags``: ``--fmad=true
    --ftz=false --prec-div=true --prec-sqrt=true``, no ``--use_fast_math``; issue 10): every conv kernel still
    spills nothing and has no stack frame for sm_80 and sm_90, and its register count stays within 8 of the
    ``--use_fast_math`` build (measured: equal for every ResNet-18 conv kernel)."""
    from convpipe.compiler.cuda_device import compile_device_code

    rule = RULE[family]
    for arch in ARCHES:
        t = targets[arch]
        src = cuda_source(rule.build(wl, t, rule.default_knobs(wl, t)), t.target)
        exact = compile_device_code(src, arch)[1]
        fast = {r.kernel: r for r in compile_device_code(src, arch, fast_math=True)[1]}
        for rep in exact:
            assert rep.spills == 0 and rep.stack_bytes == 0, f"{arch} {family}: {rep}"
            assert rep.registers <= fast[rep.kernel].registers + 8, f"{arch} {family}: {rep} vs {fast[rep.kernel]}"


@pytest.mark.parametrize("family,wl", _cases(REPLAY))
def test_schedule_replay_on_cpu(family, wl, targets):
    rule = RULE[family]
    t = targets["sm_90"]
    kn = rule.default_knobs(wl, t)
    func = replay_without_threads(rule.schedule(wl, t, kn), rule.unscheduled(wl, kn))
    ex = compile_func(func, "llvm")
    rng = np.random.default_rng(0)
    x = rng.standard_normal(wl.data_shape).astype("float32")
    w = rng.standard_normal(wl.weight_shape).astype("float32")
    out = run_compiled(ex, wl, x, rule.pack_weight(w, wl, kn))
    assert_close(out, torch_conv(x, w, wl), REL[family], f"{family} {kn}")


@pytest.mark.gpu
@pytest.mark.skipif(not has_cuda_gpu(), reason="no CUDA GPU")
@pytest.mark.parametrize("family,wl", _cases(SHAPES))
def test_gpu_matches_torch(family, wl):
    dev = tvm.cuda(0)
    t = resolve_target("cuda", arch="sm_" + dev.compute_version.replace(".", ""))
    rule = RULE[family]
    rng = np.random.default_rng(1)
    x = rng.standard_normal(wl.data_shape).astype("float32")
    w = rng.standard_normal(wl.weight_shape).astype("float32")
    for kn in rule.candidate_knobs(wl, t)[:3]:
        out = run_local(rule, wl, t, kn, x, w)  # nvcc for the GPU's arch, run on GPU 0
        assert_close(out, torch_conv(x, w, wl), REL[family], f"{family} {kn}")


def embedded_cubins(lib: bytes) -> list[tuple[str, bytes]]:
    """``(arch, cubin)`` of every CUDA ELF image embedded in an exported library's bytes: ELF machine 190
    (EM_CUDA); the SM version is byte 1 of ``e_flags`` (0x5a = sm_90); the image's size is the largest end of its
    section and program header tables and sections."""
    import struct

    found, i = [], lib.find(b"\x7fELF", 1)
    while i != -1:
        if struct.unpack_from("<H", lib, i + 0x12)[0] == 190:
            phoff, shoff, flags = struct.unpack_from("<QQI", lib, i + 0x20)
            phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", lib, i + 0x36)
            end = max(phoff + phentsize * phnum, shoff + shentsize * shnum)
            for k in range(shnum):
                sh_offset, sh_size = struct.unpack_from("<QQ", lib, i + shoff + k * shentsize + 0x18)
                sh_type = struct.unpack_from("<I", lib, i + shoff + k * shentsize + 4)[0]
                if sh_type != 8:  # SHT_NOBITS occupies no file bytes
                    end = max(end, sh_offset + sh_size)
            found.append((f"sm_{(flags >> 8) & 0xFF}", lib[i : i + end]))
        i = lib.find(b"\x7fELF", i + 1)
    return found


@pytest.mark.gpu
@pytest.mark.skipif(not has_cuda_gpu(), reason="no CUDA GPU")
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "pnet"])
def test_gpu_models_match_onnxruntime(tmp_path, name):
    """Real models compiled for the local GPU's arch (epilogues fused), run on it through the artifact runtime and
    the CLI's ``verify``, match onnxruntime on the CPU (batch 2, real images)."""
    import subprocess
    import sys

    from convpipe.compiler.build import compile_model
    from convpipe.compiler.export import export_onnx
    from convpipe.compiler.verify import compare, run_onnxruntime
    from convpipe.compiler.zoo import ZOO
    from convpipe.runtime import load

    size = {"pnet": 120}.get(name, 224)
    onnx_path = str(tmp_path / f"{name}.onnx")
    export_onnx(ZOO[name].build(), (2, 3, size, size), onnx_path, source=name)
    compile_model(onnx_path, str(tmp_path / "gpu.cpa"), "cuda")  # arch: the local GPU's
    x = np.concatenate([ZOO[name].real_input((1, 3, size, size))] * 2)
    checks = compare(load(str(tmp_path / "gpu.cpa")).run([x]), run_onnxruntime(onnx_path, {"input": x}), 1e-3, 1e-4)
    assert all(c.ok for c in checks), checks
    r = subprocess.run([sys.executable, "-m", "convpipe.cli", "verify", str(tmp_path / "gpu.cpa"), onnx_path,
                        "--device", "cuda"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("arch", ARCHES)
def test_resnet18_artifact_for_cuda(tmp_path_factory, arch):
    """ResNet-18 compiles for CUDA end to end (our conv2d kernels + TVM's dlight for the rest); the library embeds
    a cubin for the requested arch (the one the manifest names) whose conv2d kernels spill no registers."""
    import hashlib
    import json

    from convpipe.compiler.build import compile_model
    from convpipe.compiler.export import export_onnx
    from convpipe.compiler.zoo import ZOO

    d = tmp_path_factory.mktemp(f"r18_{arch}")
    onnx_path = str(d / "r18.onnx")
    export_onnx(ZOO["resnet18"].build(), (1, 3, 224, 224), onnx_path)
    res = compile_model(onnx_path, str(d / "r18.cpa"), "cuda", "auto", arch=arch)
    m = json.load(open(d / "r18.cpa" / "manifest.json"))
    assert m["target"]["isa"] == arch and m["device_code"]["arch"] == arch
    cubins = embedded_cubins((d / "r18.cpa" / "model.so").read_bytes())
    assert [a for a, _ in cubins] == [arch]
    assert [hashlib.sha256(b).hexdigest() for _, b in cubins] == m["device_code"]["binary_sha256"]
    assert "__global__" in (d / "r18.cpa" / "device.cu").read_text()
    assert {layer["family"] for layer in res.manifest["conv2d"]} >= {"direct", "winograd"}
    conv_kernels = [k for k in m["device_code"]["kernels"] if "conv2d_" in k["kernel"]]
    assert len(conv_kernels) >= 11
    spilled = [k for k in conv_kernels if k["spill_stores"] or k["spill_loads"]]
    assert not spilled, spilled
    assert all(k["threads"] > 0 and 0 < k["occupancy"] <= 1 for k in m["device_code"]["kernels"]), m["device_code"]


_LOAD_WITHOUT_COMPILER = """
import ctypes, sys
ctypes.CDLL(sys.argv[2], mode=ctypes.RTLD_GLOBAL)  # the build-time stub plays the driver (no GPU here)
import tvm, tvm_ffi
assert tvm.base._RUNTIME_ONLY, "expected a runtime-only TVM"
from convpipe.runtime.module import load_cuda_runtime
assert load_cuda_runtime() is None
def refuse(source):
    raise RuntimeError("a compiler was called at load time")
tvm_ffi.register_global_func("tvm_callback_cuda_compile", refuse, override=True)
def kinds(m):
    return [m.kind] + [k for s in m.imports for k in kinds(s)]
print("cuda modules:", kinds(tvm.runtime.load_module(sys.argv[1])).count("cuda"))
maps = open("/proc/self/maps").read()
print("compiler library mapped:", "libtvm_compiler" in maps)
"""

_SOURCE_ONLY_LIBRARY = """
import sys
import tvm
from tvm import te
a = te.placeholder((64,), name="a")
b = te.compute((64,), lambda i: a[i] * 2, name="b")
sch = tvm.s_tir.Schedule(te.create_prim_func([a, b]))
(i,) = sch.get_loops(sch.get_sblock("b"))
bx, tx = sch.split(i, [None, 32])
sch.bind(bx, "blockIdx.x")
sch.bind(tx, "threadIdx.x")
t = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host="llvm")
with t:
    tvm.compile(sch.mod, target=t).export_library(sys.argv[1])
"""


def test_cuda_library_loads_without_a_compiler(tmp_path):
    """The deployed CUDA library holds the binary: a runtime-only TVM (``TVM_USE_RUNTIME_LIB=1``: no
    libtvm_compiler.so, as a deployment would ship it) with the CUDA runtime loaded by convpipe's runtime (the
    build-time stub standing in for the driver) loads it while every compile callback raises. The control -- a
    library whose CUDA module holds source, as TVM writes it where its CUDA runtime is not loaded -- fails under
    the same loader, so the check can fail."""
    import subprocess
    import sys

    import torch

    from convpipe.compiler.build import compile_model
    from convpipe.compiler.export import export_onnx

    onnx_path = str(tmp_path / "m.onnx")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU()).eval()
    export_onnx(net, (1, 3, 16, 16), onnx_path)
    compile_model(onnx_path, str(tmp_path / "gpu.cpa"), "cuda", arch="sm_80")

    from convpipe.compiler.cuda_device import stub_library

    def load(lib):
        env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")
        return subprocess.run([sys.executable, "-c", _LOAD_WITHOUT_COMPILER, lib, stub_library()],
                              capture_output=True, text=True, env=env)

    info = subprocess.run([sys.executable, "-m", "convpipe.cli", "inspect", str(tmp_path / "gpu.cpa")],
                          capture_output=True, text=True)
    assert info.returncode == 0 and "device code: sm_80 cubin" in info.stdout and "0 B spilled" in info.stdout, info
    r = load(str(tmp_path / "gpu.cpa" / "model.so"))
    assert r.returncode == 0 and "cuda modules: 1" in r.stdout, r.stdout + r.stderr
    assert "compiler library mapped: False" in r.stdout, r.stdout
    src_lib = str(tmp_path / "source_only.so")
    env = dict(os.environ, TVM_COMPILE_FORCE_FALLBACK="1")
    subprocess.run([sys.executable, "-c", _SOURCE_ONLY_LIBRARY, src_lib], check=True, env=env)
    r = load(src_lib)
    assert r.returncode != 0 and "a compiler was called at load time" in r.stderr, r.stdout + r.stderr


def test_occupancy():
    """Theoretical occupancy by the CUDA Occupancy Calculator's rules (hand-computed cases)."""
    assert occupancy("sm_90", 256, 32, 0) == 1.0  # thread-limited: 8 blocks x 256 = 2048
    assert occupancy("sm_90", 256, 128, 0) == 0.25  # 128 regs x 256 threads: 2 blocks per SM
    assert occupancy("sm_80", 128, 64, 40000) == 0.25  # shared memory: 164 KiB / (40000 + 1024) B = 4 blocks
    assert occupancy("sm_86", 256, 32, 0) == 1.0  # 1536 threads per SM
    assert occupancy("sm_90", 1024, 65, 0) == 0.0  # 72 regs/thread rounded: 1024 threads do not fit
    with pytest.raises(ValueError, match="unknown arch"):
        occupancy("sm_70", 256, 32, 0)


def test_cuda_arch_compatibility():
    """A cubin runs on the same major version with an equal or higher minor; sm_XXa only on that GPU."""
    from convpipe.runtime.module import cuda_arch_mismatch

    assert cuda_arch_mismatch("sm_80", "8.0") is None
    assert cuda_arch_mismatch("sm_80", "8.9") is None
    assert cuda_arch_mismatch("sm_90", "9.0") is None
    assert "recompile with --target cuda --arch sm_80" in cuda_arch_mismatch("sm_90", "8.0")
    assert "this GPU is sm_90" in cuda_arch_mismatch("sm_80", "9.0")
    assert cuda_arch_mismatch("sm_86", "8.0") is not None
    assert cuda_arch_mismatch("sm_90a", "9.0") is None
    assert cuda_arch_mismatch("sm_90a", "10.0") is not None


@pytest.mark.skipif(has_cuda_gpu(), reason="a CUDA GPU is present, so the no-GPU error cannot occur")
def test_cuda_artifact_without_gpu_is_a_clear_error(tmp_path):
    """Loading a CUDA artifact where no GPU is present fails with a clear error, and so does running an x86
    artifact on --device cuda."""
    import torch

    from convpipe.compiler.build import compile_model
    from convpipe.compiler.export import export_onnx
    from convpipe.errors import ConvpipeError
    from convpipe.runtime import load

    onnx_path = str(tmp_path / "m.onnx")
    torch.manual_seed(0)
    export_onnx(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval(), (1, 3, 16, 16), onnx_path)
    compile_model(onnx_path, str(tmp_path / "gpu.cpa"), "cuda", arch="sm_90")
    with pytest.raises(ConvpipeError, match="built for CUDA sm_90, but no CUDA GPU is present"):
        load(str(tmp_path / "gpu.cpa"))
    compile_model(onnx_path, str(tmp_path / "cpu.cpa"), "x86")
    with pytest.raises(ConvpipeError, match="asked to run on device 'cuda'"):
        load(str(tmp_path / "cpu.cpa"), device="cuda")


@pytest.fixture
def x86_rpc_server():
    """A TVM RPC server on this host (``python -m tvm.exec.rpc_server``): a remote without a CUDA GPU."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port), "--port-end",
         str(port + 1)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(has_cuda_gpu(), reason="a CUDA GPU is present here, so the RPC server would have one")
def test_remote_without_gpu(tmp_path, x86_rpc_server):
    """``--remote`` with a CUDA artifact on a server without a GPU fails before any upload, naming the cause; the
    same server runs an x86 artifact (``--device cpu``) and ``verify`` passes through it."""
    import subprocess
    import sys

    import torch

    from convpipe.compiler.build import compile_model
    from convpipe.compiler.export import export_onnx

    onnx_path = str(tmp_path / "m.onnx")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)).eval()
    export_onnx(net, (1, 3, 12, 12), onnx_path)
    compile_model(onnx_path, str(tmp_path / "gpu.cpa"), "cuda", arch="sm_90")
    compile_model(onnx_path, str(tmp_path / "cpu.cpa"), "x86")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "convpipe.cli", *args], capture_output=True, text=True, timeout=300)

    r = cli("run", str(tmp_path / "gpu.cpa"), "--remote", x86_rpc_server, "--timeout", "20")
    assert r.returncode != 0 and "RPC server has no usable CUDA GPU" in r.stderr, r.stdout + r.stderr
    r = cli("verify", str(tmp_path / "cpu.cpa"), onnx_path, "--remote", x86_rpc_server, "--timeout", "20")
    assert r.returncode == 0 and "all outputs match onnxruntime" in r.stdout, r.stdout + r.stderr
    r = cli("run", str(tmp_path / "cpu.cpa"), "--remote", x86_rpc_server, "--device", "cuda", "--timeout", "20")
    assert r.returncode != 0 and "no usable CUDA GPU" in r.stderr, r.stdout + r.stderr
    r = cli("tune", onnx_path, "--target", "cuda", "--arch", "sm_90", "--db", str(tmp_path / "db.json"))
    assert r.returncode != 0 and "tuning for CUDA measures on a GPU: none is present here" in r.stderr, r.stderr
    r = cli("tune", onnx_path, "--target", "cuda", "--arch", "sm_90", "--db", str(tmp_path / "db.json"),
            "--remote", x86_rpc_server, "--budget-s", "30")
    assert r.returncode != 0 and "no usable CUDA GPU" in r.stdout + r.stderr, r.stdout + r.stderr
