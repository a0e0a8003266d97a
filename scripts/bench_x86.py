"""x86 benchmark: convpipe vs onnxruntime vs PyTorch eager (vs TVM MetaSchedule), per conv layer, and end to end
also vs OpenVINO (when installed).

The evidence for issue 3 ("x86 performance: beat onnxruntime end to end").

What is measured
----------------
- **FMA peak**: ``scripts/fma_peak.c`` (gcc -O3 -march=native -fopenmp): each thread runs 16 independent AVX-512
  (AVX2 without it) FMA accumulators; best of 3 x 5 runs, at 1 thread and at every requested thread count, measured
  before and after the benchmark (the higher figure is used: a shared machine only ever lowers it). Each
  layer's GFLOP/s is reported as a % of the peak measured at the same thread count.
- **Layer suite**: every distinct conv2d workload of the requested models (default ResNet-18, ResNet-50,
  MobileNetV2; torchvision 0.28, 224x224, batch 1) as ``compile`` builds it (``compiler.build.prepare``): where
  the model runs in NCHW[x]c (``compiler/layout.py``) our kernel reads and writes the blocked layout (the layer's
  name ends in ``<x>c``) while onnxruntime, PyTorch and MetaSchedule get the NCHW conv -- so a single-conv
  onnxruntime session includes its own NCHW <-> NCHWc reorders, which it does not pay inside a model; the model
  figures are the fair end-to-end comparison. For each layer:

  * ours: every x86 schedule family that supports the layer, with its default knobs (for Winograd also every
    other tile size m in {2, 4, 6}, as ``winograd-f<m>``); ``auto`` is the family ``compiler.select`` picks
    (an alias of one of those, not timed twice); with ``--db`` also the tuning database's record
    (``tuned``). Every kernel is checked against a float64 reference (``torch.nn.functional.conv2d`` in double);
    the error reported is ``max|ours - ref| / max|ref|`` (the Winograd table lists it per tile size);
  * onnxruntime: a single-``Conv`` ONNX model (CPU provider, ``intra_op_num_threads = N``);
  * PyTorch eager: ``torch.nn.functional.conv2d`` under ``torch.no_grad`` (``torch.set_num_threads(N)``);
  * optionally TVM MetaSchedule (``--metaschedule-trials``): ``tvm.s_tir.meta_schedule.tune_tir`` on the TE
    compute of ``topi.nn.conv2d_nchw`` (``group_conv2d_nchw`` / ``depthwise_conv2d_nchw`` for grouped layers),
    ``compile_tir`` on the best record. ``match`` gives each layer as many trials as ``convpipe tune`` has
    candidates for it (equal tuning budget in measurements).

  "ours" for a layer is the schedule a compiled model uses: the ``--db`` record if there is one, else ``auto``.
  GFLOP/s always counts the direct algorithm's multiply-adds x 2 (``Conv2dWorkload.flops``), for Winograd too.
  A layer is "compute-bound" when groups == 1 and its arithmetic intensity (flops / bytes of data + weight +
  output, fp32) is at least ``--compute-bound-ai`` (default 16 FLOP/B).
- **Models**: ``compile_model(onnx, schedule="auto")`` (and with ``--db``; and ``layout="nchw"``, the network
  kept in NCHW, to show what the blocked layout buys), timed with ``compiler.bench``'s
  ``model_engines`` next to onnxruntime on the same ONNX, OpenVINO on the same ONNX when the ``openvino``
  package is installed (``compiler.bench.openvino_runner``: CPU plugin, ``INFERENCE_PRECISION_HINT=f32``,
  latency hint, ``INFERENCE_NUM_THREADS = N``, no hyper-threading, no pinning) and the PyTorch model; compile
  time of the no-tuning build is recorded; convpipe's and OpenVINO's outputs are checked against onnxruntime's.
  The layer suite has no OpenVINO column.

Method
------
Engines of one layer (or one model) are timed together by ``compiler.bench.side_by_side``: each is warmed up and
calibrated to ``round_s`` per round, then rounds run the engines in turn (A B C A B C ...), so the machine's noise
hits all alike; the figure is the median over rounds of the mean latency per call. Every engine uses the same
thread count N: ``TVM_NUM_THREADS`` (read once per process, when TVM's pool starts), onnxruntime's
``intra_op_num_threads``, OpenVINO's ``INFERENCE_NUM_THREADS`` (OpenVINO uses at most the cores it may run on: the
model record says how many it ran, ``openvino.threads``) and ``torch.set_num_threads``. Hence each thread count
runs in a fresh subprocess (this script re-invokes itself with ``--worker N``). Kernels and model artifacts built by
the first worker are reused by the next (same target; only the thread pool differs).

How to run
----------
This script measures; ``scripts/bench_report.py`` turns its ``results.json`` into the report (run at the end of a
measurement unless ``--no-report``)::

    .venv/bin/python scripts/bench_x86.py                        # everything, 1 and 2 threads, then the report
    .venv/bin/python scripts/bench_x86.py --threads 1 --quick    # fewer/shorter rounds (~2 min)
    .venv/bin/python scripts/bench_x86.py --layers-only --layers 3x3,stem --models resnet18
    .venv/bin/python scripts/bench_x86.py --models-only --db tune.json
    .venv/bin/python scripts/bench_x86.py --metaschedule-trials 64 --metaschedule-layers 3x3/s1
    .venv/bin/python scripts/bench_x86.py --no-report            # only measure: OUT/results.json
    .venv/bin/python scripts/bench_report.py --out out/bench_x86  # (re)write the report from OUT/results.json

Outputs (``--out``, default ``out/bench_x86``): ``results.json`` (every raw figure: machine, FMA peak, per thread
count the workers' per-layer and per-model timings, ms) and ``work/`` (ONNX exports, kernels, artifacts, the
workers' ``raw_t<N>.json``). The report (``scripts/bench_report.py``) adds ``analysis.json`` (ratios, the issue's
targets marked met / not met), ``report.md`` (tables), ``layers_t<N>.png`` (per-layer GFLOP/s with the FMA peak
line) and ``models.png`` (model latency per engine), and prints the targets table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from machine import bandwidth, cpu_name, fma_peak  # noqa: E402 -- one reader of the machine for every report
ROOT = os.path.dirname(HERE)
DEFAULT_MODELS = "resnet18,resnet50,mobilenet_v2"


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (``argv``, default ``sys.argv[1:]``); exits 2 on a bad option (argparse)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"zoo models (default {DEFAULT_MODELS})")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--layers-only", action="store_true", help="only the per-layer suite")
    g.add_argument("--models-only", action="store_true", help="only the end-to-end models")
    p.add_argument("--layers", default="", help="restrict the layer suite: comma-separated indices or substrings of "
                   "layer names (e.g. '3x3/s1,stem' or '0,5,7'); default all")
    p.add_argument("--quick", action="store_true", help="fewer, shorter timing rounds (3 x 0.05 s instead of 7 x 0.25 s)")
    p.add_argument("--rounds", type=int, default=None, help="timing rounds (overrides --quick)")
    p.add_argument("--round-s", type=float, default=None, help="seconds per engine per round (overrides --quick)")
    p.add_argument("--db", default=None, help="a convpipe tuning database: also time the tuned layers/models")
    p.add_argument("--metaschedule-trials", default="0",
                   help="MetaSchedule trials per layer: an int, or 'match' (= convpipe tune's candidate count for the "
                        "layer); 0 = off (default: off, tuning takes minutes per layer)")
    p.add_argument("--metaschedule-layers", default="", help="layers to tune with MetaSchedule (same syntax as --layers; "
                   "default all selected layers)")
    p.add_argument("--compute-bound-ai", type=float, default=16.0,
                   help="arithmetic intensity (FLOP/byte) from which a groups=1 layer counts as compute-bound (16)")
    p.add_argument("--out", default=os.path.join(ROOT, "out", "bench_x86"), help="output directory")
    p.add_argument("--no-report", action="store_true", help="only measure (OUT/results.json); make the report "
                   "later with scripts/bench_report.py --out OUT")
    p.add_argument("--keep-work", action="store_true", help="reuse kernels/ONNX/artifacts of a previous run in OUT/work")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ================================================================================================================
# shared helpers (no TVM import at module level: TVM_NUM_THREADS must be set first)
# ================================================================================================================
def layer_name(wl) -> str:
    """Short readable name of a workload, e.g. ``3x3/s1 64->64 @56 16c`` (kernel/stride, C->K @ input height,
    ``dw``/``g<groups>``, non-"same" padding ``p<t><l><b><r>``, NCHW[x]c block)."""
    s = f"{wl.kernel_h}x{wl.kernel_w}/s{wl.stride_h} {wl.in_channels}->{wl.out_channels} @{wl.in_h}"
    if wl.is_depthwise:
        s += " dw"
    elif wl.groups > 1:
        s += f" g{wl.groups}"
    if (wl.pad_top, wl.pad_left, wl.pad_bottom, wl.pad_right) != ((wl.kernel_h - 1) // 2,) * 2 + ((wl.kernel_h - 1) // 2,) * 2:
        s += f" p{wl.pad_top}{wl.pad_left}{wl.pad_bottom}{wl.pad_right}"
    if wl.data_block or wl.out_block:
        s += f" {wl.data_block}c" if wl.data_block == wl.out_block else f" {wl.data_block or ''}c>{wl.out_block}c"
    return s


def select(names: list[str], spec: str) -> list[int]:
    """Indices of ``names`` chosen by ``spec`` (comma-separated indices or substrings); all when empty."""
    if not spec:
        return list(range(len(names)))
    out = []
    for tok in (t.strip() for t in spec.split(",")):
        if not tok:
            continue
        if tok.isdigit():
            if int(tok) < len(names):
                out.append(int(tok))
        else:
            out.extend(i for i, n in enumerate(names) if tok in n)
    return sorted(set(out))


def log(msg: str) -> None:
    """Print ``msg`` to stdout, flushed (the parent and the workers share the terminal)."""
    print(msg, flush=True)


# ================================================================================================================
# FMA peak (parent process)
# ================================================================================================================
def measure_fma_peak(out_dir: str, thread_counts: list[int]) -> dict:
    """:func:`machine.fma_peak` at 1 and each of ``thread_counts`` threads (built into ``out_dir/work``), logged:
    ``{"command", "per_threads": {"<N>": {"gflops", "isa", ...}}}`` (GFLOP/s, fp32), or ``{"error", "per_threads": {}}``."""
    res = fma_peak([1] + thread_counts, os.path.join(out_dir, "work"))
    if "error" in res:
        log(f"fma_peak: gcc failed: {res['error'][:300]}")
    for t, best in res["per_threads"].items():
        log(f"FMA peak ({best['isa']}, {t} thread{'s' if int(t) > 1 else ''}): {best['gflops']:.1f} GFLOP/s")
    return res


# ================================================================================================================
# worker: one thread count, one process
# ================================================================================================================
def worker(args: argparse.Namespace) -> int:
    """One thread count (``args.worker``, also set in ``TVM_NUM_THREADS`` by the parent): prepare the models,
    time the layer suite and/or the models, write ``OUT/work/raw_t<N>.json``. Returns 0."""
    threads = args.worker
    sys.path.insert(0, ROOT)
    from convpipe.compiler.bench import set_threads

    set_threads(threads)  # thread counts, and no spinning/pinning pools: before torch and TVM start theirs

    import numpy as np
    import torch
    import tvm

    torch.set_num_threads(threads)

    from convpipe.compiler.bench import side_by_side
    from convpipe.schedules import resolve_target, rules_for

    work = os.path.join(args.out, "work")
    os.makedirs(work, exist_ok=True)
    target = resolve_target("x86")
    rules = rules_for(target.arch)
    db = None
    if args.db:
        from convpipe.compiler.tune import TuningDatabase

        db = TuningDatabase(args.db)
    rounds = args.rounds or (3 if args.quick else 7)
    round_s = args.round_s or (0.05 if args.quick else 0.25)
    models = [m for m in args.models.split(",") if m]
    result = {
        "threads": threads,
        "target": target.to_json() if hasattr(target, "to_json") else str(target.target),
        "isa": target.isa,
        "vector_lanes": target.vector_lanes,
        "rounds": rounds,
        "round_s": round_s,
        "versions": versions(),
        "layers": [],
        "models": [],
    }

    onnx_paths, torch_models, inputs = prepare_models(models, work)

    if not args.models_only:
        result["layers"] = run_layers(args, threads, target, rules, db, onnx_paths, rounds, round_s, work)
    if not args.layers_only:
        result["models"] = run_models(args, threads, target, db, models, onnx_paths, torch_models, inputs, rounds, round_s, work)

    with open(os.path.join(work, f"raw_t{threads}.json"), "w") as f:
        json.dump(result, f, indent=1)
    return 0


def versions() -> dict:
    """Versions of python, tvm, onnxruntime, openvino, torch, numpy, onnx and convpipe (those importable), as
    strings."""
    out = {"python": platform.python_version()}
    for mod in ("tvm", "onnxruntime", "openvino", "torch", "numpy", "onnx"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            pass
    try:
        import convpipe

        out["convpipe"] = convpipe.__version__
    except Exception:  # noqa: BLE001
        pass
    return out


def prepare_models(models: list[str], work: str):
    """Export each zoo model to ONNX once (cached under work/onnx); the PyTorch model and a real input."""
    from convpipe.compiler.export import export_onnx
    from convpipe.compiler.zoo import get_model

    onnx_paths, torch_models, inputs = {}, {}, {}
    os.makedirs(os.path.join(work, "onnx"), exist_ok=True)
    for name in models:
        t0 = time.perf_counter()
        model, shape, entry = get_model(name)
        path = os.path.join(work, "onnx", f"{name}.onnx")
        if not os.path.exists(path):
            export_onnx(model, shape, path, source=name)
        onnx_paths[name] = path
        torch_models[name] = model
        inputs[name] = {"input": entry.real_input(shape)}
        log(f"[model] {name}: ready ({time.perf_counter() - t0:.1f} s)")
    return onnx_paths, torch_models, inputs


# ---------------------------------------------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------------------------------------------
def suite(onnx_paths: dict, target) -> list[tuple]:
    """Distinct conv2d workloads over all models in first-use order, each with the models using it and how often:
    ``[(Conv2dWorkload, {model: uses})]``; each as ``compile`` builds it (``compiler.build.prepare``: NCHW[x]c
    where the model runs blocked, see ``compiler/layout.py``; ``compiler.conv_calls.workload_uses`` per model).

    Raises:
        ConvpipeError: a model ``compile`` could not import or whose convs it does not take.
    """
    from convpipe.compiler.build import prepare
    from convpipe.compiler.conv_calls import workload_uses
    from convpipe.compiler.importer import import_onnx

    order: dict = {}
    for model, path in onnx_paths.items():
        mod, _ = prepare(import_onnx(path), target)
        for wl, n in workload_uses(mod).items():
            order.setdefault(wl, {})[model] = n
    return list(order.items())


def kernel_cache_path(work: str, wl, fam: str, knobs: dict) -> str:
    """Path of the cached shared library of (workload, family, knobs) under ``work/kernels``."""
    h = hashlib.sha1(json.dumps([wl.key(), fam, knobs], sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(work, "kernels", f"{fam}-{h}.so")


def build_kernel(rule, wl, target, knobs, work):
    """The compiled kernel (``main``), build seconds (None when loaded from the cache of an earlier worker)."""
    import tvm

    path = kernel_cache_path(work, wl, rule.family, knobs)
    if os.path.exists(path):
        return tvm.runtime.load_module(path)["main"], None
    from convpipe.compiler.kernel import compile_kernel

    t0 = time.perf_counter()
    ex = compile_kernel(rule, wl, target, knobs)
    build_s = time.perf_counter() - t0
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + f".tmp{os.getpid()}.so"
    ex.export_library(tmp)
    os.replace(tmp, path)
    return tvm.runtime.load_module(path)["main"], build_s


def ort_conv_session(wl, w, threads: int):
    """An onnxruntime CPU session of a single NCHW ``Conv`` (opset 17) of ``wl`` with constant weight ``w`` (OIHW,
    float32): input ``x``, output ``y``; ``threads`` intra-op threads, no spinning."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node(
        "Conv", ["x", "w"], ["y"], kernel_shape=[wl.kernel_h, wl.kernel_w], strides=[wl.stride_h, wl.stride_w],
        pads=[wl.pad_top, wl.pad_left, wl.pad_bottom, wl.pad_right], dilations=[wl.dilation_h, wl.dilation_w],
        group=wl.groups,
    )
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(wl.data_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(wl.out_shape))], [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as compiler.bench: no spinning pools
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def torch_conv(wl, x, w, dtype=None):
    """A no-argument callable running ``F.conv2d`` of ``wl`` on NCHW ``x`` and OIHW ``w`` (NumPy float32; cast to
    ``dtype`` when given, e.g. ``torch.float64`` for the reference) under ``no_grad``; returns a torch tensor."""
    import torch
    import torch.nn.functional as F

    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    if dtype is not None:
        xt, wt = xt.to(dtype), wt.to(dtype)
    kw = dict(stride=(wl.stride_h, wl.stride_w), dilation=(wl.dilation_h, wl.dilation_w), groups=wl.groups)
    if wl.pad_top == wl.pad_bottom and wl.pad_left == wl.pad_right:
        def run():
            with torch.no_grad():
                return F.conv2d(xt, wt, padding=(wl.pad_top, wl.pad_left), **kw)
    else:
        def run():
            with torch.no_grad():
                return F.conv2d(F.pad(xt, (wl.pad_left, wl.pad_right, wl.pad_top, wl.pad_bottom)), wt, **kw)
    return run


def metaschedule_kernel(wl, target, trials: int, work: str, threads: int):
    """Tune the TE conv2d with MetaSchedule for ``trials`` trials; (kernel(data, weight, out), tune seconds)."""
    import tvm
    from tvm import te, topi
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.tir_integration import compile_tir

    wl = wl.with_layout(0)  # MetaSchedule tunes TVM's NCHW compute (as onnxruntime and PyTorch get NCHW)
    data = te.placeholder(wl.data_shape, name="data")
    kernel = te.placeholder(wl.weight_shape, name="kernel")
    strides = [wl.stride_h, wl.stride_w]
    pads = [wl.pad_top, wl.pad_left, wl.pad_bottom, wl.pad_right]
    dil = [wl.dilation_h, wl.dilation_w]
    if wl.groups == 1:
        out = topi.nn.conv2d_nchw(data, kernel, strides, pads, dil)
    elif wl.is_depthwise and wl.out_channels == wl.in_channels:
        out = topi.nn.depthwise_conv2d_nchw(data, kernel, strides, pads, dil)
    else:
        out = topi.nn.group_conv2d_nchw(data, kernel, strides, pads, dil, wl.groups)
    func = te.create_prim_func([data, kernel, out]).with_attr("global_symbol", "main")
    mod = tvm.IRModule({"main": func})
    wd = os.path.join(work, "metaschedule", f"t{threads}", hashlib.sha1(wl.key().encode()).hexdigest()[:12])
    shutil.rmtree(wd, ignore_errors=True)
    import logging

    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)  # console quiet; logs stay in work_dir
    t0 = time.perf_counter()
    # generous timeouts: the default 30 s build timeout kills every candidate on a loaded 2-core machine
    database = ms.tune_tir(mod=mod, target=target.target, work_dir=wd, max_trials_global=trials,
                           num_trials_per_iter=min(64, trials), num_tuning_cores=threads,
                           builder=ms.builder.LocalBuilder(max_workers=threads, timeout_sec=300.0),
                           runner=ms.runner.LocalRunner(timeout_sec=120.0))
    sch = compile_tir(database, mod, target.target)
    tune_s = time.perf_counter() - t0
    if sch is None:
        raise RuntimeError("MetaSchedule found no valid schedule")
    with target.target:
        ex = tvm.compile(sch.mod, target=target.target)
    return ex["main"], tune_s


def rel_err(y, ref) -> float:
    """``max|y - ref| / max|ref|`` in float64 (``y``, ``ref`` NumPy arrays of the same shape, NCHW)."""
    import numpy as np

    return float(np.abs(y.astype(np.float64) - ref).max() / (np.abs(ref).max() + 1e-30))


def run_layers(args, threads, target, rules, db, onnx_paths, rounds, round_s, work) -> list[dict]:
    """Time the selected layers of :func:`suite` at ``threads`` threads: every family of ours (checked against a
    float64 reference), onnxruntime, PyTorch and optionally MetaSchedule, interleaved by ``side_by_side``
    (``rounds`` x ``round_s`` s). One record per layer (timings in ms); a failing engine is recorded, not raised."""
    import numpy as np
    import torch
    import tvm

    from convpipe.compiler.bench import side_by_side
    from convpipe.compiler.select import auto_family
    from convpipe.schedules.compute import block_nchw, unblock_nchw

    try:
        from convpipe.compiler.tune import candidates as tune_candidates
    except ImportError:
        tune_candidates = None
    try:
        from convpipe.schedules.cpu.winograd import ERROR_BOUND as WINO_BOUND
    except ImportError:
        WINO_BOUND = {}

    layers = suite(onnx_paths, target)
    names = [layer_name(wl) for wl, _ in layers]
    chosen = select(names, args.layers)
    ms_chosen = set(select(names, args.metaschedule_layers)) if args.metaschedule_trials not in ("0", "") else set()
    log(f"[layers] {len(layers)} distinct conv2d workloads; benchmarking {len(chosen)} at {threads} thread(s)")
    results = []
    for n_done, i in enumerate(chosen):
        wl, uses = layers[i]
        name = names[i]
        t_layer = time.perf_counter()
        rng = np.random.default_rng(i)
        x = rng.standard_normal(wl.data_shape, dtype=np.float32)
        w = (rng.standard_normal(wl.weight_shape, dtype=np.float32) / np.sqrt(np.prod(wl.weight_shape[1:]))).astype(np.float32)
        ref = torch_conv(wl, x, w, torch.float64)().numpy()
        rec = {
            "index": i, "name": name, "key": wl.key(), "workload": wl.to_dict(), "used_by": uses,
            "gflop": wl.gflop,
            "intensity": wl.flops / (4.0 * (np.prod(wl.data_shape) + np.prod(wl.weight_shape) + np.prod(wl.out_shape))),
            "ours": {}, "errors": {}, "failed": {},
        }
        rec["compute_bound"] = bool(wl.groups == 1 and rec["intensity"] >= args.compute_bound_ai)
        rec["winograd_shape"] = wl.is_winograd_shape()
        engines = {}
        variants = []  # (engine name, family, knobs)
        for fam, rule in rules.items():
            if not rule.supports(wl, target):
                continue
            d = rule.default_knobs(wl, target)
            variants.append((fam, fam, d))
            if fam == "winograd":
                for m in (2, 4, 6):
                    if m == d.get("m"):
                        continue
                    cands = [k for k in rule.candidate_knobs(wl, target) if k.get("m") == m]
                    variants.append((f"winograd-f{m}", fam, cands[0] if cands else dict(d, m=m)))
        auto_fam, auto_reason = auto_family(wl, rules, target)
        rec["auto"] = {"family": auto_fam, "reason": auto_reason}
        rec["ours_engine"] = auto_fam
        if db is not None:
            r = db.lookup(wl, target)
            if r is not None:
                same = [v for v in variants if v[1] == r["family"] and v[2] == r["knobs"]]
                if same:
                    rec["ours_engine"] = same[0][0]
                else:
                    variants.append(("tuned", r["family"], dict(r["knobs"])))
                    rec["ours_engine"] = "tuned"
                rec["tuned"] = {"family": r["family"], "knobs": r["knobs"], "db_ms": r.get("ms")}
        for ename, fam, knobs in variants:
            rule = rules[fam]
            try:
                kern, build_s = build_kernel(rule, wl, target, knobs, work)
                args_ = [
                    tvm.runtime.tensor(block_nchw(x, wl.data_block) if wl.data_block else x),
                    tvm.runtime.tensor(np.ascontiguousarray(rule.pack_weight(w, wl, knobs), dtype=np.float32)),
                    tvm.runtime.tensor(np.zeros(wl.out_tensor_shape, np.float32)),
                ]
                kern(*args_)
                y = args_[2].numpy()
                err = rel_err(unblock_nchw(y) if wl.out_block else y, ref)
                rec["ours"][ename] = {"family": fam, "knobs": knobs, "build_s": build_s, "rel_err": err}
                if fam == "winograd":
                    rec["errors"][f"winograd F({knobs['m']}x{knobs['m']},3x3)"] = {
                        "tile": knobs["m"], "rel_err": err, "bound": WINO_BOUND.get(knobs["m"])}
                engines[ename] = (lambda k=kern, a=args_: k(*a))
            except Exception as e:  # noqa: BLE001 -- one broken family must not hide the others
                rec["failed"][ename] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
                log(f"  {name}: {ename} FAILED: {rec['failed'][ename]}")
        # MetaSchedule reference
        if i in ms_chosen:
            trials = (len(tune_candidates(wl, target)) if tune_candidates else 0) if args.metaschedule_trials == "match" \
                else int(args.metaschedule_trials)
            if trials > 0:
                try:
                    mk, tune_s = metaschedule_kernel(wl, target, trials, work, threads)
                    ms_args = [tvm.runtime.tensor(x), tvm.runtime.tensor(w), tvm.runtime.tensor(np.zeros(wl.out_shape, np.float32))]
                    mk(*ms_args)
                    rec["metaschedule"] = {"trials": trials, "tune_s": tune_s, "rel_err": rel_err(ms_args[2].numpy(), ref)}
                    engines["metaschedule"] = (lambda k=mk, a=ms_args: k(*a))
                except Exception as e:  # noqa: BLE001
                    rec["failed"]["metaschedule"] = f"{type(e).__name__}: {str(e).strip()[:200]}"
                    log(f"  {name}: metaschedule FAILED: {rec['failed']['metaschedule']}")
        sess = ort_conv_session(wl, w, threads)
        engines["onnxruntime"] = lambda s=sess: s.run(None, {"x": x})
        rec["onnxruntime_rel_err"] = rel_err(sess.run(None, {"x": x})[0], ref)
        engines["pytorch"] = torch_conv(wl, x, w)
        rec["pytorch_rel_err"] = rel_err(engines["pytorch"]().numpy(), ref)
        rec["timing"] = side_by_side(engines, rounds=rounds, round_s=round_s)
        for ename, t in rec["timing"].items():
            t["gflops"] = wl.gflop / t["median_ms"] * 1e3
        ours_t = [(t["median_ms"], e) for e, t in rec["timing"].items() if e in rec["ours"]]
        rec["best_engine"] = min(ours_t)[1] if ours_t else None
        summary = "  ".join(f"{e} {t['median_ms']:.3f}ms" for e, t in rec["timing"].items())
        log(f"[layer {n_done + 1}/{len(chosen)} t={threads}] #{i} {name} ({wl.gflop * 1e3:.0f} MFLOP): {summary}  "
            f"({time.perf_counter() - t_layer:.1f} s)")
        results.append(rec)
    return results


# ---------------------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------------------
def run_models(args, threads, target, db, models, onnx_paths, torch_models, inputs, rounds, round_s, work) -> list[dict]:
    """Compile each model (auto, NCHW, and tuned with ``db``), check it against onnxruntime, and time it next to
    onnxruntime, OpenVINO (when installed; also checked against onnxruntime) and PyTorch at ``threads`` threads.
    One record per model (timings in ms, compile seconds; ``openvino``: ``{"threads": the count it ran}``, or
    ``{"skipped": "not installed"}``, or ``{"skipped": "failed: ..."}``); a failing variant is recorded, not
    raised."""
    import numpy as np

    from convpipe.compiler.bench import (OPENVINO_NOT_INSTALLED, check_against, model_engines, openvino_available,
                                         openvino_runner, side_by_side)
    from convpipe.compiler.build import compile_model
    from convpipe.compiler.verify import run_onnxruntime
    from convpipe.errors import ConvpipeError
    from convpipe.runtime import load

    out = []
    for name in models:
        rec = {"model": name, "threads": threads, "compile": {}, "failed": {}, "check": {}}
        variants = [("convpipe", "auto", None, "auto"), ("convpipe-nchw", "auto", None, "nchw")]
        if db is not None:
            variants.append(("convpipe-tuned", "auto", db, "auto"))
        engines = {}
        ref = run_onnxruntime(onnx_paths[name], inputs[name], threads)
        for ename, sched, d, layout in variants:
            art = os.path.join(work, "artifacts", f"{name}-{ename}.cpa")
            try:
                if not os.path.exists(os.path.join(art, "manifest.json")):
                    t0 = time.perf_counter()
                    res = compile_model(onnx_paths[name], art, target=target, schedule=sched, db=d, layout=layout)
                    rec["compile"][ename] = {"wall_s": time.perf_counter() - t0, "phases_s": res.seconds,
                                            "threads_during_compile": threads}
                    with open(os.path.join(work, "artifacts", f"{name}-{ename}.compile.json"), "w") as f:
                        json.dump(rec["compile"][ename], f)
                else:
                    with open(os.path.join(work, "artifacts", f"{name}-{ename}.compile.json")) as f:
                        rec["compile"][ename] = dict(json.load(f), reused_artifact=True)
                with open(os.path.join(art, "manifest.json")) as f:
                    man = json.load(f)
                rec["compile"][ename]["families"] = _count([c["family"] for c in man.get("conv2d", [])])
                ours = load(art).run(inputs[name])
                errs = {k: float(np.abs(ours[k] - ref[k]).max()) for k in ref if k in ours}
                scale = max(float(np.abs(v).max()) for v in ref.values())
                rec["check"][ename] = {"max_abs_err": max(errs.values()), "max_rel_err": max(errs.values()) / scale}
                e = model_engines(art, None, inputs[name], threads)
                engines[ename] = e["convpipe"]
            except Exception as e:  # noqa: BLE001
                rec["failed"][ename] = f"{type(e).__name__}: {str(e).strip()[:300]}"
                log(f"[model] {name}: {ename} FAILED: {rec['failed'][ename]}")
        e = model_engines(os.path.join(work, "artifacts", f"{name}-convpipe.cpa"), onnx_paths[name], inputs[name],
                          threads, torch_models[name]) if "convpipe" in engines else None
        if e is None:  # no artifact: still time the references
            from convpipe.compiler.verify import onnxruntime_session
            import torch

            sess = onnxruntime_session(onnx_paths[name], threads, spinning=False)
            xs = [torch.from_numpy(a) for a in inputs[name].values()]
            tm = torch_models[name]

            def run_torch(tm=tm, xs=xs):
                with torch.no_grad():
                    return tm(*xs)

            e = {"onnxruntime": lambda s=sess, i=inputs[name]: s.run(None, i), "pytorch": run_torch}
        engines["onnxruntime"] = e["onnxruntime"]
        if not openvino_available():
            rec["openvino"] = {"skipped": OPENVINO_NOT_INSTALLED}
        else:
            try:
                ov_run = openvino_runner(onnx_paths[name], inputs[name], threads)
                chk = check_against({k: v.copy() for k, v in ov_run().items()}, ref)
                rec["check"]["openvino"] = {"max_rel_err": chk["max_rel_err"], "within": chk["within"]}
                rec["openvino"] = {"threads": ov_run.threads}
                engines["openvino"] = ov_run
            except ConvpipeError as ex:
                rec["openvino"] = {"skipped": f"failed: {ex}"}
                log(f"[model] {name}: openvino FAILED: {ex}")
        engines["pytorch"] = e["pytorch"]
        rec["timing"] = side_by_side(engines, rounds=rounds, round_s=max(round_s, 0.3 if args.quick else 1.0))
        summary = "  ".join(f"{k} {t['median_ms']:.2f}ms" for k, t in rec["timing"].items())
        log(f"[model t={threads}] {name}: {summary}")
        out.append(rec)
    return out


def _count(xs) -> dict:
    d: dict = {}
    for x in xs:
        d[x] = d.get(x, 0) + 1
    return d


# ================================================================================================================
# parent process: FMA peak, one worker per thread count -> results.json
# ================================================================================================================
def parent(args: argparse.Namespace) -> int:
    """The measurement: FMA peak, one worker subprocess per thread count, the FMA peak again; writes
    ``OUT/results.json`` and, unless ``--no-report``, the report (``scripts/bench_report.py``). Returns 0, or 1
    when every worker failed."""
    t_start = time.time()
    thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]
    os.makedirs(args.out, exist_ok=True)
    work = os.path.join(args.out, "work")
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work, exist_ok=True)
    res = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv[1:],
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform()},
        "fma_peak": measure_fma_peak(args.out, thread_counts),
        "bandwidth": bandwidth([1] + thread_counts, work),
        "runs": {},
    }
    passthrough = [a for a in sys.argv[1:]]
    for t in thread_counts:
        log(f"===== {t} thread(s): worker process =====")
        t0 = time.time()
        cmd = [sys.executable, os.path.abspath(__file__), *passthrough, "--worker", str(t), "--out", args.out, "--keep-work"]
        env = dict(os.environ, TVM_NUM_THREADS=str(t), OMP_NUM_THREADS=str(t))
        rc = subprocess.call(cmd, env=env)
        raw_path = os.path.join(work, f"raw_t{t}.json")
        if rc != 0 or not os.path.exists(raw_path):
            log(f"worker for {t} thread(s) failed (exit {rc})")
            res["runs"][str(t)] = {"error": f"worker exit {rc}"}
            continue
        with open(raw_path) as f:
            res["runs"][str(t)] = json.load(f)
        res["runs"][str(t)]["wall_s"] = time.time() - t0
    # the machine may be shared: measure the peak again after the runs and keep the higher figure per thread count
    again = measure_fma_peak(args.out, thread_counts)
    res["fma_peak"]["before_runs"] = dict(res["fma_peak"].get("per_threads", {}))
    res["fma_peak"]["after_runs"] = again.get("per_threads", {})
    for t, d in again.get("per_threads", {}).items():
        cur = res["fma_peak"]["per_threads"].get(t)
        if cur is None or d["gflops"] > cur["gflops"]:
            res["fma_peak"]["per_threads"][t] = d
    ok = [r for r in res["runs"].values() if "error" not in r]
    if ok:
        for k in ("isa", "versions", "rounds", "round_s", "target"):
            res[k] = ok[0].get(k)
    res["wall_s"] = time.time() - t_start
    path = os.path.join(args.out, "results.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1, default=str)
    log(f"wrote {path}  (total {res['wall_s'] / 60:.1f} min)")
    if not args.no_report:
        sys.path.insert(0, HERE)
        from bench_report import write_report  # the reporting half: results.json -> report.md, plots

        log("")
        write_report(args.out)
    return 0 if ok else 1


def main(argv=None) -> int:
    """Command line (see the module docstring): the parent run, or with the hidden ``--worker N`` one thread
    count's worker. Exit status 0; 1 when every worker failed (``results.json`` is still written)."""
    args = parse_args(argv)
    if args.worker is not None:
        return worker(args)
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
