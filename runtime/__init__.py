"""The deployed runtime: loads a convpipe artifact and runs it with the TVM runtime and NumPy only.

Importing it imports neither torch nor onnx nor onnxruntime. See :mod:`convpipe.runtime.module`.
"""

from convpipe.errors import ConvpipeError

from .artifact import read_manifest, verify_library
from .module import IOInfo, Module, check_inputs, io_info, load

__all__ = ["ConvpipeError", "IOInfo", "Module", "check_inputs", "io_info", "load", "read_manifest", "verify_library"]
