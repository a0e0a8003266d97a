"""convpipe: PyTorch CNN -> ONNX -> Apache TVM with our own conv2d schedules -> one deployable artifact.

Subpackages (folders at the repository root, mapped by setuptools ``package-dir``):

- :mod:`convpipe.compiler`  -- what runs: export, ONNX import, per-layer conv2d lowering, build, artifact.
- :mod:`convpipe.schedules` -- how a conv2d runs on a target: TensorIR compute + schedule rules.
- :mod:`convpipe.runtime`   -- loads and runs an artifact with the TVM runtime and NumPy only.

Importing this package imports nothing heavy (no torch, onnx or onnxruntime).
"""

__version__ = "0.1.0"
