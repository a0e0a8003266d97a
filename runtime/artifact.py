"""The artifact format: a directory holding the exported TVM library and ``manifest.json``.

``manifest.json`` (``format`` = 1)::

    {
      "format": 1,
      "convpipe_version": "0.1.0", "tvm_version": "0.27.0.post1",
      "target": {"arch": "x86", "isa": "avx512", "vector_lanes": 16, "num_cores": 2, "tvm_target": {...}},
      "library": {"file": "model.so", "sha256": "..."},
      "source_onnx": {"file": "model.onnx", "sha256": "..."},
      "inputs":  [{"name": "input", "shape": [1, 3, 224, 224], "dtype": "float32"}],
      "outputs": [{"name": "output", "shape": [1, 1000], "dtype": "float32"}],
      "conv2d": [{"index": 0, "workload": {...}, "family": "direct", "knobs": {...}, "reason": "...",
                  "kernel": "conv2d_direct_0", "gflop": 0.118}, ...],
      "schedule": "auto", "created": "2026-11-21T05:00:00Z",
      "device_code": {"arch": "sm_90", "format": "cubin", "embedded_in": "model.so", "binary_sha256": ["..."],
                      "binary_bytes": 412345, "source": "device.cu", "kernels": [...]}   # CUDA only
    }

This module is shared by the compiler (which writes artifacts) and the runtime (which reads them); it imports only
the standard library.
"""

from __future__ import annotations

import hashlib
import json
import os

from convpipe.errors import ConvpipeError

FORMAT = 1
MANIFEST = "manifest.json"
LIBRARY = "model.so"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(path: str) -> dict:
    """Read ``ARTIFACT/manifest.json``.

    Raises:
        ConvpipeError: ``path`` is not an artifact directory, or its manifest is missing, unreadable or of an
            unknown format.
    """
    if not os.path.exists(path):
        raise ConvpipeError(f"{path}: no such artifact")
    if not os.path.isdir(path):
        raise ConvpipeError(f"{path}: not an artifact (expected a directory made by 'convpipe compile')")
    mpath = os.path.join(path, MANIFEST)
    try:
        with open(mpath) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ConvpipeError(f"{path}: not an artifact: {MANIFEST} is missing") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ConvpipeError(f"{mpath}: unreadable manifest: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConvpipeError(f"{mpath}: unknown manifest format {manifest.get('format') if isinstance(manifest, dict) else None!r}, expected {FORMAT}")
    for key in ("library", "inputs", "outputs", "target", "tvm_version"):
        if key not in manifest:
            raise ConvpipeError(f"{mpath}: manifest lacks {key!r}")
    return manifest


def verify_library(path: str, manifest: dict) -> str:
    """Return the library's path after checking its sha256 against the manifest (a CUDA library embeds its device
    binary, so this covers the GPU code too).

    Raises:
        ConvpipeError: a file is missing or its sha256 disagrees (a tampered or corrupted artifact).
    """
    lib = os.path.join(path, manifest["library"]["file"])
    if not os.path.isfile(lib):
        raise ConvpipeError(f"{path}: library {manifest['library']['file']} is missing")
    got = sha256_file(lib)
    want = manifest["library"]["sha256"]
    if got != want:
        raise ConvpipeError(
            f"{lib}: sha256 {got[:16]}... disagrees with the manifest's {want[:16]}...: "
            "the artifact was modified or corrupted; recompile it"
        )
    return lib
