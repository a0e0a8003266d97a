"""convpipe.mtcnn (issue 16, the detector): MTCNN face detection with convpipe-compiled P/R/O-Nets and NumPy glue
against facenet-pytorch 2.6.0's ``MTCNN.detect`` on skimage's astronaut, camera (cameraman), coffee (no face) and
matplotlib's grace_hopper.jpg.

The reference is facenet-pytorch itself; the CPU-only torch here cannot run torchvision's compiled
``batched_nms`` (its wheel is a CUDA build), so the reference runs with an exact pure-torch equivalent
(:func:`convpipe.mtcnn.facenet_reference`: torchvision's coordinate trick + its CPU kernel's greedy loop, stable order).

The convpipe artifacts (29 P-Net sizes for the four photos + R-Net + O-Net) are compiled once into
``.cache/mtcnn/build-<compiler key>`` (``$CONVPIPE_MTCNN_CACHE`` overrides ``.cache/mtcnn``) and reused
afterwards: the first run takes minutes, later ones seconds; a change to the compiler's sources builds afresh
(:func:`convpipe.mtcnn.compiler_key`).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from convpipe import mtcnn
from convpipe.mtcnn import (BatchRunner, Detections, MTCNNDetector, area_resize, box_iou, draw_detections, load_photo,
                            nms_min, nms_union, pyramid)
from convpipe.report import detection_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("CONVPIPE_MTCNN_CACHE", os.path.join(REPO, ".cache", "mtcnn"))
PHOTOS = ("astronaut", "camera", "coffee", "grace_hopper")
#: faces facenet-pytorch finds (and the probability the issue quotes, when it does)
EXPECTED = {"astronaut": 1, "camera": 1, "coffee": 0, "grace_hopper": 1}


@pytest.fixture(scope="session")
def photos():
    return {p: load_photo(p) for p in PHOTOS}


@pytest.fixture(scope="session")
def reference(photos):
    """facenet-pytorch's ``MTCNN()`` (defaults) ``.detect(photo, landmarks=True)`` per photo
    (:func:`convpipe.mtcnn.facenet_reference`: torchvision's ``batched_nms`` replaced by an exact pure-torch one)."""
    return mtcnn.facenet_reference(photos)


@pytest.fixture(scope="session")
def convpipe_detector(photos):
    """The detector on convpipe artifacts (compiled into :data:`CACHE` when missing)."""
    runners = mtcnn.convpipe_runners(CACHE, [img.shape[:2] for img in photos.values()])
    return MTCNNDetector(*runners)


def _assert_matches(got: Detections, ref: Detections, p_tol: float = 1e-5, lm_tol: float = 0.1):
    assert len(got) == len(ref), (detection_table(got), detection_table(ref))
    assert got.boxes.shape == (len(ref), 4) and got.probs.shape == (len(ref),)
    assert got.landmarks.shape == (len(ref), 5, 2)
    for k in range(len(ref)):
        assert box_iou(got.boxes[k], ref.boxes[k]) >= 0.99, (got.boxes[k], ref.boxes[k])
        assert abs(float(got.probs[k]) - float(ref.probs[k])) <= p_tol, (got.probs[k], ref.probs[k])
        assert np.abs(got.landmarks[k] - ref.landmarks[k]).max() <= lm_tol, (got.landmarks[k], ref.landmarks[k])


def test_reference_finds_the_expected_faces(reference):
    """The issue's expectations of facenet-pytorch itself (guards the reference and the photos)."""
    assert {k: len(v) for k, v in reference.items()} == EXPECTED
    assert reference["astronaut"].probs[0] > 0.9999
    assert abs(float(reference["camera"].probs[0]) - 0.9991) < 1e-4


@pytest.mark.parametrize("name", PHOTOS)
def test_convpipe_matches_facenet(name, photos, reference, convpipe_detector):
    """Same faces as ``MTCNN.detect``: count, IoU >= 0.99 per face, probabilities within 1e-5, landmarks within
    0.1 pixel (seen: IoU >= 0.999998, probabilities equal in float32, 6e-5 px); nothing on coffee."""
    got = convpipe_detector.detect(photos[name])
    _assert_matches(got, reference[name])
    assert got.counts["scales"] == len(pyramid(*photos[name].shape[:2]))


def test_glue_is_bit_exact_with_torch_nets(photos, reference):
    """With the eager facenet-pytorch nets as runners the NumPy glue gives ``MTCNN.detect``'s numbers exactly."""
    det = MTCNNDetector(*mtcnn.torch_runners())
    for name in ("astronaut", "grace_hopper"):
        got, ref = det.detect(photos[name]), reference[name]
        assert np.array_equal(got.boxes, ref.boxes) and np.array_equal(got.probs, ref.probs)
        assert np.array_equal(got.landmarks, ref.landmarks)


def test_ort_runners(photos, reference, tmp_path_factory):
    """The same pipeline on onnxruntime sessions (dynamic-shape ONNX)."""
    det = MTCNNDetector(*mtcnn.ort_runners(CACHE))
    for name in ("camera", "coffee"):
        _assert_matches(det.detect(photos[name]), reference[name])
    for shape in ((10, 10, 3), (100, 80, 3), (64, 64)):  # no pyramid level / nothing found / grey
        got = det.detect(np.zeros(shape, np.uint8))
        assert got.boxes.shape == (0, 4) and got.probs.shape == (0,) and got.landmarks.shape == (0, 5, 2)


def test_convpipe_runners_need_no_torch(convpipe_detector):
    """Cached artifacts run with convpipe.runtime + NumPy only: the detector works with torch made unimportable
    (``import torch`` raises; tvm_ffi would otherwise import it, optionally, whenever TVM is imported)."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "from convpipe.mtcnn import MTCNNDetector, convpipe_runners, load_photo\n"
        "img = load_photo('camera')\n"
        f"det = MTCNNDetector(*convpipe_runners({CACHE!r}, compile_missing=False))\n"
        "d = det.detect(img)\n"
        "assert len(d) == 1, d\n"
        "print('ok', d.probs[0])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


def test_import_is_light():
    """``import convpipe.mtcnn`` imports neither torch nor TVM nor onnxruntime."""
    code = ("import sys, convpipe.mtcnn\n"
            "print(sorted(m for m in ('torch', 'tvm', 'onnxruntime', 'onnx', 'matplotlib') if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr[-2000:])


def test_area_resize_is_torch_area_interpolation():
    """:func:`area_resize` = ``interpolate(mode="area")`` bit for bit on integer images, down and up."""
    import torch
    from torch.nn.functional import interpolate

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 37, 53)).astype(np.float32)
    for size in ((24, 24), (5, 7), (37, 53), (48, 48), (100, 61), (14, 20)):
        ref = interpolate(torch.from_numpy(img)[None], size=size, mode="area")[0].numpy()
        assert np.array_equal(area_resize(img, size), ref), size


def test_nms_variants():
    """:func:`nms_union` = torchvision's nms (via :func:`convpipe.mtcnn._torch_nms`); :func:`nms_min` = facenet-pytorch's nms_numpy."""
    import torch

    from convpipe.compiler.zoo import import_torchvision

    import_torchvision()
    import facenet_pytorch.models.utils.detect_face as detect_face

    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 80, (300, 2)).astype(np.float32)
    wh = rng.uniform(5, 40, (300, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.choice(np.linspace(0.6, 1, 50, dtype=np.float32), 300)  # ties included
    for thr in (0.5, 0.7):
        ref = mtcnn._torch_nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).numpy()
        assert np.array_equal(nms_union(boxes, scores, thr), ref)
        assert np.array_equal(nms_min(boxes, scores, thr, "Min"), detect_face.nms_numpy(boxes, scores, thr, "Min"))
    assert len(nms_union(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5)) == 0


def test_batch_runner_pads_and_trims():
    """Fixed-batch chunks: any N, rows independent, padding rows dropped."""
    seen = []

    def runner(x):
        seen.append(x.shape)
        return x.sum(axis=(1, 2, 3))[:, None], x[:, :1, 0, 0] * 2

    br = BatchRunner(runner, 4)
    x = np.arange(7 * 3 * 2 * 2, dtype=np.float32).reshape(7, 3, 2, 2)
    a, b = br(x)
    assert seen == [(4, 3, 2, 2), (4, 3, 2, 2)] and a.shape == (7, 1) and b.shape == (7, 1)
    np.testing.assert_array_equal(a[:, 0], x.sum(axis=(1, 2, 3)))
    np.testing.assert_array_equal(b[:, 0], x[:, 0, 0, 0] * 2)


def test_pyramid_sizes():
    """facenet-pytorch's scales: 12/20 * 0.709**k while min side * scale >= 12; sizes int(side * s + 1)."""
    levels = pyramid(512, 512)
    assert len(levels) == 10 and levels[0] == (0.6, (308, 308)) and levels[-1][1] == (14, 14)
    assert pyramid(400, 600)[0][1] == (241, 361)


def test_demo(photos, convpipe_detector, tmp_path):
    """:func:`convpipe.mtcnn.demo` on cached artifacts: a PNG per photo, faces matched against facenet-pytorch,
    and the report's tables."""
    import io

    from rich.console import Console

    from convpipe import report
    from convpipe.compiler.demo import DetectorResult

    res = mtcnn.demo(tmp_path, ("camera", "coffee"), cache_dir=CACHE, compare_ort=False, repeats=1)
    assert [len(r["detections"]) for r in res] == [1, 0]
    assert all(os.path.getsize(r["png"]) > 1000 for r in res)
    assert res[0]["match"]["same_count"] and res[0]["match"]["min_iou"] >= 0.99 and res[1]["match"]["min_iou"] == 1
    det = DetectorResult(res)
    assert det.ok
    out = io.StringIO()
    report.print_mtcnn(Console(file=out, width=200, markup=False, highlight=False), det)
    text = out.getvalue()
    assert "camera: 1 face(s)" in text and "no face found" in text and "min IoU" in text and "same" in text
    res[0]["match"] = mtcnn.match(res[1]["detections"], res[0]["detections"])  # 0 faces vs 1: not ok
    assert not DetectorResult(res).ok


def test_table_and_png(photos, reference, tmp_path):
    """The table lists x1 y1 x2 y2 p per face; the annotated PNG is written at the photo's size."""
    det = reference["camera"]
    table = detection_table(det)
    assert table.splitlines()[0].split() == ["#", "x1", "y1", "x2", "y2", "p"]
    assert table.splitlines()[1].split()[-1] == f"{det.probs[0]:.5f}"
    assert detection_table(reference["coffee"]) == "no face found"
    path = draw_detections(photos["camera"], det, tmp_path / "camera.png", title="camera")
    import matplotlib.image

    png = matplotlib.image.imread(path)
    assert png.shape[:2] == photos["camera"].shape[:2]
