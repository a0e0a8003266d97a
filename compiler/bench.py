"""Side-by-side latency: convpipe vs onnxruntime vs PyTorch eager, measured in one process, engines interleaved
round by round so the machine's noise hits all alike. Reported figure: the median over rounds of the mean
latency of a batch of runs (ms).

Three thread pools share the process, so none may busy-wait after its work (a spinning pool steals the cores
from the next engine: on 2 cores PyTorch ran 40x slower behind a spinning TVM pool). :func:`set_threads`
turns spinning off for all three (``TVM_THREAD_POOL_SPIN_COUNT=0``, ``OMP_WAIT_POLICY=PASSIVE``, onnxruntime's
``session.intra_op.allow_spinning=0``), and TVM's workers are not pinned to cores (``TVM_BIND_THREADS=0``:
pinned, they let the OS stack two busy threads on one core next to the other pools -- ResNet-18 at 2 threads
ran 12.6 ms or 20 ms from one process start to the next). The env variables must be set before the pools start,
which is why the CLI calls it first thing for ``bench`` and ``demo``."""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable

import numpy as np


def set_threads(threads: int) -> None:
    """Make TVM (``TVM_NUM_THREADS``, read when its pool starts), PyTorch and OpenMP use ``threads`` threads,
    none of them spinning, TVM's unpinned (see the module docstring)."""
    os.environ["TVM_NUM_THREADS"] = str(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["TVM_THREAD_POOL_SPIN_COUNT"] = "0"
    os.environ["TVM_BIND_THREADS"] = "0"
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass


def side_by_side(engines: dict[str, Callable[[], object]], rounds: int = 7, round_s: float = 0.25) -> dict[str, dict]:
    """Time each zero-argument callable; returns ``{name: {"median_ms", "min_ms", "max_ms", "runs"}}``.

    Each engine is warmed up (3 calls) and calibrated to about ``round_s`` seconds per round; then ``rounds``
    rounds run the engines in turn (A B C A B C ...).
    """
    per_round = {}
    for name, fn in engines.items():
        for _ in range(3):
            fn()
        t0 = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t0, 1e-6)
        per_round[name] = max(1, min(1000, int(round_s / one)))
    samples: dict[str, list[float]] = {n: [] for n in engines}
    for _ in range(rounds):
        for name, fn in engines.items():
            n = per_round[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - t0) / n * 1e3)
    return {
        n: {"median_ms": statistics.median(s), "min_ms": min(s), "max_ms": max(s), "runs": per_round[n] * rounds}
        for n, s in samples.items()
    }


def model_engines(
    artifact: str | dict[str, str],
    onnx_path: str | None,
    inputs: dict[str, np.ndarray],
    threads: int,
    torch_model=None,
    device: str = "cpu",
    expected_sha256: str | None = None,
):
    """Callables running one inference with convpipe (an artifact, or ``{engine name: artifact}`` for several
    builds), onnxruntime (``onnx_path``) and PyTorch eager, on ``device``.

    ``device="cuda"``: convpipe runs on GPU 0 with its inputs resident there, and each call waits for the GPU
    (``Device.sync``) so host timers see the kernels' time; PyTorch (cuDNN) runs there too when this torch
    has CUDA, onnxruntime only through its CUDA execution provider when installed; an engine without CUDA is
    left out (the returned dict says which ran).

    ``expected_sha256``: passed to :func:`convpipe.runtime.load` for every artifact (the library must have it).

    Raises:
        ConvpipeError: see :func:`convpipe.runtime.load` (e.g. a CUDA artifact where no GPU is present).
    """
    import tvm

    from convpipe.runtime import load

    from .verify import onnxruntime_session

    engines: dict[str, Callable[[], object]] = {}
    for name, path in ({"convpipe": artifact} if isinstance(artifact, str) else artifact).items():
        module = load(path, device=device, expected_sha256=expected_sha256)
        arrays = module.check_inputs(inputs)  # a variable-size artifact: the build serving these shapes
        build = module.select([a.shape for a in arrays]) if module.input_dims is not None else None
        vm, dev = module._vm(build), module._dev
        args = [tvm.runtime.tensor(a, dev) for a in arrays]
        if device == "cuda":
            engines[name] = lambda vm=vm, args=args, dev=dev: (vm["main"](*args), dev.sync())
        else:
            engines[name] = lambda vm=vm, args=args: vm["main"](*args)
    if onnx_path:
        import onnxruntime

        if device != "cuda":
            sess = onnxruntime_session(onnx_path, threads, spinning=False)
            engines["onnxruntime"] = lambda: sess.run(None, inputs)
        elif "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            sess = onnxruntime.InferenceSession(onnx_path, providers=["CUDAExecutionProvider"])
            engines["onnxruntime-cuda"] = lambda: sess.run(None, inputs)
    if torch_model is not None:
        import torch

        if device != "cuda" or torch.cuda.is_available():
            tdev = torch.device("cuda" if device == "cuda" else "cpu")
            model = torch_model.to(tdev)
            xs = [torch.from_numpy(a).to(tdev) for a in inputs.values()]

            def run_torch():
                with torch.no_grad():
                    out = model(*xs)
                if device == "cuda":
                    torch.cuda.synchronize()
                return out

            engines["pytorch"] = run_torch
    return engines


def artifact_device(artifact: str | dict[str, str]) -> str:
    """``"cuda"`` for an artifact (or the first of ``{engine name: artifact}``) built for CUDA, else ``"cpu"``.

    Raises:
        ConvpipeError: see :func:`convpipe.runtime.read_manifest`."""
    from convpipe.runtime import read_manifest

    m = read_manifest(artifact if isinstance(artifact, str) else next(iter(artifact.values())))
    return "cuda" if m["target"]["arch"] == "cuda" else "cpu"


def compile_variants(onnx_path: str, directory: str, schedules: list[str], layouts: list[str], target: str = "x86",
                     input_shapes: dict[str, tuple[int, ...]] | None = None, arch: str | None = None,
                     max_memory: int | None = None) -> dict[str, str]:
    """Compile ``onnx_path`` once per (schedule, layout) pair into ``directory``; returns ``{engine name: artifact}``
    for :func:`bench_artifact`: ``convpipe`` for a single build, else ``convpipe[SCHEDULE,LAYOUT]`` naming what
    varies (``convpipe[direct]``, ``convpipe[auto,nchw16c]``).

    Raises:
        ConvpipeError: see :func:`convpipe.compiler.build.compile_model`."""
    from .build import compile_model

    artifacts = {}
    for sched in schedules:
        for layout in layouts:
            tag = ",".join(([sched] if len(schedules) > 1 else []) + ([layout] if len(layouts) > 1 else []))
            path = os.path.join(directory, f"{sched}-{layout}.cpa")
            artifacts[f"convpipe[{tag}]" if tag else "convpipe"] = path
            compile_model(onnx_path, path, target, sched, input_shapes, arch=arch, layout=layout, max_memory=max_memory)
    return artifacts


def bench_artifact(artifact: str | dict[str, str], onnx_path: str | None, threads: int, rounds: int, inputs=None,
                   device: str | None = None, torch_model: str | None = None,
                   expected_sha256: str | None = None) -> dict[str, dict]:
    """Time the artifact(s) against onnxruntime (``onnx_path``, else the artifact's recorded source when that
    file exists) and PyTorch (only when ``torch_model``, a zoo name or ``package.module:factory`` from the command
    line, is given: a file's contents never name code to run), on random inputs unless ``inputs`` are given, on
    ``device`` (default: the artifact's). Returns :func:`side_by_side`'s result, convpipe's engine(s) first.

    Raises:
        ConvpipeError: see :func:`model_engines` and :func:`convpipe.compiler.zoo.get_model`."""
    from convpipe.runtime import io_info, read_manifest

    from .importer import random_inputs

    set_threads(threads)
    m = read_manifest(artifact if isinstance(artifact, str) else next(iter(artifact.values())))
    if onnx_path is None and os.path.isfile(m["source_onnx"]["file"]):
        onnx_path = m["source_onnx"]["file"]
    if inputs is None:
        inputs = random_inputs(io_info(m, "inputs"))
    module = None
    if torch_model:
        from .zoo import get_model

        module = get_model(torch_model)[0]
    device = device or artifact_device(artifact)
    engines = model_engines(artifact, onnx_path, inputs, threads, module, device, expected_sha256=expected_sha256)
    return side_by_side(engines, rounds=rounds)
