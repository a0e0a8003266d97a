"""Old import path, kept only for importers outside ``schedules/`` not yet moved to the new homes
(``tests/test_cuda.py``, ``tests/test_nan.py``, ``tests/test_exact_ops.py``, ``scripts/check_cuda.py``,
``scripts/corpus_targets.py``); delete it once they are. Schedule code: :mod:`.base`; nvcc, ptxas figures,
occupancy and the CUDA source of a PrimFunc: :mod:`convpipe.compiler.nvcc`.
"""

from convpipe.compiler.nvcc import NVCC, cuda_source, nvcc_available, nvcc_flags, occupancy, ptxas_report

from .base import MAX_STATIC_SMEM, MAX_THREADS, replay_without_threads

__all__ = [
    "MAX_STATIC_SMEM",
    "MAX_THREADS",
    "NVCC",
    "cuda_source",
    "nvcc_available",
    "nvcc_flags",
    "occupancy",
    "ptxas_report",
    "replay_without_threads",
]
