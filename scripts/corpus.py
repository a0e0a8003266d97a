#!/usr/bin/env python3
"""The real-model corpus: export, compile with default flags, and verify against onnxruntime every model listed in
``scripts/corpus.json`` (torchvision classification and segmentation architectures, timm conv architectures), and
write a JSON + Markdown report.

Each model runs in its own processes (``convpipe export``, ``convpipe compile``, then a check process), each under
a timeout, so one crash or hang costs one entry, not the run. The check feeds a real photo (skimage's ``chelsea``,
ImageNet-normalised) to the artifact and to onnxruntime and applies issue 10's tolerance to every output::

    max |ours - onnxruntime| <= 1e-4 * max |onnxruntime| + 1e-5

Usage::

    .venv/bin/python scripts/corpus.py                       # the whole list -> docs/corpus/corpus.{json,md}
    .venv/bin/python scripts/corpus.py --slice ci            # the fixed fast slice CI runs (tests/test_corpus.py)
    .venv/bin/python scripts/corpus.py --only 'timm/(res|reg)' --resume

``--resume`` keeps the entries of an existing report (same spec and input) and runs only the others, so a long run
can be continued; entries of the old report outside this run's selection stay in the report. The report records the machine (CPU model, cores) and, per model: status (``pass``,
``mismatch``, ``export-failed``, ``compile-failed``, ``check-failed``, ``timeout``), export and compile seconds, the
max abs and normwise relative error, the conv2d families used, the fallbacks the manifest records, and the first
line of any error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import cpu_name, isa  # noqa: E402 -- one reader of the machine for every report
BIN = os.path.dirname(sys.executable)
CONVPIPE = os.path.join(BIN, "convpipe")
from convpipe.compiler.verify import NETWORK_ATOL as ATOL, NETWORK_RTOL as RTOL  # noqa: E402 -- the one tolerance


def load_list(path: str) -> dict:
    """``corpus.json``: ``{"default_input": [N, C, H, W], "slices": {name: [spec, ...]}, "models": [{"spec": ...,
    "input": [...]?, "note": ...?}, ...]}``."""
    with open(path) as f:
        data = json.load(f)
    for m in data["models"]:
        m.setdefault("input", data["default_input"])
    return data


def first_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("convpipe: error:") or ln.startswith("convpipe: internal error"):
            return ln[:300]
    return (lines[-1] if lines else "")[:300]


def run_step(argv: list[str], timeout: float) -> tuple[str, float, subprocess.CompletedProcess | None]:
    """Run one step; returns (``ok`` | ``failed`` | ``timeout``, seconds, process)."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - t0, None
    return ("ok" if p.returncode == 0 else "failed"), time.perf_counter() - t0, p


#: an fp32 noise-floor pass: ours within this factor of the PyTorch-eager-vs-onnxruntime difference (see check)
FLOOR_FACTOR = 1.5


def check(artifact: str, onnx_path: str, spec: str | None = None) -> dict:
    """In its own process: run the artifact and onnxruntime on a real photo; per-output errors (JSON-able).

    When an output misses the tolerance and ``spec`` names the model, the model is rebuilt (seeded, as exported)
    and run in PyTorch eager on the same input: each output then also gets ``torch_max_abs``, PyTorch's own
    difference from onnxruntime. Two fp32 engines that sum in different orders differ by about the model's fp32
    conditioning, so where PyTorch and onnxruntime already disagree beyond the tolerance, no fp32 engine can meet it
    (:func:`record_check` then accepts ours within ``FLOOR_FACTOR`` x PyTorch's difference, as a separate status)."""
    import numpy as np

    from convpipe.compiler.verify import run_onnxruntime
    from convpipe.compiler.zoo import photo, to_nchw
    from convpipe.runtime import load

    m = load(artifact)
    (inp,) = m.inputs
    n, c, h, w = inp.shape
    x = to_nchw(photo("chelsea"), (h, w))
    x = np.repeat(x, n, axis=0)[:, :c] if c <= 3 else np.random.default_rng(0).standard_normal(inp.shape)
    x = np.ascontiguousarray(x.astype(inp.dtype))
    ours = m.run({inp.name: x})
    ref = run_onnxruntime(onnx_path, {inp.name: x})
    outs = []
    for name, r in ref.items():
        o = ours[name].astype(np.float64)
        r64 = r.astype(np.float64)
        max_abs = float(np.abs(o - r64).max()) if r64.size else 0.0
        scale = float(np.abs(r64).max()) if r64.size else 0.0
        outs.append({"name": name, "shape": list(r.shape), "max_abs": max_abs, "max_ref": scale,
                     "max_rel": max_abs / scale if scale else (0.0 if max_abs == 0 else float("inf")),
                     "ok": bool(np.isfinite(o).all() == np.isfinite(r64).all() and max_abs <= RTOL * scale + ATOL)})
    if spec and not all(o["ok"] for o in outs):
        import torch

        from convpipe.compiler.zoo import hub_model

        model = hub_model(spec, tuple(inp.shape))
        with torch.no_grad():
            t = model(torch.from_numpy(x))
        touts = t if isinstance(t, (tuple, list)) else (t,)
        for o, r, tv in zip(outs, ref.values(), touts):
            o["torch_max_abs"] = float(np.abs(tv.numpy().astype(np.float64) - r).max()) if r.size else 0.0
    return {"outputs": outs}


def run_entry(entry: dict, work: str, timeout: float) -> dict:
    spec, shape = entry["spec"], entry["input"]
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", spec)
    onnx_path, art = os.path.join(work, f"{slug}.onnx"), os.path.join(work, f"{slug}.cpa")
    rec = {"spec": spec, "input": shape, "status": None, "export_s": None, "compile_s": None, "max_abs": None,
           "max_rel": None, "families": {}, "fallbacks": [], "error": ""}
    st, secs, p = run_step([CONVPIPE, "export", spec, "-o", onnx_path, "--input-shape", ",".join(map(str, shape))],
                           timeout)
    rec["export_s"] = round(secs, 2)
    if st != "ok":
        rec["status"] = "timeout" if st == "timeout" else "export-failed"
        rec["error"] = first_error_line(p.stderr) if p else f"export exceeded {timeout:.0f} s"
        return rec
    st, secs, p = run_step([CONVPIPE, "compile", onnx_path, "-o", art, "-q"], timeout)
    rec["compile_s"] = round(secs, 2)
    if st != "ok":
        rec["status"] = "timeout" if st == "timeout" else "compile-failed"
        rec["error"] = first_error_line(p.stderr) if p else f"compile exceeded {timeout:.0f} s"
        return rec
    with open(os.path.join(art, "manifest.json")) as f:
        manifest = json.load(f)
    for layer in manifest["conv2d"]:
        rec["families"][layer["family"]] = rec["families"].get(layer["family"], 0) + 1
    rec["fallbacks"] = manifest.get("fallbacks", [])
    st, secs, p = run_step([sys.executable, os.path.abspath(__file__), "--check", art, onnx_path, spec], timeout)
    if st != "ok":
        rec["status"] = "timeout" if st == "timeout" else "check-failed"
        rec["error"] = first_error_line(p.stderr) if p else f"check exceeded {timeout:.0f} s"
        return rec
    return record_check(rec, p.stdout)


def record_check(rec: dict, stdout: str) -> dict:
    """Fill ``rec``'s ``max_abs``, ``max_rel`` and ``status`` from a check process's last stdout line (JSON
    ``{"outputs": [{"max_abs", "max_rel", "max_ref", "ok", "torch_max_abs"?}, ...]}``); returns ``rec``.

    ``pass``: every output within the tolerance. ``pass-fp32-floor``: some output is not, but every such output has
    PyTorch eager's own difference from onnxruntime (``torch_max_abs``) beyond the tolerance too and ours within
    ``FLOOR_FACTOR`` x that + ``ATOL`` (``rec["torch_max_rel"]`` records PyTorch's worst relative difference).
    ``mismatch``: anything else."""
    res = json.loads(stdout.strip().splitlines()[-1])
    outs = res["outputs"]
    rec["max_abs"] = max(o["max_abs"] for o in outs)
    rec["max_rel"] = max(o["max_rel"] for o in outs)
    bad = [o for o in outs if not o["ok"]]
    if not bad:
        rec["status"] = "pass"
        return rec
    floor = all("torch_max_abs" in o and o["torch_max_abs"] > RTOL * o["max_ref"] + ATOL
                and o["max_abs"] <= FLOOR_FACTOR * o["torch_max_abs"] + ATOL for o in bad)
    if any("torch_max_abs" in o for o in outs):
        rec["torch_max_rel"] = max(o["torch_max_abs"] / o["max_ref"] if o["max_ref"] else 0.0
                                   for o in outs if "torch_max_abs" in o)
    rec["status"] = "pass-fp32-floor" if floor else "mismatch"
    return rec


def fallback_summary(fallbacks: list[dict]) -> str:
    """The manifest's fallbacks counted by stage and reason for the Markdown table (``layout x40: TVM 0.27's
    layout inference for relax.nn.layer_norm ...``); the JSON keeps each one with its op."""
    import collections

    counts = collections.Counter((f.get("stage", "?"), " ".join(str(f.get("why", "?")).split())[:70])
                                 for f in fallbacks)
    return "; ".join(f"{stage} x{n}: {why}" for (stage, why), n in counts.most_common()) or "-"


def write_report(report: dict, out_dir: str) -> str:
    """Write ``corpus.json`` and ``corpus.md`` (atomically each); returns the one-line summary."""
    os.makedirs(out_dir, exist_ok=True)
    recs = report["results"]
    passed = [r for r in recs if r["status"] in ("pass", "pass-fp32-floor")]
    floor = [r for r in recs if r["status"] == "pass-fp32-floor"]
    times = sorted(r["compile_s"] for r in recs if r["compile_s"] is not None)
    with_fb = [r for r in recs if r["fallbacks"]]
    listed = report.get("listed", len(recs))
    summary = (f"{len(passed)}/{len(recs)} models pass (default flags, x86, tolerance 1e-4*max|ref|+1e-5"
               + (f"; {len(floor)} only within the fp32 noise floor: PyTorch eager itself differs from onnxruntime "
                  f"beyond the tolerance" if floor else "")
               + (f"; {len(recs)} of the {listed} listed models run so far" if len(recs) < listed else "") + "); "
               + (f"compile s median {statistics.median(times):.1f}, p90 {times[int(0.9 * (len(times) - 1))]:.1f}, "
                  f"max {times[-1]:.1f}; " if times else "")
               + f"{len(with_fb)} with fallbacks")
    report["summary"] = summary
    for name, text in (("corpus.json", json.dumps(report, indent=1)), ("corpus.md", markdown(report))):
        tmp = os.path.join(out_dir, f".{name}.tmp-{os.getpid()}")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(out_dir, name))
    return summary


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Real-model corpus: default `convpipe compile` vs onnxruntime",
        "",
        f"Machine: {m['cpu']} ({m.get('isa', '?')}), {m['cores']} cores; {report['created']}; `scripts/corpus.py` over "
        "`scripts/corpus.json` (each model exported with `convpipe export`, compiled with default flags, verified "
        "on a real photo against onnxruntime: pass = max |ours - ort| <= 1e-4 * max |ort| + 1e-5 on every output; "
        "pass-fp32-floor = an output misses that, but PyTorch eager misses it too (its own |torch - ort| is beyond the "
        f"tolerance: the model's fp32 conditioning) and ours is within {FLOOR_FACTOR}x PyTorch's difference + 1e-5).",
        "",
        f"**{report['summary']}**",
        "",
        *[f"- {note}" for note in report.get("notes", [])],
        *([""] if report.get("notes") else []),
        "| model | input | status | export s | compile s | max abs err | max rel err | conv2d families | fallbacks | error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        fams = " ".join(f"{k}:{v}" for k, v in sorted(r["families"].items())) or "-"
        fbs = fallback_summary(r["fallbacks"])
        err = r["error"].replace("|", "\\|")
        num = (lambda v: "-" if v is None else f"{v:.2e}")
        lines.append(f"| {r['spec']} | {'x'.join(map(str, r['input']))} | {r['status']} | {r['export_s']} | "
                     f"{r['compile_s'] if r['compile_s'] is not None else '-'} | {num(r['max_abs'])} | "
                     f"{num(r['max_rel'])} | {fams} | {fbs} | {err} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--list", default=os.path.join(REPO, "scripts", "corpus.json"))
    p.add_argument("--only", help="regular expression: run the specs it matches")
    p.add_argument("--slice", help="run a named slice of the list (e.g. ci)")
    p.add_argument("--out", default=os.path.join(REPO, "docs", "corpus"), help="report directory")
    p.add_argument("--work", default=os.path.join(REPO, "out", "corpus"), help="exported models and artifacts")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per step (export, compile, check)")
    p.add_argument("--resume", action="store_true", help="keep entries already in the report")
    p.add_argument("--check", nargs="+", metavar="ARTIFACT ONNX [SPEC]", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.check:
        print(json.dumps(check(*args.check)))
        return 0
    data = load_list(args.list)
    entries = data["models"]
    if args.slice:
        wanted = data["slices"][args.slice]
        entries = [e for e in entries if e["spec"] in wanted]
        missing = set(wanted) - {e["spec"] for e in entries}
        if missing:
            p.error(f"slice {args.slice} names specs not in the list: {sorted(missing)}")
    if args.only:
        entries = [e for e in entries if re.search(args.only, e["spec"])]
    if not entries:
        # nothing to run: say so and leave any existing report untouched (a --resume run used to rewrite it empty)
        print(f"corpus.py: --only {args.only!r} matches no listed spec in {args.list}" if args.only
              else f"corpus.py: no specs selected from {args.list}", file=sys.stderr)
        return 2
    os.makedirs(args.work, exist_ok=True)
    report = {"format": 1, "machine": {"cpu": cpu_name(), "isa": isa(), "cores": os.cpu_count()},
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "listed": len(data["models"]), "results": []}
    done = {}
    old_path = os.path.join(args.out, "corpus.json")
    if args.resume and os.path.exists(old_path):
        with open(old_path) as f:
            done = {(r["spec"], tuple(r["input"])): r for r in json.load(f)["results"]}
    order = {e["spec"]: i for i, e in enumerate(data["models"])}
    # --resume: every entry of the old report that is still listed stays in the report until this run replaces
    # it, so an interrupted run loses nothing (entries outside the selection are kept as they are)
    results = {r["spec"]: r for r in done.values() if r["spec"] in order}
    report["results"] = sorted(results.values(), key=lambda r: order[r["spec"]])
    for i, entry in enumerate(entries):
        key = (entry["spec"], tuple(entry["input"]))
        rec = done.get(key) or run_entry(entry, args.work, args.timeout)
        results[entry["spec"]] = rec
        report["results"] = sorted(results.values(), key=lambda r: order[r["spec"]])
        print(f"[{i + 1}/{len(entries)}] {entry['spec']}: {rec['status']}"
              + (f" ({rec['error']})" if rec["error"] else ""), flush=True)
        write_report(report, args.out)
    summary = write_report(report, args.out)
    print(summary)
    return 0 if all(r["status"] in ("pass", "pass-fp32-floor") for r in report["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
