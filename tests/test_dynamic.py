"""Variable input sizes in one artifact (issue 16): ``--input-shape`` ranges ``LO..HI`` and ``--buckets``.

An artifact holds one exact-shape build per bucket (the fixed-shape pipeline) and one generic build with symbolic
dims; the runtime picks the bucket of exactly the input's shape, else the generic build. Checked here against
onnxruntime at bucket and non-bucket sizes for three small nets exported with ``dynamic_axes`` (a fully
convolutional net, a CRNN-style OCR head with variable width, a global-average-pool classifier), plus the errors
(out of range, wrong rank, a non-bucket shape without a generic build), ``inspect``, the CLI, the API form and
old fixed-shape artifacts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import convpipe
import convpipe.runtime as rt
from convpipe.compiler.build import compile_model
from convpipe.compiler.verify import run_onnxruntime
from convpipe.errors import ConvpipeError
from convpipe.runtime.artifact import manifest_problems

from conftest import cli, user_error

TOL = (1e-4, 1e-5)  # max|ours - ref| <= 1e-4 * max|ref| + 1e-5


class FCN(torch.nn.Module):
    """Convs with padding + ReLU and a stride-2 conv: the output's spatial size follows the input's."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.c3 = torch.nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))


class OCR(torch.nn.Module):
    """CRNN-style: H fixed at 32, W variable; conv + pool, then [N, C, H', W'] -> [N, W', C*H'] and a linear head."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(16 * 8, 10)

    def forward(self, x):
        y = self.pool(torch.relu(self.c2(self.pool(torch.relu(self.c1(x))))))
        n, c, h, w = y.shape
        return self.fc(y.permute(0, 3, 1, 2).reshape(n, w, c * h))


class CLS(torch.nn.Module):
    """A classifier with global average pooling (output shape independent of the input size)."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3)))


#: name -> (net, export shape, dynamic axes, --input-shape ranges, buckets, sizes to run (buckets and others))
NETS = {
    "fcn": (FCN, (1, 3, 32, 32), {2: "h", 3: "w"}, (1, 3, (16, 80), (16, 80)),
            [(1, 3, 32, 32), (1, 3, 48, 64)], [(1, 3, 32, 32), (1, 3, 48, 64), (1, 3, 16, 16), (1, 3, 37, 80),
                                               (1, 3, 80, 17)]),
    "ocr": (OCR, (1, 1, 32, 64), {3: "w"}, (1, 1, 32, (16, 160)),
            [(1, 1, 32, 64)], [(1, 1, 32, 64), (1, 1, 32, 16), (1, 1, 32, 100), (1, 1, 32, 160), (1, 1, 32, 45)]),
    "cls": (CLS, (1, 3, 32, 32), {0: "n", 2: "h", 3: "w"}, ((1, 2), 3, (16, 64), (16, 64)),
            [(1, 3, 32, 32)], [(1, 3, 32, 32), (2, 3, 32, 32), (1, 3, 16, 64), (2, 3, 63, 21)]),
}


def _export(name: str, path: str) -> str:
    cls, shape, axes = NETS[name][:3]
    torch.manual_seed(0)
    net = cls().eval()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(*shape),), path, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": axes}, opset_version=17, dynamo=False)
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("dynamic")


@pytest.fixture(scope="module")
def onnx_files(work):
    return {name: _export(name, str(work / f"{name}.onnx")) for name in NETS}


@pytest.fixture(scope="module")
def artifacts(work, onnx_files):
    out = {}
    for name, (_, _, _, ranges, buckets, _) in NETS.items():
        res = compile_model(onnx_files[name], str(work / f"{name}.cpa"), "x86", input_shapes={"x": ranges},
                            buckets=[{"x": b} for b in buckets])
        out[name] = res.path
    return out


def _close(ours: np.ndarray, ref: np.ndarray) -> bool:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return ours.shape == ref.shape and np.abs(ours - ref).max() <= TOL[0] * np.abs(ref).max() + TOL[1]


@pytest.mark.parametrize("name", list(NETS))
def test_sizes_match_onnxruntime(name, artifacts, onnx_files):
    """Every size in range runs and matches onnxruntime: bucket shapes on their bucket build, others on the
    generic build; the output's size follows the input's."""
    m = rt.load(artifacts[name])
    buckets = NETS[name][4]
    kinds = set()
    for k, shape in enumerate(NETS[name][5]):
        x = np.random.default_rng(k).standard_normal(shape).astype(np.float32)
        build = m.select([shape])
        assert build.kind == ("bucket" if shape in buckets else "generic"), (shape, build.name)
        kinds.add(build.kind)
        ours = m.run({"x": x})["y"]
        ref = run_onnxruntime(onnx_files[name], {"x": x})["y"]
        assert _close(ours, ref), (name, shape, ours.shape, ref.shape, float(np.abs(ours - ref).max()))
    assert kinds == {"bucket", "generic"}


def test_out_of_range_and_wrong_rank(artifacts):
    m = rt.load(artifacts["fcn"])
    with pytest.raises(ConvpipeError, match=r"input 'x' axis 2: expected a size in 16\.\.80, got 8"):
        m.run({"x": np.zeros((1, 3, 8, 32), np.float32)})
    with pytest.raises(ConvpipeError, match=r"input 'x' axis 3: expected a size in 16\.\.80, got 81"):
        m.run([np.zeros((1, 3, 32, 81), np.float32)])
    with pytest.raises(ConvpipeError, match=r"input 'x' axis 1: expected 3, got 4"):
        m.run({"x": np.zeros((1, 4, 32, 32), np.float32)})
    with pytest.raises(ConvpipeError, match=r"input 'x': expected rank 4 \(shape \[1, 3, 16\.\.80, 16\.\.80\]\), got "
                                            r"rank 3"):
        m.run({"x": np.zeros((3, 32, 32), np.float32)})
    with pytest.raises(ConvpipeError, match="expected dtype float32"):
        m.run({"x": np.zeros((1, 3, 32, 32), np.float64)})
    with pytest.raises(ConvpipeError, match=r"axis 2: expected a size in 16\.\.80, got 99"):
        m.run_tensors([torch.zeros(1, 3, 99, 32)])
    # DLPack tensors at a non-bucket size go through the generic build
    x = torch.randn(1, 3, 20, 28)
    got = torch.from_dlpack(m.run_tensors([x])[0])
    assert tuple(got.shape) == (1, 4, 10, 14)
    assert _close(got.numpy(), m.run({"x": x.numpy()})["y"])


def test_manifest_records_ranges_and_builds(artifacts):
    man = rt.read_manifest(artifacts["fcn"])
    dyn = man["dynamic"]
    assert dyn["inputs"] == [{"name": "x", "dims": [1, 3, [16, 80], [16, 80]], "dtype": "float32"}]
    builds = {b["name"]: b for b in dyn["builds"]}
    assert [b["kind"] for b in dyn["builds"]] == ["bucket", "bucket", "generic"]
    assert builds["default"]["library"]["file"] == man["library"]["file"] == "model.so"
    assert builds["default"]["inputs"][0]["shape"] == [1, 3, 32, 32] == man["inputs"][0]["shape"]
    assert man["conv2d"] and man["conv2d"] == builds["default"]["conv2d"]  # the default build: our schedules
    generic = builds["generic"]
    assert generic["conv2d"] == [] and generic["layout"] == "NCHW"
    assert generic["outputs"][0]["shape"][:2] == [1, 4] and all(isinstance(d, str) for d in generic["outputs"][0]["shape"][2:])
    stepped = [f for f in generic["fallbacks"] if f["stage"] == "generic"]
    assert sum(f["op"].startswith("conv2d #") for f in stepped) == 3 and any(f["op"] == "model" for f in stepped)
    assert "no_generic" not in dyn
    for b in dyn["builds"]:
        assert os.path.isfile(os.path.join(artifacts["fcn"], b["library"]["file"]))
    assert sorted(os.listdir(artifacts["fcn"])) == ["manifest.json", "model.b1x3x48x64.so", "model.generic.so",
                                                    "model.so"]
    # the schema checks the new fields
    bad = json.loads(json.dumps(man))
    bad["dynamic"]["inputs"][0]["dims"][2] = [80, 16]
    bad["dynamic"]["builds"][0].pop("inputs")
    problems = manifest_problems(bad)
    assert any("dynamic.inputs[0].dims[2]" in p for p in problems), problems
    assert any("dynamic.builds[0].inputs: missing" in p for p in problems), problems


def test_inspect_shows_ranges_and_builds(artifacts):
    p = cli("inspect", artifacts["ocr"])
    out = p.stdout
    assert "variable input sizes: x float32[1, 1, 32, 16..160]" in out, out
    assert "default (bucket, model.so): serves exactly x=[1, 1, 32, 64]" in out, out
    assert "generic (generic, model.generic.so): serves every other shape in range; outputs y [1, w // 4, 10]" in out
    assert "[generic] conv2d #0" in out and "TVM's conv2d legalization" in out, out


def test_cli_compile_run_verify_bench_sizes(work, onnx_files):
    """The CLI forms: ranges and repeated --buckets at compile; run/verify/bench at a size in range
    (--input-shape); errors are one line naming input, axis, range and value."""
    art = str(work / "cli_fcn.cpa")
    p = cli("compile", onnx_files["fcn"], "-o", art, "--input-shape", "x=1,3,16..64,16..64", "--buckets",
            "x=1,3,32,32", "--buckets", "x=1,3,24,40")
    assert "builds (3)" in p.stdout and "Scope" not in p.stderr, (p.stdout, p.stderr)
    p = cli("verify", art, onnx_files["fcn"], "--input-shape", "x=1,3,40,24")
    assert "all outputs match" in p.stdout, p.stdout
    p = cli("verify", art, onnx_files["fcn"], "--input-shape", "1,3,24,40")  # a bucket (bare shape: the input)
    assert "all outputs match" in p.stdout, p.stdout
    p = cli("run", art, "--input-shape", "x=1,3,17,63")
    assert "y: shape=[1, 4, 9, 32]" in p.stdout, p.stdout
    user_error(cli("run", art, "--input-shape", "x=1,3,65,32", check=False), "input 'x' axis 2",
               "16..64", "got 65")
    user_error(cli("run", art, "--input-shape", "x=3,32,32", check=False), "input 'x'", "rank 4", "rank 3")
    p = cli("bench", art, "--input-shape", "x=1,3,20,20", "--rounds", "1", "--threads", "1")
    assert "convpipe" in p.stdout, p.stdout
    user_error(cli("compile", onnx_files["fcn"], "-o", str(work / "bad.cpa"), "--input-shape", "x=1,3,16..64,16..64",
                   "--buckets", "x=1,3,32,128", check=False), "bucket input 'x' axis 3", "16..64", "got 128")
    assert not os.path.exists(work / "bad.cpa")
    user_error(cli("compile", onnx_files["fcn"], "-o", str(work / "bad.cpa"), "--input-shape", "x=1,3,64..16,16",
                   check=False), "64..16", "LO <= HI")
    user_error(cli("compile", onnx_files["fcn"], "-o", str(work / "bad.cpa"), "--input-shape", "x=1,3..4,32,32",
                   check=False), "axis 1 is static 3", "3..4")


def test_unpinned_dynamic_dim_says_range(onnx_files):
    from convpipe.compiler.importer import load_onnx, resolve_input_dims

    with pytest.raises(ConvpipeError, match=r"input 'x' axis 2 is dynamic \('h'\); give it a size or a range LO\.\.HI"):
        resolve_input_dims(load_onnx(onnx_files["fcn"]), {}, "fcn.onnx")
    assert resolve_input_dims(load_onnx(onnx_files["fcn"]), {"": (1, 3, (8, 9), 5)}) == [
        {"name": "x", "dims": [1, 3, [8, 9], 5], "dtype": "float32"}]


def test_buckets_only_accepts_only_bucket_shapes(work, onnx_files):
    art = str(work / "buckets_only.cpa")
    res = compile_model(onnx_files["ocr"], art, buckets=[{"x": (1, 1, 32, 64)}, {"x": (1, 1, 32, 128)}])
    dyn = res.manifest["dynamic"]
    assert [b["kind"] for b in dyn["builds"]] == ["bucket", "bucket"] and "range" in dyn["no_generic"]
    m = rt.load(art)
    for w in (64, 128):
        x = np.random.default_rng(w).standard_normal((1, 1, 32, w)).astype(np.float32)
        assert _close(m.run({"x": x})["y"], run_onnxruntime(onnx_files["ocr"], {"x": x})["y"])
    with pytest.raises(ConvpipeError, match=r"accepts only its bucket shapes \(x=\[1, 1, 32, 64\] \| "
                                            r"x=\[1, 1, 32, 128\]\): it has no generic build"):
        m.run({"x": np.zeros((1, 1, 32, 100), np.float32)})


def test_no_generic_build_possible_is_said(work, onnx_files):
    """A target without generic builds (CUDA) and no bucket: compile says so and writes nothing."""
    out = str(work / "cuda.cpa")
    with pytest.raises(ConvpipeError, match="no generic .symbolic-shape. build is possible: .*CPU targets only.*"
                                            "--buckets"):
        compile_model(onnx_files["fcn"], out, "cuda", input_shapes={"x": (1, 3, (16, 32), (16, 32))}, arch="sm_90")
    assert not os.path.exists(out)


def test_old_fixed_artifact_loads_unchanged(work, onnx_files):
    art = str(work / "fixed.cpa")
    res = compile_model(onnx_files["fcn"], art, input_shapes={"x": (1, 3, 32, 32)})
    assert "dynamic" not in res.manifest and os.listdir(art) and "model.generic.so" not in os.listdir(art)
    m = rt.load(art)
    assert m.input_dims is None and [b.name for b in m.builds] == ["default"]
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    assert _close(m.run({"x": x})["y"], run_onnxruntime(onnx_files["fcn"], {"x": x})["y"])
    with pytest.raises(ConvpipeError, match=r"input 'x': expected shape \[1, 3, 32, 32\], got \[1, 3, 40, 40\]"):
        m.run({"x": np.zeros((1, 3, 40, 40), np.float32)})
    # a variable-size compile may replace it (and the other way round): the extra libraries count as artifact files
    compile_model(onnx_files["fcn"], art, input_shapes={"x": (1, 3, (16, 32), 32)}, buckets=[{"x": (1, 3, 32, 32)}])
    compile_model(onnx_files["fcn"], art, input_shapes={"x": (1, 3, 32, 32)})
    assert sorted(os.listdir(art)) == ["manifest.json", "model.so"]


def test_api_form(work, onnx_files):
    cm = convpipe.compile(onnx_files["fcn"], input_shapes={"x": (1, 3, (16, 48), (16, 48))},
                          buckets=[{"x": (1, 3, 32, 32)}])
    for shape in ((1, 3, 32, 32), (1, 3, 21, 47)):
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        y = cm(x)
        assert y.shape == (1, 4, (shape[2] + 1) // 2, (shape[3] + 1) // 2)
        assert cm.verify(x).ok
    t = cm(torch.randn(1, 3, 18, 30))
    assert isinstance(t, torch.Tensor) and tuple(t.shape) == (1, 4, 9, 15)
    with pytest.raises(ConvpipeError, match=r"input_shapes\['x'\] axis 2: expected a range \(lo, hi\) with 1 <= lo"):
        convpipe.compile(onnx_files["fcn"], input_shapes={"x": (1, 3, (48, 16), 16)})
    # a module's inputs are named input, input0, ...: another name is refused, naming them (ranges: see below)
    with pytest.raises(ConvpipeError, match=r"\['x'\]: the exported module's inputs are \['input'\]"):
        convpipe.compile(FCN().eval(), torch.randn(1, 3, 16, 16), input_shapes={"x": (1, 3, (16, 32), 16)})


class UP(torch.nn.Module):
    """A stride-2 conv then a bilinear x2 upsample (Resize on a symbolic shape in the generic build)."""

    def __init__(self):
        super().__init__()
        self.c = torch.nn.Conv2d(3, 4, 3, padding=1, stride=2)
        self.up = torch.nn.Upsample(scale_factor=2, mode="bilinear")

    def forward(self, x):
        return self.up(torch.relu(self.c(x)))


def test_generic_only_artifact_with_resize(work):
    """No bucket: the generic build is the default (top-level inputs/outputs at the low end of the range); a
    Resize on a symbolic shape uses TVM's converter, recorded as a fallback, and matches onnxruntime."""
    import warnings

    path = str(work / "up.onnx")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(UP().eval(), (torch.randn(1, 3, 32, 32),), path, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {2: "h", 3: "w"}}, opset_version=17, dynamo=False)
    res = compile_model(path, str(work / "up.cpa"), input_shapes={"x": (1, 3, (16, 48), (16, 48))})
    man = res.manifest
    assert [b["kind"] for b in man["dynamic"]["builds"]] == ["generic"]
    assert man["library"]["file"] == "model.so" and man["inputs"][0]["shape"] == [1, 3, 16, 16]
    assert man["outputs"][0]["shape"] == [1, 4, 16, 16]
    assert any(f["op"].startswith("Resize") and "TVM's Resize" in f["fallback"] for f in man["fallbacks"])
    m = rt.load(res.path)
    for shape in ((1, 3, 16, 16), (1, 3, 33, 47), (1, 3, 48, 48)):
        x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
        assert _close(m.run({"x": x})["y"], run_onnxruntime(path, {"x": x})["y"]), shape


def test_pinning_covers_every_library_of_a_variable_size_artifact(work, onnx_files):
    """``expected_sha256`` must pin what gets loaded. A variable-size artifact loads several libraries; pinning only
    ``model.so`` let a swapped ``model.generic.so`` (with its sha256 rewritten in the manifest) load and run. The pin
    of such an artifact is the digest of all its libraries (:func:`convpipe.runtime.pin_digest`, printed by
    ``inspect``); ``model.so``'s own sha256 is refused for it, and a swapped library is refused before loading."""
    import hashlib
    import json
    import shutil

    from convpipe.runtime import pin_digest, sha256_file

    art = str(work / "pinned.cpa")
    compile_model(onnx_files["fcn"], art, input_shapes={"x": (1, 3, (16, 32), 32)}, buckets=[{"x": (1, 3, 32, 32)}])
    digest = pin_digest(art)
    rt.load(art, expected_sha256=digest)  # the right pin loads
    with pytest.raises(ConvpipeError, match="every library"):
        rt.load(art, expected_sha256=sha256_file(os.path.join(art, "model.so")))
    # swap the generic build's library for another (valid) one and make the manifest agree
    other = str(work / "other.cpa")
    compile_model(onnx_files["cls"], other, input_shapes={"x": NETS["cls"][3]})  # another model's generic build
    m = json.load(open(os.path.join(art, "manifest.json")))
    (gen,) = [b for b in m["dynamic"]["builds"] if b["kind"] == "generic"]
    src = os.path.join(other, m["library"]["file"])
    shutil.copyfile(src, os.path.join(art, gen["library"]["file"]))
    gen["library"]["sha256"] = hashlib.sha256(open(src, "rb").read()).hexdigest()
    json.dump(m, open(os.path.join(art, "manifest.json"), "w"))
    with pytest.raises(ConvpipeError, match="refusing to load"):
        rt.load(art, expected_sha256=digest)
    convpipe_cli = os.path.join(os.path.dirname(sys.executable), "convpipe")
    p = subprocess.run([convpipe_cli, "inspect", other], capture_output=True, text=True)
    assert p.returncode == 0 and f"pin (--expect-sha256): {pin_digest(other)}" in p.stdout, p.stdout + p.stderr


def test_api_module_with_ranges():
    """``convpipe.compile(module, example, input_shapes={...ranges...})``: the module is exported with those axes
    dynamic and compiled for the range (it used to be refused: ranges applied to ONNX files only)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3, stride=2))
    model.eval()
    cm = convpipe.compile(model, torch.zeros(1, 3, 24, 24), input_shapes={"input": (1, 3, (16, 48), (16, 48))},
                          buckets=[{"input": (1, 3, 32, 32)}])
    for h, w in ((32, 32), (17, 40), (48, 16)):
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            ref = model(x)
        y = cm(x)
        assert y.shape == ref.shape and float((y - ref).abs().max()) <= 1e-4 * float(ref.abs().max()) + 1e-5
    with pytest.raises(ConvpipeError, match=r"name \['x'\]: the exported module's inputs are \['input'\]"):
        convpipe.compile(model, torch.zeros(1, 3, 24, 24), input_shapes={"x": (1, 3, (16, 48), (16, 48))})
