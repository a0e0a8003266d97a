"""``convpipe demo``: the main job, end to end on real models and real images.

1. ResNet-18 (torchvision architecture, seeded weights -- not trained --, BatchNorm statistics recalibrated on skimage
   photos) -> ONNX; compile for this host's x86 CPU with ``--schedule auto``; run it on a real photo (skimage's
   ``chelsea``), verify against onnxruntime and PyTorch; the per-layer schedule table and the latency vs
   onnxruntime and PyTorch, side by side. It shows the compiler, not a classification.
2. Face detection, a task with trained weights: the full MTCNN detector (:mod:`convpipe.mtcnn`: P-Net over an image
   pyramid, R-Net and O-Net refinement, landmarks; facenet-pytorch's trained weights) with every network run by
   convpipe artifacts, on skimage's astronaut, camera and coffee and matplotlib's grace_hopper; annotated PNGs, the
   faces matched against facenet-pytorch's own ``MTCNN.detect``, and the whole detector timed against the same
   pipeline on onnxruntime sessions and facenet-pytorch in eager PyTorch.

This module returns data (:class:`DemoResult`, :class:`DetectorResult`); :mod:`convpipe.report` prints it
(:func:`convpipe.report.print_demo`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

#: the demo's single models in order, and whether each is benchmarked (the MTCNN nets run inside the detector)
DEMO_MODELS = (("resnet18", True),)
#: the heading a model gets in the demo, where it differs from the zoo's description
DEMO_LABELS = {"resnet18": "torchvision ResNet-18, seeded weights (not trained): compile, verify, latency"}


@dataclass
class DemoResult:
    """One model of the demo: where its ONNX and artifact are, the compile's timings and manifest, the verification
    against onnxruntime (``checks`` at ``rtol``/``atol``), the max abs error against PyTorch eager, the top-5 class
    ids for a 1000-class output (else ``None``), and the side-by-side latency (``bench``, else ``None``) measured
    at ``threads`` threads."""

    name: str
    description: str
    onnx_path: str
    artifact: str
    seconds: dict
    manifest: dict
    checks: list
    rtol: float
    atol: float
    torch_max_abs: float
    top5: list[int] | None
    bench: dict | None
    threads: int

    @property
    def ok(self) -> bool:
        """Every output matches onnxruntime."""
        return all(c.ok for c in self.checks)


def run_model(name: str, out_dir: str, threads: int, bench: bool, rtol: float = 1e-3, atol: float = 1e-4) -> DemoResult:
    """Export the zoo model ``name`` into ``out_dir``, compile it for this host's x86 CPU (``--schedule auto``), run it
    on its real input, verify it against onnxruntime and PyTorch, and (``bench``) time it against them."""
    from convpipe.runtime import load

    from .bench import model_engines, side_by_side
    from .build import compile_model
    from .export import export_onnx, torch_outputs
    from .verify import compare, run_onnxruntime
    from .zoo import ZOO

    entry = ZOO[name]
    model = entry.build().eval()
    onnx_path = os.path.join(out_dir, f"{name}.onnx")
    artifact = os.path.join(out_dir, f"{name}.cpa")
    export_onnx(model, entry.input_shape, onnx_path, source=name)
    res = compile_model(onnx_path, artifact, "x86", "auto")
    x = entry.real_input(entry.input_shape)
    module = load(artifact)
    inputs = {module.inputs[0].name: x}
    ours = module.run(inputs)
    checks = compare(ours, run_onnxruntime(onnx_path, inputs), rtol, atol)
    torch_ref = torch_outputs(model, x)
    t_err = max(float(np.abs(o - t).max()) for o, t in zip(ours.values(), torch_ref))
    first = next(iter(ours.values()))
    top5 = np.argsort(-first[0])[:5].tolist() if first.ndim == 2 and first.shape[1] == 1000 else None
    timings = side_by_side(model_engines(artifact, onnx_path, inputs, threads, model)) if bench else None
    return DemoResult(name, entry.description, onnx_path, artifact, res.seconds, res.manifest, checks, rtol, atol,
                      t_err, top5, timings, threads)


@dataclass
class DetectorResult:
    """The face detector of the demo: one dict per photo as :func:`convpipe.mtcnn.demo` returns them."""

    photos: list[dict]

    @property
    def ok(self) -> bool:
        """Every photo's faces match facenet-pytorch's: same count, IoU >= 0.99 each (issue 16's criterion)."""
        return all(p["match"]["same_count"] and p["match"]["min_iou"] >= 0.99 for p in self.photos if "match" in p)


def run_demo(out_dir: str, threads: int, mtcnn: bool = True,
             on_model: Callable[[str, str], None] | None = None) -> Iterator[DemoResult | DetectorResult]:
    """Run the demo in ``out_dir``: yields a :class:`DemoResult` per model as it finishes (ResNet-18), then, unless
    ``mtcnn`` is False, the face detector's :class:`DetectorResult` (artifacts cached in
    ``out_dir/mtcnn_artifacts``, PNGs ``out_dir/mtcnn_{photo}.png``). ``on_model(name, description)`` is called
    before each part's work starts (to show progress). Print the results with :func:`convpipe.report.print_demo`."""
    from .bench import set_threads
    from .zoo import ZOO

    set_threads(threads)
    os.makedirs(out_dir, exist_ok=True)
    for name, bench in DEMO_MODELS:
        if on_model is not None:
            on_model(name, DEMO_LABELS.get(name, ZOO[name].description))
        yield run_model(name, out_dir, threads, bench)
    if mtcnn:
        from convpipe.mtcnn import demo as detect_faces

        if on_model is not None:
            on_model("mtcnn", "MTCNN face detector (facenet-pytorch's trained P/R/O-Nets as convpipe artifacts, "
                              "NumPy glue) on four photos")
        yield DetectorResult(detect_faces(out_dir, threads=threads))
