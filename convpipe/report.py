"""Every table and report convpipe shows a person: the CLI's output, ``convpipe demo``'s, and the text of the Python
API's :class:`convpipe.api.VerifyReport`.

The compiler (:mod:`convpipe.compiler`) and the runtime return data (dataclasses, dicts); this module turns that data
into text: ``*_table`` functions return a :class:`rich.table.Table`, ``*_line``/``*_text`` functions a string,
``*_json`` functions a JSON-ready dict, and ``print_*`` functions print a report made of several parts onto a
:class:`rich.console.Console` (from :func:`console`).

Importing this module imports nothing third-party: ``rich`` (installed with the ``compiler`` extra) is imported by
the functions that build tables, so the runtime-only install can still format a :class:`~convpipe.api.VerifyReport`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence

# ------------------------------------------------------------------------------------------------------------
# console and numbers
# ------------------------------------------------------------------------------------------------------------


def console():
    """The console every report is printed on: at least 150 columns wide (the tables' natural width), markup and
    highlighting off -- paths and names from the user (``art[v2].cpa``) are printed as they are; styles are
    explicit (``style=`` / :class:`rich.text.Text`)."""
    import shutil

    from rich.console import Console

    return Console(highlight=False, markup=False, width=max(shutil.get_terminal_size((160, 40)).columns, 150))


def seconds_text(seconds: Mapping[str, float]) -> str:
    """A compile's stage timings ``{"export": 1.23, "build": 4.5}`` -> ``"export 1.2s, build 4.5s"``."""
    return ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items())


def knobs_text(knobs: Mapping[str, object]) -> str:
    """A schedule's knobs ``{"oc_bn": 16, "ow_bn": 8}`` -> ``"oc_bn=16 ow_bn=8"`` (``"-"`` when there are none)."""
    return " ".join(f"{k}={v}" for k, v in knobs.items()) or "-"


# ------------------------------------------------------------------------------------------------------------
# export / compile / run
# ------------------------------------------------------------------------------------------------------------


def export_line(model: str, shape: Sequence[int], output: str, output_names: Sequence[str]) -> str:
    """``convpipe export``'s one line: what was exported, at which input shape, where, with which outputs."""
    return f"exported {model} ({','.join(map(str, shape))}) -> {output}  outputs: {', '.join(output_names)}"


def compile_line(model: str, result) -> str:
    """``convpipe compile``'s closing line for a :class:`convpipe.compiler.build.CompileResult`."""
    tgt = result.manifest["target"]
    return f"compiled {model} -> {result.path} for {tgt['arch']}/{tgt['isa']} ({seconds_text(result.seconds)})"


def layer_table(layers: list[dict], title: str):
    """The per-layer conv2d schedule table (``compile``, ``inspect``, ``demo``) from a manifest's ``conv2d`` list:
    each layer's workload, chosen schedule family, knobs and GFLOP; the caption gives the totals."""
    from rich.table import Table

    from convpipe.schedules import Conv2dWorkload

    t = Table(title=title, title_justify="left")
    for col in ("#", "N,C,H,W", "K", "kernel", "stride", "pad t,l,b,r", "dil", "groups", "layout", "schedule", "knobs",
                "GFLOP"):
        t.add_column(col, justify="right" if col in ("#", "K", "groups", "GFLOP") else "left")
    total = 0.0
    for layer in layers:
        w = Conv2dWorkload.from_dict(layer["workload"])  # the manifest may omit fields that have defaults
        total += layer["gflop"]
        t.add_row(
            str(layer["index"]),
            f"{w.batch},{w.in_channels},{w.in_h},{w.in_w}",
            str(w.out_channels),
            f"{w.kernel_h}x{w.kernel_w}",
            f"{w.stride_h}x{w.stride_w}",
            f"{w.pad_top},{w.pad_left},{w.pad_bottom},{w.pad_right}",
            f"{w.dilation_h}x{w.dilation_w}",
            str(w.groups),
            w.layout,
            layer["family"],
            knobs_text(layer["knobs"]),
            f"{layer['gflop']:.4f}",
        )
    t.caption = f"{len(layers)} conv2d layers, {total:.3f} GFLOP"
    return t


def output_line(name: str, array) -> str:
    """``convpipe run``'s line for one output array: shape, dtype, mean, max."""
    return f"{name}: shape={list(array.shape)} dtype={array.dtype} mean={array.mean():.6g} max={array.max():.6g}"


# ------------------------------------------------------------------------------------------------------------
# verify
# ------------------------------------------------------------------------------------------------------------


def checks_table(checks, rtol: float, atol: float):
    """``verify``'s (and ``demo``'s) table of :class:`convpipe.compiler.verify.OutputCheck` s: per output its shape,
    max abs/rel error vs onnxruntime and whether it matches within ``rtol``/``atol``."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"verify vs onnxruntime (CPU)  rtol={rtol:g} atol={atol:g}", title_justify="left")
    for col in ("output", "shape", "max abs err", "max rel err", "match"):
        t.add_column(col)
    for c in checks:
        t.add_row(c.name, str(list(c.shape)), f"{c.max_abs:.3e}", f"{c.max_rel:.3e}",
                  Text("yes", style="green") if c.ok else Text("NO", style="red"))
    return t


def verify_verdict(ok: bool):
    """``verify``'s closing line, green when every output matches, red otherwise."""
    from rich.text import Text

    return Text("verify: all outputs match onnxruntime" if ok else "verify: MISMATCH", style="green" if ok else "red")


def verify_report_text(report) -> str:
    """A :class:`convpipe.api.VerifyReport` as text, one line per output (``str(report)``); needs no ``rich``."""
    rows = []
    for o in report.outputs:
        vs_torch = "" if o.torch_max_abs is None else (f", vs PyTorch max abs {o.torch_max_abs:.3g} rel "
                                                        f"{o.torch_max_rel:.3g}")
        rows.append(f"{o.name} {list(o.shape)}: vs onnxruntime max abs {o.ort_max_abs:.3g} rel "
                    f"{o.ort_max_rel:.3g}{vs_torch} -> {'ok' if o.ok else 'MISMATCH'}")
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------------------------
# inspect
# ------------------------------------------------------------------------------------------------------------


def print_inspect(con, artifact: str, m: dict, pin: str | None = None) -> None:
    """``convpipe inspect``: an artifact's manifest ``m`` -- versions, target, inputs and outputs, layout, the CUDA
    device code's resources, the conv2d layer table and the fallbacks taken; for a variable-size artifact also
    the accepted sizes and every build (:func:`print_dynamic`)."""
    tgt = m["target"]
    con.print(f"artifact {artifact}: convpipe {m['convpipe_version']}, TVM {m['tvm_version']}, target "
              f"{tgt['arch']}/{tgt['isa']} {json.dumps(tgt['tvm_target'])}")
    for kind in ("inputs", "outputs"):
        con.print(f"{kind}: " + ", ".join(f"{i['name']} {i['dtype']}{list(i['shape'])}" for i in m[kind]))
    if pin:
        con.print(f"pin (--expect-sha256): {pin}" + ("  (digest of every library)" if "dynamic" in m else ""))
    con.print(f"activation layout between convs: {m.get('layout', 'NCHW')} (model inputs and outputs as in the ONNX)")
    if "device_code" in m:
        con.print(device_code_line(m["device_code"]))
    con.print(layer_table(m["conv2d"], "conv2d layers" + (" (default build)" if "dynamic" in m else "")))
    line = accuracy_line(m.get("accuracy"))
    if line:
        con.print(line)
    _print_fallbacks(con, m)
    if "dynamic" in m:
        print_dynamic(con, m["dynamic"])


def accuracy_line(acc: dict | None) -> str | None:
    """The Winograd accuracy guard's result (a manifest's ``accuracy`` entry, :mod:`convpipe.compiler.accuracy`)
    in one line: each build it measured against onnxruntime and the one kept; ``None`` for older manifests."""
    if not acc:
        return None
    if not acc.get("checked"):
        return f"accuracy guard: not run ({acc.get('why', '')})"
    tried = "; ".join(f"{a['winograd']}: "
                      + (f"{a['max_rel']:.2g} of max|ref|" if a["max_rel"] is not None else "non-finite mismatch")
                      + f" ({'ok' if a['ok'] else 'over'})" for a in acc["attempts"])
    kept = acc["attempts"][acc["kept"]]["winograd"]
    return (f"accuracy guard vs onnxruntime ({acc['input']}, tolerance {acc['rtol']:g}*max|ref|+{acc['atol']:g}): "
            f"{tried}; kept: {kept}" + (f" ({acc['stopped']})" if acc.get("stopped") else ""))


def _print_fallbacks(con, m: dict, indent: str = "") -> None:
    fallbacks = m.get("fallbacks", [])
    if fallbacks:
        con.print(f"{indent}fallbacks ({len(fallbacks)}): where the compiler took a simpler path instead of failing")
        for f in fallbacks:
            con.print(f"{indent}  [{f['stage']}] {f['op']}: {f['fallback']} -- {f['why']}")
    elif "fallbacks" in m:
        con.print(f"{indent}fallbacks: none")


def dims_text(dims: Sequence) -> str:
    """An accepted shape (``dynamic.inputs[i].dims``) as text: ``[1, 3, 32..1024, 32..1024]``."""
    return "[" + ", ".join(f"{d[0]}..{d[1]}" if isinstance(d, (list, tuple)) else str(d) for d in dims) + "]"


def build_serves(b: dict) -> str:
    """What one build of a variable-size artifact serves, in words."""
    if b["kind"] == "generic":
        return "every other shape in range"
    return "exactly " + "; ".join(f"{i['name']}={list(i['shape'])}" for i in b["inputs"])


def print_dynamic(con, dyn: dict) -> None:
    """``inspect``'s part for a variable-size artifact (the manifest's ``dynamic``, issue 16): the sizes each
    input accepts, then per build its library, kind, what it serves, outputs, layout, conv2d schedules (a count
    per family) and fallbacks."""
    con.print("variable input sizes: " + ", ".join(f"{i['name']} {i['dtype']}{dims_text(i['dims'])}"
                                                  for i in dyn["inputs"]))
    builds = dyn["builds"]
    con.print(f"builds ({len(builds)}): the runtime runs the bucket of exactly the input's shape, else the generic "
              "build")
    for b in builds:
        fams: dict[str, int] = {}
        for layer in b["conv2d"]:
            fams[layer["family"]] = fams.get(layer["family"], 0) + 1
        convs = ", ".join(f"{n} {f}" for f, n in fams.items()) or "none by convpipe"
        con.print(f"  {b['name']} ({b['kind']}, {b['library']['file']}): serves {build_serves(b)}; outputs "
                  + ", ".join(f"{o['name']} {dims_text(o['shape'])}" for o in b["outputs"])
                  + f"; layout {b.get('layout', 'NCHW')}; conv2d schedules: {convs}")
        _print_fallbacks(con, b, "    ")
    if "no_generic" in dyn:
        con.print(f"no generic build: {dyn['no_generic']} -- only the bucket shapes are accepted")


def device_code_line(dc: dict) -> str:
    """A CUDA artifact's ``device_code`` manifest entry in one line: binary, kernels, registers, shared memory,
    spills, occupancy."""
    ks = dc["kernels"]
    spills = sum(k["spill_stores"] + k["spill_loads"] for k in ks)
    return (f"device code: {dc['arch']} {dc['format']} ({dc['binary_bytes'] / 1024:.0f} KiB) embedded in "
            f"{dc['embedded_in']}; {len(ks)} kernel{'s' if len(ks) != 1 else ''}, max {max(k['registers'] for k in ks)} registers/thread, "
            f"max {max(k['smem_bytes'] for k in ks)} B shared memory, {spills} B spilled, theoretical "
            f"occupancy {min(k.get('occupancy', 0) for k in ks):.0%} to {max(k.get('occupancy', 0) for k in ks):.0%}; "
            f"source {dc['source']}")


# ------------------------------------------------------------------------------------------------------------
# profile
# ------------------------------------------------------------------------------------------------------------

#: (substring of a kernel's symbol, the kind it is counted as in ``profile``), first match wins
KERNEL_KINDS = (("vm.builtin", "VM builtin"), ("layout_transform", "layout transform"), ("conv2d", "conv2d"),
                ("matmul", "matmul/dense"), ("dense", "matmul/dense"), ("pool", "pooling"), ("resize", "resize"),
                ("take", "resize/gather"), ("softmax", "softmax"), ("norm", "normalisation"))


def kernel_kind(name: str) -> str:
    """The op class a kernel symbol belongs to (``fused_conv2d_add_relu`` -> ``conv2d``), for ``profile``."""
    return next((kind for key, kind in KERNEL_KINDS if key in name), "element-wise/other")


def conv_kernel_flops(conv2d: list[dict]) -> dict[str, tuple[float, list[int]]]:
    """From a manifest's ``conv2d`` list: ``{conv kernel name (e.g. conv2d_winograd_10): (GFLOP per call, [layer
    #, ...])}``. GFLOP is the conv's nominal ``2 * N*K*OH*OW * C/groups*KH*KW`` (direct-equivalent for Winograd)."""
    out: dict[str, tuple[float, list[int]]] = {}
    for layer in conv2d:
        gflop, idx = out.get(layer["kernel"], (layer["gflop"], []))
        out[layer["kernel"]] = (gflop, idx + [layer["index"]])
    return out


def _conv_of(name: str, flops: dict) -> tuple[float, list[int]] | None:
    """The conv kernel a (fused) kernel symbol runs: ``fused_conv2d_winograd_10_add7_relu4`` ->
    ``conv2d_winograd_10``'s entry (whole ``_``-separated tokens, so ``..._1`` is not ``..._10``)."""
    for kernel, entry in flops.items():
        if re.search(rf"(?:^|_){re.escape(kernel)}(?:_|$)", name):
            return entry
    return None


def _layers_text(idx: list[int]) -> str:
    return ",".join(map(str, idx)) if len(idx) <= 4 else f"{idx[0]},{idx[1]},...,{idx[-1]} ({len(idx)})"


def profile_rows(kernels, run_ms: float, conv2d: list[dict] | None = None, peak: float | None = None) -> list[dict]:
    """One dict per :class:`convpipe.runtime.KernelTime` (sorted as given): ``name``, ``kind``, ``calls``, ``ms``
    (per run), ``pct`` (of the kernels' time) and, for a conv kernel found in the manifest's ``conv2d`` list,
    ``layers`` (conv layer numbers), ``gflops`` (GFLOP/s: nominal FLOPs of its calls / its time) and, given
    ``peak`` (the machine's FMA peak in GFLOP/s at the run's thread count), ``pct_peak``."""
    total = sum(k.ms for k in kernels) or 1e-12
    flops = conv_kernel_flops(conv2d or [])
    rows = []
    for k in kernels:
        row = {"name": k.name, "kind": kernel_kind(k.name), "calls": k.calls, "ms": k.ms, "pct": 100 * k.ms / total}
        conv = _conv_of(k.name, flops) if row["kind"] == "conv2d" else None
        if conv is not None and k.ms > 0:
            row["layers"] = conv[1]
            row["gflops"] = conv[0] * k.calls / (k.ms / 1e3)
            if peak:
                row["pct_peak"] = 100 * row["gflops"] / peak
        rows.append(row)
    return rows


def profile_json(kernels, run_ms: float, conv2d: list[dict] | None = None, peak: float | None = None) -> dict:
    """``profile --json``: the instrumented run's mean ms and every kernel (:func:`profile_rows`)."""
    return {"run_ms": run_ms, "peak_gflops": peak, "kernels": profile_rows(kernels, run_ms, conv2d, peak)}


def profile_table(kernels, title: str, top: int, conv2d: list[dict] | None = None, peak: float | None = None,
                  run_ms: float = 0.0):
    """``profile``'s kernel table: the ``top`` slowest kernels (calls, ms and share of the kernels' time per run;
    for conv kernels the conv layer numbers, GFLOP/s and, given ``peak``, % of the FMA peak), the rest summed in
    one row."""
    from rich.table import Table

    rows = profile_rows(kernels, run_ms, conv2d, peak)
    t = Table(title=title, title_justify="left")
    cols = [("kernel", "left"), ("kind", "left"), ("conv #", "left"), ("calls", "right"), ("ms", "right"),
            ("%", "right"), ("GFLOP/s", "right")] + ([("% peak", "right")] if peak else [])
    for col, just in cols:
        t.add_column(col, justify=just)
    for r in rows[:top]:
        cells = [r["name"], r["kind"], _layers_text(r["layers"]) if "layers" in r else "", f"{r['calls']:g}",
                 f"{r['ms']:.3f}", f"{r['pct']:.1f}", f"{r['gflops']:.1f}" if "gflops" in r else ""]
        if peak:
            cells.append(f"{r['pct_peak']:.0f}" if "pct_peak" in r else "")
        t.add_row(*cells)
    if len(rows) > top:
        rest = rows[top:]
        t.add_row(f"({len(rest)} more)", "", "", f"{sum(r['calls'] for r in rest):g}",
                  f"{sum(r['ms'] for r in rest):.3f}", f"{sum(r['pct'] for r in rest):.1f}", "",
                  *([""] if peak else []))
    return t


def profile_summary(kernels, run_ms: float) -> list[str]:
    """``profile``'s lines under the table: time per kernel kind (largest first), and the kernels' sum against the
    instrumented run's time."""
    total = sum(k.ms for k in kernels) or 1e-12
    by_kind: dict[str, float] = {}
    for k in kernels:
        by_kind[kernel_kind(k.name)] = by_kind.get(kernel_kind(k.name), 0.0) + k.ms
    return [
        "by kind: " + ", ".join(f"{kind} {ms:.3f} ms ({100 * ms / total:.0f}%)"
                                for kind, ms in sorted(by_kind.items(), key=lambda kv: -kv[1])),
        f"kernels {total:.3f} ms of an instrumented run of {run_ms:.3f} ms (means; the rest is the VM and "
        "the instrument hook)",
    ]


def print_profile(con, artifact: str, kernels, run_ms: float, runs: int, top: int, conv2d: list[dict] | None = None,
                  peak: float | None = None) -> None:
    """``convpipe profile``: the kernel table (:func:`profile_table`) and its summary (:func:`profile_summary`)."""
    con.print(profile_table(kernels, f"profile {artifact}: per run, mean of {runs} runs", top, conv2d, peak, run_ms))
    for line in profile_summary(kernels, run_ms):
        con.print(line)
    if conv2d:
        con.print("GFLOP/s: the conv's nominal FLOPs (direct-equivalent for Winograd) per second of the kernel"
                  + (f"; % peak of {peak:g} GFLOP/s (--peak)" if peak else "; give --peak GFLOPS (e.g. from "
                     "scripts/fma_peak.c at this thread count) for % of the FMA peak"))


# ------------------------------------------------------------------------------------------------------------
# bench
# ------------------------------------------------------------------------------------------------------------


def bench_table(res: dict, title: str):
    """Side-by-side latency (:func:`convpipe.compiler.bench.side_by_side`'s result, as
    :func:`convpipe.compiler.bench.bench_artifact` extends it): median/min/max ms per engine and the speed-up of the
    first engine (convpipe) over each.

    An engine whose entry has ``max_rel_err`` (OpenVINO, checked against onnxruntime) shows it in a ``max rel err
    vs onnxruntime`` column (``MISMATCH`` beyond its ``tolerance``); the column is there only when some engine
    has it. An entry ``{"skipped": why}`` (e.g. OpenVINO not installed) is no row but a caption line
    ``NAME: why``, as is an entry's ``note``."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    timed = {n: r for n, r in res.items() if "skipped" not in r}
    base = next(iter(timed))
    checked = any("max_rel_err" in r for r in timed.values())
    cols = ["engine", "median ms", "min ms", "max ms", f"{base} speed-up"]
    cols += ["max rel err vs onnxruntime"] if checked else []
    for col in cols:
        t.add_column(col, justify="right" if col != "engine" else "left")
    ours = timed[base]["median_ms"]
    for name, r in timed.items():
        row = [name, f"{r['median_ms']:.3f}", f"{r['min_ms']:.3f}", f"{r['max_ms']:.3f}",
               f"{r['median_ms'] / ours:.2f}x"]
        if checked:
            err = r.get("max_rel_err")
            row.append("" if err is None else f"{err:.1e}" + ("" if r.get("within", True) else " MISMATCH"))
        t.add_row(*row)
    caption = [f"speed-up = engine median / {base} median (> 1: {base} faster)"]
    tolerances = sorted({r["tolerance"] for r in timed.values() if "tolerance" in r})
    if checked:
        caption.append("max rel err = max|engine - onnxruntime| / max|onnxruntime| over the outputs (onnxruntime "
                       "with graph optimisations off, same inputs)"
                       + (f"; MISMATCH beyond {', '.join(tolerances)}" if tolerances else ""))
    caption += [f"{n}: {r['note']}" for n, r in timed.items() if r.get("note")]
    caption += [f"{n}: {r['skipped']}" for n, r in res.items() if "skipped" in r]
    t.caption = "\n".join(caption)
    if len(caption) > 1:
        t.caption_justify = "left"
    return t


def bench_title(model: str, device: str, threads: int, rounds: int) -> str:
    """``convpipe bench``'s table title."""
    return f"bench {model}  device={device}  threads={threads}  batch latency, median of {rounds} interleaved rounds"


def remote_bench_line(where: str, times: Sequence[float], number: int) -> str:
    """``convpipe bench --remote``'s result: the median of the board's ``time_evaluator`` repeats (``times`` in
    seconds, each the mean of ``number`` runs)."""
    import statistics

    return (f"convpipe on the board ({where}): median {statistics.median(times) * 1e3:.3f} ms over {len(times)} "
            f"repeats of {number} runs (time_evaluator on the board). An emulated board "
            "(scripts/arm_board.sh) is ~20x slower than hardware: its timings are not ARM performance.")


# ------------------------------------------------------------------------------------------------------------
# tune
# ------------------------------------------------------------------------------------------------------------


def tune_table(results, db_path: str, target, threads):
    """``convpipe tune``'s table of :class:`convpipe.compiler.tune.TuneResult` s: per workload the chosen family,
    knobs, ms, GFLOP/s, candidates measured, and whether the record was measured now or reused."""
    from rich.table import Table

    t = Table(title=f"tuning database {db_path} ({target.arch}/{target.isa}), measured at {threads} thread(s)",
              title_justify="left")
    for col in ("workload", "family", "knobs", "ms", "GFLOP/s", "candidates", "source"):
        t.add_column(col)
    for r in results:
        rec = r.record
        t.add_row(r.workload.key(), rec["family"], knobs_text(rec["knobs"]),
                  f"{rec['ms']:.3f}", f"{rec['gflops']:.1f}", str(rec["candidates"]), "reused" if r.reused else "measured")
    return t


def tune_summary(results, db_path: str) -> str:
    """``convpipe tune``'s closing line: workloads measured and reused, and how to use the database."""
    return (f"{sum(not r.reused for r in results)} workload(s) measured, {sum(r.reused for r in results)} reused; "
            f"compile with --db {db_path}")


# ------------------------------------------------------------------------------------------------------------
# demo
# ------------------------------------------------------------------------------------------------------------


def print_demo_heading(con, name: str, description: str) -> None:
    """The rule that opens one model of ``convpipe demo`` (printed before its work starts)."""
    con.rule(f"{name}: {description}")


def print_demo_result(con, r) -> None:
    """One model of ``convpipe demo`` (a :class:`convpipe.compiler.demo.DemoResult`): compile line, layer table,
    verification table, error vs PyTorch, top-5 classes, and the latency table when it was benchmarked; or the face
    detector (a :class:`convpipe.compiler.demo.DetectorResult`, :func:`print_mtcnn`)."""
    if hasattr(r, "photos"):
        print_mtcnn(con, r)
        return
    con.print(f"compiled {r.onnx_path} -> {r.artifact} ({seconds_text(r.seconds)})")
    con.print(layer_table(r.manifest["conv2d"], f"{r.name}: conv2d schedules (auto, {r.manifest['target']['isa']})"))
    con.print(checks_table(r.checks, r.rtol, r.atol))
    con.print(f"max abs error vs PyTorch eager: {r.torch_max_abs:.3e}")
    if r.top5 is not None:
        con.print(f"top-5 class ids on the photo (untrained classifier head): {r.top5}")
    if r.bench is not None:
        con.print(bench_table(r.bench, f"{r.name} latency, batch 1, {r.threads} thread(s)"))


def detection_table(det) -> str:
    """A text table of a :class:`convpipe.mtcnn.Detections`: one row ``#, x1, y1, x2, y2, p`` per face (pixels,
    1 decimal; p to 5 decimals); ``"no face found"`` when there is none."""
    if not len(det):
        return "no face found"
    rows = [f"{'#':>3} {'x1':>8} {'y1':>8} {'x2':>8} {'y2':>8} {'p':>8}"]
    for k, (b, p) in enumerate(zip(det.boxes, det.probs)):
        rows.append(f"{k:>3} {b[0]:8.1f} {b[1]:8.1f} {b[2]:8.1f} {b[3]:8.1f} {p:8.5f}")
    return "\n".join(rows)


def mtcnn_table(photos: Sequence[dict]):
    """The face detector per photo (:func:`convpipe.mtcnn.demo`'s dicts): faces found, whole-detector seconds with
    convpipe artifacts, onnxruntime sessions and facenet-pytorch (eager), and how convpipe's faces match
    facenet-pytorch's (same count, smallest IoU, largest probability difference)."""
    from rich.table import Table

    t = Table(title="MTCNN face detection per photo (whole detector: pyramid, P/R/O-Net, NMS, glue)",
              title_justify="left")
    for col in ("photo", "size", "faces", "convpipe s", "onnxruntime s", "facenet-pytorch s", "vs facenet: count",
                "min IoU", "max |dp|"):
        t.add_column(col, justify="left" if col == "photo" else "right")
    for r in photos:
        m = r.get("match")
        t.add_row(r["photo"], f"{r['shape'][1]}x{r['shape'][0]}", str(len(r["detections"])), f"{r['seconds']:.3f}",
                  f"{r['ort_seconds']:.3f}" if "ort_seconds" in r else "-",
                  f"{r['facenet_seconds']:.3f}" if "facenet_seconds" in r else "-",
                  ("same" if m["same_count"] else "DIFFERENT") if m else "-",
                  f"{m['min_iou']:.6f}" if m else "-", f"{m['max_dp']:.1e}" if m else "-")
    t.caption = "seconds: median of whole detections of the photo, engines one after the other in this process"
    return t


def print_mtcnn(con, r) -> None:
    """The face detector of ``convpipe demo`` (a :class:`convpipe.compiler.demo.DetectorResult`): each photo's faces
    and annotated PNG, the per-photo table (:func:`mtcnn_table`) and the compile cost."""
    for p in r.photos:
        con.print(f"{p['photo']}: {len(p['detections'])} face(s) -> {p['png']}")
        con.print(detection_table(p["detections"]))
    con.print(mtcnn_table(r.photos))
    if r.photos and r.photos[0].get("artifacts"):
        con.print(f"compiled {r.photos[0]['artifacts']} artifact(s) in {r.photos[0]['compile_seconds']:.1f} s "
                  f"(P-Net per pyramid size, R-Net and O-Net at a fixed batch)")


def print_demo(con, results: Iterable) -> bool:
    """Print each :class:`convpipe.compiler.demo.DemoResult` as ``results`` yields it (:func:`print_demo_result`),
    then the closing rule and verdict; returns whether every verification passed."""
    all_ok = True
    for r in results:
        print_demo_result(con, r)
        all_ok &= r.ok
    con.rule()
    con.print("demo: every verification passed" if all_ok else "demo: a verification FAILED",
              style="green" if all_ok else "red")
    return all_ok
