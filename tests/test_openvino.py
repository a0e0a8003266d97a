"""OpenVINO as an anchor of ``convpipe bench`` (issue 11): :func:`convpipe.compiler.bench.openvino_runner` computes
what onnxruntime computes, in fp32 (this machine's default may be bf16: ~3e-3 off), with the bench's settings; the
bench prints an ``openvino`` row checked against onnxruntime; without the package it says ``openvino: not
installed`` and still times the rest. Correctness only: nothing here is timed."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import CONVPIPE

from convpipe.compiler.bench import OPENVINO_NOT_INSTALLED, check_against, openvino_available, openvino_runner
from convpipe.errors import ConvpipeError

needs_openvino = pytest.mark.skipif(not openvino_available(), reason="openvino is not installed")


def small_onnx(path: str, batch: int | str = 1) -> str:
    """Conv(3->8, 3x3, bias) -> Relu -> two outputs: Conv(8->16, 3x3, stride 2) ``y`` and the Relu itself ``r``;
    input ``x`` (batch, 3, 16, 16) float32, ``batch`` a symbolic dim when a string."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((8, 3, 3, 3)) / 5).astype(np.float32)
    b1 = rng.standard_normal(8).astype(np.float32)
    w2 = (rng.standard_normal((16, 8, 3, 3)) / 8).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 16, 8, 8]),
         helper.make_tensor_value_info("r", TensorProto.FLOAT, [batch, 8, 16, 16])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


@needs_openvino
@pytest.mark.parametrize("batch", [1, "N"])
def test_runner_matches_onnxruntime_in_fp32(tmp_path, batch):
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    from convpipe.compiler.verify import run_onnxruntime

    path = small_onnx(str(tmp_path / "small.onnx"), batch)
    x = np.random.default_rng(1).standard_normal((2 if batch == "N" else 1, 3, 16, 16)).astype(np.float32)
    run = openvino_runner(path, {"x": x}, threads=1)
    ref = run_onnxruntime(path, {"x": x})
    out = {k: v.copy() for k, v in run().items()}
    assert run.output_names == ["y", "r"] and list(out) == ["y", "r"], out.keys()
    for name, r in ref.items():
        assert out[name].shape == r.shape and out[name].dtype == np.float32, (name, out[name].shape, r.shape)
        err = float(np.abs(out[name].astype(np.float64) - r).max() / np.abs(r).max())
        assert err <= 1e-5, f"{name}: max rel err {err:.2e} (bf16 would give ~3e-3)"
    chk = check_against(out, ref)
    assert chk["within"] and chk["max_rel_err"] <= 1e-5, chk
    # the settings the bench promises, read back from the compiled model
    cm = run.compiled
    assert cm.get_property(hints.inference_precision) == ov.Type.f32
    assert str(cm.get_property(hints.performance_mode)).rsplit(".", 1)[-1] == "LATENCY"  # a str on a CompiledModel
    assert int(cm.get_property(props.inference_num_threads)) == 1 == run.threads
    assert cm.get_property(hints.enable_cpu_pinning) is False
    assert cm.get_property(hints.enable_hyper_threading) is False  # 1 thread: never a hyper-thread sibling
    # the request is reused: a second call gives the same result
    again = run()
    assert all(np.array_equal(again[k], out[k]) for k in out)


@needs_openvino
def test_runner_errors(tmp_path):
    path = small_onnx(str(tmp_path / "small.onnx"))
    x = np.zeros((1, 3, 16, 16), np.float32)
    with pytest.raises(ConvpipeError, match=r"inputs given \['input'\], the model's are \['x'\]"):
        openvino_runner(path, {"input": x}, 1)
    with pytest.raises(ConvpipeError, match="threads must be at least 1"):
        openvino_runner(path, {"x": x}, 0)
    with pytest.raises(ConvpipeError, match="OpenVINO cannot reshape"):
        openvino_runner(path, {"x": np.zeros((1, 3, 16), np.float32)}, 1)
    with pytest.raises(ConvpipeError, match="nope.onnx: OpenVINO cannot read it"):
        openvino_runner(str(tmp_path / "nope.onnx"), {"x": x}, 1)
    # a check against a reference with another output is an error, not a silent pass
    with pytest.raises(ConvpipeError, match="missing"):
        check_against({"y": np.zeros(2)}, {"z": np.zeros(2)})
    assert not check_against({"y": np.array([1.0, 2.0])}, {"y": np.array([1.0, 2.1])})["within"]


def test_absent_openvino(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # "import openvino" now raises ImportError
    assert not openvino_available()
    path = small_onnx(str(tmp_path / "small.onnx"))
    with pytest.raises(ConvpipeError, match=f"openvino: {OPENVINO_NOT_INSTALLED}"):
        openvino_runner(path, {"x": np.zeros((1, 3, 16, 16), np.float32)}, 1)


def test_bench_table_checked_and_skipped_engines():
    from rich.console import Console

    from convpipe.report import bench_table

    t = {"median_ms": 1.0, "min_ms": 0.9, "max_ms": 1.2, "runs": 7}
    res = {"convpipe": t, "onnxruntime": dict(t, median_ms=2.0),
           "openvino": dict(t, median_ms=0.5, max_rel_err=3e-3, within=False, tolerance="0.0001 x max|ref| + 1e-05")}
    con = Console(width=200, record=True)
    con.print(bench_table(res, "t"))
    text = con.export_text()
    row = next(ln for ln in text.splitlines() if ln.lstrip("│ ").startswith("openvino"))
    assert "0.500" in row and "0.50x" in row and "3.0e-03 MISMATCH" in row, text
    assert "max rel err vs onnxruntime" in text and "MISMATCH beyond 0.0001 x max|ref| + 1e-05" in text, text
    con = Console(width=200, record=True)
    con.print(bench_table({"convpipe": t, "onnxruntime": t, "openvino": {"skipped": OPENVINO_NOT_INSTALLED}}, "t"))
    text = con.export_text()
    assert "openvino: not installed" in text and "max rel err" not in text, text
    assert not [ln for ln in text.splitlines() if ln.lstrip("│ ").startswith("openvino ")], text


def _openvino_row(stdout: str) -> str | None:
    rows = [ln for ln in stdout.splitlines() if re.match(r"^│\s*openvino\s*│", ln)]
    assert len(rows) <= 1, stdout
    return rows[0] if rows else None


@needs_openvino
def test_cli_bench_prints_openvino_row(tmp_path):
    path = small_onnx(str(tmp_path / "small.onnx"))
    p = subprocess.run([CONVPIPE, "bench", path, "--threads", "1", "--rounds", "1"], capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, (p.stdout, p.stderr)
    row = _openvino_row(p.stdout)
    assert row is not None, p.stdout
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[0] == "openvino" and float(cells[1]) > 0 and cells[4].endswith("x"), cells
    assert "MISMATCH" not in cells[5] and float(cells[5].split()[0]) <= 1e-5, cells  # max rel err vs onnxruntime, fp32
    names = [re.match(r"^│\s*(\S+)", ln).group(1) for ln in p.stdout.splitlines() if re.match(r"^│\s*\S", ln)]
    assert names == ["convpipe", "onnxruntime", "openvino"], p.stdout
    assert "not installed" not in p.stdout


@pytest.mark.parametrize("case", ["absent", "fails"])
def test_cli_bench_without_openvino(tmp_path, case):
    """The package made unimportable in the CLI's process, or OpenVINO failing on the model: the bench still runs
    (exit 0), has no openvino row and says why."""
    path = small_onnx(str(tmp_path / "small.onnx"))
    patch = {
        "absent": "sys.modules['openvino'] = None",
        "fails": ("import convpipe.compiler.bench as b\nfrom convpipe.errors import ConvpipeError\n"
                  "def boom(*a, **k):\n    raise ConvpipeError('m.onnx: OpenVINO cannot compile it: no such op')\n"
                  "b.openvino_runner = boom"),
    }[case]
    code = (f"import sys\n{patch}\nfrom convpipe.cli import main\n"
            f"sys.exit(main(['bench', {path!r}, '--threads', '1', '--rounds', '1']))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout, p.stderr)
    why = {"absent": "openvino: not installed",
           "fails": "openvino: failed: m.onnx: OpenVINO cannot compile it: no such op"}[case]
    assert why in " ".join(p.stdout.split()), p.stdout
    assert _openvino_row(p.stdout) is None and "onnxruntime" in p.stdout, p.stdout
