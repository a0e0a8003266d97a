"""The rule template (``schedules/rule.py``, issue 13): every rule of every target is one family base (which alone
declares when the family applies) plus one target base (``cpu/base.py``, ``cuda/base.py``: what the target takes),
and builds through the one path ``schedule`` = check -> validate knobs -> fresh schedule of ``unscheduled`` ->
``apply``. Structure only (no kernel is compiled or run here)."""

from __future__ import annotations

import pytest
import tvm_ffi

from convpipe.schedules import FAMILIES, Conv2dWorkload, resolve_target, rules_for
from convpipe.schedules.cpu.base import CpuRule
from convpipe.schedules.cuda.base import CudaRule
from convpipe.schedules.rule import Conv2dRule, DepthwiseFamily, DirectFamily, Im2colFamily, WinogradFamily

FAMILY_BASES = {
    "direct": DirectFamily, "im2col": Im2colFamily, "winograd": WinogradFamily, "depthwise": DepthwiseFamily,
}
TARGETS = {
    "x86": lambda: resolve_target('{"kind": "llvm", "mcpu": "skylake-avx512"}'),
    "arm": lambda: resolve_target("arm"),
    "cuda": lambda: resolve_target("cuda", arch="sm_90"),
}
W = Conv2dWorkload
SHAPES = [
    W(1, 8, 10, 10, 16, 3, 3, 1, 1, 1, 1, 1, 1),  # every family but depthwise
    W(1, 8, 10, 10, 16, 3, 3, 2, 2, 1, 1, 1, 1),  # strided: not Winograd
    W(1, 8, 10, 10, 16, 3, 3, groups=2),  # grouped: im2col only
    W(1, 8, 10, 10, 16, 3, 3, 1, 1, 1, 1, 1, 1, groups=8),  # depthwise, multiplier 2
    W(1, 16, 10, 10, 16, 3, 3, 1, 1, 1, 1, 1, 1, groups=16).with_layout(8),  # depthwise NCHW[x]c
    W(1, 8, 10, 10, 16, 3, 3, 1, 1, 1, 1, 1, 1, groups=8).with_layout(8),  # multiplier 2 in NCHW[x]c: none
]


@pytest.mark.parametrize("arch", sorted(TARGETS))
def test_each_rule_is_one_family_base_and_one_target_base(arch):
    rules = rules_for(arch)
    assert sorted(rules) == sorted(FAMILIES)
    target_base = CudaRule if arch == "cuda" else CpuRule
    for family, rule in rules.items():
        assert rule.family == family and rule.arch == arch
        assert isinstance(rule, FAMILY_BASES[family]) and isinstance(rule, target_base)
        # applicability is declared once per family and once per target, never per concrete rule
        assert type(rule).family_reason is FAMILY_BASES[family].family_reason
        assert type(rule).target_reason is target_base.target_reason
        assert type(rule).unsupported_reason is Conv2dRule.unsupported_reason
        assert type(rule).build is Conv2dRule.build and type(rule).schedule is Conv2dRule.schedule


def test_a_family_applies_alike_on_every_target():
    """On NCHW workloads (which every target takes) each family supports the same workloads everywhere."""
    targets = {name: make() for name, make in TARGETS.items()}
    for wl in SHAPES:
        if wl.data_block or wl.out_block:
            continue
        for family in FAMILIES:
            answers = {name: rules_for(t.arch)[family].unsupported_reason(wl, t) for name, t in targets.items()}
            assert len(set(answers.values())) == 1, (family, wl.describe(), answers)
    blocked = SHAPES[-2]
    cpu = targets["x86"]
    assert rules_for("x86")["depthwise"].supports(blocked, cpu)
    assert "multiplier 1" in rules_for("x86")["depthwise"].unsupported_reason(SHAPES[-1], cpu)
    # the target's requirement comes first: a blocked workload on CUDA names the layout for every family
    for rule in rules_for("cuda").values():
        assert "CUDA kernels take NCHW" in rule.unsupported_reason(blocked, targets["cuda"])
    # a rule asked about another target's workload says so
    assert "CUDA target" in rules_for("cuda")["im2col"].unsupported_reason(SHAPES[0], cpu)
    assert "x86 or ARM" in rules_for("x86")["im2col"].unsupported_reason(SHAPES[0], targets["cuda"])


@pytest.mark.parametrize("arch", sorted(TARGETS))
def test_build_is_the_schedule_of_the_unscheduled_compute(arch):
    """``build`` returns ``schedule``'s PrimFunc, which starts from ``unscheduled`` (what the CUDA trace replay
    relies on), and both refuse an unsupported workload or invalid knobs before scheduling anything."""
    target = TARGETS[arch]()
    wl = SHAPES[0]
    for family, rule in rules_for(arch).items():
        if not rule.supports(wl, target):
            continue
        kn = rule.default_knobs(wl, target)
        sch = rule.schedule(wl, target, kn)
        assert tvm_ffi.structural_equal(rule.build(wl, target, kn), sch.mod["main"])
        assert sch.trace is not None and len(sch.trace.insts) > 0
        with pytest.raises(ValueError, match="invalid knobs"):
            rule.build(wl, target, {**kn, "bogus": 1})
    with pytest.raises(ValueError, match="cannot compute"):
        rules_for(arch)["direct"].build(SHAPES[2], target, {})
