"""Measured per-layer selection: for each distinct conv2d workload of a model, build and time candidate
(family, knobs) pairs on the real target and keep the fastest in a tuning database keyed by (workload, target).

The idea follows PyTorch Inductor's ``select_algorithm.py`` (candidates x configs -> benchmark -> cache the winner
per shape). ``compile --db PATH`` applies the records without measuring (see :mod:`.select`); a second ``tune``
of the same model reuses them (nothing is re-measured unless ``--retune``).

Database file (JSON)::

    {"format": 1, "records": {"<target key>": {"<workload key>": {
        "family": "winograd", "knobs": {"m": 4, ...}, "ms": 0.41, "gflops": 563.0,
        "workload": {...}, "candidates": 12, "measured": "2026-11-21T05:00:00+00:00"}}}}

Records are trusted only after checking (:func:`record_problem`): ``family`` names a rule of the target that
supports the workload, ``knobs`` lie in that rule's knob space for the workload and target
(:meth:`convpipe.schedules.rule.Conv2dRule.validate_knobs`), ``gflops`` (and ``ms`` when present) are positive
numbers, ``workload`` (when present) describes the workload the record is filed under. An invalid record is
ignored with one warning on the ``convpipe.tune`` logger (one line: database file, workload key, reason) -- the
layer then gets its default choice, and ``tune`` measures it again -- or, with ``TuningDatabase(path,
strict=True)``, raises :class:`ConvpipeError`.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

from convpipe.errors import ConvpipeError
from convpipe.schedules import Conv2dWorkload, TargetInfo, rules_for
from convpipe.schedules.rule import upgrade_knobs

from .kernel import measure_local, remote_measure  # noqa: F401 -- the measurers tune_workloads takes

FORMAT = 1

#: Where invalid records are reported (one line each; unconfigured, Python prints the bare message to stderr).
log = logging.getLogger("convpipe.tune")


def target_key(target: TargetInfo) -> str:
    """Records are only reused on the same target: arch, ISA, core count and the TVM target config."""
    cfg = json.dumps(target.config, sort_keys=True)
    return f"{target.arch}/{target.isa}/{target.num_cores}/{cfg}"


def _positive_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _workload_problem(described: object, wl: Conv2dWorkload) -> str | None:
    """``None`` when a record's ``workload`` field describes ``wl`` (the workload it is filed under), else why."""
    if not isinstance(described, dict):
        return f"'workload' must be an object (Conv2dWorkload fields), got {type(described).__name__} {described!r:.60}"
    try:
        other = Conv2dWorkload.from_dict(described)
    except (TypeError, ValueError, ArithmeticError) as e:
        return f"'workload' is not a conv2d workload ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    if other != wl:
        return f"'workload' describes another conv2d ({described!r:.120}): the record is filed under the wrong key"
    return None


def record_problem(record: object, wl: Conv2dWorkload, target: TargetInfo) -> str | None:
    """``None`` when ``record`` (as read from a database) may be used for ``wl`` on ``target``, else a one-line
    reason: not a JSON object; ``family``, ``knobs`` or ``gflops`` missing; a family that is not one of the
    target's rules or does not support ``wl``; ``gflops`` (or ``ms``, when present) not a positive number;
    ``workload`` (when present) not describing ``wl`` (a record copied under another workload's key); knobs
    outside the rule's knob space (:meth:`~convpipe.schedules.rule.Conv2dRule.validate_knobs`: names the knob,
    expected vs got)."""
    if not isinstance(record, dict):
        return f"the record is not a JSON object (got {type(record).__name__} {record!r:.60})"
    for name in ("family", "knobs", "gflops"):
        if name not in record:
            return f"the record has no {name!r}"
    rules = rules_for(target.arch)
    fam = record["family"]
    if not isinstance(fam, str) or fam not in rules:
        return f"family {fam!r:.40} is not a {target.arch} schedule (expected one of {', '.join(rules)})"
    why = rules[fam].unsupported_reason(wl, target)
    if why is not None:
        return f"family {fam!r} cannot compute this workload: {why}"
    for name in ("gflops", "ms"):
        if name in record and not _positive_number(record[name]):
            return f"{name!r} must be a positive number, got {record[name]!r:.40}"
    if "workload" in record:
        why = _workload_problem(record["workload"], wl)
        if why is not None:
            return why
    why = rules[fam].validate_knobs(wl, target, record["knobs"])
    return None if why is None else f"{fam}: {why}"


class TuningDatabase:
    """A JSON file of the best measured (family, knobs) per (workload, target).

    Args:
        path: the JSON file (absent: an empty database, created by :meth:`save`).
        strict: an invalid record (see :func:`record_problem`) or a malformed target entry raises
            :class:`ConvpipeError` instead of being skipped with a warning.

    Raises:
        ConvpipeError: the file exists but is not a convpipe tuning database (unreadable, not JSON, wrong
            ``format``, ``records`` not an object); with ``strict``, also a target entry of ``records`` that is
            not an object of records.
    """

    def __init__(self, path: str, strict: bool = False):
        self.path = path
        self.strict = strict
        self.records: dict[str, dict[str, dict]] = {}
        self._checked: dict[tuple[str, str], dict | None] = {}  # (target key, workload key) -> usable record
        if os.path.exists(path):
            try:
                with open(path) as f:
                    data = json.load(f)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
                raise ConvpipeError(f"{path}: not a readable tuning database: {e}") from None
            if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("records"), dict):
                raise ConvpipeError(f"{path}: not a convpipe tuning database (format {FORMAT})")
            records = data["records"]
            for tkey, entry in list(records.items()):
                if not isinstance(entry, dict):
                    self._invalid(
                        f"target entry {tkey!r:.120} is not an object of records (got {type(entry).__name__})", "dropped"
                    )
                    del records[tkey]
            self.records = records

    def _invalid(self, what: str, action: str) -> None:
        """Report one invalid entry: a warning line (``action``: what happens instead), or, strict, raise."""
        if self.strict:
            raise ConvpipeError(f"{self.path}: {what}")
        log.warning("%s: %s; %s", self.path, what, action)

    def lookup(self, wl: Conv2dWorkload, target: TargetInfo) -> dict | None:
        """The record of ``wl`` on ``target`` when there is one and it is valid (:func:`record_problem`), else
        ``None``. The record returned is a copy with ``ms`` derived from ``gflops`` when absent and
        ``candidates`` 0 when absent. Each invalid record is reported once per database object (one warning).

        Raises:
            ConvpipeError: ``strict`` and the record is invalid (names the file, the workload key and the reason).
        """
        tkey, wkey = target_key(target), wl.key()
        if (tkey, wkey) in self._checked:
            return self._checked[(tkey, wkey)]
        entry = self.records.get(tkey, {})
        record = None
        if wkey in entry:
            raw = entry[wkey]
            if isinstance(raw, dict) and isinstance(raw.get("knobs"), dict):  # knob names written before issue 13
                raw = {**raw, "knobs": upgrade_knobs(raw.get("family"), raw["knobs"])}
            why = record_problem(raw, wl, target)
            if why is None:
                record = {"candidates": 0, **raw, "knobs": dict(raw["knobs"])}
                record.setdefault("ms", wl.flops / (raw["gflops"] * 1e9) * 1e3)
            else:
                where = f"{target.arch}/{target.isa}"
                self._invalid(f"tuning record for {wkey} on {where} is invalid: {why}", "ignored")
        self._checked[(tkey, wkey)] = record
        return record

    def store(self, wl: Conv2dWorkload, target: TargetInfo, record: dict) -> None:
        """Add or replace the record of ``wl`` on ``target`` (checked again by the next :meth:`lookup`)."""
        tkey, wkey = target_key(target), wl.key()
        self.records.setdefault(tkey, {})[wkey] = record
        self._checked.pop((tkey, wkey), None)

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
    from .conv_calls import distinct_workloads

    mod, _ = prepare(imported, target, layout)
    return distinct_workloads(mod)


def failure_reason(e: BaseException, limit: int = 200) -> str:
    """Why a candidate failed, on one line: the exception type and the first non-empty line of its message (the
    last line when the message starts with a traceback, as TVM's and RPC errors may), cut to ``limit``
    characters; the bare type when the message is empty."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if lines and lines[0].startswith("Traceback"):
        lines = lines[-1:]
    msg = lines[0] if lines else ""
    if len(msg) > limit:
        msg = msg[: limit - 3] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


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
    fail to build or run are skipped, each reported to ``progress`` with why (:func:`failure_reason`). The
    database is saved after each workload.

    Args:
        measure: ``(rule, wl, target, knobs) -> seconds``; defaults to :func:`measure_local` (this machine);
            :func:`remote_measure` times on a board or GPU host.
        progress: called with a status line per measured or failed candidate (the CLI shows it in a progress
            bar).

    Raises:
        ConvpipeError: every candidate tried for a workload failed (names the workload and the last failure);
            ``db`` is strict and holds an invalid record (:meth:`TuningDatabase.lookup`).
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
        failed = None  # the last failure: "family {knobs} (why)"
        for j, (fam, knobs) in enumerate(cands):
            if j > 0 and time.monotonic() > t_end:
                break
            try:
                sec = measure(rules[fam], wl, target, knobs)
            except Exception as e:  # an invalid candidate must not stop tuning
                failed = f"{fam} {knobs} ({failure_reason(e)})"
                if progress:
                    progress(f"[{i + 1}/{len(todo)}] {fam} {knobs}: failed ({failure_reason(e)})")
                continue
            tried += 1
            if best is None or sec < best[0]:
                best = (sec, fam, knobs)
            if progress:
                progress(
                    f"[{i + 1}/{len(todo)}] {wl.key()}  best {best[1]} {wl.flops / best[0] / 1e9:.1f} GFLOP/s"
                )
        if best is None:
            raise ConvpipeError(f"no candidate could be built or measured for {wl.describe()}; the last: {failed}")
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
