"""The ``convpipe`` CLI contract: every documented form, and clear errors (exit 2, one line, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import CONVPIPE, user_error

HERE = os.path.dirname(os.path.abspath(__file__))


def run(*args, ok=True):
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([CONVPIPE, *args], capture_output=True, text=True, timeout=900, env=env)
    if ok and p.returncode != 0:
        pytest.fail(f"convpipe {' '.join(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    onnx_path = str(d / "small.onnx")
    run("export", "cli_models:small_cnn", "-o", onnx_path, "--input-shape", "1,3,20,18", "--opset", "17")
    art = str(d / "small.cpa")
    p = run("compile", onnx_path, "-o", art, "--target", "x86", "--schedule", "auto", "--input-shape", "input=1,3,20,18")
    assert "conv2d schedules" in p.stdout
    x = np.random.default_rng(0).standard_normal((1, 3, 20, 18)).astype("float32")
    np.save(d / "x.npy", x)
    return d, onnx_path, art


def test_run_writes_outputs_by_name(work):
    d, _, art = work
    run("run", art, "--input", f"input={d / 'x.npy'}", "-o", str(d / "out.npz"))
    out = np.load(d / "out.npz")
    assert list(out.keys()) == ["output"] and out["output"].shape == (1, 10)


def test_verify_passes_and_prints_errors(work):
    d, onnx_path, art = work
    p = run("verify", art, onnx_path, "--input", f"input={d / 'x.npy'}", "--rtol", "1e-3", "--atol", "1e-4")
    assert "max abs err" in p.stdout and "all outputs match" in p.stdout
    run("verify", art, onnx_path, "--seed", "7")  # generated inputs


def test_verify_mismatch_exits_1(work, tmp_path):
    d, _, art = work
    other = str(tmp_path / "other.onnx")
    run("export", "cli_models:small_cnn", "-o", other, "--input-shape", "1,3,20,18")
    # same architecture, different weights: perturb one initializer
    import onnx
    from onnx import numpy_helper

    m = onnx.load(other)
    init = m.graph.initializer[0]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 1.0, init.name))
    onnx.save(m, other)
    p = run("verify", art, other, ok=False)
    assert p.returncode == 1 and "MISMATCH" in p.stdout


@pytest.fixture(scope="module")
def every_family_onnx(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("families") / "every_family.onnx")
    run("export", "cli_models:every_family_cnn", "-o", path, "--input-shape", "1,3,12,12")
    return path


@pytest.mark.parametrize("schedule", ["direct", "im2col", "winograd", "depthwise"])
def test_every_schedule_flag(every_family_onnx, tmp_path, schedule):
    onnx_path = every_family_onnx
    art = str(tmp_path / f"{schedule}.cpa")
    run("compile", onnx_path, "-o", art, "--schedule", schedule, "-q")
    layers = json.load(open(os.path.join(art, "manifest.json")))["conv2d"]
    assert len(layers) == 4
    for layer in layers:  # the requested family wherever it applies, the documented fallback elsewhere
        assert layer["family"] == schedule or layer["reason"].startswith("fallback")
    assert any(layer["family"] == schedule and layer["reason"] == "requested" for layer in layers), \
        f"no layer used the requested family {schedule}: {[(la['family'], la['reason']) for la in layers]}"
    run("verify", art, onnx_path)


def test_target_json(work, tmp_path):
    _, onnx_path, _ = work
    art = str(tmp_path / "avx2.cpa")
    run("compile", onnx_path, "-o", art, "--target", '{"kind": "llvm", "mcpu": "haswell"}', "-q")
    assert json.load(open(os.path.join(art, "manifest.json")))["target"]["isa"] == "avx2"
    run("verify", art, onnx_path)


def test_inspect(work):
    _, _, art = work
    p = run("inspect", art)
    for col in ("N,C,H,W", "kernel", "stride", "pad", "dil", "groups", "schedule", "knobs", "GFLOP"):
        assert col in p.stdout
    assert "depthwise" in p.stdout and "3 conv2d layers" in p.stdout
    m = json.loads(run("inspect", art, "--json").stdout)
    for key in ("convpipe_version", "tvm_version", "target", "inputs", "outputs", "conv2d", "library", "source_onnx"):
        assert key in m
    assert len(m["library"]["sha256"]) == 64 and len(m["source_onnx"]["sha256"]) == 64


def test_profile(work):
    """Every kernel of a run, timed through the VM's instrument hook: the 3 conv2d layers are there as kernels of
    kind conv2d, and the kernels' times fit inside the instrumented run's."""
    _, _, art = work
    rep = json.loads(run("profile", art, "--runs", "3", "--json").stdout)
    kinds = [k["kind"] for k in rep["kernels"]]
    assert kinds.count("conv2d") == 3, rep["kernels"]
    assert all(k["ms"] >= 0 and k["calls"] > 0 for k in rep["kernels"])
    assert 0 < sum(k["ms"] for k in rep["kernels"]) <= rep["run_ms"] * 1.05
    text = " ".join(run("profile", art, "--runs", "2", "--top", "2").stdout.split())
    # which kind leads depends on the machine's load (tiny kernels): only that conv2d is among the kinds
    assert "by kind:" in text and "conv2d" in text.split("by kind:")[1] and "of an instrumented run of" in text, text
    user_error(run("profile", art, "--runs", "0", ok=False), "runs: expected at least 1, got 0")
    # conv kernels carry their conv layer numbers and GFLOP/s (nominal FLOPs / time), and % of a given peak
    rep = json.loads(run("profile", art, "--runs", "3", "--json", "--peak", "100").stdout)
    with open(os.path.join(art, "manifest.json")) as f:
        layers = json.load(f)["conv2d"]
    convs = [k for k in rep["kernels"] if k["kind"] == "conv2d"]
    assert sorted(i for k in convs for i in k["layers"]) == [layer["index"] for layer in layers]
    for k in convs:
        gflop = next(layer["gflop"] for layer in layers if layer["index"] == k["layers"][0])
        assert k["gflops"] == pytest.approx(gflop * k["calls"] / (k["ms"] / 1e3))
        assert k["pct_peak"] == pytest.approx(k["gflops"])  # of a 100 GFLOP/s peak
    assert rep["peak_gflops"] == 100
    text = " ".join(run("profile", art, "--runs", "2", "--peak", "100").stdout.split())
    assert "GFLOP/s" in text and "% peak" in text and "conv #" in text


def test_bench_artifact_and_onnx(work):
    _, onnx_path, art = work
    for target in (art, onnx_path):
        p = run("bench", target, "--threads", "1", "--rounds", "2", "--torch-model", "cli_models:small_cnn")
        for engine in ("convpipe", "onnxruntime", "pytorch"):
            assert engine in p.stdout
        assert "speed-up" in p.stdout
    p = run("bench", onnx_path, "--schedule", "direct,im2col", "--threads", "1", "--rounds", "1")
    assert "convpipe[direct]" in p.stdout and "convpipe[im2col]" in p.stdout and "onnxruntime" in p.stdout
    user_error(run("bench", art, "--schedule", "direct", ok=False), "--schedule/--layout/--target/--arch apply when benchmarking an .onnx")
    user_error(run("bench", art, "--target", "cuda", ok=False), "apply when benchmarking an .onnx")


# ---- bad input -------------------------------------------------------------------------------------------
def test_errors_missing_and_corrupt_files(work, tmp_path):
    _, onnx_path, art = work
    user_error(run("compile", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "a"), ok=False), "nope.onnx: no such file")
    data = open(onnx_path, "rb").read()
    (tmp_path / "trunc.onnx").write_bytes(data[: len(data) // 3])
    user_error(run("compile", str(tmp_path / "trunc.onnx"), "-o", str(tmp_path / "a"), ok=False), "trunc.onnx", "not a valid ONNX model")
    assert not (tmp_path / "a").exists()
    user_error(run("run", str(tmp_path / "nope.cpa"), ok=False), "no such artifact")
    user_error(run("export", "nosuchmodel", "-o", str(tmp_path / "x.onnx"), ok=False), "unknown model 'nosuchmodel'")
    user_error(run("export", "cli_models:not_a_module", "-o", str(tmp_path / "x.onnx"), "--input-shape", "1,3,8,8", ok=False), "expected torch.nn.Module")
    user_error(run("compile", onnx_path, "-o", str(tmp_path / "a"), "--target", "riscv", ok=False), "unknown target 'riscv'")


def test_errors_unsupported_op_and_dynamic_dim(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    bad = str(tmp_path / "det.onnx")
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Det", ["x"], ["y"], name="det0")], "g", [x], [y]),
                                opset_imports=[helper.make_opsetid("", 17)], ir_version=10), bad)
    user_error(run("compile", bad, "-o", str(tmp_path / "a"), ok=False), "node 'det0'", "op 'Det'")
    dyn = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 3])
    dpath = str(tmp_path / "dyn.onnx")
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [dyn],
                                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 3])]),
                                opset_imports=[helper.make_opsetid("", 17)], ir_version=10), dpath)
    user_error(run("compile", dpath, "-o", str(tmp_path / "a"), ok=False), "input 'x' axis 0 is dynamic ('batch')", "--input-shape")
    run("compile", dpath, "-o", str(tmp_path / "a"), "--input-shape", "x=4,3,3", "-q")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")], "no temporary directories left behind"


def test_errors_at_run_time(work, tmp_path):
    d, onnx_path, art = work
    np.save(tmp_path / "bad_shape.npy", np.zeros((1, 3, 20, 17), "float32"))
    np.save(tmp_path / "bad_dtype.npy", np.zeros((1, 3, 20, 18), "float64"))
    user_error(run("run", art, "--input", f"image={d / 'x.npy'}", ok=False), "unexpected input(s) ['image']")
    user_error(run("run", art, "--input", f"input={tmp_path / 'bad_shape.npy'}", ok=False), "input 'input': expected shape [1, 3, 20, 18], got [1, 3, 20, 17]")
    user_error(run("run", art, "--input", f"input={tmp_path / 'bad_dtype.npy'}", ok=False), "expected dtype float32, got float64")
    user_error(run("run", art, "--input", f"input={tmp_path / 'none.npy'}", ok=False), "none.npy: no such file")
    user_error(run("verify", art, onnx_path, "--input", f"input={tmp_path / 'bad_shape.npy'}", ok=False), "expected shape")


def test_errors_tampered_artifact(work, tmp_path):
    import shutil

    _, _, art = work
    bad = str(tmp_path / "t.cpa")
    shutil.copytree(art, bad)
    with open(os.path.join(bad, "model.so"), "ab") as f:
        f.write(b"tampered")
    user_error(run("run", bad, ok=False), "sha256", "disagrees with the manifest")
    os.remove(os.path.join(bad, "manifest.json"))
    user_error(run("inspect", bad, ok=False), "manifest.json is missing")


def test_traceback_shows_the_original_exception(tmp_path):
    """``--traceback`` on a user error shows the exception that caused it (here onnx's DecodeError), which the
    one-line message leaves out (raised ``from None``)."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\\x08\\x07garbage that is not protobuf \\xff\\xff")
    p = run("--traceback", "compile", str(bad), "-o", str(tmp_path / "o.cpa"), ok=False)
    assert p.returncode != 0
    assert "During handling of the above exception, another exception occurred" in p.stderr, p.stderr
    assert "ConvpipeError" in p.stderr and "not a valid ONNX model" in p.stderr
    user_error(run("compile", str(bad), "-o", str(tmp_path / "o.cpa"), ok=False), "not a valid ONNX model")


def test_presentation_lives_in_report():
    """Issue 13: every table and report is in :mod:`convpipe.report` (light to import: no torch, onnx, TVM or
    rich); the compiler's modules print no tables and import nothing from the CLI; demo's verdict is plain text
    with a style, not ``[green]`` markup that the CLI's markup-free console would print literally."""
    import io
    import types

    from rich.console import Console

    code = ("import sys, convpipe.report, convpipe.cli; "
            "print([m for m in ('torch', 'onnx', 'tvm', 'rich') if m in sys.modules])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    root = os.path.dirname(HERE)
    for name in sorted(os.listdir(os.path.join(root, "compiler"))):
        if name.endswith(".py"):
            src = open(os.path.join(root, "compiler", name)).read()
            assert "convpipe.cli" not in src and "rich" not in src, f"compiler/{name}: presentation belongs in convpipe.report"

    from convpipe import report

    out = io.StringIO()
    con = Console(file=out, width=150, markup=False, highlight=False)
    check = types.SimpleNamespace(name="y", shape=(1, 2), max_abs=1e-7, max_rel=2e-7, ok=True)
    res = types.SimpleNamespace(name="m", onnx_path="m.onnx", artifact="m.cpa", seconds={"import": 0.5, "build": 1.25},
                                manifest={"conv2d": [], "target": {"isa": "avx2"}}, checks=[check], rtol=1e-3,
                                atol=1e-4, torch_max_abs=3e-7, top5=[1, 2, 3, 4, 5], threads=1, ok=True,
                                bench={"convpipe": {"median_ms": 1.0, "min_ms": 0.9, "max_ms": 1.1},
                                       "onnxruntime": {"median_ms": 2.0, "min_ms": 1.9, "max_ms": 2.1}})
    assert report.print_demo(con, [res]) is True
    text = out.getvalue()
    for line in ("compiled m.onnx -> m.cpa (import 0.5s, build 1.2s)", "0 conv2d layers", "max abs err",
                 "max abs error vs PyTorch eager: 3.000e-07", "top-5 class ids on the photo (untrained classifier head): "
                 "[1, 2, 3, 4, 5]", "convpipe speed-up", "2.00x"):
        assert line in text, (line, text)
    assert text.rstrip().endswith("demo: every verification passed") and "[green]" not in text
