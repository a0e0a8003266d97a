"""Models by name and real inputs for them (no hub downloads).

- torchvision 0.28 architectures (``resnet18``, ``resnet50``, ``mobilenet_v2``, ``squeezenet1_1``,
  ``shufflenet_v2_x1_0``, ...) with ``weights=None``, their BatchNorm running statistics recalibrated on real
  photos (skimage's bundled images) so activations are not ~0 and an atol comparison means something;
- facenet-pytorch's MTCNN ``pnet``, ``rnet``, ``onet``, which ship real trained weights;
- any torchvision classification or segmentation architecture as ``torchvision/NAME`` and any timm architecture
  as ``timm/NAME`` (``weights=None`` / ``pretrained=False``, weights seeded from the name, BatchNorm statistics
  recalibrated on photos at the requested input size; segmentation models return their outputs as a tuple):
  the real-model corpus (``scripts/corpus.py``);
- ``package.module:factory`` returning an ``nn.Module``.

torchvision 0.28's wheel is a CUDA build: ``import torchvision`` fails on ``torchvision::nms`` unless
``torchvision._meta_registrations`` is stubbed first (see ``../shared/notes/tvm-0.27.md``); models work, ops/io
do not.
"""

from __future__ import annotations

import importlib
import sys
import types
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from convpipe.errors import ConvpipeError

#: ImageNet normalisation (torchvision's reference transforms).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
#: skimage.data photos used for BatchNorm calibration and demo inputs.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "retina", "hubble_deep_field", "coins")


def import_torchvision():
    """Import torchvision 0.28 (CUDA build) on a CPU-only torch: stub its meta registrations first."""
    if "torchvision" not in sys.modules:
        sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    import torchvision

    return torchvision


def photo(name: str = "astronaut") -> np.ndarray:
    """A bundled skimage photo as ``uint8[H, W, 3]`` RGB."""
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def to_nchw(img: np.ndarray, size: tuple[int, int], normalize: str = "imagenet") -> np.ndarray:
    """Centre-crop to square, resize to ``size`` = (H, W) (bilinear), -> ``float32[1, 3, H, W]``.

    ``normalize``: ``"imagenet"`` (mean/std), ``"mtcnn"`` ((x - 127.5) / 128, facenet-pytorch's convention).
    """
    from skimage.transform import resize

    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    x = resize(img, size, anti_aliasing=True, preserve_range=True).astype(np.float32)
    if normalize == "imagenet":
        x = (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    elif normalize == "mtcnn":
        x = (x - 127.5) / 128.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None].astype(np.float32))


def face_crop(size: int) -> np.ndarray:
    """The astronaut's face (skimage ``astronaut``, Eileen Collins), MTCNN-normalised, ``float32[1, 3, s, s]``."""
    img = photo("astronaut")[30:230, 140:340]  # the face region of the 512x512 photo
    return to_nchw(img, (size, size), normalize="mtcnn")


def calibrate_batchnorm(model, input_shape: tuple[int, ...], n_images: int = 16, seed: int = 0) -> None:
    """Recompute every BatchNorm's running mean/var from real photos (random crops of :data:`PHOTOS`, NCHW
    float32 at ``input_shape``'s H x W), in place.

    The model runs as inference runs it (eval mode: no dropout, no train-only branches such as Inception-v3's
    auxiliary classifier) with only the BatchNorm layers in train mode, averaging cumulatively (``momentum=None``)
    under ``torch.no_grad``; the model ends in eval.

    Raises:
        ConvpipeError: the model's forward fails at this input size (names the shape and the error).
    """
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        model.eval()
        return
    rng = np.random.default_rng(seed)
    _, _, h, w = input_shape
    batch = []
    for i in range(n_images):
        img = photo(PHOTOS[i % len(PHOTOS)])
        ih, iw = img.shape[:2]
        s = int(min(ih, iw) * rng.uniform(0.5, 1.0))
        y, x = rng.integers(0, ih - s + 1), rng.integers(0, iw - s + 1)
        batch.append(to_nchw(img[y : y + s, x : x + s], (h, w))[0])
    data = torch.from_numpy(np.stack(batch))
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.eval()
    for bn in bns:
        bn.train()
    try:
        with torch.no_grad():
            for chunk in data.split(8):
                model(chunk)
    except Exception as e:  # noqa: BLE001 -- the model's own error, named with the input size
        raise ConvpipeError(f"the model's forward failed at input {'x'.join(map(str, input_shape))} while "
                            f"recalibrating BatchNorm: {type(e).__name__}: {' '.join(str(e).split())[:300]}") from e
    finally:
        model.eval()


@dataclass(frozen=True)
class ZooEntry:
    """A named model: how to build it, its default input shape, and a real input for it."""

    build: Callable
    input_shape: tuple[int, ...]
    real_input: Callable[[tuple[int, ...]], np.ndarray]
    description: str


def _torchvision(name: str):
    def build():
        import torch

        torch.manual_seed(0)
        tv = import_torchvision()
        model = getattr(tv.models, name)(weights=None)
        calibrate_batchnorm(model, (1, 3, 224, 224))
        return model

    return build


def _mtcnn(name: str):
    def build():
        import_torchvision()
        from facenet_pytorch.models import mtcnn

        return getattr(mtcnn, name)(pretrained=True).eval()

    return build


def _photo_input(shape):
    return to_nchw(photo("chelsea"), (shape[2], shape[3]))


ZOO: dict[str, ZooEntry] = {
    "resnet18": ZooEntry(_torchvision("resnet18"), (1, 3, 224, 224), _photo_input, "torchvision ResNet-18, BN calibrated on photos"),
    "resnet50": ZooEntry(_torchvision("resnet50"), (1, 3, 224, 224), _photo_input, "torchvision ResNet-50, BN calibrated on photos"),
    "mobilenet_v2": ZooEntry(_torchvision("mobilenet_v2"), (1, 3, 224, 224), _photo_input, "torchvision MobileNetV2, BN calibrated on photos"),
    "squeezenet1_1": ZooEntry(_torchvision("squeezenet1_1"), (1, 3, 224, 224), _photo_input, "torchvision SqueezeNet 1.1"),
    "shufflenet_v2_x1_0": ZooEntry(_torchvision("shufflenet_v2_x1_0"), (1, 3, 224, 224), _photo_input, "torchvision ShuffleNetV2 x1.0 (grouped/depthwise), BN calibrated"),
    "pnet": ZooEntry(_mtcnn("PNet"), (1, 3, 120, 120), lambda s: face_crop(s[2]), "MTCNN P-Net (facenet-pytorch trained weights)"),
    "rnet": ZooEntry(_mtcnn("RNet"), (1, 3, 24, 24), lambda s: face_crop(s[2]), "MTCNN R-Net (facenet-pytorch trained weights)"),
    "onet": ZooEntry(_mtcnn("ONet"), (1, 3, 48, 48), lambda s: face_crop(s[2]), "MTCNN O-Net (facenet-pytorch trained weights)"),
}


#: Prefixes of hub-style specs (``timm/resnet18``) and the input shape their BatchNorm is calibrated at by default.
HUB_SOURCES = ("torchvision", "timm")
HUB_DEFAULT_SHAPE = (1, 3, 224, 224)


def hub_model(spec: str, input_shape: tuple[int, ...] | None = None):
    """``torchvision/NAME`` or ``timm/NAME`` -> an ``nn.Module`` in eval mode, weights seeded with
    ``crc32(NAME)`` (reproducible whatever ``PYTHONHASHSEED``), BatchNorm statistics recalibrated on photos
    (:func:`calibrate_batchnorm`) at ``input_shape`` (NCHW, default 1x3x224x224). torchvision segmentation models
    are built with ``weights_backbone=None`` too and return ``tuple(output dict values)`` (``out``, ``aux``).

    Raises:
        ConvpipeError: unknown source or architecture (names the closest matches), or the builder failed.
    """
    import torch

    source, _, name = spec.partition("/")
    if source not in HUB_SOURCES or not name:
        raise ConvpipeError(f"model {spec!r}: expected torchvision/NAME or timm/NAME")
    shape = tuple(input_shape or HUB_DEFAULT_SHAPE)
    with torch.random.fork_rng():
        torch.manual_seed(zlib.crc32(name.encode()))
        try:
            model = _build_hub(source, name)
        except ConvpipeError:
            raise
        except Exception as e:  # noqa: BLE001 -- a third-party builder's error, named
            raise ConvpipeError(f"model {spec!r}: {source} could not build it: {type(e).__name__}: {e}") from None
    calibrate_batchnorm(model, shape)
    return model.eval()


def _tuple_outputs(inner):
    """``inner`` (returning a dict, as torchvision's segmentation models do) wrapped to return the dict's values
    as a tuple, which the ONNX exporter takes as graph outputs in order."""
    import torch

    class TupleOutputs(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.inner = m

        def forward(self, x):
            return tuple(self.inner(x).values())

    return TupleOutputs(inner)


def _build_hub(source: str, name: str):
    import difflib

    if source == "torchvision":
        tv = import_torchvision()
        seg = tv.models.list_models(module=tv.models.segmentation)
        names = tv.models.list_models(module=tv.models) + seg
        if name not in names:
            close = difflib.get_close_matches(name, names, n=3)
            raise ConvpipeError(f"model 'torchvision/{name}': unknown; close matches: {close}")
        if name in seg:
            return _tuple_outputs(tv.models.get_model(name, weights=None, weights_backbone=None))
        return tv.models.get_model(name, weights=None)
    import_torchvision()  # timm imports torchvision
    import timm

    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise ConvpipeError(f"model 'timm/{name}': unknown; close matches: {close}")
    return timm.create_model(name, pretrained=False)


def get_model(spec: str, input_shape: tuple[int, ...] | None = None):
    """``(nn.Module in eval mode, default input shape or None, ZooEntry or None)`` for a zoo name,
    ``torchvision/NAME`` / ``timm/NAME`` (:func:`hub_model`, BatchNorm calibrated at ``input_shape``) or
    ``package.module:factory``.

    Raises:
        ConvpipeError: unknown name, unimportable module, missing factory, or a factory not returning an nn.Module.
    """
    import torch

    if spec.partition("/")[0] in HUB_SOURCES and ":" not in spec:
        return hub_model(spec, input_shape), HUB_DEFAULT_SHAPE, None
    if spec in ZOO:
        entry = ZOO[spec]
        return entry.build().eval(), entry.input_shape, entry
    if ":" not in spec:
        raise ConvpipeError(f"unknown model {spec!r}: expected one of {sorted(ZOO)}, torchvision/NAME, timm/NAME or "
                            "package.module:factory")
    mod_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConvpipeError(f"model {spec!r}: cannot import {mod_name!r}: {e}") from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise ConvpipeError(f"model {spec!r}: module {mod_name!r} has no attribute {attr!r}")
    model = factory() if callable(factory) and not isinstance(factory, torch.nn.Module) else factory
    if not isinstance(model, torch.nn.Module):
        raise ConvpipeError(f"model {spec!r}: factory returned {type(model).__name__}, expected torch.nn.Module")
    return model.eval(), None, None
