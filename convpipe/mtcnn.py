"""MTCNN face detection whose three networks run as convpipe artifacts and whose glue is NumPy.

The algorithm is Zhang et al. 2016, "Joint Face Detection and Alignment using Multi-task Cascaded Convolutional
Networks" (IEEE SPL 23(10)): a proposal network (P-Net) slides over an image pyramid, its candidate windows are
refined by R-Net on 24x24 crops and by O-Net on 48x48 crops, which also gives 5 landmarks (eyes, nose, mouth
corners). This module reproduces, step for step and in float32, facenet-pytorch 2.6.0's ``MTCNN.detect``
(``facenet_pytorch/models/utils/detect_face.py``, ``detect_face``), whose trained weights the networks carry:

1. scales ``m * factor**k`` with ``m = 12 / min_face_size`` while ``min(H, W) * scale >= 12``; each level is the
   image resized to ``(int(H * s + 1), int(W * s + 1))`` with PyTorch's ``interpolate(mode="area")``
   (adaptive average pooling, reproduced exactly for integer-valued images by :func:`area_resize`), normalised
   ``(x - 127.5) * 0.0078125``;
2. P-Net -> windows whose face probability is ``>= thresholds[0]`` (``generateBoundingBox``: stride 2, cell 12),
   NMS 0.5 per scale, NMS 0.7 across scales (torchvision ``batched_nms`` semantics: IoU without ``+1``, stable
   order by descending score), box regression with the P-Net offsets, ``rerec`` (square boxes);
3. crops ``img[y-1:ey, x-1:ex]`` of the truncated, clipped boxes (``pad``: no zero padding, a box leaving the
   image is cropped to the image and stretched), area-resized to 24x24 -> R-Net, keep ``p > thresholds[1]``,
   NMS 0.7, ``bbreg`` (with ``+1`` widths), ``rerec``;
4. the same crops at 48x48 -> O-Net, keep ``p > thresholds[2]``, landmarks from the O-Net box, ``bbreg``, NMS 0.7
   with the 'Min' overlap (intersection over the smaller area, ``+1`` widths; facenet-pytorch's ``nms_numpy``);
5. with ``select_largest`` (facenet-pytorch's default) faces are ordered by box area, largest first; otherwise in
   the NMS order (descending probability).

The networks are "runners": callables mapping a float32 NCHW array to a tuple of NumPy arrays in the order the
facenet-pytorch modules return them -- P-Net ``(reg[1, 4, h', w'], prob[1, 2, h', w'])``, R-Net
``(reg[N, 4], prob[N, 2])``, O-Net ``(reg[N, 4], landmarks[N, 10], prob[N, 2])``. The same pipeline therefore
runs with convpipe artifacts (:func:`convpipe_runners`), onnxruntime sessions (:func:`ort_runners`) or the eager
PyTorch modules (:func:`torch_runners`).

Importing this module imports neither torch nor TVM: the convpipe runners need :mod:`convpipe.runtime` and NumPy;
torch is imported only to export and compile artifacts that are not in the cache yet.

Differences from facenet-pytorch: one image per call (facenet-pytorch also takes batches of equal-size images);
a refined box that lies entirely outside the image (an empty crop) is dropped, where facenet-pytorch skips its
crop but keeps the box, and then fails on the mismatched lengths; the image is integer-valued for the area
resampling to be bit-exact (a float image is resampled with float64 sums: within rounding of PyTorch's).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from convpipe.errors import ConvpipeError

__all__ = ["DEFAULT_THRESHOLDS", "DEMO_PHOTOS", "Detections", "MTCNNDetector", "BatchRunner", "PNetRunner",
           "area_resize", "box_iou", "compiler_key", "convpipe_runners", "demo", "draw_detections", "facenet_reference", "load_photo",
           "match", "module_runner", "nms_min", "nms_union", "ort_runners", "pyramid", "torch_runners"]

#: A network: float32 NCHW array -> tuple of float32 arrays (facenet-pytorch's output order).
Runner = Callable[[np.ndarray], tuple]

DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)
#: Photos :func:`demo` runs on by default: skimage's ``astronaut``, ``camera``, ``coffee`` (no face) and
#: matplotlib's sample ``grace_hopper.jpg``.
DEMO_PHOTOS = ("astronaut", "camera", "coffee", "grace_hopper")


@dataclasses.dataclass
class Detections:
    """The faces found in one image (pixel coordinates of the input image, x right, y down, float32).

    Attributes:
        boxes: ``float32[N, 4]`` -- ``x1, y1, x2, y2`` per face.
        probs: ``float32[N]`` -- O-Net's face probability.
        landmarks: ``float32[N, 5, 2]`` -- ``(x, y)`` of left eye, right eye, nose, left and right mouth corner.
        timings: seconds spent per stage of the :meth:`MTCNNDetector.detect` call that made this
            (``pnet``, ``rnet``, ``onet``: in the runners; ``glue``: the NumPy rest; ``total``).
        counts: candidate windows after each stage (``pnet``, ``rnet``, ``onet``) and ``scales``.
    """

    boxes: np.ndarray
    probs: np.ndarray
    landmarks: np.ndarray
    timings: dict = dataclasses.field(default_factory=dict)
    counts: dict = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.boxes)


# --------------------------------------------------------------------------------------------------- resampling
def _windows(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive pooling windows ``[start, end)`` per output index (ATen's ``start_index``/``end_index``)."""
    o = np.arange(n_out, dtype=np.int64)
    return (o * n_in) // n_out, ((o + 1) * n_in + n_out - 1) // n_out


def _integral(img_chw: np.ndarray) -> np.ndarray:
    """``float64[C, H+1, W+1]`` summed-area table of a CHW image (exact for integer-valued images)."""
    c, h, w = img_chw.shape
    s = np.zeros((c, h + 1, w + 1), np.float64)
    np.cumsum(img_chw, axis=1, dtype=np.float64, out=s[:, 1:, 1:])
    np.cumsum(s[:, 1:, 1:], axis=2, out=s[:, 1:, 1:])
    return s


def _area_from_integral(sat: np.ndarray, y0, x0, hk, wk, out_h: int, out_w: int) -> np.ndarray:
    """Area-resample ``n`` crops ``[y0:y0+hk, x0:x0+wk]`` (int arrays ``[n]``) of the image behind summed-area
    table ``sat`` to ``float32[n, C, out_h, out_w]``: window sums then ``sum / kh / kw`` in float32, as ATen's
    ``adaptive_avg_pool2d`` CPU kernel."""
    y0, x0, hk, wk = (np.asarray(v, np.int64).reshape(-1) for v in (y0, x0, hk, wk))
    oy = np.arange(out_h, dtype=np.int64)
    ox = np.arange(out_w, dtype=np.int64)
    ys = y0[:, None] + (oy[None] * hk[:, None]) // out_h
    ye = y0[:, None] + ((oy[None] + 1) * hk[:, None] + out_h - 1) // out_h
    xs = x0[:, None] + (ox[None] * wk[:, None]) // out_w
    xe = x0[:, None] + ((ox[None] + 1) * wk[:, None] + out_w - 1) // out_w
    w1 = sat.shape[2]
    flat = sat.reshape(sat.shape[0], -1)
    rs, re = (ys * w1)[:, :, None], (ye * w1)[:, :, None]
    cs, ce = xs[:, None, :], xe[:, None, :]

    def corner(r, c):
        return np.take(flat, (r + c).reshape(-1), axis=1)

    n = len(y0)
    sums = (corner(re, ce) - corner(rs, ce) - corner(re, cs) + corner(rs, cs)).reshape(-1, n, out_h, out_w)
    kh = (ye - ys).astype(np.float32)[:, :, None]
    kw = (xe - xs).astype(np.float32)[:, None, :]
    out = sums.astype(np.float32) / kh / kw
    return np.ascontiguousarray(out.transpose(1, 0, 2, 3))


def area_resize(img_chw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a ``[C, H, W]`` image to ``float32[C, h, w]`` like ``torch.nn.functional.interpolate(mode="area")``
    (adaptive average pooling: output ``i`` averages input rows ``floor(i*H/h) .. ceil((i+1)*H/h) - 1``).

    Bit-exact with PyTorch's float32 kernel for integer-valued images whose window sums stay below 2**24 (window
    sums are exact then, and the division is ``sum / kh / kw`` in float32 as ATen's); facenet-pytorch's
    ``imresample``.
    """
    img = np.asarray(img_chw)
    sat = _integral(img)
    return _area_from_integral(sat, [0], [0], [img.shape[1]], [img.shape[2]], size[0], size[1])[0]


# ---------------------------------------------------------------------------------------------------------- NMS
def nms_union(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS with torchvision's ``nms`` semantics (what facenet-pytorch calls through ``batched_nms`` for one
    image): boxes ``float32[N, 4]`` (x1, y1, x2, y2), areas ``(x2-x1)*(y2-y1)`` (no ``+1``), candidates in stable
    descending score order, a box is dropped when its IoU with a kept one is ``> threshold``; float32 arithmetic.

    Returns:
        ``int64[K]`` indices of the kept boxes, by descending score.
    """
    boxes = np.asarray(boxes, np.float32)
    scores = np.asarray(scores, np.float32)
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[:, k]) for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(len(boxes), bool)
    keep = []
    zero = np.float32(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in order:
            if suppressed[i]:
                continue
            keep.append(i)
            w = np.maximum(zero, np.minimum(x2[i], x2) - np.maximum(x1[i], x1))
            h = np.maximum(zero, np.minimum(y2[i], y2) - np.maximum(y1[i], y1))
            inter = w * h
            ovr = inter / (areas[i] + areas - inter)
            suppressed |= ovr.astype(np.float64) > threshold
    return np.asarray(keep, np.int64)


def nms_min(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "Min") -> np.ndarray:
    """facenet-pytorch's ``nms_numpy`` (the original MTCNN's NMS): areas with ``+1`` widths, candidates by
    ``np.argsort(scores)`` from the top, overlap ``inter / min(area_i, area_j)`` for ``method="Min"`` (IoU
    otherwise), a box is kept while its overlap is ``<= threshold``.

    Returns:
        ``int64[K]`` indices of the kept boxes, in pick order.
    """
    boxes = np.asarray(boxes)
    if boxes.size == 0:
        return np.zeros(0, np.int64)
    x1, y1, x2, y2 = (boxes[:, k].copy() for k in range(4))
    s = np.asarray(scores)
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(s)
    pick = []
    while order.size > 0:
        i = order[-1]
        pick.append(i)
        idx = order[0:-1]
        w = np.maximum(0.0, np.minimum(x2[i], x2[idx]) - np.maximum(x1[i], x1[idx]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[idx]) - np.maximum(y1[i], y1[idx]) + 1)
        inter = w * h
        o = inter / np.minimum(area[i], area[idx]) if method == "Min" else inter / (area[i] + area[idx] - inter)
        order = order[np.where(o <= threshold)]
    return np.asarray(pick, np.int64)


# ------------------------------------------------------------------------------------------------- box helpers
def pyramid(height: int, width: int, min_face_size: int = 20, factor: float = 0.709) -> list[tuple[float, tuple[int, int]]]:
    """The P-Net image pyramid for an ``height`` x ``width`` image: ``[(scale, (h, w)), ...]``, largest first, with
    ``scale = (12 / min_face_size) * factor**k`` while ``min(height, width) * scale >= 12`` and level size
    ``(int(height * scale + 1), int(width * scale + 1))`` (Python float arithmetic, as facenet-pytorch)."""
    m = 12.0 / min_face_size
    minl = min(height, width) * m
    scale, out = m, []
    while minl >= 12:
        out.append((scale, (int(height * scale + 1), int(width * scale + 1))))
        scale *= factor
        minl *= factor
    return out


def _rerec(b: np.ndarray) -> np.ndarray:
    """Square the boxes around their centres (side = the longer side), in place, float32."""
    h = b[:, 3] - b[:, 1]
    w = b[:, 2] - b[:, 0]
    side = np.maximum(w, h)
    b[:, 0] = b[:, 0] + w * np.float32(0.5) - side * np.float32(0.5)
    b[:, 1] = b[:, 1] + h * np.float32(0.5) - side * np.float32(0.5)
    b[:, 2] = b[:, 0] + side
    b[:, 3] = b[:, 1] + side
    return b


def _bbreg(b: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply R/O-Net box offsets (fractions of the ``+1`` width/height), in place, float32."""
    w = b[:, 2] - b[:, 0] + 1
    h = b[:, 3] - b[:, 1] + 1
    b1 = b[:, 0] + reg[:, 0] * w
    b2 = b[:, 1] + reg[:, 1] * h
    b3 = b[:, 2] + reg[:, 2] * w
    b4 = b[:, 3] + reg[:, 3] * h
    b[:, 0], b[:, 1], b[:, 2], b[:, 3] = b1, b2, b3, b4
    return b


def _pad(b: np.ndarray, w: int, h: int):
    """Truncate to int32 and clip (``x, y >= 1``; ``ex <= w``, ``ey <= h``): the crop is ``[y-1:ey, x-1:ex]``."""
    ib = np.trunc(b[:, :4]).astype(np.int32)
    x, y, ex, ey = ib[:, 0], ib[:, 1], ib[:, 2], ib[:, 3]
    x[x < 1] = 1
    y[y < 1] = 1
    ex[ex > w] = w
    ey[ey > h] = h
    return y, ey, x, ex


def _generate(reg: np.ndarray, prob: np.ndarray, scale: float, threshold: float) -> np.ndarray:
    """P-Net map -> ``float32[n, 9]`` rows ``x1, y1, x2, y2, score, dx1, dy1, dx2, dy2`` (``generateBoundingBox``:
    stride 2, cell 12, windows in row-major order of the map)."""
    p = prob[0, 1]
    yy, xx = np.nonzero(p >= np.float32(threshold))
    score = p[yy, xx]
    r = reg[0][:, yy, xx].T
    bb = np.stack([xx, yy], axis=1).astype(np.float32)
    s = np.float32(scale)
    q1 = np.floor((np.float32(2) * bb + np.float32(1)) / s)
    q2 = np.floor((np.float32(2) * bb + np.float32(12)) / s)
    return np.concatenate([q1, q2, score[:, None], r], axis=1).astype(np.float32, copy=False)


def _as_image(image) -> np.ndarray:
    """``[H, W, 3]`` (or ``[H, W]`` grey, or ``[H, W, 4]``) -> ``float32[3, H, W]``."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ConvpipeError(f"image: expected [H, W, 3] RGB (or [H, W] grey), got shape {list(a.shape)}")
    return np.ascontiguousarray(a[..., :3].transpose(2, 0, 1).astype(np.float32))


# ---------------------------------------------------------------------------------------------------- detector
class MTCNNDetector:
    """MTCNN face detection (Zhang et al. 2016) with facenet-pytorch's ``MTCNN.detect`` steps and defaults.

    Args:
        pnet, rnet, onet: runners (float32 NCHW -> tuple of NumPy arrays, facenet-pytorch's output order): P-Net
            is called with ``[1, 3, h, w]`` per pyramid level, R-Net with ``[N, 3, 24, 24]``, O-Net with
            ``[N, 3, 48, 48]`` (any ``N >= 1``; see :class:`BatchRunner` for artifacts of a fixed batch).
        min_face_size: smallest face searched for, pixels (sets the first pyramid scale ``12 / min_face_size``).
        thresholds: face-probability thresholds of P-, R- and O-Net.
        factor: pyramid scale step.
        select_largest: order faces by box area, largest first (facenet-pytorch's default); else by probability.
    """

    def __init__(self, pnet: Runner, rnet: Runner, onet: Runner, *, min_face_size: int = 20,
                 thresholds: Sequence[float] = DEFAULT_THRESHOLDS, factor: float = 0.709,
                 select_largest: bool = True):
        self.pnet, self.rnet, self.onet = pnet, rnet, onet
        self.min_face_size = min_face_size
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = factor
        self.select_largest = select_largest

    def pyramid(self, height: int, width: int) -> list[tuple[float, tuple[int, int]]]:
        """:func:`pyramid` with this detector's ``min_face_size`` and ``factor``."""
        return pyramid(height, width, self.min_face_size, self.factor)

    def detect(self, image) -> Detections:
        """Detect the faces in one image.

        Args:
            image: ``[H, W, 3]`` RGB (uint8, or integer-valued floats 0..255; ``[H, W]`` grey is replicated).

        Returns:
            :class:`Detections` (empty arrays when nothing is found), with per-stage timings.
        """
        t_start = time.perf_counter()
        run_t = {"pnet": 0.0, "rnet": 0.0, "onet": 0.0}
        img = _as_image(image)
        _, h, w = img.shape
        sat = _integral(img)
        th = self.thresholds
        levels = self.pyramid(h, w)

        def call(name, runner, x):
            t = time.perf_counter()
            out = runner(x)
            run_t[name] += time.perf_counter() - t
            return tuple(np.asarray(o, np.float32) for o in out)

        # Stage 1: P-Net over the pyramid, NMS 0.5 per scale, 0.7 across scales.
        picked = []
        for scale, (hs, ws) in levels:
            x = _area_from_integral(sat, [0], [0], [h], [w], hs, ws)
            x = (x - np.float32(127.5)) * np.float32(0.0078125)
            reg, prob = call("pnet", self.pnet, x)[:2]
            cand = _generate(reg, prob, scale, th[0])
            picked.append(cand[nms_union(cand[:, :4], cand[:, 4], 0.5)])
        boxes = np.concatenate(picked) if picked else np.zeros((0, 9), np.float32)
        boxes = boxes[nms_union(boxes[:, :4], boxes[:, 4], 0.7)]
        counts = {"scales": len(levels), "pnet": len(boxes)}
        regw = boxes[:, 2] - boxes[:, 0]
        regh = boxes[:, 3] - boxes[:, 1]
        boxes = np.stack([boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
                          boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh, boxes[:, 4]], axis=1)
        boxes = _rerec(boxes)

        # Stage 2: R-Net on 24x24 crops.
        if len(boxes):
            boxes, crops = self._crops(sat, boxes, w, h, 24)
        if len(boxes):
            reg, prob = call("rnet", self.rnet, crops)[:2]
            score = prob[:, 1]
            ok = score > np.float32(th[1])
            boxes = np.concatenate([boxes[ok, :4], score[ok, None]], axis=1)
            mv = reg[ok]
            pick = nms_union(boxes[:, :4], boxes[:, 4], 0.7)
            boxes, mv = boxes[pick], mv[pick]
            boxes = _rerec(_bbreg(boxes, mv))
        counts["rnet"] = len(boxes)

        # Stage 3: O-Net on 48x48 crops, landmarks, NMS 'Min'.
        points = np.zeros((0, 5, 2), np.float32)
        if len(boxes):
            boxes, crops = self._crops(sat, boxes, w, h, 48)
        if len(boxes):
            reg, lm, prob = call("onet", self.onet, crops)[:3]
            score = prob[:, 1]
            ok = score > np.float32(th[2])
            lm = lm[ok]
            boxes = np.concatenate([boxes[ok, :4], score[ok, None]], axis=1)
            mv = reg[ok]
            w_i = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
            h_i = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
            px = w_i * lm[:, :5] + boxes[:, 0:1] - 1
            py = h_i * lm[:, 5:10] + boxes[:, 1:2] - 1
            points = np.stack([px, py], axis=2)
            boxes = _bbreg(boxes, mv)
            pick = nms_min(boxes[:, :4], boxes[:, 4], 0.7, "Min")
            boxes, points = boxes[pick], points[pick]
        counts["onet"] = len(boxes)
        boxes = boxes.reshape(-1, 5)
        if self.select_largest and len(boxes):
            order = np.argsort((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[::-1]
            boxes, points = boxes[order], points[order]
        total = time.perf_counter() - t_start
        timings = dict(run_t, glue=total - sum(run_t.values()), total=total)
        return Detections(np.ascontiguousarray(boxes[:, :4]), np.ascontiguousarray(boxes[:, 4]),
                          np.ascontiguousarray(points, np.float32), timings, counts)

    __call__ = detect

    @staticmethod
    def _crops(sat, boxes, w, h, size):
        """Crops of ``boxes`` (``pad``: truncated, clipped, no padding) area-resized to ``size`` and normalised;
        boxes whose crop would be empty are dropped (facenet-pytorch fails on them)."""
        y, ey, x, ex = _pad(boxes, w, h)
        ok = (ey > y - 1) & (ex > x - 1)
        boxes, y, ey, x, ex = boxes[ok], y[ok], ey[ok], x[ok], ex[ok]
        crops = _area_from_integral(sat, y - 1, x - 1, ey - y + 1, ex - x + 1, size, size)
        return boxes, (crops - np.float32(127.5)) * np.float32(0.0078125)


# ------------------------------------------------------------------------------------------------------ runners
def module_runner(module) -> Runner:
    """A runner around a loaded convpipe artifact (:class:`convpipe.runtime.Module` or
    :class:`convpipe.api.CompiledModule`): one float32 NCHW array of exactly its input shape -> its outputs, in
    graph-output order, as NumPy arrays (copies: they outlive the next call)."""
    mod = getattr(module, "module", module)
    names = [o.name for o in mod.outputs]

    def run(x: np.ndarray) -> tuple:
        out = mod.run([np.ascontiguousarray(x, np.float32)])
        return tuple(np.array(out[n]) for n in names)

    run.module = mod
    return run


class BatchRunner:
    """Run a network compiled for a fixed batch ``B`` on any batch ``N``: rows in chunks of ``B``, the last chunk
    padded with zeros and its padding rows dropped from the outputs. Exact, since R-Net and O-Net treat every row
    independently (convpipe artifacts have static shapes: no variable batch).

    Args:
        runner: a runner for ``[B, ...]`` inputs (e.g. :func:`module_runner`).
        batch: ``B``.
    """

    def __init__(self, runner: Runner, batch: int):
        self.runner = runner
        self.batch = batch
        self.calls = 0

    def __call__(self, x: np.ndarray) -> tuple:
        n, b = len(x), self.batch
        outs = []
        for i in range(0, n, b):
            chunk = x[i:i + b]
            if len(chunk) < b:
                chunk = np.concatenate([chunk, np.zeros((b - len(chunk),) + chunk.shape[1:], chunk.dtype)])
            self.calls += 1
            outs.append(self.runner(np.ascontiguousarray(chunk, np.float32)))
        return tuple(np.concatenate([o[k] for o in outs])[:n] for k in range(len(outs[0])))


def _load_mtcnn_net(name: str):
    """facenet-pytorch's trained ``PNet`` / ``RNet`` / ``ONet`` in eval mode (imports torch)."""
    from convpipe.compiler.zoo import ZOO

    return ZOO[name].build()


class PNetRunner:
    """P-Net as convpipe artifacts, one per pyramid-level size (artifacts have static shapes).

    A call with ``[1, 3, h, w]`` runs the artifact ``pnet_{h}x{w}`` of ``cache_dir``: loaded on first use, compiled
    first (export + ``convpipe.compile``, torch imported then) when it is missing or does not load.

    Args:
        cache_dir: the artifact directory (``pnet_{h}x{w}/`` per size).
        threads: TVM threads when loading (``None``: TVM's default).
        compile_missing: compile missing sizes (else a missing size raises :class:`ConvpipeError`).
        target: convpipe target (default: this host's CPU).

    Attributes:
        compiled: ``{(h, w): seconds}`` of the artifacts this runner compiled.
        modules: ``{(h, w): runner}`` of the loaded ones.
    """

    def __init__(self, cache_dir: str | os.PathLike, threads: int | None = None, compile_missing: bool = True,
                 target: str | None = None):
        self.cache_dir = os.fspath(cache_dir)
        self.threads = threads
        self.compile_missing = compile_missing
        self.target = target
        self.compiled: dict = {}
        self.modules: dict = {}

    def prepare(self, sizes: Iterable[tuple[int, int]]) -> None:
        """Load (compiling when needed) the artifacts of these ``(h, w)`` level sizes ahead of use."""
        for s in sizes:
            self._get((int(s[0]), int(s[1])))

    def _get(self, size: tuple[int, int]) -> Runner:
        if size not in self.modules:
            path = os.path.join(self.cache_dir, f"pnet_{size[0]}x{size[1]}")
            self.modules[size] = module_runner(
                _load_or_compile("pnet", (1, 3) + size, path, self.threads, self.compile_missing, self.target,
                                 self.compiled, size))
        return self.modules[size]

    def __call__(self, x: np.ndarray) -> tuple:
        return self._get((int(x.shape[2]), int(x.shape[3])))(x)


def _load_or_compile(net: str, shape: tuple, path: str, threads, compile_missing: bool, target, compiled: dict,
                     key) -> object:
    """Load the artifact at ``path``; compile ``net`` (a zoo name) at ``shape`` there first when it is missing or
    fails to load (stale format, another machine's ISA)."""
    from convpipe.runtime import load

    if os.path.exists(os.path.join(path, "manifest.json")):
        try:
            mod = load(path, threads=threads)
            if tuple(mod.inputs[0].shape) == tuple(shape):
                return mod
        except ConvpipeError:
            pass
    if not compile_missing:
        raise ConvpipeError(f"{path}: no usable {net} artifact for input {list(shape)} (compile_missing=False)")
    import torch

    import convpipe

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    t = time.perf_counter()
    convpipe.compile(_load_mtcnn_net(net), torch.zeros(shape), output=path, target=target)
    compiled[key] = time.perf_counter() - t
    return load(path, threads=threads)


def compiler_key() -> str:
    """12 hex digits of SHA-1 over the sources of :mod:`convpipe.compiler`, :mod:`convpipe.schedules` and
    :mod:`convpipe.runtime` (every ``.py`` file, by relative path and content): the artifact cache's key, so that
    artifacts built by other compiler code are never reused. Imports none of those packages."""
    import hashlib
    import importlib.util

    h = hashlib.sha1()
    for pkg in ("convpipe.compiler", "convpipe.schedules", "convpipe.runtime"):
        for root in importlib.util.find_spec(pkg).submodule_search_locations:
            for dirpath, dirnames, files in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
                for f in sorted(files):
                    if f.endswith(".py"):
                        path = os.path.join(dirpath, f)
                        h.update(f"{pkg}/{os.path.relpath(path, root)}".encode())
                        with open(path, "rb") as fh:
                            h.update(fh.read())
    return h.hexdigest()[:12]


def convpipe_runners(cache_dir: str | os.PathLike, image_sizes: Iterable[tuple[int, int]] = (), *,
                     rnet_batch: int = 16, onet_batch: int = 4, threads: int | None = None,
                     min_face_size: int = 20, factor: float = 0.709, compile_missing: bool = True,
                     target: str | None = None) -> tuple[PNetRunner, BatchRunner, BatchRunner]:
    """The three MTCNN networks as convpipe artifacts, cached in ``cache_dir``.

    P-Net: one artifact per pyramid-level size (:class:`PNetRunner`, ``pnet_{h}x{w}/``), compiled ahead for the
    levels of ``image_sizes`` (photo ``(height, width)`` s) and lazily for any other size met later. R-Net
    (``rnet_b{B}/``, 24x24) and O-Net (``onet_b{B}/``, 48x48) are compiled for a fixed batch, since convpipe
    artifacts have static shapes: :class:`BatchRunner` runs them in chunks of ``rnet_batch`` / ``onet_batch`` rows,
    zero-padding the last chunk (exact: rows are independent).

    Artifacts live in ``cache_dir/build-{compiler_key()}``, so a change to the compiler's sources builds afresh;
    artifacts found there are loaded, not rebuilt (one that fails to load is rebuilt). Compiling imports torch (the nets are facenet-pytorch's, with their
    trained weights); loading needs only :mod:`convpipe.runtime`.

    Args:
        cache_dir: where the artifacts live.
        image_sizes: photo sizes ``(H, W)`` whose P-Net levels to prepare now.
        rnet_batch, onet_batch: the compiled batch of R-Net and O-Net.
        threads: TVM threads when loading.
        min_face_size, factor: the pyramid parameters the P-Net sizes are computed with.
        compile_missing: compile what the cache lacks (else :class:`ConvpipeError`).
        target: convpipe target (default: this host's CPU).

    Returns:
        ``(pnet, rnet, onet)`` runners for :class:`MTCNNDetector`. ``pnet.compiled`` and the ``compiled``
        attribute of the other two give the seconds spent compiling.
    """
    cache_dir = os.path.join(os.fspath(cache_dir), f"build-{compiler_key()}")
    pnet = PNetRunner(cache_dir, threads, compile_missing, target)
    pnet.prepare({size for hw in image_sizes for _, size in pyramid(hw[0], hw[1], min_face_size, factor)})
    nets = []
    for name, size, b in (("rnet", 24, rnet_batch), ("onet", 48, onet_batch)):
        compiled: dict = {}
        mod = _load_or_compile(name, (b, 3, size, size), os.path.join(cache_dir, f"{name}_b{b}"), threads,
                               compile_missing, target, compiled, (b, size))
        r = BatchRunner(module_runner(mod), b)
        r.compiled = compiled
        nets.append(r)
    return pnet, nets[0], nets[1]


def ort_runners(cache_dir: str | os.PathLike, threads: int | None = None) -> tuple[Runner, Runner, Runner]:
    """The three networks as onnxruntime sessions (CPU) on ONNX exported with dynamic shapes (P-Net: height and
    width; R-/O-Net: batch), cached as ``{pnet,rnet,onet}_dynamic.onnx`` in ``cache_dir`` (exporting imports
    torch; running needs onnxruntime).

    Args:
        threads: ``intra_op_num_threads`` (``None``: onnxruntime's default).
    """
    import onnxruntime as ort

    cache_dir = os.fspath(cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    runners = []
    for name, shape, axes in (("pnet", (1, 3, 24, 24), {2: "height", 3: "width"}), ("rnet", (1, 3, 24, 24), {0: "n"}),
                              ("onet", (1, 3, 48, 48), {0: "n"})):
        path = os.path.join(cache_dir, f"{name}_dynamic.onnx")
        if not os.path.exists(path):
            _export_dynamic(name, shape, axes, path)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0].name

        def run(x, sess=sess, inp=inp):
            return tuple(sess.run(None, {inp: np.ascontiguousarray(x, np.float32)}))

        run.session = sess
        runners.append(run)
    return tuple(runners)


def _export_dynamic(name: str, shape: tuple, axes: dict, path: str) -> None:
    """Export a facenet-pytorch net to ONNX with ``axes`` dynamic (TorchScript exporter), written atomically."""
    import io
    import warnings

    import torch

    from convpipe.compiler.output import write_file_atomically

    model = _load_mtcnn_net(name)
    n_out = 3 if name == "onet" else 2
    names = [f"output{i}" for i in range(n_out)]
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(shape),), buf, input_names=["input"], output_names=names,
                          dynamic_axes={"input": axes, **{n: {0: "n"} if name != "pnet" else {2: "oh", 3: "ow"}
                                                          for n in names}},
                          opset_version=17, dynamo=False)
    write_file_atomically(path, buf.getvalue())


def torch_runners(channels_last: bool = True) -> tuple[Runner, Runner, Runner]:
    """The three facenet-pytorch networks run eagerly (``torch.no_grad``, float32, CPU) as runners: the reference
    for the glue (with them :class:`MTCNNDetector` reproduces ``MTCNN.detect`` bit for bit). Imports torch.

    ``channels_last``: feed P-Net channels-last tensors, as ``detect_face`` does (its image tensor is an NHWC
    array permuted to NCHW, and interpolation keeps that memory format; the R/O-Net batches made by ``torch.cat``
    are contiguous): PyTorch's convolutions round differently in that format (~1e-7 on the probabilities), so
    this is what makes the match exact.
    """
    import torch

    runners = []
    for name in ("pnet", "rnet", "onet"):
        model = _load_mtcnn_net(name)
        fmt = torch.channels_last if channels_last and name == "pnet" else torch.contiguous_format

        def run(x, model=model, fmt=fmt):
            with torch.no_grad():
                t = torch.from_numpy(np.ascontiguousarray(x, np.float32)).contiguous(memory_format=fmt)
                return tuple(o.contiguous().numpy() for o in model(t))

        run.model = model
        runners.append(run)
    return tuple(runners)


# ------------------------------------------------------------------------------------------------------- output
def draw_detections(image, det: Detections, path: str | os.PathLike, title: str | None = None) -> str:
    """Write a PNG of ``image`` (``[H, W, 3]`` uint8 RGB, or grey) with each face's box, its 5 landmarks and its
    probability, drawn with matplotlib (Agg backend, no display needed). Returns ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    img = np.asarray(image)
    h, w = img.shape[:2]
    fig = Figure(figsize=(w / 100, h / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.axis("off")
    lw = max(1.5, min(h, w) / 250)
    for b, p, lm in zip(det.boxes, det.probs, det.landmarks):
        ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, edgecolor="lime", linewidth=lw))
        ax.scatter(lm[:, 0], lm[:, 1], s=(3 * lw) ** 2, c=["red", "red", "yellow", "cyan", "cyan"],
                   edgecolors="black", linewidths=0.5, zorder=3)
        ax.text(b[0], b[1] - 3, f"{p:.4f}", color="black", fontsize=max(7, min(h, w) / 60), va="bottom",
                bbox=dict(facecolor="lime", edgecolor="none", pad=1.5))
    if title:
        ax.text(4, 4, title, color="white", fontsize=max(7, min(h, w) / 60), va="top",
                bbox=dict(facecolor="black", alpha=0.6, edgecolor="none", pad=2))
    path = os.fspath(path)
    fig.savefig(path, dpi=100)
    return path


def load_photo(name: str) -> np.ndarray:
    """A photo as ``uint8[H, W, 3]`` RGB: ``grace_hopper`` (matplotlib's sample ``grace_hopper.jpg``), a
    ``skimage.data`` name (``astronaut``, ``camera``, ``coffee``, ...; grey ones replicated to 3 channels) or an
    image file path (read with matplotlib)."""
    if name == "grace_hopper":
        import matplotlib.cbook
        import matplotlib.image

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            img = matplotlib.image.imread(f, format="jpg")
    elif os.path.exists(name):
        import matplotlib.image

        img = matplotlib.image.imread(name)
        if img.dtype != np.uint8:  # PNGs come back as floats in [0, 1]
            img = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    else:
        import skimage.data

        if not hasattr(skimage.data, name):
            raise ConvpipeError(f"photo {name!r}: not a file, 'grace_hopper' or a skimage.data image")
        img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def demo(out_dir: str | os.PathLike, photos: Sequence[str] = DEMO_PHOTOS, *, cache_dir: str | os.PathLike | None = None,
         threads: int | None = None, compare_ort: bool = True, compare_facenet: bool = True,
         repeats: int = 3) -> list[dict]:
    """Detect the faces in ``photos`` with convpipe-compiled MTCNN networks and write ``mtcnn_{photo}.png``
    (annotated: :func:`draw_detections`) to ``out_dir``.

    Artifacts are cached in ``cache_dir`` (default ``{out_dir}/mtcnn_artifacts``; P-Net levels for all photos are
    compiled first). With ``compare_ort`` the same pipeline also runs on onnxruntime sessions; with
    ``compare_facenet`` facenet-pytorch's own ``MTCNN.detect`` runs in eager PyTorch (:func:`facenet_reference`) and
    each photo's faces are matched against it (:func:`match`). Times are the median of ``repeats`` whole detections
    per photo after one untimed warm-up (wall seconds, in this process, one engine after the other).

    Returns:
        One dict per photo: ``photo``, ``shape`` (H, W), ``detections`` (:class:`Detections`), ``png`` (path),
        ``seconds``; with ``compare_ort`` ``ort_detections``, ``ort_seconds``, ``ort_match``; with
        ``compare_facenet`` ``facenet_detections``, ``facenet_seconds``, ``match``. The first dict also carries
        ``compile_seconds`` and ``artifacts`` (how many were compiled now, 0 when all were cached).
    """
    import statistics

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    cache_dir = os.fspath(cache_dir) if cache_dir is not None else os.path.join(out_dir, "mtcnn_artifacts")
    images = {p: load_photo(p) for p in photos}
    pnet, rnet, onet = convpipe_runners(cache_dir, [im.shape[:2] for im in images.values()], threads=threads)
    compiled = list(pnet.compiled.values()) + list(rnet.compiled.values()) + list(onet.compiled.values())
    engines = {"": MTCNNDetector(pnet, rnet, onet)}
    if compare_ort:
        engines["ort_"] = MTCNNDetector(*ort_runners(cache_dir, threads))
    # one untimed warm-up of every engine first (artifact loading, first-call allocations)
    refs = [facenet_reference(images) for _ in range(max(1, repeats) + 1)][1:] if compare_facenet else []
    results = []
    for name, im in images.items():
        res = {"photo": name, "shape": im.shape[:2]}
        for prefix, det in engines.items():
            runs = [det.detect(im) for _ in range(max(1, repeats) + 1)][1:]
            res[f"{prefix}detections"] = runs[0]
            res[f"{prefix}seconds"] = statistics.median(r.timings["total"] for r in runs)
        if refs:
            res["facenet_detections"] = refs[0][name]
            res["facenet_seconds"] = statistics.median(r[name].timings["total"] for r in refs)
            res["match"] = match(res["detections"], refs[0][name])
            if compare_ort:
                res["ort_match"] = match(res["ort_detections"], refs[0][name])
        d = res["detections"]
        res["png"] = draw_detections(im, d, os.path.join(out_dir, f"mtcnn_{os.path.basename(name)}.png"),
                                     title=f"{name}: {len(d)} face(s), convpipe MTCNN")
        results.append(res)
    if results:
        results[0]["compile_seconds"] = sum(compiled)
        results[0]["artifacts"] = len(compiled)
    return results


def _torch_nms(boxes, scores, threshold):
    """torchvision's CPU ``nms`` kernel (``torchvision/csrc/ops/cpu/nms_kernel.cpp``) in plain torch: areas without
    ``+1``, stable descending score order, drop IoU > ``threshold`` (float32). ``boxes`` float32[N, 4] (x1, y1, x2,
    y2), ``scores`` float32[N] -> int64 indices kept, best first."""
    import torch

    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = torch.sort(scores, stable=True, descending=True)[1]
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        inter = w * h
        suppressed |= inter / (areas[i] + areas - inter) > threshold
    return torch.tensor(keep, dtype=torch.int64)


def _torch_batched_nms(boxes, scores, idxs, threshold):
    """torchvision's ``batched_nms`` (boxes of different ``idxs`` offset apart, then one :func:`_torch_nms`)."""
    import torch

    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    return _torch_nms(boxes + offsets[:, None], scores, threshold)


def facenet_reference(images: dict) -> dict:
    """facenet-pytorch's own ``MTCNN().detect(image, landmarks=True)`` (default thresholds) per image, as
    :class:`Detections` (empty arrays where it finds nothing) with its wall seconds in ``timings["total"]``.

    The CPU-only torch here cannot run torchvision's compiled ``batched_nms`` (``Couldn't load custom C++ ops``), so
    facenet-pytorch runs with an exact pure-torch equivalent (:func:`_torch_batched_nms`) patched in for the call.
    Imports torch and facenet-pytorch.
    """
    import time

    from convpipe.compiler.zoo import import_torchvision

    import_torchvision()
    import facenet_pytorch.models.utils.detect_face as detect_face
    from facenet_pytorch import MTCNN

    saved = detect_face.batched_nms
    detect_face.batched_nms = _torch_batched_nms
    try:
        model = MTCNN()
        out = {}
        for name, img in images.items():
            t = time.perf_counter()
            boxes, probs, points = model.detect(img, landmarks=True)
            dt = time.perf_counter() - t
            if boxes is None:
                out[name] = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                                       np.zeros((0, 5, 2), np.float32), {"total": dt})
            else:
                out[name] = Detections(boxes.astype(np.float32), np.asarray(probs, np.float32),
                                       points.astype(np.float32), {"total": dt})
        return out
    finally:
        detect_face.batched_nms = saved


def box_iou(a, b) -> float:
    """Intersection over union of two boxes ``(x1, y1, x2, y2)`` in pixels (no ``+1``)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def match(got: Detections, ref: Detections) -> dict:
    """How ``got`` agrees with ``ref`` face by face (both in :class:`MTCNNDetector`'s order): ``same_count``,
    ``min_iou`` (1.0 when neither found a face, 0.0 when the counts differ), ``max_dp`` (largest probability
    difference) and ``max_landmark_px``."""
    if len(got) != len(ref):
        return {"same_count": False, "min_iou": 0.0, "max_dp": float("nan"), "max_landmark_px": float("nan")}
    if not len(ref):
        return {"same_count": True, "min_iou": 1.0, "max_dp": 0.0, "max_landmark_px": 0.0}
    return {"same_count": True, "min_iou": min(box_iou(g, r) for g, r in zip(got.boxes, ref.boxes)),
            "max_dp": float(np.abs(got.probs.astype(np.float64) - ref.probs).max()),
            "max_landmark_px": float(np.abs(got.landmarks.astype(np.float64) - ref.landmarks).max())}
