"""Real models end to end through the CLI: export -> compile (auto) -> verify against onnxruntime on a real
image (skimage photos / the astronaut's face for the MTCNN nets, which carry trained weights)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import cli
from convpipe.compiler.zoo import ZOO

MODELS = {  # name: input shape used here (smaller than the zoo default where the model allows, for CI time)
    "resnet18": (1, 3, 224, 224),
    "mobilenet_v2": (1, 3, 160, 160),
    "shufflenet_v2_x1_0": (1, 3, 160, 160),
    "pnet": (1, 3, 120, 120),
    "rnet": (1, 3, 24, 24),
    "onet": (1, 3, 48, 48),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_real_model_end_to_end(tmp_path, name):
    shape = MODELS[name]
    onnx_path, art, x_path = str(tmp_path / "m.onnx"), str(tmp_path / "m.cpa"), str(tmp_path / "x.npy")
    cli("export", name, "-o", onnx_path, "--input-shape", ",".join(map(str, shape)))
    cli("compile", onnx_path, "-o", art, "--schedule", "auto", "-q")
    x = ZOO[name].real_input(shape)
    assert x.shape == shape and x.std() > 0.1, "a real image, not a constant"
    np.save(x_path, x)
    p = cli("verify", art, onnx_path, "--input", f"input={x_path}", "--rtol", "1e-3", "--atol", "1e-4")
    assert "all outputs match" in p.stdout
    manifest = json.load(open(os.path.join(art, "manifest.json")))
    assert manifest["conv2d"], "every conv2d lowered through our schedules"
    assert {layer["family"] for layer in manifest["conv2d"]} <= {"direct", "im2col", "winograd", "depthwise"}
    out = cli("run", art, "--input", f"input={x_path}", "-o", str(tmp_path / "o.npz"))
    outs = np.load(tmp_path / "o.npz")
    assert all(np.abs(outs[k]).max() > 1e-3 for k in outs), "outputs are not ~0 (BatchNorm calibrated)"
