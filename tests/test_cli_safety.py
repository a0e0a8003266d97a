"""The CLI as a careless or hostile user meets it (issue 14): it never destroys a user's files, never runs code a
file names, cleans up after SIGTERM/SIGKILL, refuses impossible shapes and bad output locations with one line,
and ``verify``'s comparison (the oracle of most model-level tests) treats NaN and infinities correctly."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest

from conftest import CONVPIPE, user_error

HERE = os.path.dirname(os.path.abspath(__file__))


def run(*args, cwd=None, env=None, ok=True):
    env = dict(os.environ, **(env or {}))
    env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([CONVPIPE, *args], capture_output=True, text=True, timeout=600, cwd=cwd, env=env)
    if ok and p.returncode != 0:
        pytest.fail(f"convpipe {' '.join(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def tiny_onnx(path, shape=(1, 3, 8, 8), dtype="float32", metadata=None, input_name="input"):
    """Conv 3->4 (3x3, pad 1) -> Relu, seeded weights; optional ``metadata_props``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    et = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "float64": TensorProto.DOUBLE}[dtype]
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, shape[1], 3, 3)).astype(dtype), "w")
    nodes = [helper.make_node("Conv", [input_name, "w"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3], name="conv0"),
             helper.make_node("Relu", ["c"], ["output"], name="relu0")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info(input_name, et, list(shape))],
                              [helper.make_tensor_value_info("output", et, [shape[0], 4, *shape[2:]])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("safety")
    onnx_path = tiny_onnx(d / "tiny.onnx")
    art = str(d / "tiny.cpa")
    run("compile", onnx_path, "-o", art, "-q")
    return d, onnx_path, art


def tree(d) -> dict[str, bytes]:
    """Every file below ``d`` with its contents (for 'nothing else was touched')."""
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, d)] = open(p, "rb").read()
    return out


# ---- 1. data loss ----------------------------------------------------------------------------------------------
def test_compile_never_replaces_a_directory_that_is_not_an_artifact(tiny, tmp_path):
    _, onnx_path, _ = tiny
    user = tmp_path / "userdata"
    user.mkdir()
    (user / "thesis.txt").write_text("precious")
    user_error(run("compile", onnx_path, "-o", str(user), "-q", ok=False), "userdata", "not a convpipe artifact")
    assert (user / "thesis.txt").read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == ["userdata"], "no temporaries left beside it"


def test_compile_never_replaces_the_working_directory_or_the_models_folder(tiny, tmp_path):
    _, onnx_path, _ = tiny
    proj = tmp_path / "project"
    proj.mkdir()
    model = proj / "tiny.onnx"
    model.write_bytes(open(onnx_path, "rb").read())
    (proj / "notes.txt").write_text("keep me")
    before = tree(tmp_path)
    user_error(run("compile", "tiny.onnx", "-o", ".", "-q", cwd=proj, ok=False), "working directory")
    user_error(run("compile", "tiny.onnx", "-o", "..", "-q", cwd=proj, ok=False), "working directory")
    user_error(run("compile", str(model), "-o", str(proj), "-q", ok=False), "source model")
    assert tree(tmp_path) == before
    # a directory that looks like an artifact but holds the model is not replaced either
    (proj / "manifest.json").write_text(json.dumps({"format": 1, "convpipe_version": "0.1.0"}))
    user_error(run("compile", str(model), "-o", str(proj), "-q", ok=False), "source model")
    assert model.exists() and (proj / "notes.txt").exists()


def test_compile_replaces_only_a_pure_artifact_or_an_empty_directory(tiny, tmp_path):
    _, onnx_path, _ = tiny
    art = tmp_path / "a.cpa"
    run("compile", onnx_path, "-o", str(art), "-q")
    first = json.load(open(art / "manifest.json"))["created"]
    run("compile", onnx_path, "-o", str(art), "-q")  # an artifact: replaced
    assert (art / "manifest.json").exists() and (art / "model.so").exists() and first
    (art / "mine.txt").write_text("mine")
    user_error(run("compile", onnx_path, "-o", str(art), "-q", ok=False), "also holds other files (mine.txt)")
    assert (art / "mine.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    run("compile", onnx_path, "-o", str(empty), "-q")
    assert sorted(os.listdir(empty)) == ["manifest.json", "model.so"]
    f = tmp_path / "file.cpa"
    f.write_text("a file")
    user_error(run("compile", onnx_path, "-o", str(f), "-q", ok=False), "not a directory")
    assert f.read_text() == "a file"


def test_artifact_directory_mode_follows_the_umask(tiny):
    _, _, art = tiny
    mode = stat.S_IMODE(os.stat(art).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o777 & ~umask, oct(mode)


# ---- 2. code execution from a model file ----------------------------------------------------------------------
def test_bench_never_runs_code_named_by_a_model_file(tiny, tmp_path):
    marker = tmp_path / "pwned"
    evil = tiny_onnx(tmp_path / "evil.onnx", metadata={"convpipe.source": "hostile_factory:pwned"})
    art = str(tmp_path / "evil.cpa")
    run("compile", evil, "-o", art, "-q")
    env = {"CONVPIPE_PWNED_MARKER": str(marker)}
    for target in (evil, art):  # the .onnx's metadata, and the artifact's source_onnx.file pointing at it
        p = run("bench", target, "--threads", "1", "--rounds", "1", env=env)
        assert not marker.exists(), f"bench {target} ran code named in the model's metadata"
        assert "onnxruntime" in p.stdout and "pytorch" not in p.stdout
    # only the command line may name a factory
    p = run("bench", art, "--threads", "1", "--rounds", "1", "--torch-model", "hostile_factory:pwned", env=env, ok=False)
    assert marker.exists() and p.returncode != 0


# ---- 6. impossible shapes --------------------------------------------------------------------------------------
def test_compile_refuses_tensors_larger_than_memory(tiny, tmp_path):
    _, onnx_path, _ = tiny
    dynamic = tiny_onnx(tmp_path / "dyn.onnx", shape=(1, 3, "H", "W"))
    p = run("compile", dynamic, "-o", str(tmp_path / "huge.cpa"), "--input-shape", "input=1,3,100000,100000",
            ok=False)
    user_error(p, "input 'input'", "[1, 3, 100000, 100000]", "GiB", "--max-memory")
    p = run("compile", onnx_path, "-o", str(tmp_path / "small.cpa"), "--max-memory", "512", "-q", ok=False)
    user_error(p, "input 'input' of shape [1, 3, 8, 8] needs 768 B, over the limit of 512 B")
    run("compile", onnx_path, "-o", str(tmp_path / "ok.cpa"), "--max-memory", "1M", "-q")
    assert sorted(os.listdir(tmp_path)) == ["dyn.onnx", "ok.cpa"]
    user_error(run("compile", onnx_path, "-o", str(tmp_path / "x"), "--max-memory", "lots", ok=False), "--max-memory")


# ---- 7. killed compiles ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_export_removes_partial_output(tiny, tmp_path, monkeypatch, signum, code):
    """A real SIGTERM/SIGINT delivered while the library is being written: exit 143/130, nothing left beside the
    output, nothing left in $TMPDIR, an existing artifact untouched."""
    import tempfile

    from convpipe import cli
    from convpipe.compiler import build

    _, onnx_path, _ = tiny
    art = tmp_path / "out" / "t.cpa"
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmpdir"))
    (tmp_path / "tmpdir").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert cli.main(["compile", onnx_path, "-o", str(art), "-q"]) == 0
    old = tree(art)
    real_export = build.export_library

    def export_then_terminated(*args, **kwargs):
        real_export(*args, **kwargs)
        os.kill(os.getpid(), signum)  # handled in the main thread: the CLI's SIGTERM handler, Python's SIGINT one

    monkeypatch.setattr(build, "export_library", export_then_terminated)
    assert cli.main(["compile", onnx_path, "-o", str(art), "-q"]) == code
    assert os.listdir(tmp_path / "out") == ["t.cpa"], "no temporary directory left"
    assert tree(art) == old, "the existing artifact is untouched"
    left = [n for n in os.listdir(tmp_path / "tmpdir") if n != ".ses"]  # .ses: onnxruntime's session-id file
    assert left == [], "TVM's intermediate objects are not left in $TMPDIR"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_next_compile_removes_temporaries_of_killed_runs(tiny, tmp_path):
    _, onnx_path, _ = tiny
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale_dir = tmp_path / f".x.cpa.tmp-{dead.pid}-abc123"
    stale_dir.mkdir()
    (stale_dir / "model.so").write_bytes(b"half")
    stale_old = tmp_path / f".y.cpa.old-{dead.pid}-zz9"
    stale_old.mkdir()
    stale_file = tmp_path / f".m.onnx.tmp-{dead.pid}-q1w2e3"
    stale_file.write_bytes(b"half")
    live = tmp_path / f".z.cpa.tmp-{os.getpid()}-live"  # a running process's: kept
    live.mkdir()
    mine = tmp_path / ".hidden.tmp-notours"  # not our naming: kept
    mine.mkdir()
    run("compile", onnx_path, "-o", str(tmp_path / "a.cpa"), "-q")
    assert sorted(os.listdir(tmp_path)) == sorted([".hidden.tmp-notours", live.name, "a.cpa"])


def test_sigkill_during_export_leaves_nothing_a_later_compile_keeps(tmp_path):
    """SIGKILL cannot be handled: the export's temporary file is removed by the next run."""
    code = ("import os, signal; from convpipe.compiler import output; "
            f"output.temporary_file_beside(os.path.join({str(tmp_path)!r}, 'm.onnx')); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    p = subprocess.run([sys.executable, "-c", code])
    assert p.returncode == -signal.SIGKILL
    assert [n for n in os.listdir(tmp_path) if n.startswith(".m.onnx.tmp-")]
    run("export", "cli_models:small_cnn", "-o", str(tmp_path / "m.onnx"), "--input-shape", "1,3,8,8")
    assert os.listdir(tmp_path) == ["m.onnx"]


# ---- 9. bad output locations ----------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["/proc/x.cpa", "/sys/x.cpa", "MODEL/sub.cpa", "/proc/new/dir/x.cpa"])
def test_bad_output_locations_are_one_line(tiny, where):
    _, onnx_path, _ = tiny
    dest = where.replace("MODEL", onnx_path)
    user_error(run("compile", onnx_path, "-o", dest, "-q", ok=False), dest)


def test_export_to_a_bad_location_is_one_line(tmp_path):
    user_error(run("export", "cli_models:small_cnn", "-o", "/proc/x.onnx", "--input-shape", "1,3,8,8", ok=False),
               "/proc/x.onnx")
    user_error(run("export", "cli_models:small_cnn", "-o", str(tmp_path), "--input-shape", "1,3,8,8", ok=False),
               "is a directory")


# ---- 10. verify against another model -------------------------------------------------------------------------
def test_verify_against_a_model_with_other_inputs_is_a_user_error(tiny, tmp_path):
    _, _, art = tiny
    renamed = tiny_onnx(tmp_path / "renamed.onnx", input_name="image")
    user_error(run("verify", art, renamed, ok=False), "renamed.onnx", "input 'image'", "the artifact has input 'input'")
    bigger = tiny_onnx(tmp_path / "bigger.onnx", shape=(1, 3, 16, 16))
    user_error(run("verify", art, bigger, ok=False), "the ONNX has shape [1, 3, 16, 16], the artifact [1, 3, 8, 8]")


# ---- 11. small ones -------------------------------------------------------------------------------------------
def test_paths_with_brackets_are_printed_as_they_are(tiny, tmp_path):
    _, onnx_path, _ = tiny
    art = str(tmp_path / "art[v2][/bold].cpa")
    p = run("compile", onnx_path, "-o", art)
    assert "art[v2][/bold].cpa" in p.stdout
    p = run("inspect", art)
    assert "art[v2][/bold].cpa" in p.stdout and "1 conv2d layers" in p.stdout


def test_an_input_given_twice_is_refused(tiny):
    d, _, art = tiny
    x = d / "x.npy"
    np.save(x, np.zeros((1, 3, 8, 8), "float32"))
    user_error(run("run", art, "--input", f"input={x}", "--input", f"input={x}", ok=False), "--input input", "more than once")


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_non_float32_conv_names_the_file_and_node(tmp_path, dtype):
    path = tiny_onnx(tmp_path / f"{dtype}.onnx", dtype=dtype)
    user_error(run("compile", path, "-o", str(tmp_path / "a.cpa"), ok=False), f"{dtype}.onnx", "node 'conv0'", dtype,
               "float32 convolutions only")


# ---- 12. pinning the library's sha256 from outside ------------------------------------------------------------
def test_expect_sha256(tiny):
    _, onnx_path, art = tiny
    sha = json.load(open(os.path.join(art, "manifest.json")))["library"]["sha256"]
    run("run", art, "--expect-sha256", sha)
    user_error(run("run", art, "--expect-sha256", "0" * 64, ok=False), "sha256")
    user_error(run("verify", art, onnx_path, "--expect-sha256", "ab" * 32, ok=False), "sha256")


# ---- verify's comparison --------------------------------------------------------------------------------------
def test_compare_non_finite_values():
    from convpipe.compiler.verify import compare

    inf, nan = np.float32(np.inf), np.float32(np.nan)
    ref = {"y": np.array([1.0, inf, -inf, nan], "float32")}
    (c,) = compare({"y": ref["y"].copy()}, ref, 1e-3, 1e-4)
    assert c.ok and c.max_abs == 0.0, "identical infinities and NaN in both match"
    for bad in ([1.0, inf, -inf, 0.0],      # NaN in the reference only
                [nan, inf, -inf, nan],      # NaN in ours only
                [1.0, -inf, -inf, nan],     # the other infinity
                [1.0, 3e38, -inf, nan]):    # finite where the reference is infinite
        (c,) = compare({"y": np.array(bad, "float32")}, ref, 1e-3, 1e-4)
        assert not c.ok, bad
    (c,) = compare({"y": np.array([1.001, inf, -inf, nan], "float32")}, ref, 1e-3, 1e-4)
    assert c.ok and 0 < c.max_abs < 2e-3
    (c,) = compare({"y": np.array([1.1, inf, -inf, nan], "float32")}, ref, 1e-3, 1e-4)
    assert not c.ok and c.max_abs == pytest.approx(0.1, rel=1e-5)


def test_compare_refuses_nothing_to_compare():
    from convpipe.compiler.verify import compare
    from convpipe.errors import ConvpipeError

    with pytest.raises(ConvpipeError, match="no outputs"):
        compare({}, {}, 1e-3, 1e-4)
    with pytest.raises(ConvpipeError, match="missing"):
        compare({}, {"y": np.zeros(2, "float32")}, 1e-3, 1e-4)
    with pytest.raises(ConvpipeError, match="shape"):
        compare({"y": np.zeros(3, "float32")}, {"y": np.zeros(2, "float32")}, 1e-3, 1e-4)
    (c,) = compare({"y": np.zeros((0, 4), "float32")}, {"y": np.zeros((0, 4), "float32")}, 1e-3, 1e-4)
    assert c.ok


def test_user_errors_keep_their_cause(tmp_path):
    """Issue 13: a user error that rewords an OS or onnxruntime error chains it (``raise ... from e``), so a
    traceback (the API's, or the CLI's ``--traceback``) shows the original error with the paths it names; the
    one-line message is unchanged."""
    from convpipe.compiler.output import write_file_atomically
    from convpipe.compiler.verify import run_onnxruntime
    from convpipe.errors import ConvpipeError

    with pytest.raises(ConvpipeError, match=r"^-o /proc/x\.bin: cannot write there: ") as e:
        write_file_atomically("/proc/x.bin", b"x")
    assert isinstance(e.value.__cause__, OSError)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(ConvpipeError, match="onnxruntime cannot load it") as e:
        run_onnxruntime(str(bad), {})
    assert e.value.__cause__ is not None
