"""The real-model corpus (issue 10): the list covers what it promises, and CI runs its fixed fast slice end to end
(export, default compile, verify against onnxruntime at the issue's tolerance) through ``scripts/corpus.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "corpus.py")


def corpus_list() -> dict:
    with open(os.path.join(REPO, "scripts", "corpus.json")) as f:
        return json.load(f)


def test_list_covers_every_torchvision_architecture_and_60_timm_ones():
    from convpipe.compiler.zoo import import_torchvision

    tv = import_torchvision()
    specs = [m["spec"] for m in corpus_list()["models"]]
    assert len(specs) == len(set(specs)), "no spec twice"
    want = tv.models.list_models(module=tv.models) + tv.models.list_models(module=tv.models.segmentation)
    missing = [n for n in want if f"torchvision/{n}" not in specs]
    assert not missing, f"torchvision architectures missing from the corpus: {missing}"
    timm_specs = [s for s in specs if s.startswith("timm/")]
    assert len(timm_specs) >= 60, len(timm_specs)
    import timm

    unknown = [s for s in timm_specs if s.split("/", 1)[1] not in timm.list_models()]
    assert not unknown, unknown
    assert set(corpus_list()["slices"]["ci"]) <= set(specs)


def test_ci_slice_compiles_with_default_flags_and_matches_onnxruntime(tmp_path):
    out = tmp_path / "report"
    p = subprocess.run([sys.executable, SCRIPT, "--slice", "ci", "--out", str(out), "--work", str(tmp_path / "work")],
                       capture_output=True, text=True, timeout=2400)
    report = json.loads((out / "corpus.json").read_text())
    bad = [(r["spec"], r["status"], r["error"]) for r in report["results"] if r["status"] != "pass"]
    assert not bad and p.returncode == 0, f"{bad}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    assert len(report["results"]) == len(corpus_list()["slices"]["ci"])
    assert all(r["max_rel"] <= 1e-4 for r in report["results"])
    md = (out / "corpus.md").read_text()
    assert report["summary"] in md and "| model |" in md
