"""Per-layer choice of a conv2d schedule family and its knobs.

Order of precedence for one layer:

1. a tuning-database record for (workload, target) -- measured, when ``compile --db`` is given;
2. ``--schedule FAMILY``: that family wherever it supports the layer, else the fallback below;
3. ``--schedule auto``: the heuristic below.

Fallback (a family that does not support a layer): depthwise layers -> ``depthwise``; ``groups == 1`` ->
``direct``; anything else (grouped convs) -> ``im2col``, which supports every conv2d.

``auto`` heuristic (documented, unmeasured; measured choice is ``convpipe tune``):

- depthwise (``groups == C``) -> ``depthwise``;
- Winograd shape (3x3, stride 1, dilation 1, groups 1) with ``C >= 16``, ``K >= 16`` and an output edge of at
  least the target rule's ``auto_min_output`` -> ``winograd`` (F(4x4, 3x3) does 4x fewer multiplies in its
  element-wise stage, F(2x2, 3x3) 2.25x). CPU rules: 14 (below, the Winograd weight streams from memory inside
  a network: :attr:`convpipe.schedules.cpu.WinogradCpu.auto_min_output` has the measurements); CUDA: 7;
- other ``groups == 1`` -> ``direct``;
- other grouped convs -> ``im2col``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from convpipe.schedules import Conv2dRule, Conv2dWorkload, Knobs, TargetInfo


@dataclass
class Choice:
    """The schedule chosen for one conv2d layer."""

    family: str
    knobs: Knobs
    reason: str
    rule: Conv2dRule = field(repr=False)


def fallback_family(wl: Conv2dWorkload, rules: dict[str, Conv2dRule], target: TargetInfo) -> str:
    for fam in (("depthwise",) if wl.is_depthwise else ()) + ("direct", "im2col"):
        if fam in rules and rules[fam].supports(wl, target):
            return fam
    raise ValueError(f"no {target.arch} schedule supports {wl.describe()}")


def auto_family(wl: Conv2dWorkload, rules: dict[str, Conv2dRule], target: TargetInfo) -> tuple[str, str]:
    if wl.is_depthwise and rules["depthwise"].supports(wl, target):
        return "depthwise", "auto: depthwise conv"
    if (
        "winograd" in rules
        and rules["winograd"].supports(wl, target)
        and wl.in_channels >= 16
        and wl.out_channels >= 16
        and min(wl.out_h, wl.out_w) >= rules["winograd"].auto_min_output
    ):
        edge = rules["winograd"].auto_min_output
        return "winograd", f"auto: 3x3 stride-1 conv, C,K >= 16, output >= {edge}x{edge}"
    fam = fallback_family(wl, rules, target)
    return fam, f"auto: {'groups=1' if fam == 'direct' else 'grouped conv'} -> {fam}"


def choose(
    wl: Conv2dWorkload,
    target: TargetInfo,
    rules: dict[str, Conv2dRule],
    requested: str = "auto",
    db=None,
    winograd_m_max: int | None = None,
) -> Choice:
    """Pick family and knobs for ``wl`` (see the module docstring for the policy).

    ``winograd_m_max`` (set by the accuracy guard, :mod:`.accuracy`): a Winograd choice with a larger tile ``m``
    gets F(``winograd_m_max``, 3) instead (its other knobs kept), or, at ``0``, the fallback family (direct).

    ``db`` (a :class:`convpipe.compiler.tune.TuningDatabase`) returns only records it has validated against the
    rule's knob space; an invalid record is skipped there with a warning (and ``wl`` gets the choice below), or
    raises when the database is strict.

    Raises:
        ValueError: ``requested`` is not ``auto`` or one of ``rules``' families.
        ConvpipeError: ``db`` is strict and its record for ``wl`` is invalid.
    """
    choice = _choose(wl, target, rules, requested, db)
    if winograd_m_max is None or choice.family != "winograd" or choice.knobs["m"] <= winograd_m_max:
        return choice
    why = f"accuracy guard (was {choice.reason}, F({choice.knobs['m']}, 3))"
    if winograd_m_max > 0:
        knobs = dict(choice.knobs, m=winograd_m_max)
        if choice.rule.validate_knobs(wl, target, knobs) is not None:
            knobs = dict(choice.rule.default_knobs(wl, target), m=winograd_m_max)
        return Choice("winograd", knobs, why, choice.rule)
    fam = fallback_family(wl, rules, target)
    return Choice(fam, rules[fam].default_knobs(wl, target), why, rules[fam])


def _choose(wl, target, rules, requested, db) -> Choice:
    if db is not None:
        rec = db.lookup(wl, target)
        if rec is not None and rec["family"] in rules:
            return Choice(rec["family"], dict(rec["knobs"]), f"tuned: {rec['gflops']:.1f} GFLOP/s", rules[rec["family"]])
    if requested == "auto":
        fam, reason = auto_family(wl, rules, target)
    elif requested not in rules:
        raise ValueError(f"unknown schedule {requested!r}: expected auto or one of {sorted(rules)}")
    elif rules[requested].supports(wl, target):
        fam, reason = requested, "requested"
    else:
        fam = fallback_family(wl, rules, target)
        reason = f"fallback: {requested} {rules[requested].unsupported_reason(wl, target)}"
    rule = rules[fam]
    return Choice(fam, rule.default_knobs(wl, target), reason, rule)
