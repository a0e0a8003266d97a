"""PyTorch eager vs ``torch.compile`` (inductor) vs ``torch.compile(backend="convpipe")`` on the showcase models,
side by side, on this CPU (issue 13).

Fairness, as in every convpipe benchmark: each engine runs in its own process (``--worker``), with its own
defaults and the same thread count (``set_threads``: TVM, OpenMP and PyTorch pools at ``--threads``; PyTorch's
OpenMP pool passive, TVM's pool with its own defaults, spinning and pinned, as onnxruntime's and OpenVINO's); the parent alternates the engines round by round (A B C A B C ...), each round about ``--round-s``
seconds of back-to-back calls, and reports the median over rounds of the per-call latency (ms) and ratios to eager.
Compile time is the first call's wall time (Dynamo capture + backend compile). Every engine's output is compared
with eager PyTorch's (max |diff| / max |eager|). The report records the CPU model, ISA, measured FMA peak and
memory bandwidth (scripts/machine.py).

    .venv/bin/python scripts/bench_backends.py                       # showcase models, 1 thread -> docs/perf/backends.md
    .venv/bin/python scripts/bench_backends.py --models resnet18 --threads 2 --rounds 5 --out /tmp/bb
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

ENGINES = ("eager", "inductor", "convpipe", "convpipe-artifact", "onnxruntime", "openvino")
#: engines run by default (onnxruntime and OpenVINO, the deployment anchors, with ``--engines``)
DEFAULT_ENGINES = ("eager", "inductor", "convpipe")
DEFAULT_MODELS = "resnet18,resnet50,mobilenet_v2,pnet,rnet,onet"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated names of convpipe's zoo")
    p.add_argument("--engines", default=",".join(DEFAULT_ENGINES),
                   help="comma-separated subset of " + ", ".join(ENGINES) + " (onnxruntime and openvino run the model "
                        "exported by convpipe export, with their own defaults at --threads)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--round-s", type=float, default=0.25, help="seconds of calls per engine per round")
    p.add_argument("--settle-s", type=float, default=0.3,
                   help="idle seconds before each engine's round: thread pools that spin after their work "
                        "(TVM's, onnxruntime's, OpenVINO's) stop before the next engine runs (default 0.3)")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "perf", "backends"), help="report directory")
    p.add_argument("--no-machine", action="store_true", help="skip the FMA-peak and bandwidth probes")
    p.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ==============================================================================================================
# worker: one engine, one model, one process; answers "round N" lines on stdin with one JSON line on stdout
# ==============================================================================================================
def worker(args: argparse.Namespace) -> int:
    from convpipe.compiler.bench import set_threads

    set_threads(args.threads)  # before torch and TVM start their pools
    if args.worker.startswith("convpipe"):  # its own process: TVM's own pool defaults (spinning, pinned threads),
        os.environ.pop("TVM_THREAD_POOL_SPIN_COUNT", None)  # as onnxruntime and OpenVINO keep theirs; set_threads
        os.environ.pop("TVM_BIND_THREADS", None)  # turns both off for engines sharing one process
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from convpipe.compiler.zoo import ZOO

    entry = ZOO[args.model]
    model = entry.build().eval()
    x = torch.from_numpy(np.ascontiguousarray(entry.real_input(entry.input_shape), dtype=np.float32))
    with torch.no_grad():
        ref = model(x)
    if args.worker == "eager":
        fn = model
    elif args.worker in ("convpipe-artifact", "onnxruntime", "openvino"):  # the exported ONNX, run by that engine
        fn = _onnx_engine(args.worker, model, x, args.threads)
    else:
        import warnings

        torch._dynamo.reset()
        fn = torch.compile(model, backend="inductor" if args.worker == "inductor" else "convpipe")
        warnings.simplefilter("error" if args.worker == "convpipe" else "default")  # an eager fallback is a failure
    t0 = time.perf_counter()
    with torch.no_grad():
        out = fn(x)
    compile_s = time.perf_counter() - t0
    refs, outs = (ref, out) if isinstance(ref, tuple) else ((ref,), (out,))
    rel = max(float((o - r).abs().max() / r.abs().max().clamp_min(1e-30)) for o, r in zip(outs, refs))
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(3):
            fn(x)
    one_ms = (time.perf_counter() - t0) / 3 * 1e3
    print(json.dumps({"ready": True, "compile_s": compile_s, "max_rel": rel, "one_ms": one_ms}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] != "round":
            break
        n = int(cmd[1])
        with torch.no_grad():
            t0 = time.perf_counter()
            for _ in range(n):
                fn(x)
            ms = (time.perf_counter() - t0) / n * 1e3
        print(json.dumps({"ms": ms}), flush=True)
    return 0


def _onnx_engine(engine: str, model, x, threads: int):
    """``fn(x) -> torch.Tensor | tuple``: the convpipe artifact compiled from it with default flags and run by
    :meth:`convpipe.runtime.Module.run` (NumPy in and out, no Dynamo), onnxruntime (CPU provider, its default graph
    optimisations and spinning,
    ``intra_op_num_threads = threads``) or OpenVINO (:func:`convpipe.compiler.bench.openvino_runner`: CPU plugin,
    f32, latency hint, ``threads``) on the model exported to ONNX by :func:`convpipe.compiler.export.export_onnx`.
    The input is bound once (OpenVINO shares its memory); every call runs the model on it."""
    import tempfile

    import numpy as np
    import torch

    from convpipe.compiler.export import export_onnx

    path = os.path.join(tempfile.mkdtemp(prefix="bench-backends-"), "model.onnx")
    names = export_onnx(model, tuple(x.shape), path)
    feed = {"input": np.ascontiguousarray(x.numpy())}
    if engine == "convpipe-artifact":  # the deployment path: convpipe compile, then the runtime's Module.run
        from convpipe.compiler.build import compile_model
        from convpipe.runtime import load

        art = os.path.join(os.path.dirname(path), "model.cpa")
        compile_model(path, art)
        module = load(art, threads=threads)

        def run():
            out = module.run(feed)
            return [out[n] for n in names]
    elif engine == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

        def run():
            return sess.run(names, feed)
    else:
        from convpipe.compiler.bench import openvino_runner

        runner = openvino_runner(path, feed, threads)

        def run():
            out = runner()
            return [out[n] for n in names]

    def fn(_x):
        outs = [torch.from_numpy(np.asarray(o)) for o in run()]
        return outs[0] if len(outs) == 1 else tuple(outs)

    return fn


def _start(engine: str, model: str, args) -> subprocess.Popen:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", engine, "--model", model,
           "--threads", str(args.threads)]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)


def _reply(p: subprocess.Popen, what: str) -> dict:
    line = p.stdout.readline()
    if not line:
        err = p.stderr.read() if p.stderr else ""
        raise RuntimeError(f"{what}: the worker exited (rc {p.wait()}) {err[-500:]}")
    return json.loads(line)


def bench_model(model: str, engines: list[str], args) -> dict:
    """Start one worker per engine, wait until all are compiled and warm, then alternate rounds."""
    procs, ready, failed = {}, {}, {}
    for e in engines:  # compile one at a time: a compile must not share the cores with another
        procs[e] = _start(e, model, args)
        try:
            ready[e] = _reply(procs[e], f"{model}/{e}")
        except (RuntimeError, json.JSONDecodeError) as exc:
            failed[e] = str(exc)
            procs.pop(e).kill()
        print(f"  {model}/{e}: " + (f"compiled in {ready[e]['compile_s']:.1f} s, {ready[e]['one_ms']:.2f} ms/call"
                                    if e in ready else f"FAILED {failed[e][:200]}"), flush=True)
    n = {e: max(1, min(2000, int(args.round_s * 1e3 / max(r["one_ms"], 1e-3)))) for e, r in ready.items()}
    samples = {e: [] for e in ready}
    for r in range(args.rounds):
        for e in ready:
            time.sleep(args.settle_s)  # the previous engine's pool stops spinning before this one runs
            procs[e].stdin.write(f"round {n[e]}\n")
            procs[e].stdin.flush()
            samples[e].append(_reply(procs[e], f"{model}/{e}")["ms"])
    for p in procs.values():
        p.stdin.close()
        p.wait(timeout=60)
    res = {"model": model, "engines": {}}
    for e in engines:
        if e in ready:
            s = samples[e]
            res["engines"][e] = {"median_ms": statistics.median(s), "min_ms": min(s), "max_ms": max(s),
                                 "calls_per_round": n[e], "compile_s": ready[e]["compile_s"],
                                 "max_rel": ready[e]["max_rel"]}
        else:
            res["engines"][e] = {"error": failed[e]}
    return res


def markdown(report: dict) -> str:
    from machine import describe

    engines = report["engines"]
    compiled = [e for e in engines if e in ("inductor", "convpipe")]  # compile s = their first call
    names = {"convpipe": "the convpipe `torch.compile` backend", "convpipe-artifact": "the convpipe artifact (Module.run)"}
    lines = ["# " + " vs ".join(names.get(e, e) for e in engines), "",
             f"Generated by `scripts/bench_backends.py` on {report['created']}. {describe(report['machine'])}", "",
             f"{report['threads']} thread(s), each engine in its own process, engines alternated over "
             f"{report['rounds']} rounds of ~{report['round_s']} s; median per-call latency in ms (lower is "
             "better), ratios to eager PyTorch (below 1 is faster than eager). Compile s = first call "
             "(Dynamo capture + backend compile); max rel = max |out - eager| / max |eager|.", "",
             "| model | " + " | ".join(f"{e} ms" for e in engines) + " | "
             + " | ".join(f"{e} / eager" for e in engines if e != "eager") + " | "
             + "".join(f"{e} compile s | " for e in compiled) + "max rel |",
             "|---|" + "---|" * (len(engines) + (len(engines) - 1) + len(compiled) + 1)]
    for row in report["results"]:
        es = row["engines"]
        eager = es.get("eager", {}).get("median_ms")
        ms = [f"{es[e]['median_ms']:.2f}" if "median_ms" in es[e] else "failed" for e in engines]
        ratios = [f"{es[e]['median_ms'] / eager:.2f}" if eager and "median_ms" in es[e] else "—"
                  for e in engines if e != "eager"]
        comp = [f"{es[e]['compile_s']:.1f}" if "compile_s" in es[e] else "—" for e in compiled]
        rel = max((es[e]["max_rel"] for e in engines if "max_rel" in es[e]), default=float("nan"))
        lines.append(f"| {row['model']} | " + " | ".join(ms) + " | " + " | ".join(ratios) + " | "
                     + "".join(f"{c} | " for c in comp) + f"{rel:.1e} |")
    fails = [(row["model"], e, es["error"]) for row in report["results"] for e, es in row["engines"].items()
             if "error" in es]
    if fails:
        lines += ["", "Failures:", ""] + [f"- {m} / {e}: {err[:300]}" for m, e, err in fails]
    ours = next((e for e in ("convpipe-artifact", "convpipe") if e in engines), None)
    anchors = [a for a in ("onnxruntime", "openvino") if a in engines and ours]
    if anchors:  # the deployment comparison: ours / each anchor (below 1: convpipe is faster)
        lines += ["", f"{ours} / deployment engine (latency ratio; below 1: convpipe is faster):", "",
                  "| model | " + " | ".join(f"{ours} / {a}" for a in anchors) + " |",
                  "|---|" + "---|" * len(anchors)]
        for row in report["results"]:
            es = row["engines"]
            cells = [f"{es[ours]['median_ms'] / es[a]['median_ms']:.2f}"
                     if "median_ms" in es.get(ours, {}) and "median_ms" in es.get(a, {}) else "—"
                     for a in anchors]
            lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    lines += ["", "![latency ratios](backends.png)", ""]
    return "\n".join(lines)


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    others = [e for e in report["engines"] if e != "eager"]
    models = [r["model"] for r in report["results"]]
    fig, ax = plt.subplots(figsize=(1.3 * len(models) + 2, 3.6))
    w = 0.8 / max(1, len(others))
    for i, e in enumerate(others):
        vals = []
        for r in report["results"]:
            es = r["engines"]
            ok = "median_ms" in es.get(e, {}) and "median_ms" in es.get("eager", {})
            vals.append(es[e]["median_ms"] / es["eager"]["median_ms"] if ok else np.nan)
        ax.bar(np.arange(len(models)) + i * w, vals, w, label=e)
    ax.axhline(1.0, color="k", lw=0.8, ls="--", label="eager")
    ax.set_xticks(np.arange(len(models)) + w * (len(others) - 1) / 2, models)
    ax.set_ylabel("latency / eager PyTorch")
    ax.set_title(f"{report['machine']['cpu']}, {report['threads']} thread(s)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    from machine import cpu_name, isa, machine_info

    engines = [e for e in args.engines.split(",") if e]
    bad = [e for e in engines if e not in ENGINES]
    if bad:
        sys.exit(f"bench_backends.py: unknown engine(s) {bad}; expected a subset of {list(ENGINES)}")
    os.makedirs(args.out, exist_ok=True)
    work = os.path.join(args.out, "work")
    machine = ({"cpu": cpu_name(), "isa": isa(), "cores": os.cpu_count()} if args.no_machine
               else machine_info([args.threads], work))
    report = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine, "threads": args.threads, "rounds": args.rounds, "round_s": args.round_s,
              "engines": engines, "results": []}
    for m in [m for m in args.models.split(",") if m]:
        print(f"{m}:", flush=True)
        report["results"].append(bench_model(m, engines, args))
    # written whole, then renamed over any earlier report
    for name, text in (("backends.json", json.dumps(report, indent=1)), ("backends.md", markdown(report))):
        tmp = os.path.join(args.out, name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(args.out, name))
    plot(report, os.path.join(args.out, "backends.png"))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
