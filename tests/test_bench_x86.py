"""The x86 benchmark's two halves without measuring anything: ``scripts/bench_x86.py`` (measuring: its command line,
its layer suite of distinct conv workloads from ``compiler.conv_calls``) and ``scripts/bench_report.py`` (reporting:
a hand-made ``results.json`` -> ``analysis.json``, ``report.md``, plots). Cheap: one tiny ONNX model, no timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "scripts")
sys.path.insert(0, SCRIPTS)
import bench_report  # noqa: E402
import bench_x86  # noqa: E402


def test_measuring_and_reporting_are_split():
    """The report lives in bench_report only; bench_x86 keeps the measuring and hands over with --no-report."""
    for name in ("analyse", "markdown", "plots", "targets_table", "report_only"):
        assert not hasattr(bench_x86, name), name
    for name in ("analyse", "markdown", "plots", "targets_table", "write_report"):
        assert callable(getattr(bench_report, name)), name
    args = bench_x86.parse_args(["--no-report", "--threads", "1"])
    assert args.no_report and args.threads == "1"
    r = subprocess.run([sys.executable, os.path.join(SCRIPTS, "bench_x86.py"), "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "--no-report" in r.stdout and "--report-only" not in r.stdout


def test_report_imports_no_engine():
    """Reporting measures nothing: importing it starts neither TVM nor torch nor onnxruntime."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import bench_report; "
            "print(sorted(m for m in ('tvm', 'torch', 'onnxruntime') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code, SCRIPTS], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def _results() -> dict:
    """A minimal results.json as bench_x86.py writes it: 1 thread, one layer, one model (ms)."""
    layer = {
        "index": 0, "name": "3x3/s1 64->64 @56 16c", "gflop": 0.231, "used_by": {"resnet18": 4},
        "compute_bound": True, "winograd_shape": True, "workload": {"in_channels": 64},
        "ours_engine": "winograd", "best_engine": "winograd",
        "ours": {"winograd": {}, "direct": {}},
        "errors": {"winograd F(4x4,3x3)": {"tile": 4, "rel_err": 1e-6, "bound": 1e-4}},
        "failed": {},
        "timing": {"winograd": {"median_ms": 1.0}, "direct": {"median_ms": 1.5},
                   "onnxruntime": {"median_ms": 1.4}, "pytorch": {"median_ms": 2.0}},
    }
    model = {
        "model": "resnet18", "compile": {"convpipe": {"wall_s": 12.0}},
        "check": {"convpipe": {"max_rel_err": 1e-6}}, "failed": {},
        "timing": {"convpipe": {"median_ms": 20.0}, "convpipe-nchw": {"median_ms": 22.0},
                   "onnxruntime": {"median_ms": 30.0}, "pytorch": {"median_ms": 40.0}},
    }
    return {
        "started": "2026-01-01T00:00:00+0000", "argv": [], "wall_s": 60.0,
        "machine": {"cpu": "test cpu", "cores": 2, "platform": "linux"},
        "fma_peak": {"per_threads": {"1": {"gflops": 100.0, "isa": "avx512"}}},
        "isa": "avx512", "versions": {}, "rounds": 3, "round_s": 0.05,
        "runs": {"1": {"layers": [layer], "models": [model]}, "2": {"error": "worker exit 1"}},
    }


def test_report_from_results_json(tmp_path):
    with open(tmp_path / "results.json", "w") as f:
        json.dump(_results(), f)
    out = bench_report.write_report(str(tmp_path), quiet=True)
    an = json.load(open(tmp_path / "analysis.json"))
    assert list(an["layers"]) == ["1"]  # the failed worker (2 threads) is left out
    (row,) = an["layers"]["1"]
    assert row["vs_ort"] == pytest.approx(1.4) and row["ours_pct_peak"] == pytest.approx(231.0)
    (m,) = an["models"]["1"]
    assert m["lat_vs_ort"] == pytest.approx(20.0 / 30.0) and m["nchw_ms"] == 22.0
    met = {t["target"]: t["met"] for t in an["targets"]}
    assert met["resnet18 latency vs onnxruntime"] is True  # 0.67x <= 0.80x
    assert met["3x3 s1 layers with C >= 64: speed vs onnxruntime"] is True  # 1.4x >= 1.3x
    md = open(tmp_path / "report.md").read()
    assert "## Targets (issue 3)" in md and "`3x3/s1 64->64 @56 16c`" in md and "| resnet18 | 1 |" in md
    assert sorted(os.path.basename(f) for f in out["files"]) == [
        "analysis.json", "layers_t1.png", "models.png", "report.md"]
    assert all(os.path.getsize(f) > 0 for f in out["files"])


def test_report_cli_without_results(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(SCRIPTS, "bench_report.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no results.json" in r.stderr


def test_suite_counts_distinct_workloads(tmp_path):
    """The bench's layer suite: distinct workloads over models in first-use order, uses counted per model, in the
    layout ``compile`` runs them (``compiler.conv_calls.workload_uses`` after ``compiler.build.prepare``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from convpipe.schedules import resolve_target

    rng = np.random.default_rng(0)

    def model(path, n_same):
        inits = [numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype("float32") * 0.1, f"w{i}")
                 for i in range(n_same)]
        inits.append(numpy_helper.from_array(rng.standard_normal((32, 16, 1, 1)).astype("float32"), "wk"))
        nodes, x = [], "x"
        for i in range(n_same):
            nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
            x = f"c{i}"
        nodes.append(helper.make_node("Conv", [x, "wk"], ["y"]))
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 8, 8])], inits)
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
        return path

    paths = {"a": model(str(tmp_path / "a.onnx"), 3), "b": model(str(tmp_path / "b.onnx"), 1)}
    layers = bench_x86.suite(paths, resolve_target("x86"))
    assert [(wl.kernel_h, wl.out_channels) for wl, _ in layers] == [(3, 16), (1, 32)]
    assert [uses for _, uses in layers] == [{"a": 3, "b": 1}, {"a": 1, "b": 1}]
