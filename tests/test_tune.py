"""Measured per-layer selection: the tuning database's mechanics (measuring, reuse, target keying, compile
--db), with a deterministic stand-in for the clock, and one real ``convpipe tune`` through the CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from conftest import cli
from convpipe.compiler.build import compile_model
from convpipe.compiler.export import export_onnx
from convpipe.compiler.importer import import_onnx
from convpipe.compiler.tune import TuningDatabase, model_workloads, tune_workloads
from convpipe.compiler.verify import compare, run_onnxruntime
from convpipe.errors import ConvpipeError
from convpipe.runtime import load
from convpipe.schedules import resolve_target


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("tune")
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1, groups=16),
    ).eval()
    path = str(d / "m.onnx")
    export_onnx(m, (1, 3, 12, 12), path)
    return d, path


def fake_clock(prefer: str):
    """A stand-in measurement: ``prefer``'s candidates take 1 ms, others 2 ms; records every call."""
    calls = []

    def measure(rule, wl, target, knobs):
        calls.append((rule.family, wl))
        return 1e-3 if rule.family == prefer else 2e-3

    return measure, calls


def test_tune_stores_best_and_reuses(model):
    d, path = model
    target = resolve_target("x86")
    wls = model_workloads(import_onnx(path), target)
    assert len(wls) == 3
    db = TuningDatabase(str(d / "db.json"))
    measure, calls = fake_clock("im2col")
    res = tune_workloads(wls, target, db, budget_s=60, measure=measure)
    assert all(not r.reused and r.record["family"] == "im2col" for r in res)
    assert {fam for fam, _ in calls} >= {"im2col", "direct", "winograd", "depthwise"}
    # a second tune reuses every record and measures nothing
    measure2, calls2 = fake_clock("direct")
    res2 = tune_workloads(wls, target, TuningDatabase(str(d / "db.json")), measure=measure2)
    assert calls2 == [] and all(r.reused for r in res2)
    # records are keyed by target: an AVX2 target has none of them
    avx2 = resolve_target('{"kind": "llvm", "mcpu": "haswell"}')
    assert TuningDatabase(str(d / "db.json")).lookup(wls[0], avx2) is None
    # compile --db applies them without measuring, and the result is still correct
    compile_model(path, str(d / "tuned.cpa"), db=TuningDatabase(str(d / "db.json")))
    layers = json.load(open(d / "tuned.cpa" / "manifest.json"))["conv2d"]
    assert [layer["family"] for layer in layers] == ["im2col"] * 3
    assert all(layer["reason"].startswith("tuned") for layer in layers)
    x = np.random.default_rng(0).standard_normal((1, 3, 12, 12)).astype("float32")
    assert all(c.ok for c in compare(load(str(d / "tuned.cpa")).run([x]), run_onnxruntime(path, {"input": x}), 1e-3, 1e-4))


def test_failing_candidates_are_skipped(model):
    d, path = model
    target = resolve_target("x86")
    wls = model_workloads(import_onnx(path), target)

    def measure(rule, wl, target, knobs):
        if rule.family != "direct":
            raise RuntimeError("simulated build failure")
        return 1e-3

    res = tune_workloads(wls[:1], target, TuningDatabase(str(d / "db2.json")), measure=measure)
    assert res[0].record["family"] == "direct"


def test_failed_candidates_say_why(model):
    """A failing candidate is reported with its exception's type and first message line (not only the type); when
    every candidate fails, the error names the workload and the last failure."""
    d, path = model
    target = resolve_target("x86")
    wls = model_workloads(import_onnx(path), target)
    lines = []

    def measure(rule, wl, target, knobs):
        if rule.family != "direct":
            raise RuntimeError(f"simulated {rule.family} failure\n  a second line of detail")
        return 1e-3

    tune_workloads(wls[:1], target, TuningDatabase(str(d / "db3.json")), measure=measure, progress=lines.append)
    failed = [ln for ln in lines if "failed" in ln]
    assert failed and all("RuntimeError: simulated" in ln and "second line" not in ln for ln in failed), lines

    def broken(rule, wl, target, knobs):
        raise ValueError(f"no {rule.family} today")

    with pytest.raises(ConvpipeError, match=r"no candidate could be built.*ValueError: no \w+ today") as e:
        tune_workloads(wls[:1], target, TuningDatabase(str(d / "db4.json")), measure=broken)
    assert wls[0].describe() in str(e.value)


def test_bad_database_file(tmp_path):
    p = tmp_path / "db.json"
    p.write_text("[1, 2]")
    with pytest.raises(ConvpipeError, match="not a convpipe tuning database"):
        TuningDatabase(str(p))


def test_cli_tune_measures_then_reuses(model):
    d, path = model
    db = str(d / "cli_db.json")
    p = cli("tune", path, "--db", db, "--budget-s", "10", "--threads", "1")
    assert "3 workload(s) measured, 0 reused" in p.stdout
    p = cli("tune", path, "--db", db, "--budget-s", "10")
    assert "0 workload(s) measured, 3 reused" in p.stdout
    # no --threads: all cores, as the help says (TVM's own default was 1 worker on a 2-vCPU VM: issue 12)
    assert f"measured at {os.cpu_count()} thread(s)" in " ".join(p.stdout.split()), p.stdout
    cli("compile", path, "-o", str(d / "cli.cpa"), "--db", db, "-q")
    cli("verify", str(d / "cli.cpa"), path)
