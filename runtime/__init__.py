"""The deployed runtime: loads a convpipe artifact and runs it with the TVM runtime and NumPy only.

Importing it imports neither torch nor onnx nor onnxruntime. See :mod:`convpipe.runtime.module`.

Loading an artifact runs its native code, and the sha256 in its manifest only detects corruption (anyone who can
edit ``model.so`` can edit ``manifest.json``): pass ``load(path, expected_sha256=...)`` -- the library's sha256
obtained through a channel you trust; for a variable-size artifact, with several libraries, the digest of all of
them that ``pin_digest`` computes and ``convpipe inspect`` prints -- to refuse any other library before it is loaded.
"""

from convpipe.errors import ConvpipeError

from .artifact import (check_elf, library_path, manifest_problems, pin_digest, read_manifest, sha256_file,
                       verify_libraries, verify_library)
from .module import IOInfo, Module, check_inputs, check_outputs, io_info, load

__all__ = ["ConvpipeError", "IOInfo", "Module", "check_elf", "check_inputs", "check_outputs", "io_info",
           "library_path", "load", "manifest_problems", "pin_digest", "read_manifest", "sha256_file",
           "verify_libraries", "verify_library"]
