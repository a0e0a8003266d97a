"""Report of the x86 benchmark: ``results.json`` of ``scripts/bench_x86.py`` -> ratios, the issue-3 targets, a
Markdown report and plots. Measures nothing (no TVM, torch or onnxruntime import; matplotlib for the plots).

Input: ``OUT/results.json`` as ``scripts/bench_x86.py`` writes it (``--out``, default ``out/bench_x86``)::

    {"started": ..., "argv": [...], "wall_s": <s>, "machine": {"cpu", "cores", "platform"},
     "fma_peak": {"per_threads": {"<N>": {"gflops", "isa", ...}}, "before_runs": ..., "after_runs": ...},
     "isa", "versions", "rounds", "round_s", "target",
     "runs": {"<N>": {"layers": [...], "models": [...]} or {"error": "..."}}}

(one run per thread count N; per layer and model the ``timing`` of each engine from
``convpipe.compiler.bench.side_by_side``, milliseconds).

Outputs, next to it: ``analysis.json`` (:func:`analyse`: per-layer and per-model ratios, the targets with
met / not met), ``report.md`` (:func:`markdown`), ``layers_t<N>.png`` (per-layer GFLOP/s with the FMA peak line),
``models.png`` (model latency per engine). The targets table is also printed.

How to run
----------
::

    .venv/bin/python scripts/bench_report.py                          # out/bench_x86/results.json
    .venv/bin/python scripts/bench_report.py --out out/bench_x86 --no-plots

``scripts/bench_x86.py`` runs it at the end of a measurement unless ``--no-report``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_OUT = os.path.join(ROOT, "out", "bench_x86")


def fmt(v, spec=".2f", none="—"):
    """``format(v, spec)``, or ``none`` when ``v`` is None (a figure that was not measured)."""
    return none if v is None else format(v, spec)


def analyse(raw: dict, peak: dict) -> dict:
    """Per thread count: per-layer ratios, model ratios; then the issue's targets.

    Args:
        raw: ``{"<threads>": run}``, the successful entries of ``results.json``'s ``runs`` (each with ``layers``
            and ``models`` as ``scripts/bench_x86.py``'s worker records them; times in ms).
        peak: ``results.json``'s ``fma_peak`` (``per_threads[<threads>]["gflops"]``, GFLOP/s).

    Returns:
        ``{"layers": {"<threads>": [row]}, "models": {"<threads>": [row]}, "targets": [target]}``: a layer row has
        ``ours_ms``/``ort_ms``/``pytorch_ms``/``metaschedule_ms`` (ms, None when not timed), ``ours_gflops``,
        ``ours_pct_peak`` (% of the FMA peak at that thread count), speed ratios ``vs_ort``/``vs_pytorch``/
        ``vs_metaschedule`` (> 1: ours faster); a model row ``ort_ms``/``ov_ms``/``pytorch_ms`` (ms; ``ov_ms``
        OpenVINO's, None when not installed or failed, then ``ov_skipped`` says why) and latency ratios
        ``lat_vs_ort``/``lat_vs_ov``/``lat_vs_pytorch`` (ours ms / theirs, < 1: ours faster); a target
        ``{"target", "threads", "measured", "goal", "met"}`` with ``met`` None where
        nothing was measured or for reference rows.

    Raises:
        KeyError: a layer or model record without the fields the worker writes.
    """
    an = {"layers": {}, "models": {}, "targets": []}
    for ts, run in raw.items():
        pk = peak.get("per_threads", {}).get(ts, {}).get("gflops")
        rows = []
        for L in run.get("layers", []):
            tm = L.get("timing", {})
            oe = L.get("ours_engine")
            ours = tm.get(oe, {}).get("median_ms") if oe else None
            ort = tm.get("onnxruntime", {}).get("median_ms")
            pt = tm.get("pytorch", {}).get("median_ms")
            best = L.get("best_engine")
            msr = tm.get("metaschedule", {}).get("median_ms")
            rows.append({
                "index": L["index"], "name": L["name"], "gflop": L["gflop"], "used_by": L["used_by"],
                "compute_bound": L["compute_bound"], "winograd_shape": L["winograd_shape"],
                "in_channels": L["workload"]["in_channels"], "ours_engine": oe, "ours_ms": ours,
                "ours_gflops": L["gflop"] / ours * 1e3 if ours else None,
                "ours_pct_peak": (L["gflop"] / ours * 1e3 / pk * 100) if ours and pk else None,
                "ort_ms": ort, "pytorch_ms": pt, "metaschedule_ms": msr,
                "vs_ort": (ort / ours) if ours and ort else None, "vs_pytorch": (pt / ours) if ours and pt else None,
                "vs_metaschedule": (msr / ours) if ours and msr else None,
                "best_engine": best, "best_ms": tm.get(best, {}).get("median_ms") if best else None,
                "errors": L.get("errors", {}), "failed": L.get("failed", {}),
                "ours_all": {e: tm[e]["median_ms"] for e in L.get("ours", {}) if e in tm},
            })
        an["layers"][ts] = rows
        mrows = []
        for M in run.get("models", []):
            tm = M.get("timing", {})
            ours_key = "convpipe-tuned" if "convpipe-tuned" in tm else "convpipe"
            ours = tm.get(ours_key, {}).get("median_ms")
            ort = tm.get("onnxruntime", {}).get("median_ms")
            ov = tm.get("openvino", {}).get("median_ms")
            pt = tm.get("pytorch", {}).get("median_ms")
            mrows.append({
                "model": M["model"], "ours_engine": ours_key, "ours_ms": ours, "auto_ms": tm.get("convpipe", {}).get("median_ms"),
                "tuned_ms": tm.get("convpipe-tuned", {}).get("median_ms"), "ort_ms": ort, "pytorch_ms": pt,
                "nchw_ms": tm.get("convpipe-nchw", {}).get("median_ms"),
                "ov_ms": ov, "ov_threads": M.get("openvino", {}).get("threads"),
                "ov_skipped": M.get("openvino", {}).get("skipped"),
                "lat_vs_ort": ours / ort if ours and ort else None, "lat_vs_pytorch": ours / pt if ours and pt else None,
                "lat_vs_ov": ours / ov if ours and ov else None,
                "compile": M.get("compile", {}), "check": M.get("check", {}), "failed": M.get("failed", {}),
            })
        an["models"][ts] = mrows

    T = an["targets"]

    def add(what, t, measured, target, met):
        T.append({"target": what, "threads": t, "measured": measured, "goal": target,
                  "met": None if met is None else bool(met)})

    model_goal = {"resnet18": 0.80, "resnet50": 1.00, "mobilenet_v2": 1.00}
    for ts in sorted(an["models"], key=int):
        for m in an["models"][ts]:
            if m["model"] in model_goal:
                g = model_goal[m["model"]]
                r = m["lat_vs_ort"]
                add(f"{m['model']} latency vs onnxruntime", ts, fmt(r, ".3f") + "x" if r else "n/a", f"<= {g:.2f}x",
                    None if r is None else r <= g)
    for ts in sorted(an["layers"], key=int):
        rows = an["layers"][ts]
        w3 = [r for r in rows if r["winograd_shape"] and r["in_channels"] >= 64]
        other = [r for r in rows if r not in w3]
        for label, group, goal in (("3x3 s1 layers with C >= 64: speed vs onnxruntime", w3, 1.3),
                                   ("other layers: speed vs onnxruntime", other, 0.85)):
            vals = [(r["vs_ort"], r["name"]) for r in group if r["vs_ort"] is not None]
            if not group:
                continue
            if not vals:
                add(label, ts, "n/a", f">= {goal}x each", None)
                continue
            worst = min(vals)
            ok = sum(v >= goal for v, _ in vals)
            add(label, ts, f"{ok}/{len(group)} met; worst {worst[0]:.2f}x ({worst[1]})", f">= {goal}x each",
                ok == len(group))
        cb = [r for r in other if r["compute_bound"]]
        vals = [(r["ours_pct_peak"], r["name"]) for r in cb if r["ours_pct_peak"] is not None]
        if cb:
            if vals:
                worst = min(vals)
                ok = sum(v >= 80 for v, _ in vals)
                add("other compute-bound layers: % of FMA peak", ts, f"{ok}/{len(cb)} met; worst {worst[0]:.0f}% ({worst[1]})",
                    ">= 80% each", ok == len(cb))
            else:
                add("other compute-bound layers: % of FMA peak", ts, "n/a", ">= 80% each", None)
    comp = None
    for ts in an["models"]:
        for m in an["models"][ts]:
            c = m["compile"].get("convpipe", {})
            if m["model"] == "resnet50" and c.get("wall_s") is not None:
                comp = c["wall_s"]
    if any(m["model"] == "resnet50" for ms_ in an["models"].values() for m in ms_):
        add("resnet50 compile time, no tuning", "-", f"{comp:.1f} s" if comp is not None else "n/a", "<= 60 s",
            None if comp is None else comp <= 60)
    for ts in sorted(an["models"], key=int):
        vals = [(m["lat_vs_pytorch"], m["model"]) for m in an["models"][ts] if m["lat_vs_pytorch"] is not None]
        if vals:
            ok = sum(v < 1 for v, _ in vals)
            worst = max(vals)
            add("models ahead of PyTorch eager (latency ratio < 1)", ts, f"{ok}/{len(vals)}; worst {worst[0]:.2f}x ({worst[1]})",
                "< 1.00x each", ok == len(vals))
    for ts in sorted(an["models"], key=int):  # OpenVINO: a reference, no goal of the issue
        vals = [(m["lat_vs_ov"], m["model"]) for m in an["models"][ts] if m["lat_vs_ov"] is not None]
        if vals:
            ok = sum(v < 1 for v, _ in vals)
            worst = max(vals)
            add("reference: models ahead of OpenVINO (latency ratio < 1)", ts,
                f"{ok}/{len(vals)}; worst {worst[0]:.2f}x ({worst[1]})", "(reference)", None)
    # layer speed ratios (> 1: ours faster), per thread count: a goal against PyTorch, a reference against MetaSchedule
    for key, target, goal in (
        ("vs_pytorch", "layers ahead of PyTorch eager (speed ratio > 1)", "> 1.00x each"),
        ("vs_metaschedule", "reference: layers ahead of MetaSchedule", "(reference)"),
    ):
        for ts in sorted(an["layers"], key=int):
            vals = [(r[key], r["name"]) for r in an["layers"][ts] if r[key] is not None]
            if vals:
                ok = sum(v > 1 for v, _ in vals)
                worst = min(vals)
                add(target, ts, f"{ok}/{len(vals)}; worst {worst[0]:.2f}x ({worst[1]})", goal,
                    None if goal == "(reference)" else ok == len(vals))
    return an


def targets_table(an: dict) -> str:
    """The targets of :func:`analyse` as a Markdown table (one row per target and thread count)."""
    lines = ["| target | threads | measured | goal | status |", "|---|---|---|---|---|"]
    for t in an["targets"]:
        st = "n/a" if t["met"] is None and t["goal"] != "(reference)" else (
            "reference" if t["met"] is None else ("**met**" if t["met"] else "not met"))
        lines.append(f"| {t['target']} | {t['threads']} | {t['measured']} | {t['goal']} | {st} |")
    return "\n".join(lines)


def markdown(res: dict, an: dict) -> str:
    """The whole report (Markdown): machine and method, the targets, the models table, one layer table per thread
    count, the Winograd errors. ``res`` is ``results.json``, ``an`` its :func:`analyse`.

    Raises:
        KeyError: ``res`` without ``machine``, ``fma_peak``, ``started`` or ``wall_s``.
    """
    m = res["machine"]
    peak = res["fma_peak"].get("per_threads", {})
    out = [
        "# convpipe x86 benchmark",
        "",
        f"Machine: {m['cpu']}, {m['cores']} logical cores, ISA {res.get('isa', '?')}; "
        f"measured FP32 FMA peak: " + ", ".join(f"{v['gflops']:.0f} GFLOP/s at {t} thread(s)" for t, v in peak.items())
        + "; measured memory bandwidth (STREAM triad): "
        + (", ".join(f"{v['triad_gbs']:.1f} GB/s at {t} thread(s)" for t, v in res.get("bandwidth", {}).get("per_threads", {}).items()) or "not measured")
        + f". Versions: {json.dumps(res.get('versions', {}))}. Started {res['started']}, took {res['wall_s'] / 60:.1f} min; "
        f"timing: {res.get('rounds')} rounds x {res.get('round_s')} s per engine, median of per-round means.",
        "",
        "Method: engines of a layer/model timed interleaved in one process at the same thread count (see scripts/bench_x86.py's "
        "docstring). Speed ratio = onnxruntime (or PyTorch) ms / ours ms (> 1: ours faster); latency ratio = ours ms / "
        "onnxruntime (OpenVINO, PyTorch) ms (< 1: ours faster). GFLOP/s counts direct-convolution FLOPs, also for "
        "Winograd. OpenVINO (models only, when installed): CPU plugin, INFERENCE_PRECISION_HINT=f32, latency hint, "
        "same thread count.",
        "",
        "## Targets (issue 3)",
        "",
        targets_table(an),
        "",
        "## Models",
        "",
        "| model | threads | convpipe auto ms | convpipe tuned ms | convpipe NCHW ms | onnxruntime ms | OpenVINO ms | "
        "PyTorch ms | ours / ORT latency | ours / OpenVINO latency | ours / PyTorch latency | compile s (auto) | "
        "max rel err vs ORT | OpenVINO max rel err vs ORT |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ts in sorted(an["models"], key=int):
        for r in an["models"][ts]:
            c = r["compile"].get("convpipe", {})
            chk = r["check"].get("convpipe", {})
            ovc = r["check"].get("openvino", {})
            ov_ms = fmt(r.get("ov_ms")) if r.get("ov_ms") is not None else (r.get("ov_skipped") or "—").split(":")[0]
            if r.get("ov_ms") is not None and r.get("ov_threads") not in (None, int(ts)):
                ov_ms += f" ({r['ov_threads']} thr)"
            ov_err = fmt(ovc.get("max_rel_err"), ".1e") + ("" if ovc.get("within", True) else " MISMATCH")
            out.append(
                f"| {r['model']} | {ts} | {fmt(r['auto_ms'])} | {fmt(r['tuned_ms'])} | {fmt(r.get('nchw_ms'))} | "
                f"{fmt(r['ort_ms'])} | {ov_ms} | "
                f"{fmt(r['pytorch_ms'])} | {fmt(r['lat_vs_ort'], '.3f')} | {fmt(r.get('lat_vs_ov'), '.3f')} | "
                f"{fmt(r['lat_vs_pytorch'], '.3f')} | "
                f"{fmt(c.get('wall_s'), '.1f')} | {fmt(chk.get('max_rel_err'), '.1e')} | {ov_err} |"
                + (f" failed: {r['failed']}" if r["failed"] else "")
            )
    ov_failed = sorted({(r["model"], r["ov_skipped"]) for rows in an["models"].values() for r in rows
                        if (r.get("ov_skipped") or "").startswith("failed")})
    if ov_failed:
        out += ["", "OpenVINO failed: " + "; ".join(f"{m}: {why[len('failed: '):]}" for m, why in ov_failed)]
    for ts in sorted(an["layers"], key=int):
        pk = peak.get(ts, {}).get("gflops")
        out += [
            "",
            f"## Layers, {ts} thread(s) (FMA peak {fmt(pk, '.0f')} GFLOP/s)",
            "",
            "| # | layer | used by | MFLOP | ours (engine) | ours ms | ours GFLOP/s | % peak | ORT ms | PyTorch ms | "
            "ours/ORT speed | ours/PyTorch speed | MetaSchedule ms | fastest family (ms) | CB | all of ours, ms |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in an["layers"][ts]:
            used = ", ".join(f"{k}x{v}" for k, v in r["used_by"].items())
            out.append(
                f"| {r['index']} | `{r['name']}` | {used} | {r['gflop'] * 1e3:.0f} | {r['ours_engine']} | {fmt(r['ours_ms'], '.3f')} | "
                f"{fmt(r['ours_gflops'], '.0f')} | {fmt(r['ours_pct_peak'], '.0f')} | {fmt(r['ort_ms'], '.3f')} | "
                f"{fmt(r['pytorch_ms'], '.3f')} | {fmt(r['vs_ort'])} | {fmt(r['vs_pytorch'])} | "
                f"{fmt(r['metaschedule_ms'], '.3f')} | {r['best_engine']} ({fmt(r['best_ms'], '.3f')}) | "
                f"{'y' if r['compute_bound'] else ''} | "
                + ", ".join(f"{e} {v:.3f}" for e, v in r.get("ours_all", {}).items()) + " |"
            )
        fails = [(r["name"], e, msg) for r in an["layers"][ts] for e, msg in r["failed"].items()]
        if fails:
            out += ["", "Failed builds: " + "; ".join(f"`{n}` {e}: {msg}" for n, e, msg in fails)]
    # Winograd errors (thread independent: first thread count's run)
    first = sorted(an["layers"], key=int)[:1]
    if first:
        rows = [(r, k, v) for r in an["layers"][first[0]] for k, v in r["errors"].items()]
        if rows:
            out += ["", "## Winograd error vs float64 reference (max |ours - ref| / max |ref|)", "",
                    "| layer | tile | max rel err | documented bound | within |", "|---|---|---|---|---|"]
            for r, k, v in rows:
                b = v.get("bound")
                out.append(f"| `{r['name']}` | {k} | {v['rel_err']:.2e} | {fmt(b, '.0e')} | "
                           f"{'' if b is None else ('yes' if v['rel_err'] <= b else 'NO')} |")
    out.append("")
    return "\n".join(out)


def plots(res: dict, an: dict, out_dir: str) -> list[str]:
    """Write ``layers_t<N>.png`` (per-layer GFLOP/s of each engine, the measured FMA peak as a line) for each
    thread count with layers, and ``models.png`` (model latency in ms per engine) when models were timed, into
    ``out_dir``; returns the paths written. Needs matplotlib (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    peak = res["fma_peak"].get("per_threads", {})
    for ts, rows in sorted(an["layers"].items(), key=lambda kv: int(kv[0])):
        if not rows:
            continue
        n = len(rows)
        fig, ax = plt.subplots(figsize=(max(10, 0.32 * n + 3), 6))
        xs = list(range(n))
        series = [("ours", "ours_ms", "o", "tab:blue"), ("fastest family", "best_ms", "^", "tab:cyan"),
                  ("onnxruntime", "ort_ms", "s", "tab:orange"), ("PyTorch eager", "pytorch_ms", "x", "tab:green"),
                  ("MetaSchedule", "metaschedule_ms", "d", "tab:purple")]
        for label, key, mk, col in series:
            pts = [(x, r["gflop"] / r[key] * 1e3) for x, r in zip(xs, rows) if r.get(key)]
            if pts and not (key == "best_ms" and all(r["best_ms"] == r["ours_ms"] for r in rows)):
                ax.plot([p[0] for p in pts], [p[1] for p in pts], mk, label=label, color=col, ms=6,
                        ls="none" if key != "ours_ms" else "none")
        pk = peak.get(ts, {}).get("gflops")
        if pk:
            ax.axhline(pk, color="red", ls="--", lw=1.2, label=f"measured FMA peak ({pk:.0f} GFLOP/s)")
        ax.set_xticks(xs)
        ax.set_xticklabels([r["name"] for r in rows], rotation=75, ha="right", fontsize=7)
        ax.set_ylabel("GFLOP/s (direct-conv FLOPs)")
        ax.set_title(f"conv2d layers, batch 1, fp32, {ts} thread(s)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        f = os.path.join(out_dir, f"layers_t{ts}.png")
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(f)
    mts = sorted((ts for ts, rows in an["models"].items() if rows), key=int)
    if mts:
        fig, axes = plt.subplots(1, len(mts), figsize=(6 * len(mts), 4.5), squeeze=False)
        for ax, ts in zip(axes[0], mts):
            rows = an["models"][ts]
            engines = [("convpipe auto", "auto_ms"), ("convpipe tuned", "tuned_ms"), ("onnxruntime", "ort_ms"),
                       ("OpenVINO", "ov_ms"), ("PyTorch eager", "pytorch_ms")]
            engines = [e for e in engines if any(r.get(e[1]) for r in rows)]
            width = 0.8 / max(1, len(engines))
            for j, (label, key) in enumerate(engines):
                ax.bar([i + j * width for i in range(len(rows))], [r.get(key) or 0 for r in rows], width, label=label)
            ax.set_xticks([i + width * (len(engines) - 1) / 2 for i in range(len(rows))])
            ax.set_xticklabels([r["model"] for r in rows])
            ax.set_ylabel("latency, ms (lower is better)")
            ax.set_title(f"models, batch 1, {ts} thread(s)")
            ax.grid(axis="y", alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        f = os.path.join(out_dir, "models.png")
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(f)
    return files


def write_report(out_dir: str, with_plots: bool = True, quiet: bool = False) -> dict:
    """Read ``out_dir/results.json``, write ``analysis.json``, ``report.md`` and (``with_plots``) the PNG plots
    into ``out_dir``, print the targets table (unless ``quiet``).

    Returns:
        ``{"analysis": <analyse() result>, "files": [paths written]}``.

    Raises:
        FileNotFoundError: no ``results.json`` in ``out_dir``.
        KeyError / json.JSONDecodeError: a file that is not a ``scripts/bench_x86.py`` result.
    """
    with open(os.path.join(out_dir, "results.json")) as f:
        res = json.load(f)
    an = analyse({t: r for t, r in res["runs"].items() if "error" not in r}, res["fma_peak"])
    files = [os.path.join(out_dir, "analysis.json"), os.path.join(out_dir, "report.md")]
    with open(files[0], "w") as f:
        json.dump(an, f, indent=1, default=str)
    with open(files[1], "w") as f:
        f.write(markdown(res, an))
    if with_plots:
        files += plots(res, an, out_dir)
    if not quiet:
        print(targets_table(an))
        print("wrote " + ", ".join(files), flush=True)
    return {"analysis": an, "files": files}


def main(argv=None) -> int:
    """Command line: ``bench_report.py [--out DIR] [--no-plots]``; exit status 0, or 2 when ``DIR/results.json``
    is missing."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=DEFAULT_OUT, help="directory with results.json from scripts/bench_x86.py "
                   "(default out/bench_x86); the report is written there")
    p.add_argument("--no-plots", action="store_true", help="only analysis.json and report.md")
    args = p.parse_args(argv)
    if not os.path.exists(os.path.join(args.out, "results.json")):
        print(f"no results.json in {args.out}: run scripts/bench_x86.py --out {args.out} first", file=sys.stderr)
        return 2
    write_report(args.out, with_plots=not args.no_plots)
    return 0


if __name__ == "__main__":
    sys.exit(main())
