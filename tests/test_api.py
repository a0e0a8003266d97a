"""The Python API (issue 13): ``convpipe.compile(model, example)``, ``convpipe.load``, the compiled module called with
torch tensors (torch out, zero-copy through DLPack) or NumPy arrays (NumPy out), ``verify`` against onnxruntime and
the source module, and ``torch.compile(model, backend="convpipe")`` with its eager fallback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import convpipe
from convpipe.errors import ConvpipeError

TOL = (1e-4, 1e-5)  # issue 10's tolerance: max|ours - ref| <= 1e-4 * max|ref| + 1e-5


def _close(ours, ref) -> bool:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return ours.shape == ref.shape and np.abs(ours - ref).max() <= TOL[0] * np.abs(ref).max() + TOL[1]


def _small_cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16), torch.nn.Hardswish(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 5)).eval()


@pytest.fixture(scope="module")
def small():
    m, x = _small_cnn(), torch.randn(1, 3, 20, 20)
    return m, x, convpipe.compile(m, x)


def test_module_torch_in_torch_out(small):
    m, x, cm = small
    y = cm(x)
    assert isinstance(y, torch.Tensor) and y.shape == (1, 5)
    with torch.no_grad():
        assert _close(y, m(x))


def test_numpy_in_numpy_out_and_run_by_name(small):
    m, x, cm = small
    y = cm(x.numpy())
    assert isinstance(y, np.ndarray)
    assert np.array_equal(y, cm.run({"input": x.numpy()})["output"])


def test_verify_reports_onnxruntime_and_torch(small):
    _, x, cm = small
    rep = cm.verify(x)
    assert rep.ok and len(rep.outputs) == 1
    o = rep.outputs[0]
    assert o.ort_max_rel < 1e-5 and o.torch_max_rel is not None and o.torch_max_rel < 1e-5
    assert "vs onnxruntime" in str(rep) and "vs PyTorch" in str(rep)
    assert cm.verify().ok  # seeded random inputs


def test_dlpack_zero_copy_by_pointer(small, monkeypatch):
    """The torch input reaches the VM without a copy, and the returned tensor is the VM's output memory."""
    _, x, cm = small
    seen_in, seen_out = [], []
    run_here = cm.module._run_tensors_here

    def spy(args):
        seen_in.append(torch.from_dlpack(args[0]).data_ptr())
        out = run_here(args)
        seen_out.append(torch.from_dlpack(out[0]).data_ptr())
        return out

    monkeypatch.setattr(cm.module, "_run_tensors_here", spy)
    y = cm(x)
    assert seen_in == [x.data_ptr()]
    assert seen_out == [y.data_ptr()]


def test_bad_inputs_name_the_input(small):
    _, x, cm = small
    with pytest.raises(ConvpipeError, match=r"input 'input': expected shape \[1, 3, 20, 20\], got \[1, 3, 8, 8\]"):
        cm(torch.randn(1, 3, 8, 8))
    with pytest.raises(ConvpipeError, match=r"input 'input': expected dtype float32, got float64"):
        cm(x.double())
    with pytest.raises(ConvpipeError, match="mix torch tensors"):
        cm(x, x.numpy())


def test_non_contiguous_torch_input_is_made_contiguous(small):
    m, _, cm = small
    x = torch.randn(1, 20, 20, 3).permute(0, 3, 1, 2)  # NCHW view of NHWC memory
    assert not x.is_contiguous()
    with torch.no_grad():
        assert _close(cm(x), m(x))


def test_several_inputs_and_outputs():
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(2, 4, 1)

        def forward(self, a, b):
            return self.c(a * 2 + b), a - b

    m = Two().eval()
    a, b = torch.randn(1, 2, 5, 5), torch.randn(1, 2, 5, 5)
    cm = convpipe.compile(m, (a, b))
    assert [i.name for i in cm.inputs] == ["input0", "input1"]
    y1, y2 = cm(a, b)
    with torch.no_grad():
        r1, r2 = m(a, b)
    assert _close(y1, r1) and _close(y2, r2)
    n1, n2 = cm(a.numpy(), b.numpy())
    assert isinstance(n1, np.ndarray) and _close(n1, r1)


def test_output_path_then_load_and_onnx_path(tmp_path):
    m, x = _small_cnn(), torch.randn(1, 3, 12, 12)
    art = tmp_path / "small.cpa"
    cm = convpipe.compile(m, x, output=art)
    assert json.load(open(art / "manifest.json"))["inputs"][0]["shape"] == [1, 3, 12, 12]
    loaded = convpipe.load(art)
    assert np.array_equal(loaded(x.numpy()), cm(x.numpy()))
    # an ONNX file (the one the artifact was compiled from is temporary: export one) with input_shapes
    from convpipe.compiler.export import export_onnx

    onnx_path = str(tmp_path / "small.onnx")
    export_onnx(m, (1, 3, 12, 12), onnx_path)
    cm2 = convpipe.compile(onnx_path, input_shapes={"input": (1, 3, 12, 12)})
    assert _close(cm2(x), cm(x)) and cm2.verify(x).ok and cm2.outputs[0].name == "output"
    with pytest.raises(ConvpipeError, match="for an ONNX file, give input_shapes"):
        convpipe.compile(onnx_path, x)
    with pytest.raises(ConvpipeError, match="needs an example input"):
        convpipe.compile(m)


def test_the_temporary_artifact_goes_with_the_module():
    import gc

    cm = convpipe.compile(_small_cnn(), torch.randn(1, 3, 8, 8))
    d = os.path.dirname(cm.path)
    assert os.path.isdir(d)
    del cm
    gc.collect()
    assert not os.path.exists(d)


def test_torchvision_resnet18_and_mtcnn_onet():
    from convpipe.compiler.zoo import ZOO

    for name, shape in (("resnet18", (1, 3, 64, 64)), ("onet", (1, 3, 48, 48))):
        m = ZOO[name].build()
        x = torch.from_numpy(ZOO[name].real_input(shape))
        cm = convpipe.compile(m, x)
        with torch.no_grad():
            ref = m(x)
        refs = ref if isinstance(ref, tuple) else (ref,)
        got = cm(x)
        got = got if isinstance(got, tuple) else (got,)
        assert len(got) == len(refs) and all(_close(g, r) for g, r in zip(got, refs)), name
        assert cm.verify(x).ok, name


def test_torch_compile_backend_matches_eager_and_recompiles_per_shape(monkeypatch):
    """Two input sizes: Dynamo recompiles (the second time a graph with SymInt sizes, which convpipe compiles per
    concrete size on first call); every call runs convpipe's code (no fallback warning), and once each size has
    been seen by each graph, nothing compiles again."""
    import convpipe.api as api

    compiled = []
    real_compile = api.compile
    monkeypatch.setattr(api, "compile", lambda *a, **k: compiled.append(1) or real_compile(*a, **k))
    torch._dynamo.reset()
    m = _small_cnn()
    f = torch.compile(m, backend="convpipe")
    shapes = ((1, 3, 20, 20), (1, 3, 16, 24))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback warning would fail here
        for rnd in range(2):
            for shape in shapes + shapes:
                x = torch.randn(shape)
                with torch.no_grad():
                    assert _close(f(x), m(x)), shape
            if rnd == 0:
                first = len(compiled)
    assert 2 <= first <= 3 and len(compiled) == first, (first, len(compiled))


def test_torch_compile_backend_falls_back_with_one_warning():
    class FFT(torch.nn.Module):  # aten::fft_fft has no ONNX export
        def forward(self, x):
            return torch.fft.fft(x).real * 2

    torch._dynamo.reset()
    x = torch.randn(4, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = torch.compile(FFT(), backend="convpipe")(x)
    ours = [w for w in caught if "convpipe: graph left to eager PyTorch" in str(w.message)]
    assert len(ours) == 1 and "fft" in str(ours[0].message), [str(w.message) for w in caught]
    assert torch.equal(y, torch.fft.fft(x).real * 2)


def test_import_stays_light():
    code = ("import sys, convpipe, convpipe.api, convpipe.runtime; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'tvm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
