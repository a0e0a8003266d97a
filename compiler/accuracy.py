"""The whole-network accuracy guard for Winograd convolutions (issue 10).

Winograd F(m x m, 3 x 3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016) trades
fp32 accuracy for multiplies: per layer, its max error relative to max |output| is ~5e-7 for F(2, 3) and ~4e-6
for F(4, 3) (:data:`convpipe.schedules.cpu.winograd.ERROR_BOUND`), against ~1e-7 for a direct conv. Over a deep
network these errors add up and are amplified by the network's own conditioning, which no per-layer bound
predicts: in the corpus, torchvision ``wide_resnet101_2`` and ``deeplabv3_resnet50`` (seeded, 96x96) differ from
onnxruntime by 1.6e-4 and 1.1e-4 of max |ref| with F(4, 3) (tolerance 1e-4), and by 1.0e-4 and 6.7e-5 with direct
convs only, while ResNet-50 with the same F(4, 3) layers stays at 2e-5.

So the tile is chosen by measurement. After the build, when it holds Winograd layers and runs on this machine,
the compiler runs it on a seeded N(0, 1) input and, for an image input, a photo (:func:`guard_inputs`) next to
onnxruntime (graph optimisations off, as
:func:`.verify.run_onnxruntime`); when an output misses ``max |ours - ref| <= rtol * max |ref| + atol`` (the
corpus tolerance, :data:`.verify.NETWORK_RTOL` / :data:`.verify.NETWORK_ATOL`), it rebuilds with every Winograd
layer at F(2, 3) at most, then with no Winograd layer, and keeps the first build within the tolerance (or, when
none is, the one with the smallest error: the network is then at its fp32 noise floor). Each layer it changed is
a manifest fallback (stage ``winograd``) and the attempts are the manifest's ``accuracy`` entry, shown by
``inspect``. The guard costs two onnxruntime runs, two runs of the artifact per attempt, and a rebuild only for
the networks that need one.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Callable

import numpy as np

from convpipe.errors import ConvpipeError
from convpipe.schedules import TargetInfo

from .layout import Fallback, one_line
from .verify import NETWORK_ATOL, NETWORK_RTOL

#: The Winograd caps tried in order: ``None`` the layers as selected, ``2`` F(2, 3) at most, ``0`` no Winograd.
CAPS = (None, 2, 0)


@dataclass
class Attempt:
    """One guarded build: the Winograd cap it was built with (``None``: as selected; ``m``: F(m, 3) at most; ``0``:
    no Winograd layer) and its worst output's ``max_abs`` and ``max_rel`` (``max_abs / max |ref|``)."""

    cap: int | None
    max_abs: float
    max_rel: float
    ok: bool

    @property
    def label(self) -> str:
        return {None: "Winograd as selected", 0: "no Winograd"}.get(self.cap, f"Winograd F({self.cap}, 3) at most")

    def to_dict(self) -> dict:
        """The manifest's ``accuracy.attempts`` entry (non-finite errors as ``None``: JSON has no infinity)."""
        def num(v):
            return v if np.isfinite(v) else None

        return {"winograd": self.label, "max_abs": num(self.max_abs), "max_rel": num(self.max_rel), "ok": self.ok}


def not_guarded(target: TargetInfo, schedule: str, layers) -> str | None:
    """Why the guard does not apply to a build (``None``: it applies): no Winograd layer, a family the user
    asked for by name, or a target this machine cannot run."""
    if not any(layer.family == "winograd" for layer in layers):
        return "no Winograd layer"
    if schedule != "auto":
        return f"--schedule {schedule} was asked for"
    if target.arch != "x86":
        return f"the {target.arch} target does not run on this machine (check it with convpipe verify there)"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"this host is {platform.machine()}"
    from convpipe.runtime.module import _host_flags

    need = {"avx512": "avx512f", "avx2": "avx2"}.get(target.isa)
    flags = _host_flags()
    if need and flags and need not in flags:
        return f"this CPU lacks {need}"
    return None


def guard_inputs(imported) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The inputs the guard compares on, as ``(label, {name: array})``: seeded N(0, 1) for every input
    (:func:`.importer.random_inputs`, seed 0) and, when the model takes an image (a float32 ``[N, 1 or 3, H, W]``
    input, ``H, W >= 8``), also a natural photo there (skimage's ``coffee``, centre-cropped, resized, ImageNet
    mean/std-normalised; grey: its first channel). Both are needed: the corpus's two F(4, 3) misses were within
    the tolerance on N(0, 1) (1.4e-5 and 2.1e-5 of max |ref|) and beyond it on a photo (1.6e-4 and 1.1e-4)."""
    from .importer import random_inputs

    noise = random_inputs(imported.inputs, seed=0)
    sets = [("seeded N(0, 1)", noise)]
    images = [i for i in imported.inputs if i.dtype == "float32" and len(i.shape) == 4 and i.shape[1] in (1, 3)
              and min(i.shape[2:]) >= 8]
    if images:
        from .zoo import photo, to_nchw

        pic = dict(noise)
        for i in images:
            n, c, h, w = i.shape
            x = to_nchw(photo("coffee"), (h, w))[:, :c]
            pic[i.name] = np.ascontiguousarray(np.repeat(x, n, axis=0), dtype=np.float32)
        sets.append(("a photo (skimage coffee, ImageNet-normalised)", pic))
    return sets


def measure(library: str, imported, onnx_path: str, rtol: float = NETWORK_RTOL, atol: float = NETWORK_ATOL,
            refs: list | None = None) -> tuple[Attempt, list]:
    """Run the exported ``library`` (a Relax VM executable built from ``imported``; loaded from the file, as the
    runtime does: a VM made from the in-memory executable would make its later export log a "Scope Saving" line
    per function, and every load of the artifact a "Scope Loaded" line) on this CPU and onnxruntime on
    the same inputs (:func:`guard_inputs`); returns the :class:`Attempt` (cap unset; the worst output over every
    input) and onnxruntime's outputs per input (pass them back as ``refs`` to skip rerunning it).

    Raises:
        ConvpipeError: onnxruntime cannot load or run the model (see :func:`.verify.run_onnxruntime`).
    """
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from convpipe.runtime.module import flatten_outputs

    from .verify import compare, run_onnxruntime

    sets = guard_inputs(imported)
    if refs is None:
        refs = [run_onnxruntime(onnx_path, inputs) for _, inputs in sets]
    ok, worst_abs, worst_rel = True, 0.0, 0.0
    vm = VirtualMachine(tvm.runtime.load_module(library), tvm.cpu())
    for (_, inputs), ref in zip(sets, refs):
        res = flatten_outputs(vm["main"](*[tvm.runtime.tensor(inputs[i.name]) for i in imported.inputs]))
        ours = {o.name: r.numpy() for o, r in zip(imported.outputs, res)}
        for c in compare(ours, ref, rtol, atol):
            ok = ok and c.within(rtol, atol)  # normwise, not compare's elementwise ok
            worst_abs, worst_rel = max(worst_abs, c.max_abs), max(worst_rel, c.max_rel)
    return Attempt(None, worst_abs, worst_rel, bool(ok)), refs


def guard(build: Callable[[int | None], tuple], first: tuple, imported, onnx_path: str, target: TargetInfo,
          schedule: str, rtol: float = NETWORK_RTOL, atol: float = NETWORK_ATOL) -> tuple[tuple, dict, list[Fallback]]:
    """Keep Winograd only as far as the whole network stays within the tolerance (the module docstring).

    Args:
        build: ``build(cap)`` rebuilds the model with Winograd capped (:data:`CAPS`) and returns ``(executable,
            layer records, device code, fallbacks, the path of the exported library)``.
        first: that tuple for the build as selected (cap ``None``), already made.
        imported: the :class:`.importer.ImportedModel` built (its inputs and outputs name the VM's arguments).
        onnx_path: the source model, for onnxruntime.
        target, schedule: the build's target and ``--schedule`` (the guard runs for ``auto`` on this machine).
        rtol, atol: the tolerance, ``max |ours - ref| <= rtol * max |ref| + atol`` on every output.

    Returns:
        ``(the kept build's tuple, the manifest's accuracy entry, the winograd fallbacks of the kept build)``.
        The entry is ``{"checked": False, "why": ...}`` when the guard does not apply (or onnxruntime cannot run
        the model), else ``{"checked": True, "reference", "input", "rtol", "atol", "attempts", "kept"}``.
    """
    why = not_guarded(target, schedule, first[1])
    if why:
        return first, {"checked": False, "why": why}, []
    try:
        att, refs = measure(first[4], imported, onnx_path, rtol, atol)
    except ConvpipeError as e:
        return first, {"checked": False, "why": f"onnxruntime could not run the model: {e}"}, []
    except Exception as e:  # noqa: BLE001 -- the library failed here: the build stays, unguarded, and says why
        return first, {"checked": False, "why": f"the built library could not be run here: {one_line(e)}"}, []
    attempts, builds, stopped = [att], [first], None
    for cap in CAPS[1:]:
        if attempts[-1].ok:
            break
        if not any(layer.family == "winograd" and layer.knobs.get("m", 0) > cap for layer in builds[-1][1]):
            continue
        try:
            nxt = build(cap)
            att, _ = measure(nxt[4], imported, onnx_path, rtol, atol, refs)
        except Exception as e:  # noqa: BLE001 -- a rebuild that fails leaves the builds measured so far
            stopped = f"the rebuild with Winograd capped at F({cap}, 3) failed: {one_line(e)}" if cap else \
                f"the rebuild without Winograd failed: {one_line(e)}"
            break
        att.cap = cap
        attempts.append(att)
        builds.append(nxt)
    kept = next((k for k, a in enumerate(attempts) if a.ok), None)
    if kept is None:
        kept = min(range(len(attempts)), key=lambda k: attempts[k].max_abs)
    entry = {"checked": True, "reference": "onnxruntime (CPU, graph optimisations off)",
             "input": " and ".join(label for label, _ in guard_inputs(imported)), "rtol": rtol, "atol": atol,
             "attempts": [a.to_dict() for a in attempts], "kept": kept}
    if stopped:
        entry["stopped"] = stopped
    fallbacks = []
    if kept:
        a0 = attempts[0]
        why = (f"accuracy guard: with Winograd as selected the network differs from onnxruntime by "
               f"{a0.max_rel:.2g} of max|ref| (tolerance {rtol:g}*max|ref|+{atol:g}); kept: {attempts[kept].label}, "
               f"{attempts[kept].max_rel:.2g}" + ("" if attempts[kept].ok else " (no build met it: the network's "
                                                                            "fp32 noise floor)"))
        for old, new in zip(first[1], builds[kept][1]):
            if (old.family, old.knobs) != (new.family, new.knobs):
                taken = f"F({new.knobs['m']}, 3)" if new.family == "winograd" else new.family
                fallbacks.append(Fallback("winograd", f"conv2d #{old.index}",
                                          f"{taken} instead of F({old.knobs['m']}, 3)", why))
    return builds[kept], entry, fallbacks
