"""Real models end to end through the CLI: export -> compile (auto) -> verify against onnxruntime on a real
image (skimage photos / the astronaut's face for the MTCNN nets, which carry trained weights).

What the product promises for every model, and what is checked here:

- every Conv of the ONNX graph is lowered through convpipe's schedules: one manifest ``conv2d`` layer per ONNX
  Conv node;
- no conv2d is left on TVM's default (unscheduled) legalisation: the compiled library's functions that compute a
  conv2d are all convpipe kernels (``conv2d_<family>_<n>``, possibly fused with their epilogue), and every kernel
  the manifest names is in the library (:func:`conv2d_off_our_schedules`);
- the artifact's outputs match onnxruntime's (``convpipe verify``).

:func:`test_checks_catch_a_conv_left_on_tvms_default` shows those checks fail on a build where one conv2d
bypasses our lowering (TVM's default legalisation instead) -- a build whose outputs still match onnxruntime and
whose manifest still looks plausible.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import numpy as np
import onnx
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

FAMILIES = ("direct", "im2col", "winograd", "depthwise")
#: the name :func:`convpipe.compiler.lower.lower_conv2d` gives our kernels; FuseTIR keeps it inside the name of the
#: fused function (``fused_conv2d_direct_0_add_relu``). TVM's default legalisation names its PrimFunc ``conv2d``
#: (``fused_conv2d_add_relu`` once fused).
OUR_KERNEL = re.compile(r"conv2d_(?:%s)_\d+" % "|".join(FAMILIES))


def onnx_conv_count(onnx_path: str) -> int:
    return sum(node.op_type == "Conv" for node in onnx.load(onnx_path).graph.node)


def library_functions(lib: str) -> list[str]:
    """The PrimFunc names exported by a compiled x86 library (``__tvm_ffi_<name>`` dynamic symbols)."""
    out = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True, check=True).stdout
    syms = [line.split()[-1] for line in out.splitlines() if line.strip()]
    return [s[len("__tvm_ffi_"):] for s in syms if s.startswith("__tvm_ffi_") and s != "__tvm_ffi__library_bin"]


def conv2d_off_our_schedules(artifact: str, onnx_path: str) -> list[str]:
    """Everything wrong with an artifact's conv2d lowering (empty: every conv2d runs one of our kernels)."""
    manifest = json.load(open(os.path.join(artifact, "manifest.json")))
    funcs = library_functions(os.path.join(artifact, manifest["library"]["file"]))
    problems = []
    n_onnx, layers = onnx_conv_count(onnx_path), manifest["conv2d"]
    if len(layers) != n_onnx:
        problems.append(f"{n_onnx} Conv nodes in the ONNX graph but {len(layers)} conv2d layers in the manifest")
    for layer in layers:
        if layer["family"] not in FAMILIES:
            problems.append(f"layer {layer['index']}: unknown family {layer['family']!r}")
        if not OUR_KERNEL.fullmatch(layer["kernel"]):
            problems.append(f"layer {layer['index']}: kernel {layer['kernel']!r} is not a convpipe kernel name")
        elif not any(re.search(rf"(?<![A-Za-z0-9]){layer['kernel']}(?!\d)", f) for f in funcs):
            problems.append(f"layer {layer['index']}: kernel {layer['kernel']!r} is not in the library {funcs}")
    for f in funcs:
        if "conv2d" in OUR_KERNEL.sub("", f):
            problems.append(f"library function {f!r} computes a conv2d outside our schedules (TVM's default)")
    return problems


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
    assert onnx_conv_count(onnx_path) > 0
    assert conv2d_off_our_schedules(art, onnx_path) == []
    out = cli("run", art, "--input", f"input={x_path}", "-o", str(tmp_path / "o.npz"))
    outs = np.load(tmp_path / "o.npz")
    assert all(np.abs(outs[k]).max() > 1e-3 for k in outs), "outputs are not ~0 (BatchNorm calibrated)"


@pytest.mark.parametrize("keep_record", [False, True], ids=["layer-dropped", "layer-recorded"])
def test_checks_catch_a_conv_left_on_tvms_default(tmp_path, monkeypatch, keep_record):
    """One conv2d legalised by TVM's default rule instead of ours (NCHW, where that rule applies): with its
    manifest record dropped, or kept as if it had been lowered. The outputs still match onnxruntime; the checks
    above must not."""
    import tvm
    from tvm import relax

    from cli_models import small_cnn
    from convpipe.compiler.build import compile_model
    from convpipe.compiler.export import export_onnx
    from convpipe.compiler.verify import compare, run_onnxruntime
    from convpipe.runtime import load

    onnx_path = str(tmp_path / "m.onnx")
    export_onnx(small_cnn().eval(), (1, 3, 16, 16), onnx_path)
    good = compile_model(onnx_path, str(tmp_path / "good.cpa"), "x86", layout="nchw")
    assert conv2d_off_our_schedules(good.path, onnx_path) == []

    legalize_ops, tvm_default = relax.transform.LegalizeOps, tvm.ir.Op.get("relax.nn.conv2d").get_attr("FLegalize")

    def bypass_first_conv(customize_legalize_map=None, **kw):
        if not customize_legalize_map:  # the pipeline's own LegalizeOps
            return legalize_ops(customize_legalize_map, **kw)
        ours, seen = customize_legalize_map["relax.nn.conv2d"], []

        def legalize(bb, call):
            seen.append(call)
            if len(seen) > 1:
                return ours(bb, call)
            if keep_record:
                ours(bb, call)  # recorded in the manifest, kernel added, result not used
            return tvm_default(bb, call)

        return legalize_ops(customize_legalize_map={"relax.nn.conv2d": legalize}, **kw)

    monkeypatch.setattr(relax.transform, "LegalizeOps", bypass_first_conv)
    bad = compile_model(onnx_path, str(tmp_path / "bad.cpa"), "x86", layout="nchw")
    monkeypatch.undo()
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype("float32")
    checks = compare(load(bad.path).run([x]), run_onnxruntime(onnx_path, {"input": x}), 1e-3, 1e-4)
    assert all(c.ok for c in checks), "TVM's default conv2d is correct, only unscheduled"
    assert bad.manifest["conv2d"] and {layer["family"] for layer in bad.manifest["conv2d"]} <= set(FAMILIES)
    problems = conv2d_off_our_schedules(bad.path, onnx_path)
    assert any("outside our schedules" in p for p in problems), problems
    assert any("Conv nodes" in p for p in problems) == (not keep_record), problems
