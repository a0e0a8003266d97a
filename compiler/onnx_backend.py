"""convpipe as an ONNX backend (``onnx.backend.base.Backend``): ``prepare(model)`` compiles the model with default
flags for this host into a temporary artifact and loads it; ``run(inputs)`` runs it. This is the adapter through
which ONNX's own node conformance tests (``onnx.backend.test.case.node.collect_testcases``) exercise convpipe
(``scripts/node_tests.py``), in the manner of onnxruntime's ``onnxruntime/python/backend/backend.py``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from convpipe.errors import ConvpipeError


class ConvpipeRep(BackendRep):
    """A compiled model: ``run`` takes the graph inputs in order (or ``{name: array}``) and returns the outputs
    as a tuple in graph output order."""

    def __init__(self, module, workdir: str):
        self.module = module
        self._workdir = workdir

    def run(self, inputs, **kwargs) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        out = self.module.run(inputs if isinstance(inputs, dict) else list(inputs))
        return tuple(out[o.name] for o in self.module.outputs)

    def __del__(self):
        shutil.rmtree(getattr(self, "_workdir", ""), ignore_errors=True)


class ConvpipeBackend(Backend):
    """``onnx.backend.base.Backend`` over :func:`convpipe.compiler.build.compile_model` (CPU only)."""

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper() == "CPU"

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", target: str = "x86", **kwargs) -> ConvpipeRep:
        """Compile ``model`` (all input shapes static) for ``target`` with default flags.

        Raises:
            ConvpipeError: the model cannot be compiled (see :func:`convpipe.compiler.build.compile_model`).
        """
        from convpipe.compiler.build import compile_model
        from convpipe.runtime import load

        if not cls.supports_device(device):
            raise ConvpipeError(f"convpipe's ONNX backend runs on CPU, not {device!r}")
        workdir = tempfile.mkdtemp(prefix="convpipe-backend-")
        try:
            path = os.path.join(workdir, "model.onnx")
            onnx.save(model, path)
            compile_model(path, os.path.join(workdir, "model.cpa"), target)
            return ConvpipeRep(load(os.path.join(workdir, "model.cpa")), workdir)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Sequence[np.ndarray], device: str = "CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)
