"""Epilogue fusion into the CUDA conv2d kernels (``schedules/cuda/epilogue.py``, ``compiler/pipeline.py``), checked
offline (no GPU):

- structure: after :func:`convpipe.compiler.pipeline.cuda_schedule_passes`, a conv followed by bias + folded
  BatchNorm + ReLU, by bias + residual add + ReLU, or by bias + ReLU6 (Clip(0, 6) as the importer emits it, and
  Relax's ``clip``) is one PrimFunc per conv, for every CUDA family, with the epilogue applied in the kernel's
  output store (no extra kernel) and every block under thread bindings; a consumer that cannot be inlined
  (``relu(y) + y``) gets a bound nest of its own;
- the TVM behaviour the pipeline relies on (FuseTIR drops ``tirx.is_scheduled``, dlight's GPU rules decline our
  fused functions, predicated kernels are not a "stage pipeline");
- numerics: the fused, scheduled PrimFuncs with their thread loops made serial, run on the CPU, against PyTorch;
- the generated CUDA of fused models compiles with nvcc for sm_80 and sm_90 without register spills;
- ResNet-18 built for CUDA has no standalone element-wise kernel after a conv.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import relax, s_tir, tirx

from conftest import assert_close, torch_conv
from convpipe.compiler.lower import lower_conv2d
from convpipe.compiler.nvcc import NVCC, nvcc_available, ptxas_report
from convpipe.compiler.pipeline import cuda_schedule_passes
from convpipe.schedules import Conv2dWorkload, resolve_target
from convpipe.schedules.cuda import RULES
from convpipe.schedules.cuda.base import MAX_STATIC_SMEM
from convpipe.schedules.epilogue import CONV_OUT, block_names

ARCHES = ("sm_80", "sm_90")
RULE = {r.family: r for r in RULES}
REL = {"direct": 1e-5, "im2col": 1e-5, "depthwise": 1e-5, "winograd": 2e-4}
EPS = 1e-5


def W(c, h, w, k, kh=3, kw=3, s=1, p=1, g=1) -> Conv2dWorkload:
    return Conv2dWorkload(1, c, h, w, k, kh, kw, s, s, p, p, p, p, 1, 1, g)


#: one workload per family (ragged tiles: 14x14 does not divide im2col's/Winograd's tiles)
FAMILY_WL = {
    "direct": W(8, 14, 14, 16),
    "im2col": W(8, 14, 14, 16),
    "winograd": W(8, 14, 14, 16),
    "depthwise": W(16, 14, 14, 16, g=16),
}
#: epilogues: name -> the Relax ops expected in the fused function's name (FuseOps names it after them)
PATTERNS = {
    "bias_bn_relu": ("add", "multiply", "add", "relu"),
    "bias_residual_relu": ("add", "add", "relu"),
    "bias_relu6": ("add", "maximum", "minimum"),
    "bias_clip": ("add", "clip"),
}


@pytest.fixture(scope="module", autouse=True)
def nvcc():
    """CI checks the generated CUDA with nvcc: a missing nvcc is a failure, not a skip."""
    assert nvcc_available(), f"nvcc ({NVCC}) not found: install the CUDA toolkit or set CONVPIPE_NVCC"


def _target(arch="sm_90"):
    return resolve_target("cuda", arch=arch)


# ------------------------------------------------------------------------------------------------------------
# models: Relax, in the forms the ONNX importer produces (constants [1, K, 1, 1], ReLU6 as max/min with 0-d
# constants); BatchNorm folded to a per-channel scale and shift, as inference runs it
# ------------------------------------------------------------------------------------------------------------
class Params:
    """Random weights and BatchNorm statistics of a conv + epilogue, and the PyTorch reference."""

    def __init__(self, wl: Conv2dWorkload, seed: int):
        rng = np.random.default_rng(seed)
        k = wl.out_channels
        self.wl = wl
        self.w = rng.standard_normal(wl.weight_shape).astype("float32")
        self.b = rng.standard_normal(k).astype("float32")
        self.gamma = rng.uniform(0.5, 2.0, k).astype("float32")
        self.beta = rng.standard_normal(k).astype("float32")
        self.mean = rng.standard_normal(k).astype("float32")
        self.var = rng.uniform(0.5, 2.0, k).astype("float32")

    @staticmethod
    def _chan(v: np.ndarray) -> relax.Constant:
        return relax.const(v.reshape(1, -1, 1, 1).astype("float32"))

    def emit(self, bb: relax.BlockBuilder, x, pattern: str, residual=None):
        """Emit conv + ``pattern``'s epilogue on ``x``; returns the result."""
        wl = self.wl
        y = bb.emit(relax.op.nn.conv2d(x, relax.const(self.w), strides=[wl.stride_h, wl.stride_w],
                                       padding=[wl.pad_top, wl.pad_left, wl.pad_bottom, wl.pad_right],
                                       groups=wl.groups))
        y = bb.emit(relax.op.add(y, self._chan(self.b)))
        if pattern == "bias_bn_relu":
            scale = self.gamma / np.sqrt(self.var + EPS)
            y = bb.emit(relax.op.multiply(y, self._chan(scale)))
            y = bb.emit(relax.op.add(y, self._chan(self.beta - self.mean * scale)))
            return bb.emit(relax.op.nn.relu(y))
        if pattern == "bias_residual_relu":
            return bb.emit(relax.op.nn.relu(bb.emit(relax.op.add(y, residual))))
        if pattern == "bias_relu6":  # Clip(0, 6) as convpipe's ONNX import emits it
            y = bb.emit(relax.op.maximum(y, relax.const(np.float32(0.0))))
            return bb.emit(relax.op.minimum(y, relax.const(np.float32(6.0))))
        if pattern == "bias_clip":  # Relax's own clip
            return bb.emit(relax.op.clip(y, 0.0, 6.0))
        if pattern == "shared":  # the biased conv output read twice: relu(y) + y cannot be inlined
            return bb.emit(relax.op.add(bb.emit(relax.op.nn.relu(y)), y))
        raise ValueError(pattern)

    def reference(self, x: np.ndarray, pattern: str, residual=None) -> np.ndarray:
        """PyTorch (float64): conv2d, bias, ``F.batch_norm`` with the running statistics, activation."""
        import torch
        import torch.nn.functional as F

        def t(v):
            return torch.from_numpy(v).double()

        y = t(torch_conv(x, self.w, self.wl)) + t(self.b).reshape(1, -1, 1, 1)
        if pattern == "bias_bn_relu":
            y = F.relu(F.batch_norm(y, t(self.mean), t(self.var), t(self.gamma), t(self.beta), False, 0.0, EPS))
        elif pattern == "bias_residual_relu":
            y = F.relu(y + t(residual))
        elif pattern in ("bias_relu6", "bias_clip"):
            y = F.relu6(y)
        elif pattern == "shared":
            y = F.relu(y) + y
        return y.numpy()


def single_conv_model(wl: Conv2dWorkload, pattern: str, seed: int = 0):
    """``(module, params)``: one conv + epilogue; for the residual pattern a second input ``residual`` of the output
    shape."""
    p = Params(wl, seed)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(list(wl.data_shape), "float32"))
    args = [x]
    if pattern == "bias_residual_relu":
        args.append(relax.Var("residual", relax.TensorType(list(wl.out_shape), "float32")))
    with bb.function("main", args):
        with bb.dataflow():
            out = bb.emit_output(p.emit(bb, x, pattern, args[1] if len(args) > 1 else None))
        bb.emit_func_output(out)
    return bb.get(), p


@functools.lru_cache(maxsize=None)
def scheduled(family: str, pattern: str):
    """``(lowered module, scheduled module, params)`` of :func:`single_conv_model` for ``family`` (sm_90)."""
    t = _target()
    mod, p = single_conv_model(FAMILY_WL[family], pattern)
    lowered, records = lower_conv2d(mod, t, family)
    assert [r.family for r in records] == [family]
    with t.target:
        sched = tvm.transform.Sequential(cuda_schedule_passes(t))(lowered)
    return lowered, sched, p


def _cases():
    t = _target()
    return [
        pytest.param(fam, pat, id=f"{fam}-{pat}")
        for fam, wl in FAMILY_WL.items()
        if RULE[fam].supports(wl, t)
        for pat in PATTERNS
    ]


# ------------------------------------------------------------------------------------------------------------
# structure
# ------------------------------------------------------------------------------------------------------------
def prim_funcs(mod: tvm.IRModule) -> dict[str, tirx.PrimFunc]:
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}


def called(mod: tvm.IRModule) -> list[str]:
    """Names of the PrimFuncs ``main`` calls, in order."""
    return re.findall(r"R\.call_tir\((\w+),", mod["main"].script())


def conv_kernel(lowered: tvm.IRModule) -> tuple[str, tirx.PrimFunc]:
    """The (single) convpipe conv2d kernel of a lowered module."""
    (item,) = [(n, f) for n, f in prim_funcs(lowered).items() if n.startswith("conv2d_")]
    return item


def unbound_blocks(func: tirx.PrimFunc) -> list[str]:
    """Blocks of ``func`` that would not run inside a GPU launch, one thread per iteration: a block qualifies when
    its outermost loop is bound to a blockIdx axis and some loop around it to a threadIdx axis (serial loops
    inside the launch, such as a cooperative fetch's outer loop, run in every thread)."""
    sch = s_tir.Schedule(func)
    bad = []
    for name in block_names(func):
        loops = [sch.get(lp) for lp in sch.get_loops(sch.get_sblock(name))]
        tags = [lp.thread_binding.thread_tag if lp.thread_binding is not None else "" for lp in loops]
        if not (tags and tags[0].startswith("blockIdx") and any(t.startswith("threadIdx") for t in tags)):
            bad.append(f"{name}: {tags}")
    return bad


def launches(func: tirx.PrimFunc) -> int:
    """Kernel launches of ``func``: the loop nests directly under its root block (each becomes a ``__global__``
    function once its thread loops are split off the host code)."""
    body = func.body.block.body if isinstance(func.body, s_tir.SBlockRealize) else func.body
    return len(body.seq) if isinstance(body, tirx.SeqStmt) else 1


def conv_out_block(func: tirx.PrimFunc):
    sch = s_tir.Schedule(func)
    for name in block_names(func):
        b = sch.get(sch.get_sblock(name))
        if CONV_OUT in b.annotations:
            return b
    raise AssertionError("no conv output block")


@pytest.mark.parametrize("family,pattern", _cases())
def test_epilogue_fused_into_one_bound_kernel(family, pattern):
    lowered, sched, _ = scheduled(family, pattern)
    kname, kfunc = conv_kernel(lowered)
    calls = called(sched)
    assert len(calls) == 1, f"{family}/{pattern}: main calls {calls} (an element-wise kernel was not fused)"
    assert list(prim_funcs(sched)) == calls, f"PrimFuncs left beside the fused conv: {list(prim_funcs(sched))}"
    name = calls[0]
    fused = prim_funcs(sched)[name]
    # FuseOps names the fused function after the kernel and every op it took in
    assert name.startswith(f"fused_{kname}_") and all(op in name for op in PATTERNS[pattern]), name
    assert fused.attrs["tirx.is_scheduled"], "ApplyDefaultSchedule marks what a rule scheduled"
    assert not unbound_blocks(fused), unbound_blocks(fused)
    # no extra kernel and no extra block: the epilogue lives in the kernel's output store
    assert launches(fused) == launches(kfunc)
    assert block_names(fused) == block_names(kfunc)
    store = conv_out_block(fused).body.script()
    want = {"bias_bn_relu": ("T.max", "*"), "bias_residual_relu": ("T.max", "residual["),
            "bias_relu6": ("T.max", "T.min"), "bias_clip": ("T.max", "T.min")}
    for token in want[pattern]:
        assert token in store, f"{token} not in the output store:\n{store}"


@pytest.mark.parametrize("family", list(FAMILY_WL))
def test_unfusable_consumer_gets_its_own_bound_nest(family):
    """``relu(y) + y`` reads the biased conv output twice: the bias add is inlined, relu and the add cannot be;
    each must get a GPU nest of its own (blockIdx.x/threadIdx.x) in the same PrimFunc, after the conv kernel."""
    lowered, sched, _ = scheduled(family, "shared")
    kname, kfunc = conv_kernel(lowered)
    calls = called(sched)
    assert len(calls) == 1 and calls[0].startswith(f"fused_{kname}_"), calls
    fused = prim_funcs(sched)[calls[0]]
    assert not unbound_blocks(fused), unbound_blocks(fused)
    assert launches(fused) == launches(kfunc) + 2
    extra = [b for b in block_names(fused) if b not in block_names(kfunc)]
    assert extra == ["compute", "T_add1"], extra  # relu, then the add; the bias add ("T_add") was inlined
    sch = s_tir.Schedule(fused)
    for b in extra:
        tags = [sch.get(lp).thread_binding.thread_tag for lp in sch.get_loops(sch.get_sblock(b))]
        assert tags == ["blockIdx.x", "threadIdx.x"], (b, tags)


def test_tvm_gpu_rules_decline_our_fused_functions():
    """Why our rule must run first, and why it must never decline a function it matched: after FuseTIR the fused
    function has lost ``tirx.is_scheduled`` (so ``ApplyDefaultSchedule`` offers it to the rules) and keeps our
    thread-bound kernel, and every dlight GPU rule returns None on it. Left like that, TVM 0.27 still compiles
    it: the unbound epilogue loops end up in the *host* function, dereferencing device pointers."""
    from tvm.relax.backend.cuda import pipeline as cuda
    from tvm.s_tir import dlight

    t = _target()
    for family in FAMILY_WL:
        lowered, _, _ = scheduled(family, "bias_bn_relu")
        kname, kfunc = conv_kernel(lowered)
        assert kfunc.attrs["tirx.is_scheduled"]
        with t.target:
            fused = tvm.transform.Sequential(
                cuda.library_dispatch_passes(t.target) + cuda.legalize_passes(t.target)[:-1]
            )(lowered)
        ((name, func),) = prim_funcs(fused).items()
        assert name.startswith(f"fused_{kname}_") and "tirx.is_scheduled" not in func.attrs
        # our kernel's blocks are still thread-bound; exactly the epilogue's four blocks are not
        unbound = [b.split(":")[0] for b in unbound_blocks(func)]
        assert unbound == ["T_add", "T_multiply", "T_add1", "compute"], unbound
        for rule in (dlight.gpu.Matmul(), dlight.gpu.GEMV(), dlight.gpu.Reduction(),
                     dlight.gpu.GeneralReduction(), dlight.gpu.Fallback()):
            assert rule.apply(func, t.target, False) is None, (family, type(rule).__name__)


def test_scheduled_kernel_is_skipped_by_apply_default_schedule():
    """An unfused conv kernel keeps ``tirx.is_scheduled`` and ``ApplyDefaultSchedule`` returns it untouched."""
    from tvm.s_tir import dlight

    from convpipe.schedules.cuda import ConvEpilogueCUDA

    t = _target()
    lowered, _, _ = scheduled("direct", "bias_bn_relu")
    _, kfunc = conv_kernel(lowered)
    with t.target:
        out = dlight.ApplyDefaultSchedule(ConvEpilogueCUDA(), dlight.gpu.Fallback())(tvm.IRModule({"k": kfunc}))
    assert out["k"].same_as(kfunc)


def test_ragged_kernel_is_not_a_stage_pipeline_but_fuses():
    """cuda/im2col on a 14x14 output has predicated (ragged) tiles: TVM cannot prove region cover inside the
    kernel, so the whole scope is not a stage pipeline and a checked ``reverse_compute_inline`` of the bias add
    fails; the rule's per-consumer check (:func:`convpipe.schedules.epilogue.consumer_covered`) still fuses it."""
    from tvm.relax.backend.cuda import pipeline as cuda

    from convpipe.schedules.epilogue import consumer_covered, find_conv_out

    t = _target()
    lowered, sched, _ = scheduled("im2col", "bias_bn_relu")
    with t.target:
        fused = tvm.transform.Sequential(cuda.library_dispatch_passes(t.target) + cuda.legalize_passes(t.target)[:-1])(
            lowered
        )
    ((_, func),) = prim_funcs(fused).items()
    sch = s_tir.Schedule(func)
    assert not sch.state._get_cached_flags(sch.get_sref(sch.get_sblock("root"))).stage_pipeline
    (bias,) = sch.get_consumers(find_conv_out(sch))
    with pytest.raises(s_tir.ScheduleError, match="stage pipeline"):
        sch.reverse_compute_inline(bias)
    assert consumer_covered(sch, bias)
    assert len(called(sched)) == 1 and launches(prim_funcs(sched)[called(sched)[0]]) == 1


def test_bind_standalone_handles_reductions_and_scalars():
    """The standalone GPU nest for a leftover block: spatial loops fused and bound, a reduction loop serial
    inside each thread, a loop-less block given a unit loop; the result builds for CUDA and, serialised,
    computes what the unscheduled function computes."""
    from tvm import te

    from convpipe.schedules.cuda.epilogue import bind_standalone, loop_kinds

    a = te.placeholder((3, 50, 7), "float32", name="a")
    r = te.reduce_axis((0, 50), name="r")
    s = te.compute((3, 7), lambda i, j: te.sum(a[i, r, j], axis=r), name="s")
    c = te.compute((), lambda: s[1, 2] * 2.0, name="c")
    func = te.create_prim_func([a, s, c])
    sch = s_tir.Schedule(func)
    assert loop_kinds(sch, sch.get_sblock("s")) == ["S", "S", "R"]
    for name in ("s", "c"):
        bind_standalone(sch, sch.get_sblock(name), 16)
    bound = sch.mod["main"]
    assert not unbound_blocks(bound), unbound_blocks(bound)
    t = _target()
    with t.target:
        tvm.compile(tvm.IRModule({"main": bound.with_attr("global_symbol", "main")}), target=t.target)
    x = np.random.default_rng(0).standard_normal((3, 50, 7)).astype("float32")
    outs = [np.zeros((3, 7), "float32"), np.zeros((), "float32")]
    ex = tvm.compile(tvm.IRModule({"main": serialize_threads(bound).with_attr("global_symbol", "main")}), "llvm")
    args = [tvm.runtime.tensor(v) for v in [x, *outs]]
    ex["main"](*args)
    assert_close(args[1].numpy(), x.astype("float64").sum(axis=1), 1e-5, "sum")
    assert_close(args[2].numpy(), 2.0 * x.astype("float64").sum(axis=1)[1, 2], 1e-5, "scalar")


# ------------------------------------------------------------------------------------------------------------
# numerics without a GPU
# ------------------------------------------------------------------------------------------------------------
def serialize_threads(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with every thread-bound ``For`` (blockIdx/threadIdx) turned into a serial loop, so it compiles
    for llvm (its ``shared``/``local`` buffers become ordinary allocations) and runs on the CPU.

    Why this is valid: a thread binding only annotates a loop; TensorIR's meaning of a function is its loops run
    in order. Our kernels are sequences of loop nests (stages) whose cooperative steps (filling a shared-memory
    tile, then computing from it) are separate nests that on the GPU are divided by barriers TVM inserts
    (ThreadSync); run serially, every stage finishes before the next starts, which is what the barriers
    guarantee, so the serial run computes what a correct GPU run computes (each thread's register tile is its
    own iteration of the thread loops). What it cannot see: missing or misplaced barriers, races between threads
    of a block, and anything that depends on the hardware (occupancy, shared-memory bank layout, launch
    limits) -- the GPU tests in ``test_cuda.py`` and the nvcc checks here cover those.
    """

    def serial(loop: tirx.For):
        if loop.kind != tirx.ForKind.THREAD_BINDING:
            return loop
        return tirx.For(loop.loop_var, loop.min, loop.extent, tirx.ForKind.SERIAL, loop.body, None, loop.annotations)

    return tvm_ffi.structural_map(func, (tirx.For, serial), order="post")


def run_serialized(sched: tvm.IRModule, inputs: list[np.ndarray]) -> np.ndarray:
    """Compile ``sched`` (after :func:`cuda_schedule_passes`) for llvm with every PrimFunc's thread loops made
    serial, finish it with TVM's dataflow-lowering and finalisation passes, run ``main`` on the CPU."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    mod = sched.clone()  # the scheduled module is cached and shared between tests: do not mutate it
    for gv, f in sched.functions_items():
        if isinstance(f, tirx.PrimFunc):
            mod[gv] = serialize_threads(f)
    llvm = tvm.target.Target({"kind": "llvm"})
    finish = tvm.transform.Sequential(cpu.dataflow_lower_passes(llvm) + cpu.finalize_passes(llvm))
    with llvm:
        ex = tvm.compile(mod, target=llvm, relax_pipeline=finish)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in inputs]).numpy()


def test_serialize_threads_removes_every_binding():
    _, sched, _ = scheduled("direct", "bias_bn_relu")
    (f,) = prim_funcs(sched).values()
    assert "T.thread_binding" in f.script()
    g = serialize_threads(f)
    assert "T.thread_binding" not in g.script() and "blockIdx" not in g.script()
    assert len(block_names(g)) == len(block_names(f))


@pytest.mark.parametrize("family,pattern", _cases() + [pytest.param(f, "shared", id=f"{f}-shared") for f in FAMILY_WL])
def test_fused_numerics_serial_vs_torch(family, pattern):
    _, sched, p = scheduled(family, pattern)
    wl = p.wl
    rng = np.random.default_rng(7)
    x = rng.standard_normal(wl.data_shape).astype("float32")
    inputs = [x]
    residual = None
    if pattern == "bias_residual_relu":
        residual = rng.standard_normal(wl.out_shape).astype("float32")
        inputs.append(residual)
    got = run_serialized(sched, inputs)
    ref = p.reference(x, pattern, residual)
    if pattern in ("bias_relu6", "bias_clip"):
        assert (ref == 0).any() and (ref == 6).any(), "both ReLU6 bounds are exercised"
    assert_close(got, ref, REL[family], f"{family}/{pattern}")


# ------------------------------------------------------------------------------------------------------------
# nvcc: the fused kernels of a two-conv model per family compile for sm_80 and sm_90 without spills
# ------------------------------------------------------------------------------------------------------------
def two_conv_model(family: str):
    """x -> conv -> bias -> BN -> ReLU -> conv -> bias -> (+ x) -> ReLU, then ReLU6 on a third conv's output
    (channels K -> C -> C, so the residual is the input)."""
    wl1 = FAMILY_WL[family]
    c, k = wl1.in_channels, wl1.out_channels
    wl2 = W(k, wl1.out_h, wl1.out_w, c, g=k if family == "depthwise" else 1)
    wl3 = W(c, wl1.out_h, wl1.out_w, c, g=c if family == "depthwise" else 1)
    p1, p2, p3 = Params(wl1, 1), Params(wl2, 2), Params(wl3, 3)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(list(wl1.data_shape), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = p1.emit(bb, x, "bias_bn_relu")
            y = p2.emit(bb, y, "bias_residual_relu", residual=x)
            out = bb.emit_output(p3.emit(bb, y, "bias_relu6"))
        bb.emit_func_output(out)
    return bb.get()


def cuda_source(ex) -> str:
    """CUDA C of every CUDA module imported by an executable (recursively)."""

    def walk(m):
        for sub in m.imports:
            if sub.kind == "cuda":
                yield sub.inspect_source("cuda")
            yield from walk(sub)

    return "\n".join(walk(ex.mod))


def kernel_names(src: str) -> list[str]:
    """Names of the ``__global__`` functions *defined* in ``src`` (TVM's CUDA source also declares each one
    ahead, so ``__global__`` occurs twice per kernel)."""
    return re.findall(r"__global__\s+void\s+(?:__launch_bounds__\(\d+\)\s+)?(\w+)\([^;{]*\)\s*\{", src)


@pytest.mark.parametrize("family", list(FAMILY_WL))
def test_fused_model_nvcc_no_spills(family):
    from convpipe.compiler.pipeline import relax_pipeline

    mod = two_conv_model(family)
    for arch in ARCHES:
        t = _target(arch)
        lowered, records = lower_conv2d(mod, t, family)
        assert [r.family for r in records] == [family] * 3
        with t.target:
            ex = tvm.compile(lowered, target=t.target, relax_pipeline=relax_pipeline(t))
        src = cuda_source(ex)
        names = kernel_names(src)
        assert len(names) == len(set(names)) > 0 and src.count("__global__") == 2 * len(names)
        assert all(n.startswith("fused_conv2d_") for n in names), f"a kernel besides the fused convs: {names}"
        assert "0x1.8p+2f" in src, "the ReLU6 clamp (upper bound 6.0) is applied inside the fused kernels"
        for rep in ptxas_report(src, arch):
            assert rep.spills == 0 and rep.stack_bytes == 0, f"{arch} {family}: {rep}"
            assert rep.smem_bytes <= MAX_STATIC_SMEM


# ------------------------------------------------------------------------------------------------------------
# ResNet-18 on CUDA
# ------------------------------------------------------------------------------------------------------------
#: Relax ops that are element-wise (what a conv epilogue is made of)
ELEMENTWISE = {"add", "subtract", "multiply", "divide", "relu", "maximum", "minimum", "clip", "sigmoid", "tanh",
               "exp", "sqrt", "rsqrt", "negative", "power"}


def is_elementwise_kernel(name: str) -> bool:
    """``fused_add1_add2_relu1_kernel`` and the like: a kernel made of element-wise ops only."""
    base = re.sub(r"_kernel(_\d+)?$", "", name)
    ops = [re.sub(r"\d+$", "", op) for op in base.removeprefix("fused_").split("_")]
    return bool(ops) and all(op in ELEMENTWISE for op in ops)


@pytest.fixture(scope="module")
def resnet18_cuda(tmp_path_factory):
    """ResNet-18 (1x3x224x224) for sm_90: ``(imported, executable, layer records)`` from ``build_relax``."""
    from convpipe.compiler.build import build_relax
    from convpipe.compiler.export import export_onnx
    from convpipe.compiler.importer import import_onnx
    from convpipe.compiler.zoo import ZOO

    path = str(tmp_path_factory.mktemp("r18") / "r18.onnx")
    export_onnx(ZOO["resnet18"].build(), (1, 3, 224, 224), path)
    imported = import_onnx(path)
    res = build_relax(imported, _target("sm_90"))
    return imported, res[0], res[1]


def test_resnet18_no_standalone_elementwise_kernel(resnet18_cuda):
    """Every bias/residual/ReLU after a conv runs in the conv's kernel: the CUDA source of ResNet-18 has no
    element-wise kernel left, only our fused conv kernels plus TVM's max-pool, global mean, flatten and the
    classifier head (matmul with its bias add)."""
    _, ex, layers = resnet18_cuda
    assert len(layers) == 20
    src = cuda_source(ex)
    names = kernel_names(src)
    assert len(names) == len(set(names)) and src.count("__global__") == 2 * len(names)
    conv = [n for n in names if n.startswith("fused_conv2d_")]
    other = [n for n in names if not n.startswith("fused_conv2d_")]
    print(f"\nResNet-18 sm_90 after: {len(names)} CUDA kernels defined ({len(conv)} fused conv kernels; {other})")
    assert not [n for n in names if n.startswith("conv2d_")], "every conv has a bias (folded BN): all fused"
    assert not [n for n in names if is_elementwise_kernel(n)], names
    assert sorted(re.sub(r"\d*_kernel$", "", n) for n in other) == ["fused_matmul_add", "max_pool2d", "mean",
                                                                     "reshape"], other
    # all 20 convs carry their bias; the 17 on the main path also their ReLU (8 of them the residual add too)
    funcs = {re.sub(r"_kernel(_\d+)?$", "", n) for n in conv}
    assert sum("relu" in f for f in funcs) >= 8 and all("_add" in f for f in funcs)


def test_resnet18_kernel_launches_before_after(resnet18_cuda):
    """Kernel launches per inference, counted on the Relax module after the schedule stage (each ``call_tir`` of
    ``main`` launches one kernel per top-level loop nest of its PrimFunc): before -- our conv kernels opaque
    under TVM's default CUDA pipeline, as convpipe built them until the epilogue rule -- and after."""
    from tvm.relax.backend.cuda import pipeline as cuda

    from convpipe.compiler.build import prepare

    imported, _, _ = resnet18_cuda
    t = _target("sm_90")
    mod, _ = prepare(imported, t)
    lowered, _ = lower_conv2d(mod, t)
    opaque = lowered.clone()
    for gv, f in lowered.functions_items():
        if gv.name_hint.startswith("conv2d_"):
            opaque[gv] = f.with_attr("op_pattern", 8)  # kOpaque: the old lowering
    with t.target:
        before = tvm.transform.Sequential(cuda.library_dispatch_passes(t.target) + cuda.legalize_passes(t.target))(
            opaque
        )
        after = tvm.transform.Sequential(cuda_schedule_passes(t))(lowered)

    def count(m):
        fs = prim_funcs(m)
        calls = called(m)
        ew = [c for c in calls if is_elementwise_kernel(c)]
        return sum(launches(fs[c]) for c in calls), len(calls), sum(launches(fs[c]) for c in ew)

    (b_launch, b_calls, b_ew), (a_launch, a_calls, a_ew) = count(before), count(after)
    print(f"\nResNet-18 sm_90 kernel launches per inference: before {b_launch} ({b_calls} calls, {b_ew} element-wise)"
          f", after {a_launch} ({a_calls} calls, {a_ew} element-wise)")
    assert b_ew >= 17 and a_ew == 0  # one epilogue kernel per conv output chain before (8 with a residual)
    assert a_launch == b_launch - b_ew and a_calls == b_calls - b_ew
