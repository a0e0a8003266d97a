"""Measured per-layer selection: for each distinct conv2d workload of a model, build and time candidate
(family, knobs) pairs on the real target and keep the fastest in a tuning database keyed by (workload, target).

The idea follows PyTorch Inductor's ``select_algorithm.py`` (candidates x configs -> benchmark -> cache the winner
per shape). ``compile --db PATH`` applies the records without measuring (see :mod:`.select`); a second ``tune``
of the same model reuses them (nothing is re-measured unless ``--retune``).

Database file (JSON)::

    {"format": 1, "records": {"<target key>": {"<workload key>": {
        "family": "winograd", "knobs": {"tile": 4, ...}, "ms": 0.41, "gflops": 563.0,
        "workload": {...}, "candidates": 12, "measured": "2026-11-21T05:00:00+00:00"}}}}
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from convpipe.errors import ConvpipeError
from convpipe.schedules import Conv2dWorkload, TargetInfo, rules_for

FORMAT = 1


def target_key(target: TargetInfo) -> str:
    """Records are only reused on the same target: arch, ISA, core count and the TVM target config."""
    cfg = json.dumps(target.config, sort_keys=True)
    return f"{target.arch}/{target.isa}/{target.num_cores}/{cfg}"


class TuningDatabase:
    """A JSON file of the best measured (family, knobs) per (workload, target).

    Raises:
        ConvpipeError: the file exists but is not a convpipe tuning database.
    """

    def __init__(self, path: str):
        self.path = path
        self.records: dict[str, dict[str, dict]] = {}
        if os.path.exists(path):
            try:
                with open(path) as f:
                    data = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise ConvpipeError(f"{path}: not a readable tuning database: {e}") from None
            if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("records"), dict):
                raise ConvpipeError(f"{path}: not a convpipe tuning database (format {FORMAT})")
            self.records = data["records"]

    def lookup(self, wl: Conv2dWorkload, target: TargetInfo) -> dict | None:
        return self.records.get(target_key(target), {}).get(wl.key())

    def store(self, wl: Conv2dWorkload, target: TargetInfo, record: dict) -> None:
        self.records.setdefault(target_key(target), {})[wl.key()] = record

    def save(self) -> None:
        """Write atomically (temporary file, then rename)."""
        d = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tune-", dir=d)
        with os.fdopen(fd, "w") as f:
            json.dump({"format": FORMAT, "records": self.records}, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


def model_workloads(imported, target: TargetInfo, layout: str = "auto") -> list[Conv2dWorkload]:
    """Distinct conv2d workloads of an imported model as ``compile`` builds them for ``target`` and ``layout``
    (NCHW or NCHW[x]c, :mod:`.layout`), in first-use order."""
    from .build import prepare
    from .layout import conv2d_calls
    from .lower import workload_of

    mod, _ = prepare(imported, target, layout)
    return list(dict.fromkeys(workload_of(call) for call in conv2d_calls(mod)))


def measure_local(rule, wl: Conv2dWorkload, target: TargetInfo, knobs: dict, min_repeat_ms: float = 40) -> float:
    """Median seconds of one run of ``rule``'s kernel for ``wl`` on this machine: its CPU, or its GPU 0 for a CUDA
    target (device code compiled by nvcc for the target's arch; TVM's ``time_evaluator`` synchronises the
    device around each repeat).

    Raises:
        ConvpipeError: a CUDA target and no local CUDA GPU.
    """
    import tvm

    from .cuda_device import cuda_build

    func = rule.build(wl, target, knobs).with_attr("global_symbol", "main")
    if target.arch == "cuda":
        from convpipe.runtime.module import cuda_gpu_missing

        if cuda_gpu_missing():
            raise ConvpipeError("tuning for CUDA needs a local GPU, or a remote one: give --remote HOST:PORT")
        dev, build = tvm.cuda(0), cuda_build(target.isa)
    else:
        dev, build = tvm.cpu(), contextlib.nullcontext()
    with build, target.target:
        ex = tvm.compile(tvm.IRModule({"main": func}), target=target.target)
    rng = np.random.default_rng(0)
    x = tvm.runtime.tensor(rng.standard_normal(wl.data_tensor_shape).astype("float32"), dev)
    w = tvm.runtime.tensor(rule.pack_weight(rng.standard_normal(wl.weight_shape).astype("float32"), wl, knobs), dev)
    out = tvm.runtime.tensor(np.zeros(wl.out_tensor_shape, "float32"), dev)
    f = ex.mod.time_evaluator("main", dev, number=1, repeat=5, min_repeat_ms=min_repeat_ms)
    return float(np.median(f(x, w, out).results))


@dataclass
class TuneResult:
    workload: Conv2dWorkload
    record: dict
    reused: bool


def candidates(wl: Conv2dWorkload, target: TargetInfo) -> list[tuple[str, dict]]:
    """Every (family, knobs) pair worth measuring for ``wl``: each supporting family's candidate knobs."""
    out = []
    for fam, rule in rules_for(target.arch).items():
        if rule.supports(wl, target):
            out.extend((fam, k) for k in rule.candidate_knobs(wl, target))
    return out


def tune_workloads(
    workloads: list[Conv2dWorkload],
    target: TargetInfo,
    db: TuningDatabase,
    budget_s: float = 300.0,
    retune: bool = False,
    measure: Callable | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[TuneResult]:
    """Measure candidates for every workload lacking a record (all of them with ``retune``) and store the best.

    The budget is shared out evenly over the workloads still to tune; a workload always gets its default
    (heuristic) candidate measured, so every record is at least as good as ``auto``'s guess. Candidates that
    fail to build are skipped. The database is saved after each workload.

    Args:
        measure: ``(rule, wl, target, knobs) -> seconds``; defaults to :func:`measure_local`.
        progress: called with a status line per measured candidate (the CLI shows it in a progress bar).
    """
    from .select import auto_family

    measure = measure or measure_local
    rules = rules_for(target.arch)
    todo = [wl for wl in workloads if retune or db.lookup(wl, target) is None]
    results = [TuneResult(wl, db.lookup(wl, target), True) for wl in workloads if wl not in todo]
    deadline = time.monotonic() + budget_s
    for i, wl in enumerate(todo):
        share = max(0.0, (deadline - time.monotonic()) / (len(todo) - i))
        t_end = time.monotonic() + share
        auto_fam, _ = auto_family(wl, rules, target)
        cands = candidates(wl, target)
        default = (auto_fam, rules[auto_fam].default_knobs(wl, target))
        cands = [default] + [c for c in cands if c != default]
        best = None
        tried = 0
        for j, (fam, knobs) in enumerate(cands):
            if j > 0 and time.monotonic() > t_end:
                break
            try:
                sec = measure(rules[fam], wl, target, knobs)
            except Exception as e:  # an invalid candidate must not stop tuning
                if progress:
                    progress(f"[{i + 1}/{len(todo)}] {fam} {knobs}: failed ({type(e).__name__})")
                continue
            tried += 1
            if best is None or sec < best[0]:
                best = (sec, fam, knobs)
            if progress:
                progress(
                    f"[{i + 1}/{len(todo)}] {wl.key()}  best {best[1]} {wl.flops / best[0] / 1e9:.1f} GFLOP/s"
                )
        if best is None:
            raise ConvpipeError(f"no candidate could be built for {wl.describe()}")
        sec, fam, knobs = best
        record = {
            "family": fam,
            "knobs": dict(knobs),
            "ms": sec * 1e3,
            "gflops": wl.flops / sec / 1e9,
            "workload": wl.to_dict(),
            "candidates": tried,
            "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        db.store(wl, target, record)
        db.save()
        results.append(TuneResult(wl, record, False))
    return results
