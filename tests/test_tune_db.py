"""Tuning-database records are validated before use (issue 14, item 4).

Every record of a tuning database (``compile --db``, ``tune --db``) is checked against its rule's knob space
(:meth:`convpipe.schedules.rule.Conv2dRule.knob_space`) for the workload and target it is keyed by. An invalid
record -- a knob of 0, negative, a string, missing, unknown, absurdly large; a record without ``family``/
``knobs``/``gflops``, with knobs not a dict, an unknown family, or not a dict at all -- is skipped with ONE
warning naming the database file, the workload key and the reason, and the layer gets the default choice;
``TuningDatabase(path, strict=True)`` raises :class:`ConvpipeError` naming the same instead. ``tune`` re-measures
a workload whose record is invalid.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from convpipe.compiler.build import compile_model
from convpipe.compiler.export import export_onnx
from convpipe.compiler.importer import import_onnx
from convpipe.compiler.select import choose
from convpipe.compiler.tune import FORMAT, TuningDatabase, model_workloads, target_key, tune_workloads
from convpipe.errors import ConvpipeError
from convpipe.schedules import Conv2dWorkload, resolve_target, rules_for


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """One 8 -> 16 3x3 conv (auto: ``direct``), its single workload as ``compile`` sees it, and its default choice."""
    d = tmp_path_factory.mktemp("tunedb")
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU()).eval()
    path = str(d / "m.onnx")
    export_onnx(m, (1, 8, 12, 12), path)
    target = resolve_target("x86")
    (wl,) = model_workloads(import_onnx(path), target)
    default = choose(wl, target, rules_for("x86"))
    return d, path, target, wl, default


def _write_db(path, target, wl, record) -> str:
    with open(path, "w") as f:
        json.dump({"format": FORMAT, "records": {target_key(target): {wl.key(): record}}}, f)
    return str(path)


def _record(default, **knob_changes) -> dict:
    """A well-formed record for the default family, its knobs changed (``None`` removes a knob)."""
    knobs = dict(default.knobs)
    for k, v in knob_changes.items():
        if v is None:
            knobs.pop(k)
        else:
            knobs[k] = v
    return {"family": default.family, "knobs": knobs, "ms": 0.01, "gflops": 30.0, "candidates": 3}


#: what a record filed under the wrong key says it was measured for (the model's conv at 24x24, not 12x12)
OTHER_WORKLOAD = Conv2dWorkload(1, 8, 24, 24, 16, 3, 3, 1, 1, 1, 1, 1, 1).to_dict()

#: (case id, record builder from the default choice, text the reason must contain)
BAD_RECORDS = [
    ("knob_zero", lambda d: _record(d, ow_tile=0), "ow_tile"),
    ("knob_negative", lambda d: _record(d, ow_tile=-1), "ow_tile"),
    ("knob_string", lambda d: _record(d, ow_tile="8"), "ow_tile"),
    ("knob_float", lambda d: _record(d, ow_tile=2.5), "ow_tile"),
    ("knob_bool", lambda d: _record(d, ow_tile=True), "ow_tile"),
    ("knob_missing", lambda d: _record(d, ow_tile=None), "ow_tile"),
    ("knob_unknown", lambda d: _record(d, bogus=4), "bogus"),
    ("knob_over_dimension", lambda d: _record(d, ow_tile=13), "ow_tile"),
    ("knob_not_dividing", lambda d: _record(d, oc_tile=3), "oc_tile"),
    ("no_family", lambda d: {k: v for k, v in _record(d).items() if k != "family"}, "family"),
    ("no_knobs", lambda d: {k: v for k, v in _record(d).items() if k != "knobs"}, "knobs"),
    ("no_gflops", lambda d: {k: v for k, v in _record(d).items() if k != "gflops"}, "gflops"),
    ("gflops_string", lambda d: {**_record(d), "gflops": "fast"}, "gflops"),
    ("knobs_list", lambda d: {**_record(d), "knobs": [16, 8, 12, 1]}, "knobs"),
    ("unknown_family", lambda d: {**_record(d), "family": "fft"}, "fft"),
    ("unsupported_family", lambda d: {**_record(d), "family": "depthwise", "knobs": {"x_tile": 4}}, "depthwise"),
    ("record_string", lambda d: "direct", "not a JSON object"),
    ("record_list", lambda d: [1, 2], "not a JSON object"),
    # a record filed under another workload's key (its ``workload`` says what it was measured for)
    ("workload_other", lambda d: {**_record(d), "workload": OTHER_WORKLOAD}, "wrong key"),
    ("workload_string", lambda d: {**_record(d), "workload": "n1_c8"}, "'workload' must be an object"),
    ("workload_bad_field", lambda d: {**_record(d), "workload": {"batch": 1, "colour": 3}}, "not a conv2d workload"),
]


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("convpipe")]


@pytest.mark.parametrize("make,needle", [c[1:] for c in BAD_RECORDS], ids=[c[0] for c in BAD_RECORDS])
def test_invalid_record_is_skipped_with_one_warning(model, make, needle, tmp_path, caplog):
    d, path, target, wl, default = model
    db_path = _write_db(tmp_path / "tune.json", target, wl, make(default))
    caplog.set_level(logging.WARNING)
    res = compile_model(path, str(tmp_path / "out.cpa"), target, db=TuningDatabase(db_path))
    (layer,) = res.manifest["conv2d"]
    assert (layer["family"], layer["knobs"]) == (default.family, default.knobs)
    assert layer["reason"] == default.reason
    msgs = _warnings(caplog)
    assert len(msgs) == 1, msgs
    assert "\n" not in msgs[0]
    assert db_path in msgs[0] and wl.key() in msgs[0] and needle in msgs[0], msgs[0]


@pytest.mark.parametrize("make,needle", [c[1:] for c in BAD_RECORDS], ids=[c[0] for c in BAD_RECORDS])
def test_invalid_record_strict_raises(model, make, needle, tmp_path):
    d, path, target, wl, default = model
    db_path = _write_db(tmp_path / "tune.json", target, wl, make(default))
    with pytest.raises(ConvpipeError) as e:
        compile_model(path, str(tmp_path / "out.cpa"), target, db=TuningDatabase(db_path, strict=True))
    msg = str(e.value)
    assert db_path in msg and wl.key() in msg and needle in msg, msg
    assert not os.path.exists(tmp_path / "out.cpa")


HUGE = r"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # a runaway compile dies here instead of the machine
from convpipe.compiler.build import compile_model
from convpipe.compiler.tune import TuningDatabase
t0 = time.time()
res = compile_model(sys.argv[1], sys.argv[2], db=TuningDatabase(sys.argv[3]))
print(json.dumps({"s": time.time() - t0, "layer": res.manifest["conv2d"][0],
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def test_huge_knob_is_rejected_fast_with_bounded_memory(model, tmp_path):
    """``ow_tile = 10**9`` once made ``compile`` unroll a 10^9-column register tile (past 6 GB in 29 s)."""
    d, path, target, wl, default = model
    db_path = _write_db(tmp_path / "tune.json", target, wl, _record(default, ow_tile=10**9))
    p = subprocess.run(
        [sys.executable, "-c", HUGE, path, str(tmp_path / "out.cpa"), db_path],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert (out["layer"]["family"], out["layer"]["knobs"]) == (default.family, default.knobs)
    # the runaway this guards against took 6+ GB in 29 s; a normal compile peaks near 2 GB (2003 MB seen in a
    # fresh-clone CI run), so the memory bound sits well between the two
    assert out["s"] < 30 and out["rss_mb"] < 3500, out
    warn = [line for line in p.stderr.splitlines() if "ow_tile" in line]
    assert len(warn) == 1 and db_path in warn[0] and wl.key() in warn[0], p.stderr


def test_valid_record_is_used(model, tmp_path, caplog):
    d, path, target, wl, default = model
    rec = _record(default, ow_tile=4)
    db_path = _write_db(tmp_path / "tune.json", target, wl, rec)
    caplog.set_level(logging.WARNING)
    res = compile_model(path, str(tmp_path / "out.cpa"), target, db=TuningDatabase(db_path, strict=True))
    (layer,) = res.manifest["conv2d"]
    assert layer["knobs"] == rec["knobs"] and layer["reason"].startswith("tuned")
    assert _warnings(caplog) == []


def test_optional_knobs_may_be_omitted(model, tmp_path, caplog):
    """``direct``'s ``ic_block``/``oc_tile`` default to 1 (records of older databases omit them)."""
    d, path, target, wl, default = model
    rec = {"family": "direct", "knobs": {"oc_block": 16, "ow_tile": 6}, "ms": 0.01, "gflops": 30.0, "candidates": 1}
    db_path = _write_db(tmp_path / "tune.json", target, wl, rec)
    caplog.set_level(logging.WARNING)
    res = compile_model(path, str(tmp_path / "out.cpa"), target, db=TuningDatabase(db_path, strict=True))
    assert res.manifest["conv2d"][0]["reason"].startswith("tuned")
    assert _warnings(caplog) == []


def test_same_bad_record_warns_once_for_repeated_layers(tmp_path, caplog):
    """Two convs with one workload: one warning for the record, not one per layer."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, padding=1)
    ).eval()
    path = str(tmp_path / "m2.onnx")
    export_onnx(m, (1, 16, 6, 6), path)
    target = resolve_target("x86")
    (wl,) = model_workloads(import_onnx(path), target)
    db_path = _write_db(tmp_path / "tune.json", target, wl, {"family": "direct", "knobs": {"oc_block": 0}})
    caplog.set_level(logging.WARNING)
    res = compile_model(path, str(tmp_path / "out.cpa"), target, db=TuningDatabase(db_path))
    assert [layer["reason"].startswith("auto") for layer in res.manifest["conv2d"]] == [True, True]
    assert len(_warnings(caplog)) == 1, _warnings(caplog)


@pytest.mark.parametrize(
    "records,needle",
    [
        ({"x86/avx512/2/{}": "oops"}, "x86/avx512/2/{}"),
        ({"x86/avx512/2/{}": [1, 2]}, "x86/avx512/2/{}"),
    ],
    ids=["target_entry_string", "target_entry_list"],
)
def test_malformed_target_entry(tmp_path, caplog, records, needle):
    """A target entry that is not an object of records: skipped with one warning, or ConvpipeError when strict;
    saving the database afterwards drops it (instead of crashing on it)."""
    p = tmp_path / "tune.json"
    p.write_text(json.dumps({"format": FORMAT, "records": records}))
    caplog.set_level(logging.WARNING)
    db = TuningDatabase(str(p))
    msgs = _warnings(caplog)
    assert len(msgs) == 1 and str(p) in msgs[0] and needle in msgs[0], msgs
    target = resolve_target("x86")
    from convpipe.schedules import Conv2dWorkload

    wl = Conv2dWorkload(1, 8, 8, 8, 8, 3, 3)
    assert db.lookup(wl, target) is None
    db.store(wl, target, {"family": "direct", "knobs": {"oc_block": 8, "ow_tile": 8}, "ms": 1.0, "gflops": 1.0})
    db.save()
    assert json.loads(p.read_text())["records"].keys() == {target_key(target)}
    with pytest.raises(ConvpipeError, match="target entry"):
        p.write_text(json.dumps({"format": FORMAT, "records": records}))
        TuningDatabase(str(p), strict=True)


def test_tune_remeasures_an_invalid_record(model, tmp_path, caplog):
    """``tune`` never reuses an invalid record: it measures the workload again and replaces the record."""
    d, path, target, wl, default = model
    db_path = _write_db(tmp_path / "tune.json", target, wl, _record(default, ow_tile=10**9))
    calls = []

    def measure(rule, wl_, target_, knobs):
        calls.append((rule.family, knobs))
        return 1e-3

    caplog.set_level(logging.WARNING)
    (res,) = tune_workloads([wl], target, TuningDatabase(db_path), budget_s=60, measure=measure)
    assert not res.reused and calls
    assert all(kn.get("ow_tile", 1) <= wl.out_w for fam, kn in calls if fam == "direct")
    assert len(_warnings(caplog)) == 1
    saved = json.loads(open(db_path).read())["records"][target_key(target)][wl.key()]
    assert saved == res.record and saved["knobs"]["ow_tile"] <= wl.out_w
    # the replaced record is valid: a second tune reuses it without warning
    caplog.clear()
    (res2,) = tune_workloads([wl], target, TuningDatabase(db_path, strict=True), measure=measure)
    assert res2.reused and _warnings(caplog) == []


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe\x00garbage", b"[" * 100000 + b"]" * 100000, b'{"format": 1, "records": [1]}', b"null"],
    ids=["binary", "deeply_nested", "records_list", "null"],
)
def test_unreadable_database_is_one_error(tmp_path, content):
    """A file that is not a tuning database at all: one ConvpipeError naming it, whatever ``strict`` is."""
    p = tmp_path / "tune.json"
    p.write_bytes(content)
    for strict in (False, True):
        with pytest.raises(ConvpipeError, match="tune.json"):
            TuningDatabase(str(p), strict=strict)


def test_strict_error_comes_before_tvm_runs(model, tmp_path, capfd):
    """The strict check runs before TVM's LegalizeOps pass: the error is the only output (no TVM log lines)."""
    d, path, target, wl, default = model
    db_path = _write_db(tmp_path / "tune.json", target, wl, _record(default, oc_block=0))
    with pytest.raises(ConvpipeError, match="oc_block"):
        compile_model(path, str(tmp_path / "out.cpa"), target, db=TuningDatabase(db_path, strict=True))
    assert "BlockBuilder" not in capfd.readouterr().err
