"""``scripts/gpu_kit.py``: a kit built here runs on a host with a runtime-only TVM (the kit's ``site/`` has no
``libtvm_compiler.so``) and verifies against onnxruntime's outputs. CI has no GPU, so the kit is built for x86 and
run on this CPU; a CUDA kit is built too (its device code embedded) and refused here with a clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import has_cuda_gpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KIT = os.path.join(REPO, "scripts", "gpu_kit.py")
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def _kit(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, KIT, *args], capture_output=True, text=True, timeout=900, env=env, cwd=cwd)


def test_x86_kit_runs_runtime_only(tmp_path):
    kit = str(tmp_path / "kit")
    r = _kit("build", "--target", "x86", "--models", "pnet:2", "--python", PY, "--out", kit)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not os.path.exists(os.path.join(kit, "site", "tvm", "lib", "libtvm_compiler.so"))
    assert not os.path.exists(os.path.join(kit, "models", "pnet_b2", "model.onnx"))
    env = dict(os.environ, PYTHONPATH=os.path.join(kit, "site"))
    r = _kit("run", "--kit", kit, "--out", str(tmp_path / "res"), env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.load(open(tmp_path / "res" / "results.json"))
    (row,) = res["models"]
    assert row["verified"] and row["batch"] == 2 and row["ms"]["convpipe"] > 0, row
    assert "| pnet | 2 | cpu | yes |" in (tmp_path / "res" / "results.md").read_text()


@pytest.mark.skipif(has_cuda_gpu(), reason="a CUDA GPU is present, so the kit would run")
def test_cuda_kit_is_refused_without_gpu(tmp_path):
    kit = str(tmp_path / "kit")
    r = _kit("build", "--models", "pnet:1", "--layers", "--python", PY, "--out", kit)
    assert r.returncode == 0, r.stdout + r.stderr
    layers = json.load(open(os.path.join(kit, "layers", "layers.json")))
    assert [m["layer"] for m in layers] == ["64->64 3x3 @56", "128->128 3x3 @28", "256->256 3x3 @14", "512->512 3x3 @7"]
    assert all(os.path.isfile(os.path.join(kit, "layers", m["lib"])) for m in layers)
    env = dict(os.environ, PYTHONPATH=os.path.join(kit, "site"))
    r = _kit("run", "--kit", kit, "--out", str(tmp_path / "res"), env=env, cwd=str(tmp_path))
    assert r.returncode != 0 and "artifact built for CUDA sm_90, but no CUDA GPU is present" in r.stderr, r.stderr
