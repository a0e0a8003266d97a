"""Side-by-side latency: convpipe vs onnxruntime vs OpenVINO (when installed) vs PyTorch eager, measured in one
process, engines interleaved round by round so the machine's noise hits all alike. Reported figure: the median over
rounds of the mean latency of a batch of runs (ms).

Three thread pools share the process, so none may busy-wait after its work (a spinning pool steals the cores
from the next engine: on 2 cores PyTorch ran 40x slower behind a spinning TVM pool). :func:`set_threads`
turns spinning off for all three (``TVM_THREAD_POOL_SPIN_COUNT=0``, ``OMP_WAIT_POLICY=PASSIVE``, onnxruntime's
``session.intra_op.allow_spinning=0``), and TVM's workers are not pinned to cores (``TVM_BIND_THREADS=0``:
pinned, they let the OS stack two busy threads on one core next to the other pools -- ResNet-18 at 2 threads
ran 12.6 ms or 20 ms from one process start to the next). The env variables must be set before the pools start,
which is why the CLI calls it first thing for ``bench`` and ``demo``.

OpenVINO (PyPI ``openvino``, optional: :func:`openvino_available`) is built in one place, :func:`openvino_runner`:
CPU plugin, fp32 (``INFERENCE_PRECISION_HINT=f32``: its default on CPUs with AVX-512 BF16 or AMX is bf16), the
latency hint, the same thread count, no hyper-threading and no pinning (as TVM's pool). Its TBB workers spin for a
few microseconds after a run and then sleep; OpenVINO has no switch for that."""

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


def openvino_available() -> bool:
    """Whether OpenVINO's Python package (``openvino``) can be imported here (an install that fails to import
    counts as absent)."""
    try:
        import openvino  # noqa: F401
    except Exception:  # noqa: BLE001 -- ImportError, or a broken install (missing shared library)
        return False
    return True


#: what :func:`bench_artifact` (and ``convpipe bench``) says in place of OpenVINO's row when it cannot be imported
OPENVINO_NOT_INSTALLED = "not installed"


class OpenVINORunner:
    """One inference of an ONNX model with OpenVINO per call (see :func:`openvino_runner`); ``threads`` is the
    thread count OpenVINO actually uses (it may be lower than asked for: OpenVINO uses at most the cores it may run
    on), ``output_names`` the ONNX graph's output names in order, ``compiled`` the ``openvino.CompiledModel`` (its
    properties can be read back with ``compiled.get_property``)."""

    def __init__(self, compiled, request, inputs: dict, names: list, threads: int):
        self.compiled = compiled
        self._request = request
        self._inputs = inputs  # the arrays the request's input tensors share memory with: kept alive here
        self._names = names  # [(output name, output port)]
        self.threads = threads
        self.output_names = [n for n, _ in names]

    def __call__(self) -> dict[str, np.ndarray]:
        """Run once on the inputs given at construction; ``{ONNX output name: array}`` (the request's own
        buffers, overwritten by the next call: copy what must outlive it)."""
        r = self._request.infer(share_outputs=True)
        return {n: r[port] for n, port in self._names}


def openvino_runner(onnx_path: str, inputs: dict[str, np.ndarray], threads: int) -> OpenVINORunner:
    """A zero-argument callable running ``onnx_path`` once with OpenVINO on ``inputs`` per call, for
    :func:`side_by_side`; it returns ``{ONNX output name: np.ndarray}`` (see :class:`OpenVINORunner`).

    The model is read by OpenVINO's ONNX frontend (``Core.read_model``), its inputs fixed to the shapes of
    ``inputs`` (``Model.reshape``: a symbolic dim becomes static), compiled for ``"CPU"`` with
    ``INFERENCE_PRECISION_HINT=f32``, ``PERFORMANCE_HINT=LATENCY``, ``INFERENCE_NUM_THREADS=threads``,
    ``ENABLE_HYPER_THREADING=False`` (retried with True when that leaves fewer than ``threads`` threads, so the
    count matches the other engines wherever OpenVINO allows it) and ``ENABLE_CPU_PINNING=False``. One
    ``InferRequest`` is created, its input tensors share memory with ``inputs`` (no copy per call), and it is
    reused by every call; one inference runs here, so a model OpenVINO cannot run fails now, not while timing.

    Args:
        onnx_path: an ONNX file.
        inputs: ``{ONNX input name: array}``, every graph input, each with the shape and dtype to run (e.g.
            float32 NCHW ``(1, 3, 224, 224)``).
        threads: intra-op threads (>= 1).

    Raises:
        ConvpipeError: OpenVINO is not installed (:func:`openvino_available`); ``threads`` < 1; ``inputs`` do not
            name the model's inputs exactly; OpenVINO cannot read, reshape, compile or run the model (the message
            names ``onnx_path`` and OpenVINO's first line).
    """
    from convpipe.errors import ConvpipeError

    if threads < 1:
        raise ConvpipeError(f"openvino: threads must be at least 1, got {threads}")
    if not openvino_available():
        raise ConvpipeError(f"openvino: {OPENVINO_NOT_INSTALLED} (pip install openvino)")
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    def fail(what: str, e: Exception, detail: str = "") -> ConvpipeError:
        """OpenVINO's message without its source locations (``Exception from src/...``, ``Check '...' failed
        at ...``), on one line, at most 300 characters."""
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        kept = [ln for ln in lines if not ln.startswith(("Exception from", "Check "))] or lines or [repr(e)]
        text = " ".join(kept)
        return ConvpipeError(f"{onnx_path}: OpenVINO cannot {what} it{detail}: {text[:300]}"
                             + ("..." if len(text) > 300 else ""))

    core = ov.Core()
    try:
        model = core.read_model(onnx_path)
    except Exception as e:  # noqa: BLE001 -- OpenVINO raises RuntimeError for every kind of failure
        raise fail("read", e) from e
    names = {p.get_any_name(): p for p in model.inputs}
    for p in model.inputs:  # a port may carry several tensor names: the ONNX input name is one of them
        for n in p.get_names():
            names.setdefault(n, p)
    wanted = [p for p in model.inputs if not (p.get_names() & set(inputs))]
    extra = sorted(n for n in inputs if n not in names)
    if wanted or extra:
        raise ConvpipeError(f"{onnx_path}: OpenVINO: inputs given {sorted(inputs)}, the model's are "
                            f"{[p.get_any_name() for p in model.inputs]}")
    arrays = {n: np.ascontiguousarray(a) for n, a in inputs.items()}
    try:
        model.reshape({n: ov.PartialShape(list(a.shape)) for n, a in arrays.items()})
    except Exception as e:  # noqa: BLE001
        raise fail("reshape", e, f" to {({n: list(a.shape) for n, a in arrays.items()})}") from e
    config = {hints.inference_precision: ov.Type.f32, hints.performance_mode: hints.PerformanceMode.LATENCY,
              props.inference_num_threads: threads, hints.enable_hyper_threading: False,
              hints.enable_cpu_pinning: False}
    try:
        compiled = core.compile_model(model, "CPU", config)
        got = int(compiled.get_property(props.inference_num_threads))
        if got < threads:  # hyper-threads may be needed to reach the thread count the other engines use
            config[hints.enable_hyper_threading] = True
            again = core.compile_model(model, "CPU", config)
            if int(again.get_property(props.inference_num_threads)) > got:
                compiled, got = again, int(again.get_property(props.inference_num_threads))
    except Exception as e:  # noqa: BLE001
        raise fail("compile", e) from e
    try:
        import onnx

        graph_outputs = [o.name for o in onnx.load(onnx_path, load_external_data=False).graph.output]
    except Exception:  # noqa: BLE001 -- OpenVINO read it: its own names are the fallback
        graph_outputs = []
    outs = []
    for i, port in enumerate(compiled.outputs):
        tensor_names = port.get_names()
        name = graph_outputs[i] if i < len(graph_outputs) and graph_outputs[i] in tensor_names else port.get_any_name()
        outs.append((name, port))
    request = compiled.create_infer_request()
    try:
        for n, a in arrays.items():
            request.set_tensor(names[n], ov.Tensor(a, shared_memory=True))
        run = OpenVINORunner(compiled, request, arrays, outs, got)
        run()
    except Exception as e:  # noqa: BLE001
        raise fail("run", e) from e
    return run


def check_against(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict:
    """How far an engine's outputs are from the reference's (onnxruntime's), over all outputs of ``ref``:
    ``{"max_rel_err": max over outputs of max|ours - ref| / max|ref| (normwise), "within": every output within
    issue 10's network tolerance, NETWORK_RTOL * max|ref| + NETWORK_ATOL, "tolerance": that tolerance as text}``.

    Raises:
        ConvpipeError: see :func:`convpipe.compiler.verify.compare` (an output missing or of another shape).
    """
    from .verify import NETWORK_ATOL, NETWORK_RTOL, compare

    checks = compare(ours, ref, NETWORK_RTOL, NETWORK_ATOL)
    return {"max_rel_err": max(c.max_rel for c in checks), "within": all(c.within() for c in checks),
            "tolerance": f"{NETWORK_RTOL:g} x max|ref| + {NETWORK_ATOL:g}"}


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
    file exists), OpenVINO on the same ONNX (CPU only, when installed: :func:`openvino_runner`) and PyTorch (only
    when ``torch_model``, a zoo name or ``package.module:factory`` from the command line, is given: a file's
    contents never name code to run), on random inputs unless ``inputs`` are given, on ``device`` (default: the
    artifact's).

    Returns :func:`side_by_side`'s result (ms), convpipe's engine(s) first, then onnxruntime, OpenVINO, PyTorch.
    OpenVINO's entry also has :func:`check_against`'s keys (its outputs vs onnxruntime's, graph optimisations
    off, on the same inputs) and, when it runs fewer threads than asked, ``"note"``. Where an ONNX is at hand on
    the CPU but OpenVINO is not timed, the result ends with ``{"openvino": {"skipped": why}}`` (why:
    :data:`OPENVINO_NOT_INSTALLED`, or ``"failed: ..."`` when it cannot run the model) instead of a timing.

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
    skipped, checks = {}, {}
    if onnx_path and device == "cpu":
        from convpipe.errors import ConvpipeError

        from .verify import run_onnxruntime

        if not openvino_available():
            skipped["openvino"] = OPENVINO_NOT_INSTALLED
        else:
            try:
                ov_run = openvino_runner(onnx_path, inputs, threads)
                ov_out = {n: a.copy() for n, a in ov_run().items()}
            except ConvpipeError as e:
                skipped["openvino"] = f"failed: {e}"
            else:
                checks["openvino"] = check_against(ov_out, run_onnxruntime(onnx_path, inputs, threads))
                if ov_run.threads != threads:
                    checks["openvino"]["note"] = (f"{ov_run.threads} thread(s), not {threads}: OpenVINO uses at most "
                                                  "the cores it may run on")
                order = list(engines)  # OpenVINO next to onnxruntime, PyTorch last
                at = order.index("onnxruntime") + 1 if "onnxruntime" in order else len(order)
                engines = dict([(n, engines[n]) for n in order[:at]] + [("openvino", ov_run)]
                               + [(n, engines[n]) for n in order[at:]])
    res = side_by_side(engines, rounds=rounds)
    for name, check in checks.items():
        res[name].update(check)
    for name, why in skipped.items():
        res[name] = {"skipped": why}
    return res
