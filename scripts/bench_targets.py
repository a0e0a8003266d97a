#!/usr/bin/env python
"""Cross-target benchmark: one run over targets for a set of models -> JSON + Markdown table + PNG plot.

Targets and where each row runs:

- ``x86``  -- this host, natively: convpipe vs onnxruntime vs PyTorch eager, side by side (interleaved rounds,
  non-spinning thread pools; see ``compiler/bench.py``), after verifying against onnxruntime.
- ``arm``  -- an aarch64 board over TVM RPC (``--arm-remote HOST:PORT`` or ``--arm-tracker HOST:PORT --arm-key K``),
  or, with ``--arm-emulated``, the QEMU board of ``scripts/arm_board.sh`` started for this run. Verified against
  onnxruntime on the host, timed on the board with ``time_evaluator``. Rows from the emulated board say
  ``emulated``: those timings are ~20x slower than hardware and are NOT ARM performance.
- ``cuda`` -- compiled for ``--cuda-arch`` (default: the local GPU's, else sm_90). On a GPU: batch 1 and 32, each
  verified against onnxruntime (CPU) and timed side by side with PyTorch (cuDNN, if this torch has CUDA) and
  onnxruntime's CUDA provider (if installed), plus a per-layer table of ResNet-18's 3x3 layers at batch 32 (ours
  vs cuDNN, effective GFLOP/s = direct-convolution FLOPs / time, % of the FP32 peak). Without a GPU the row
  records the offline batch-1 build (kernels, registers, spills) and ``not run: no CUDA GPU``.

Usage::

    .venv/bin/python scripts/bench_targets.py --models resnet18,mobilenet_v2,pnet --targets x86,arm,cuda \\
        --arm-emulated --threads 2 --out out/bench_targets
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: input shapes: full size on x86/CUDA, small on the emulated board (emulation is ~20x slower)
SHAPES = {"resnet18": 224, "resnet50": 224, "mobilenet_v2": 224, "squeezenet1_1": 224,
          "shufflenet_v2_x1_0": 224, "pnet": 120, "rnet": 24, "onet": 48}
EMULATED_SIZE = {"resnet18": 64, "resnet50": 64, "mobilenet_v2": 64, "squeezenet1_1": 64, "shufflenet_v2_x1_0": 64}


def _shape(name: str, emulated: bool) -> tuple[int, ...]:
    s = EMULATED_SIZE.get(name, SHAPES[name]) if emulated else SHAPES[name]
    return (1, 3, s, s)


def _host() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.machine()} {cpu}, {os.cpu_count()} cores"


def bench_x86(name, work, threads, rounds):
    from convpipe.compiler.bench import model_engines, side_by_side
    from convpipe.compiler.build import compile_model
    from convpipe.compiler.export import export_onnx
    from convpipe.compiler.verify import compare, run_onnxruntime
    from convpipe.compiler.zoo import ZOO
    from convpipe.runtime import load

    shape = _shape(name, False)
    model = ZOO[name].build()
    onnx_path, art = os.path.join(work, f"{name}.onnx"), os.path.join(work, f"{name}_x86.cpa")
    export_onnx(model, shape, onnx_path, source=name)
    t0 = time.perf_counter()
    res = compile_model(onnx_path, art, "x86")
    compile_s = time.perf_counter() - t0
    x = ZOO[name].real_input(shape)
    checks = compare(load(art).run([x]), run_onnxruntime(onnx_path, {"input": x}), 1e-3, 1e-4)
    times = side_by_side(model_engines(art, onnx_path, {"input": x}, threads, model), rounds=rounds)
    return {
        "model": name, "target": "x86", "isa": res.manifest["target"]["isa"], "where": f"native ({_host()})",
        "input": list(shape), "verified": all(c.ok for c in checks), "max_abs_err": max(c.max_abs for c in checks),
        "compile_s": compile_s, "threads": threads,
        "ms": {k: v["median_ms"] for k, v in times.items()},
    }


def bench_arm(name, work, session, where, emulated):
    from convpipe import remote
    from convpipe.compiler.build import compile_model
    from convpipe.compiler.export import export_onnx
    from convpipe.compiler.verify import compare, run_onnxruntime
    from convpipe.compiler.zoo import ZOO

    shape = _shape(name, emulated)
    onnx_path, art = os.path.join(work, f"{name}_arm.onnx"), os.path.join(work, f"{name}_arm.cpa")
    export_onnx(ZOO[name].build(), shape, onnx_path, source=name)
    t0 = time.perf_counter()
    res = compile_model(onnx_path, art, "arm")
    compile_s = time.perf_counter() - t0
    x = ZOO[name].real_input(shape)
    lib = os.path.join(art, "model.so")
    names = [o["name"] for o in res.manifest["outputs"]]
    checks = compare(remote.run_remote(lib, [x], session, names), run_onnxruntime(onnx_path, {"input": x}), 1e-3, 1e-4)
    t = remote.time_remote(lib, [x], session, number=2, repeat=3)
    return {
        "model": name, "target": "arm", "isa": "neon", "where": where, "input": list(shape),
        "verified": all(c.ok for c in checks), "max_abs_err": max(c.max_abs for c in checks),
        "compile_s": compile_s, "ms": {"convpipe": statistics.median(t) * 1e3},
        "note": "emulated (QEMU): not ARM performance" if emulated else "",
    }


def _gpu():
    """GPU 0 when this process can run CUDA kernels, else None."""
    import tvm

    from convpipe.runtime.module import cuda_gpu_missing

    return None if cuda_gpu_missing() else tvm.cuda(0)


def bench_cuda(name, work, arch, rounds, batches=(1, 32)):
    """Rows for ``name`` on CUDA: offline, the batch-1 build (registers, spills); on a GPU, per batch, verified
    against onnxruntime (CPU) and timed side by side with PyTorch (cuDNN, when this torch has CUDA) and
    onnxruntime's CUDA provider (when installed)."""
    from convpipe.compiler.bench import model_engines, side_by_side
    from convpipe.compiler.build import compile_model
    from convpipe.compiler.export import export_onnx
    from convpipe.compiler.zoo import ZOO

    gpu = _gpu()
    rows = []
    for batch in batches if gpu else batches[:1]:
        shape = (batch,) + _shape(name, False)[1:]
        onnx_path = os.path.join(work, f"{name}_b{batch}.onnx")
        art = os.path.join(work, f"{name}_b{batch}_{arch}.cpa")
        model = ZOO[name].build()
        export_onnx(model, shape, onnx_path, source=name)
        t0 = time.perf_counter()
        res = compile_model(onnx_path, art, "cuda", arch=arch)
        compile_s = time.perf_counter() - t0
        kernels = res.manifest["device_code"]["kernels"]
        conv = [k for k in kernels if "conv2d_" in k["kernel"]]
        row = {
            "model": name, "target": "cuda", "isa": arch, "input": list(shape), "compile_s": compile_s,
            "kernels": len(kernels), "conv_kernels": len(conv),
            "max_registers": max((k["registers"] for k in conv), default=0),
            "spills": sum(k["spill_stores"] + k["spill_loads"] for k in conv),
            "min_occupancy": min((k.get("occupancy", 0) for k in conv), default=0), "ms": {},
        }
        if gpu:
            from convpipe.compiler.verify import compare, run_onnxruntime
            from convpipe.runtime import load

            x = np.concatenate([ZOO[name].real_input((1,) + shape[1:])] * batch)
            checks = compare(load(art, device="cuda").run([x]), run_onnxruntime(onnx_path, {"input": x}), 1e-3, 1e-4)
            times = side_by_side(model_engines(art, onnx_path, {"input": x}, 1, model, device="cuda"), rounds=rounds)
            row.update(where=f"native GPU ({gpu.device_name})", verified=all(c.ok for c in checks),
                       max_abs_err=max(c.max_abs for c in checks), ms={k: v["median_ms"] for k, v in times.items()})
        else:
            row.update(where="offline build only", verified=None, note="not run: no CUDA GPU")
        rows.append(row)
    return rows


def bench_cuda_layers(arch, work):
    """ResNet-18's 3x3 layers at batch 32 on the GPU, ours vs cuDNN and % of the FP32 peak: the kernels and the
    timing of ``scripts/gpu_kit.py`` (one implementation). Empty without a GPU."""
    if _gpu() is None:
        return []
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from gpu_kit import build_layers, run_layers

    build_layers(work, arch)
    return run_layers(os.path.join(work, "layers"))


def write_reports(rows, out, meta, cuda_layers=()):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "bench_targets.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows, "cuda_layers": list(cuda_layers)}, f, indent=2)
    lines = [f"# convpipe cross-target benchmark\n", f"{meta['date']} — host: {meta['host']}; threads {meta['threads']}\n",
             "| model | target | where | input | verified | convpipe ms | onnxruntime ms | PyTorch ms | vs ORT | vs PyTorch | compile s | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = r.get("ms", {})
        ours, ort, pt = ms.get("convpipe"), ms.get("onnxruntime", ms.get("onnxruntime-cuda")), ms.get("pytorch")
        fmt = lambda v: f"{v:.2f}" if v is not None else "—"  # noqa: E731
        note = r.get("note", "")
        if r["target"] == "cuda":
            note = (note + f"; {r['kernels']} kernels ({r['conv_kernels']} in conv2d functions), "
                           f"max {r['max_registers']} regs, {r['spills']} B spills, "
                           f"min occupancy {r.get('min_occupancy', 0):.0%}").strip("; ")
        lines.append(
            f"| {r['model']} | {r['target']}/{r['isa']} | {r.get('where', '')} | {'x'.join(map(str, r['input'][2:]))} | "
            f"{ {True: 'yes', False: 'NO', None: '—'}[r.get('verified')] } | {fmt(ours)} | {fmt(ort)} | {fmt(pt)} | "
            f"{fmt(ort / ours) + 'x' if ours and ort else '—'} | {fmt(pt / ours) + 'x' if ours and pt else '—'} | "
            f"{r['compile_s']:.1f} | {note} |"
        )
    lines.append("\nvs ORT / vs PyTorch: the engine's latency over convpipe's (> 1: convpipe faster), measured side by side "
                 "(on CUDA: PyTorch = cuDNN, ORT = its CUDA provider, each call synchronised).")
    if cuda_layers:
        sys.path.insert(0, os.path.join(REPO, "scripts"))
        from gpu_kit import layer_table

        lines += ["\n## CUDA 3x3 layers (ResNet-18, stride 1)\n"] + layer_table(cuda_layers)
    with open(os.path.join(out, "bench_targets.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in rows if r.get("ms")]
    if timed:
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(timed)), 4))
        engines = ["convpipe", "onnxruntime", "pytorch"]
        for i, eng in enumerate(engines):
            xs = [j + (i - 1) * 0.27 for j in range(len(timed))]
            ax.bar(xs, [r["ms"].get(eng, 0) for r in timed], width=0.27, label=eng)
        ax.set_xticks(range(len(timed)))
        ax.set_xticklabels([f"{r['model']}\n{r['target']} ({'emul.' if 'emulated' in r.get('note', '') else 'native'})" for r in timed], fontsize=8)
        ax.set_ylabel("latency (ms, lower is better)")
        ax.set_yscale("log")
        ax.set_title("convpipe across targets (emulated ARM rows are not ARM performance)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "bench_targets.png"), dpi=120)
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,mobilenet_v2,pnet")
    p.add_argument("--targets", default="x86,arm,cuda")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--arm-remote", metavar="HOST:PORT")
    p.add_argument("--arm-tracker", metavar="HOST:PORT")
    p.add_argument("--arm-key")
    p.add_argument("--arm-emulated", action="store_true", help="start scripts/arm_board.sh's QEMU board for the ARM rows")
    p.add_argument("--cuda-arch", help="CUDA arch (default: the local GPU's, else sm_90)")
    p.add_argument("--out", default="out/bench_targets")
    args = p.parse_args(argv)
    from convpipe.compiler.bench import set_threads

    set_threads(args.threads)
    models, targets = args.models.split(","), args.targets.split(",")
    work = os.path.join(args.out, "work")
    os.makedirs(work, exist_ok=True)
    rows = []
    if "x86" in targets:
        for name in models:
            rows.append(bench_x86(name, work, args.threads, args.rounds))
            print(json.dumps(rows[-1]))
    if "arm" in targets:
        from convpipe import remote

        board = os.path.join(REPO, "scripts", "arm_board.sh")
        started = False
        addr = args.arm_remote
        if args.arm_emulated and not (args.arm_remote or args.arm_tracker):
            port = "9391"
            subprocess.run(["bash", board, "setup"], check=True)
            subprocess.run(["bash", board, "start", port], check=True)
            addr, started = f"127.0.0.1:{port}", True
        if addr or args.arm_tracker:
            try:
                sess = remote.connect(addr, args.arm_tracker, args.arm_key, timeout_s=60)
                where = "emulated board (QEMU cortex-a72, RPC on 127.0.0.1)" if args.arm_emulated else f"remote board {addr or args.arm_tracker}"
                for name in models:
                    rows.append(bench_arm(name, work, sess, where, args.arm_emulated))
                    print(json.dumps(rows[-1]))
            finally:
                if started:
                    subprocess.run(["bash", board, "stop"], check=False)
        else:
            print("arm: skipped (give --arm-remote, --arm-tracker or --arm-emulated)", file=sys.stderr)
    layers = []
    if "cuda" in targets:
        gpu = _gpu()
        arch = args.cuda_arch or ("sm_" + gpu.compute_version.replace(".", "") if gpu else "sm_90")
        for name in models:
            for row in bench_cuda(name, work, arch, args.rounds):
                rows.append(row)
                print(json.dumps(row))
        layers = bench_cuda_layers(arch, work)
    import tvm

    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": _host(), "threads": args.threads,
            "tvm": tvm.__version__, "models": models, "targets": targets}
    print(write_reports(rows, args.out, meta, layers))
    return 0 if all(r.get("verified") is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
