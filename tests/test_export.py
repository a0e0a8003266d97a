"""``nn.Conv2d`` -> ONNX -> convpipe artifact, for every Conv2d argument: the artifact must match both PyTorch
eager and onnxruntime on the exported file, under every ``--schedule``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from convpipe.compiler.build import compile_model
from convpipe.compiler.export import export_onnx, torch_outputs
from convpipe.compiler.verify import compare, run_onnxruntime
from convpipe.errors import ConvpipeError
from convpipe.runtime import load


@st.composite
def conv2d_modules(draw):
    """A ``Sequential(Conv2d, ReLU)`` with any combination of Conv2d arguments, and its input shape. Its weights
    come from a drawn seed (part of the example hypothesis prints and replays), not from whatever state earlier
    tests left torch's global RNG in."""
    groups_kind = draw(st.sampled_from(["one", "one", "grouped", "depthwise"]))
    g = 1 if groups_kind == "one" else draw(st.integers(2, 3))
    c = g * draw(st.integers(1, 4)) if groups_kind != "depthwise" else draw(st.integers(2, 8))
    if groups_kind == "depthwise":
        g = c
    k = g * draw(st.integers(1, 6))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding_kind = draw(st.sampled_from(["int", "tuple", "same", "valid"]))
    stride = (1, 1) if padding_kind == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = {
        "int": draw(st.integers(0, 2)),
        "tuple": (draw(st.integers(0, 2)), draw(st.integers(0, 2))),
        "same": "same",
        "valid": "valid",
    }[padding_kind]
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    eff = [(kernel[i] - 1) * dilation[i] + 1 for i in range(2)]
    pad_px = [0, 0] if padding in ("same", "valid") else ([padding] * 2 if isinstance(padding, int) else list(padding))
    if padding == "same":
        pad_px = [(e - 1) // 2 + 1 for e in eff]
    # reflect needs pad < input size; keep inputs comfortably larger than kernels and pads
    h = draw(st.integers(max(eff[0], 2 * pad_px[0] + 1, 3), 14))
    w = draw(st.integers(max(eff[1], 2 * pad_px[1] + 1, 3), 14))
    bias, seed = draw(st.booleans()), draw(st.integers(0, 2**31 - 1))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        conv = torch.nn.Conv2d(c, k, kernel, stride=stride, padding=padding, dilation=dilation, groups=g,
                               bias=bias, padding_mode=mode)
    return torch.nn.Sequential(conv, torch.nn.ReLU()).eval(), (draw(st.integers(1, 2)), c, h, w)


@settings(max_examples=12)
@given(conv2d_modules(), st.sampled_from(["auto", "direct", "im2col", "winograd", "depthwise"]))
def test_conv2d_arguments_roundtrip(tmp_path_factory, case, schedule):
    model, shape = case
    d = tmp_path_factory.mktemp("conv")
    onnx_path, artifact = str(d / "m.onnx"), str(d / "m.cpa")
    export_onnx(model, shape, onnx_path)
    res = compile_model(onnx_path, artifact, "x86", schedule)
    assert len(res.layers) == 1, "exactly one conv2d, lowered through our schedules"
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    ours = load(artifact).run([x])
    ref = run_onnxruntime(onnx_path, {"input": x})
    assert all(c.ok for c in compare(ours, ref, rtol=1e-3, atol=1e-4)), compare(ours, ref, 1e-3, 1e-4)
    np.testing.assert_allclose(ours["output"], torch_outputs(model, x)[0], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_padding_modes_same(tmp_path, mode):
    """padding='same' with an even kernel (asymmetric pad) and every padding_mode."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, (4, 2), padding="same", padding_mode=mode, dilation=(1, 2))).eval()
    onnx_path, artifact = str(tmp_path / "m.onnx"), str(tmp_path / "m.cpa")
    export_onnx(model, (2, 4, 9, 11), onnx_path)
    compile_model(onnx_path, artifact)
    x = np.random.default_rng(1).standard_normal((2, 4, 9, 11)).astype("float32")
    np.testing.assert_allclose(load(artifact).run([x])["output"], torch_outputs(model, x)[0], rtol=1e-4, atol=1e-5)


def test_forward_failure_is_a_user_error(tmp_path):
    """A model whose own forward refuses the input shape (timm's bat_resnext26ts asserts on its feature-map size
    at 96x96) is a user error naming the shape, not an internal error (exit 3) as it was."""
    from convpipe.errors import ConvpipeError

    class Picky(torch.nn.Module):
        def forward(self, x):
            assert x.shape[-1] % 32 == 0, "width must be a multiple of 32"
            return x * 2

    with pytest.raises(ConvpipeError, match=r"forward failed on float32 input\(s\) of shape \[1, 3, 8, 8\]: "
                                            r"AssertionError: width must be a multiple of 32"):
        export_onnx(Picky(), (1, 3, 8, 8), str(tmp_path / "p.onnx"))
    assert not (tmp_path / "p.onnx").exists()


class _PaddedUnfold:
    """A conv, then ``Tensor.unfold`` on a tensor padded by an amount computed from its size: the TorchScript
    exporter refuses it ("Unsupported: ONNX export of operator Unfold, input size not accessible", as on timm
    ``halonet26t``)."""

    @staticmethod
    def make():
        import torch
        import torch.nn.functional as F

        class PaddedUnfold(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

            def forward(self, x):
                y = self.conv(x)
                h = y.shape[2]
                return F.pad(y, [1, 1, h // 8, h // 8]).unfold(2, 4, 2).sum(-1)

        torch.manual_seed(0)
        return PaddedUnfold().eval()


def test_export_falls_back_to_the_dynamo_exporter(tmp_path, caplog):
    """Where the TorchScript exporter fails, the torch.export-based one writes the model (recorded in its
    metadata, with a warning), and it compiles and matches PyTorch."""
    import onnx
    import torch

    from convpipe.compiler.build import compile_model
    from convpipe.compiler.export import export_onnx
    from convpipe.runtime import load

    model = _PaddedUnfold.make()
    path = str(tmp_path / "unfold.onnx")
    with caplog.at_level("WARNING", logger="convpipe.export"):
        export_onnx(model, (1, 3, 16, 16), path)
    assert "TorchScript ONNX exporter refused" in caplog.text and "Unfold" in caplog.text
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert props["convpipe.exporter"] == "dynamo"
    compile_model(path, str(tmp_path / "unfold.cpa"))
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    (ours,) = load(str(tmp_path / "unfold.cpa")).run([x]).values()
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_export_names_both_exporters_when_both_fail(tmp_path, monkeypatch):
    """rfft2: the TorchScript exporter refuses it; the dynamo exporter (which writes it) is made to fail here."""
    import torch

    from convpipe.compiler.export import export_onnx

    class Bad(torch.nn.Module):
        def forward(self, x):
            return torch.fft.rfft2(x).abs()

    real = torch.onnx.export

    def export(*args, dynamo=False, **kw):
        if dynamo:
            raise RuntimeError("no dynamo today")
        return real(*args, dynamo=dynamo, **kw)

    monkeypatch.setattr(torch.onnx, "export", export)
    with pytest.raises(ConvpipeError, match="TorchScript exporter: .*rfft2.*dynamo.* exporter: RuntimeError: no dynamo"):
        export_onnx(Bad().eval(), (1, 3, 8, 8), str(tmp_path / "bad.onnx"))
    assert not (tmp_path / "bad.onnx").exists()


def test_export_refuses_weights_over_the_protobuf_limit(tmp_path, monkeypatch):
    """A model over 2 GiB of weights gets a clear error naming its size (the limit is lowered here: no 2 GiB
    model in CI)."""
    import convpipe.compiler.export as export

    monkeypatch.setattr(export, "PROTOBUF_LIMIT", 1000)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3)).eval()  # 1,792 bytes of weights
    with pytest.raises(ConvpipeError, match="GiB of parameters and buffers: over the 2 GiB"):
        export.export_onnx(model, (1, 3, 8, 8), str(tmp_path / "big.onnx"))
    assert not (tmp_path / "big.onnx").exists()
