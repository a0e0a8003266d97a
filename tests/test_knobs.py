"""Knob names (issue 13): the rename of the pre-issue-13 names (``x_vec``, ``y_block``, ``k_thr``, Winograd's
``tile``, ...) to ``<axis>_<role>`` names, and the one mapping that keeps settings stored with the old names
working (:data:`convpipe.schedules.rule.LEGACY_KNOB_NAMES`, :func:`convpipe.schedules.rule.upgrade_knobs`)."""

from __future__ import annotations

import pytest

from convpipe.schedules import Conv2dWorkload, resolve_target, rules_for
from convpipe.schedules.rule import LEGACY_KNOB_NAMES, upgrade_knobs

W = Conv2dWorkload
WORKLOADS = {
    "conv3x3": W(1, 64, 14, 14, 64, 3, 3, 1, 1, 1, 1, 1, 1),
    "dw": W(1, 32, 28, 28, 32, 3, 3, 1, 1, 1, 1, 1, 1, groups=32),
    "dw_s2": W(1, 32, 28, 28, 32, 3, 3, 2, 2, 1, 1, 1, 1, groups=32),
    "dw_blocked": W(1, 32, 28, 28, 32, 3, 3, 1, 1, 1, 1, 1, 1, groups=32).with_layout(16),
    "grouped": W(1, 32, 14, 14, 64, 3, 3, 1, 1, 1, 1, 1, 1, groups=4),
}
TARGETS = {
    "x86": lambda: resolve_target('{"kind": "llvm", "mcpu": "skylake-avx512"}'),
    "arm": lambda: resolve_target("arm"),
    "cuda": lambda: resolve_target("cuda", arch="sm_90"),
}

#: ``default_knobs()`` of the CPU rules for WORKLOADS as the code before the rename returned them (old names),
#: per (family, workload): on x86 (AVX-512) and on ARM (the same knobs, NEON-sized values).
OLD_CPU_DEFAULTS = {
    ("direct", "conv3x3"): (
        {"oc_block": 16, "ic_block": 1, "ow_tile": 7, "oc_tile": 2},
        {"oc_block": 4, "ic_block": 1, "ow_tile": 7, "oc_tile": 2},
    ),
    ("im2col", "conv3x3"): ({"k_block": 16, "x_block": 16}, {"k_block": 8, "x_block": 8}),
    ("im2col", "dw"): ({"k_block": 1, "x_block": 32}, {"k_block": 1, "x_block": 4}),
    ("im2col", "dw_s2"): ({"k_block": 1, "x_block": 16}, {"k_block": 1, "x_block": 8}),
    ("im2col", "dw_blocked"): ({"k_block": 1, "x_block": 32}, {"k_block": 1, "x_block": 4}),
    ("im2col", "grouped"): ({"k_block": 16, "x_block": 16}, {"k_block": 8, "x_block": 8}),
    ("winograd", "conv3x3"): ({"tile": 4, "k_block": 64, "p_block": 4}, {"tile": 4, "k_block": 8, "p_block": 8}),
    ("depthwise", "dw"): ({"x_vec": 28, "y_block": 1}, {"x_vec": 4, "y_block": 4}),
    ("depthwise", "dw_s2"): ({"x_vec": 0, "y_block": 1}, {"x_vec": 2, "y_block": 2}),
    ("depthwise", "dw_blocked"): ({"x_tile": 7}, {"x_tile": 2}),
}
#: ``default_knobs()`` of every rule for WORKLOADS as the code before the rename returned them (old names): a
#: tuning database written then holds exactly these.
OLD_DEFAULTS = [
    (tname, family, wname, per_target[i])
    for i, tname in enumerate(("x86", "arm"))
    for (family, wname), per_target in OLD_CPU_DEFAULTS.items()
] + [
    ("cuda", "direct", "conv3x3",
     {"oc_block": 4, "k_thr": 4, "y_thr": 2, "y_reg": 1, "x_thr": 14, "x_reg": 1, "ic_tile": 8}),
    ("cuda", "im2col", "conv3x3", {"k_thr": 16, "k_reg": 4, "p_thr": 16, "p_reg": 1, "r_tile": 8}),
    ("cuda", "im2col", "dw", {"k_thr": 1, "k_reg": 1, "p_thr": 128, "p_reg": 4, "r_tile": 8}),
    ("cuda", "im2col", "dw_s2", {"k_thr": 1, "k_reg": 1, "p_thr": 128, "p_reg": 1, "r_tile": 8}),
    ("cuda", "im2col", "grouped", {"k_thr": 8, "k_reg": 2, "p_thr": 32, "p_reg": 1, "r_tile": 8}),
    ("cuda", "winograd", "conv3x3",
     {"tile": 4, "k_thr": 8, "k_reg": 4, "p_thr": 16, "p_reg": 1, "c_tile": 8, "tf_thr": 128}),
    ("cuda", "depthwise", "dw", {"y_thr": 7, "y_reg": 1, "x_thr": 28, "x_reg": 1}),
    ("cuda", "depthwise", "dw_s2", {"y_thr": 14, "y_reg": 1, "x_thr": 14, "x_reg": 1}),
]


@pytest.mark.parametrize("tname,family,wname,old", OLD_DEFAULTS, ids=[f"{t}-{f}-{w}" for t, f, w, _ in OLD_DEFAULTS])
def test_old_records_upgrade_to_the_current_knobs(tname, family, wname, old):
    """A setting stored with the old names reads as the same setting in the new names: exactly today's default
    for the same workload (the heuristics did not change), valid for the rule."""
    target, wl = TARGETS[tname](), WORKLOADS[wname]
    rule = rules_for(target.arch)[family]
    new = upgrade_knobs(family, old)
    assert new == rule.default_knobs(wl, target)
    assert list(new.values()) == list(old.values())  # a rename only: values and order kept
    assert rule.validate_knobs(wl, target, new) is None
    if new != old:  # CPU direct kept its names
        assert "unknown knob" in rule.validate_knobs(wl, target, old)  # validation itself takes current names only


@pytest.mark.parametrize("tname", sorted(TARGETS))
def test_current_knobs_pass_unchanged(tname):
    """Current settings (every default and candidate) pass through :func:`upgrade_knobs` unchanged."""
    target = TARGETS[tname]()
    for family, rule in rules_for(target.arch).items():
        for wl in WORKLOADS.values():
            if rule.supports(wl, target):
                for kn in rule.candidate_knobs(wl, target):
                    assert upgrade_knobs(family, kn) == kn


def test_the_mapping_is_unambiguous():
    """Per family, no old name is a knob name of that family today on any target (so renaming cannot clobber a
    current knob and upgrading is idempotent), and every new name is one."""
    current: dict[str, set[str]] = {}
    for make in TARGETS.values():
        target = make()
        for family, rule in rules_for(target.arch).items():
            for wl in WORKLOADS.values():
                if rule.supports(wl, target):
                    current.setdefault(family, set()).update(rule.knob_space(wl, target))
    assert set(LEGACY_KNOB_NAMES) <= set(current)
    for family, renames in LEGACY_KNOB_NAMES.items():
        assert not set(renames) & current[family], (family, set(renames) & current[family])
        assert set(renames.values()) <= current[family], (family, set(renames.values()) - current[family])
    for _, family, _, old in OLD_DEFAULTS:
        once = upgrade_knobs(family, old)
        assert upgrade_knobs(family, once) == once


def test_upgrade_leaves_what_it_cannot_rename_to_validation():
    """Not a dict, an unknown family, or an old name next to its new name: returned as they are (never raises),
    so ``validate_knobs`` reports them; the input is never modified."""
    assert upgrade_knobs("winograd", [1, 2]) == [1, 2]
    assert upgrade_knobs("winograd", None) is None
    assert upgrade_knobs("nope", {"tile": 4}) == {"tile": 4}
    assert upgrade_knobs(7, {"tile": 4}) == {"tile": 4}
    old = {"tile": 4, "k_block": 16, "p_block": 4}
    assert upgrade_knobs("winograd", old) == {"m": 4, "oc_block": 16, "p_tile": 4}
    assert old == {"tile": 4, "k_block": 16, "p_block": 4}
    # both spellings of one knob: the current one wins, the old one stays and is reported as unknown
    both = upgrade_knobs("winograd", {"tile": 2, "m": 4, "k_block": 16, "p_block": 4})
    assert both == {"tile": 2, "m": 4, "oc_block": 16, "p_tile": 4}
    target, wl = TARGETS["x86"](), WORKLOADS["conv3x3"]
    why = rules_for("x86")["winograd"].validate_knobs(wl, target, both)
    assert why and "unknown knob 'tile'" in why, why
    # two old names of one new knob (depthwise x_vec and x_tile): the first is renamed, the second reported
    two = upgrade_knobs("depthwise", {"x_tile": 7, "x_vec": 28})
    assert two == {"ow_tile": 7, "x_vec": 28}
