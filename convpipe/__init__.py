"""convpipe: PyTorch CNN -> ONNX -> Apache TVM with our own conv2d schedules -> one deployable artifact.

Subpackages (folders at the repository root, mapped by setuptools ``package-dir``):

- :mod:`convpipe.compiler`  -- what runs: export, ONNX import, per-layer conv2d lowering, build, artifact.
- :mod:`convpipe.schedules` -- how a conv2d runs on a target: TensorIR compute + schedule rules.
- :mod:`convpipe.runtime`   -- loads and runs an artifact with the TVM runtime and NumPy only.

The Python API (:mod:`convpipe.api`) is here too: ``convpipe.compile(model, example)``, ``convpipe.load(path)``,
and ``torch.compile(model, backend="convpipe")`` (registered through the ``torch_dynamo_backends`` entry point).

Importing this package imports nothing heavy (no torch, onnx or onnxruntime).
"""

__version__ = "0.1.0"

from convpipe.errors import ConvpipeError  # noqa: E402 -- light: no third-party imports


def compile(model, example=None, **kwargs):  # noqa: A001 -- the name users reach for, as torch.compile
    """``nn.Module`` + example input(s), or an ``.onnx`` path -> a callable compiled module (see
    :func:`convpipe.api.compile` for every argument and error)."""
    from convpipe.api import compile as _compile

    return _compile(model, example, **kwargs)


def load(path, device=None, threads=None, expected_sha256=None):
    """An artifact directory -> a callable compiled module (:func:`convpipe.api.load`)."""
    from convpipe.api import load as _load

    return _load(path, device, threads, expected_sha256)
