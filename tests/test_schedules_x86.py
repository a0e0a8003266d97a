"""Differential property tests of every x86 schedule family: random Conv2d configurations (hypothesis), each
family that supports the case, against ``torch.nn.functional.conv2d`` (float64) and onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import assert_close, ort_conv, run_kernel, torch_conv
from convpipe.schedules import Conv2dWorkload, resolve_target, rules_for

RULES = rules_for("x86")
#: normwise error allowed per family (Winograd's transforms lose a little more precision; F(6,3) the most).
TOL = {"direct": 1e-5, "im2col": 1e-5, "depthwise": 1e-5, "winograd": 1e-4}


@st.composite
def geometry(draw, family: str, max_hw: int):
    """Batch, input size, kernel, stride, (asymmetric) padding and dilation of a conv (3x3 stride 1 for
    Winograd), input at least as large as the dilated kernel minus the padding, at most ``max_hw``."""
    if family == "winograd":
        kh = kw = 3
        sh = sw = dh = dw = 1
    else:
        kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
        sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = [draw(st.integers(0, 2)) for _ in range(4)]
    h = draw(st.integers(max(1, (kh - 1) * dh + 1 - pads[0] - pads[2]), max_hw))
    w = draw(st.integers(max(1, (kw - 1) * dw + 1 - pads[1] - pads[3]), max_hw))
    return dict(
        batch=draw(st.integers(1, 2)), in_h=h, in_w=w, kernel_h=kh, kernel_w=kw, stride_h=sh, stride_w=sw,
        pad_top=pads[0], pad_left=pads[1], pad_bottom=pads[2], pad_right=pads[3], dilation_h=dh, dilation_w=dw,
    )


@st.composite
def workloads(draw, family: str):
    """Conv2d configurations covering stride, asymmetric padding, dilation, groups (depthwise too), non-square
    kernels and inputs, batch > 1 -- restricted to what ``family`` supports."""
    groups_kind = draw(st.sampled_from(["one", "grouped", "depthwise"]))
    if family in ("direct", "winograd"):
        groups_kind = "one"
    if family == "depthwise":
        groups_kind = "depthwise"
    g = 1 if groups_kind == "one" else draw(st.integers(2, 4))
    if groups_kind == "depthwise":
        c = draw(st.integers(2, 12))
        g = c
        k = c * draw(st.integers(1, 2))
    else:
        c = g * draw(st.integers(1, 6))
        k = g * draw(st.integers(1, 20))
    return Conv2dWorkload(in_channels=c, out_channels=k, groups=g, **draw(geometry(family, 20)))


def _check(family: str, wl: Conv2dWorkload, knobs=None):
    target = resolve_target("x86")
    rule = RULES[family]
    assert rule.supports(wl, target), rule.unsupported_reason(wl, target)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(wl.data_shape).astype("float32")
    w = rng.standard_normal(wl.weight_shape).astype("float32")
    knobs = knobs or rule.default_knobs(wl, target)
    got = run_kernel(rule, wl, target, knobs, x, w)
    assert_close(got, torch_conv(x, w, wl), TOL[family], f"{family} {knobs} vs torch on {wl.describe()}")
    assert_close(got, ort_conv(x, w, wl), TOL[family], f"{family} {knobs} vs onnxruntime on {wl.describe()}")


@pytest.mark.parametrize("family", sorted(RULES))
def test_family_property(family):
    @given(workloads(family))
    def prop(wl):
        _check(family, wl)

    prop()


@st.composite
def blocked_workloads(draw, family: str):
    """Conv2d configurations in NCHW[x]c (x in 4, 8, 16): data and output blocked alike, or (first-conv form) NCHW
    data with blocked output; channel counts multiples of x; depthwise with multiplier 1."""
    b = draw(st.sampled_from([4, 8, 16]))
    nchw_in = family != "depthwise" and draw(st.booleans())
    c = draw(st.integers(1, 5)) if nchw_in else b * draw(st.integers(1, 3))
    k = c if family == "depthwise" else b * draw(st.integers(1, 3))
    return Conv2dWorkload(
        in_channels=c, out_channels=k, groups=c if family == "depthwise" else 1,
        data_block=0 if nchw_in else b, out_block=b, **draw(geometry(family, 16)),
    )


@pytest.mark.parametrize("family", sorted(RULES))
def test_family_property_blocked_layout(family):
    """Every family reading NCHW[x]c (or NCHW) and writing NCHW[x]c computes the same conv as torch/onnxruntime
    (``run_kernel`` blocks the input and un-blocks the output with NumPy)."""
    @given(blocked_workloads(family))
    def prop(wl):
        _check(family, wl)

    prop()


def test_blocked_candidate_knobs_are_correct():
    """The tuner's candidates for blocked workloads (the knobs differ: ic_block = x in place, depthwise's ow_tile
    counts pixels of x channels)."""
    target = resolve_target("x86")
    for wl in (Conv2dWorkload(1, 16, 12, 12, 32, 1, 1).with_layout(8),
               Conv2dWorkload(1, 32, 9, 9, 32, 3, 3, 2, 2, 1, 1, 1, 1, groups=32).with_layout(16),
               Conv2dWorkload(1, 16, 10, 10, 16, 3, 3, 1, 1, 1, 1, 1, 1).with_layout(16)):
        for family, rule in RULES.items():
            if rule.supports(wl, target):
                for knobs in rule.candidate_knobs(wl, target)[:4]:
                    _check(family, wl, knobs)


REAL_LAYERS = [  # ResNet / MobileNetV2 / MTCNN shapes, smaller spatial size to keep CI fast
    Conv2dWorkload(1, 3, 32, 32, 64, 7, 7, 2, 2, 3, 3, 3, 3),
    Conv2dWorkload(1, 64, 14, 14, 64, 3, 3, 1, 1, 1, 1, 1, 1),
    Conv2dWorkload(1, 64, 14, 14, 128, 3, 3, 2, 2, 1, 1, 1, 1),
    Conv2dWorkload(1, 64, 14, 14, 256, 1, 1),
    Conv2dWorkload(1, 96, 14, 14, 96, 3, 3, 2, 2, 1, 1, 1, 1, groups=96),
    Conv2dWorkload(2, 32, 10, 10, 16, 1, 1),
    Conv2dWorkload(1, 10, 11, 13, 16, 3, 3),
]


@pytest.mark.parametrize("wl", REAL_LAYERS, ids=lambda wl: wl.key())
def test_real_layers_every_family(wl):
    target = resolve_target("x86")
    for family, rule in RULES.items():
        if rule.supports(wl, target):
            _check(family, wl)


@pytest.mark.parametrize("family", sorted(RULES))
def test_candidate_knobs_are_correct(family):
    """Every knob setting a tuner may try computes the same conv (first 4 candidates, two shapes)."""
    target = resolve_target("x86")
    rule = RULES[family]
    for wl in (Conv2dWorkload(1, 16, 12, 12, 32, 3, 3, 1, 1, 1, 1, 1, 1), Conv2dWorkload(1, 16, 9, 9, 16, 3, 3, 1, 1, 1, 1, 1, 1, groups=16)):
        if rule.supports(wl, target):
            for knobs in rule.candidate_knobs(wl, target)[:4]:
                _check(family, wl, knobs)


# ---- the knob space (issue 14, item 4): what a tuning-database record may hold ----------------------------------
KNOB_TARGETS = {
    "avx512": lambda: resolve_target('{"kind": "llvm", "mcpu": "skylake-avx512"}'),
    "avx2": lambda: resolve_target('{"kind": "llvm", "mcpu": "haswell"}'),
    "neon": lambda: resolve_target("arm"),
    "cuda": lambda: resolve_target("cuda", arch="sm_90"),
}


@st.composite
def any_workload(draw):
    """A workload of any family, NCHW or NCHW[x]c (the strategies above)."""
    family = draw(st.sampled_from(sorted(RULES)))
    return draw(st.one_of(workloads(family), blocked_workloads(family)))


@pytest.mark.parametrize("tname", sorted(KNOB_TARGETS))
def test_default_and_candidate_knobs_lie_in_the_knob_space(tname):
    """Every ``default_knobs()`` and ``candidate_knobs()`` result of every family passes ``validate_knobs`` (what a
    tuning database record is checked against), on x86 (AVX-512, AVX2), ARM NEON and CUDA, for many workloads."""
    target = KNOB_TARGETS[tname]()
    rules = rules_for(target.arch)

    @settings(max_examples=400, deadline=None)
    @given(any_workload())
    def prop(wl):
        for family, rule in rules.items():
            if not rule.supports(wl, target):
                continue
            default = rule.default_knobs(wl, target)
            assert rule.validate_knobs(wl, target, default) is None, (family, default, wl.describe())
            cands = rule.candidate_knobs(wl, target)
            assert cands[0] == default
            for kn in cands:
                why = rule.validate_knobs(wl, target, kn)
                assert why is None, f"{tname} {family} candidate {kn} for {wl.describe()}: {why}"

    prop()
    # and the real layers, including large spatial sizes
    for wl in REAL_LAYERS + [Conv2dWorkload(1, 64, 224, 224, 64, 3, 3, 1, 1, 1, 1, 1, 1),
                             Conv2dWorkload(1, 32, 112, 112, 32, 3, 3, 1, 1, 1, 1, 1, 1, groups=32).with_layout(16)]:
        for family, rule in rules.items():
            if rule.supports(wl, target):
                for kn in rule.candidate_knobs(wl, target):
                    assert rule.validate_knobs(wl, target, kn) is None, (family, kn, wl.describe())


def test_knob_space_rejects_with_a_reason():
    """``validate_knobs`` names the knob and expected vs got; ``build`` refuses the same knobs (ValueError)."""
    target = resolve_target("x86")
    wl = Conv2dWorkload(1, 8, 12, 12, 16, 3, 3, 1, 1, 1, 1, 1, 1)
    direct = RULES["direct"]
    ok = direct.default_knobs(wl, target)
    cases = {
        "ow_tile": {**ok, "ow_tile": 0},
        "oc_block": {**ok, "oc_block": -1},
        "ic_block": {**ok, "ic_block": "8"},
        "oc_tile": {**ok, "oc_tile": 3},
        "bogus": {**ok, "bogus": 1},
    }
    for needle, kn in cases.items():
        why = direct.validate_knobs(wl, target, kn)
        assert why and needle in why, (kn, why)
        with pytest.raises(ValueError, match=needle):
            direct.build(wl, target, kn)
    assert "missing" in direct.validate_knobs(wl, target, {"oc_block": 16})
    assert direct.validate_knobs(wl, target, {"oc_block": 16, "ow_tile": 12}) is None  # optional knobs default
    assert "12" in direct.validate_knobs(wl, target, {**ok, "ow_tile": 10**9})  # at most OW = 12
    assert "register" in direct.validate_knobs(wl, target, {**ok, "ow_tile": 12, "oc_block": 1, "oc_tile": 16})
    assert "'m'" in RULES["winograd"].validate_knobs(wl, target, {"m": 3, "oc_block": 16, "p_tile": 4})
    assert "object" in RULES["im2col"].validate_knobs(wl, target, [1, 2])


#: Representative small workloads per family for :func:`test_every_candidate_is_correct`: NCHW and NCHW[x]c, stride,
#: asymmetric padding, a non-square kernel, batch 2, groups, channel counts that do not fill a vector, C > lanes with
#: a zero-padded input-channel block, ``ceil(K / oc_block)`` = 3 and 4 (oc_tile 3 and 4).
EVERY_CANDIDATE = [
    ("direct", Conv2dWorkload(1, 17, 7, 7, 20, 3, 3, 1, 1, 1, 1, 1, 1)),
    ("direct", Conv2dWorkload(1, 34, 5, 6, 48, 3, 1, 1, 1, 1, 0, 1, 0)),
    ("direct", Conv2dWorkload(1, 20, 4, 5, 64, 1, 1)),
    ("direct", Conv2dWorkload(2, 3, 9, 11, 8, 5, 3, 2, 1, 2, 1, 0, 1)),
    ("direct", Conv2dWorkload(1, 16, 6, 6, 32, 1, 1).with_layout(8)),
    ("direct", Conv2dWorkload(1, 3, 9, 9, 16, 3, 3, 2, 2, 1, 1, 1, 1, out_block=8)),
    ("im2col", Conv2dWorkload(1, 8, 7, 9, 12, 3, 3, 2, 2, 1, 1, 1, 1, groups=2)),
    ("im2col", Conv2dWorkload(1, 16, 5, 6, 24, 1, 1)),
    ("im2col", Conv2dWorkload(1, 8, 6, 21, 16, 3, 3, 1, 1, 1, 1, 1, 1).with_layout(8)),
    ("winograd", Conv2dWorkload(1, 8, 6, 7, 12, 3, 3, 1, 1, 1, 1, 1, 1)),
    ("winograd", Conv2dWorkload(1, 16, 10, 10, 16, 3, 3, 1, 1, 1, 1, 1, 1).with_layout(16)),
    ("depthwise", Conv2dWorkload(1, 8, 10, 16, 8, 3, 3, 1, 1, 1, 1, 1, 1, groups=8)),
    ("depthwise", Conv2dWorkload(1, 6, 12, 14, 12, 3, 3, 1, 1, 0, 1, 2, 1, groups=6)),
    ("depthwise", Conv2dWorkload(1, 16, 9, 14, 16, 3, 3, 2, 2, 1, 1, 1, 1, groups=16).with_layout(16)),
]


@pytest.mark.parametrize("family,wl", EVERY_CANDIDATE, ids=[f"{f}-{wl.key()}" for f, wl in EVERY_CANDIDATE])
def test_every_candidate_is_correct(family, wl):
    """Every knob setting the tuner may measure -- all of ``candidate_knobs()``, not only the first four --
    builds and computes the conv (against torch and onnxruntime)."""
    target = resolve_target("x86")
    cands = RULES[family].candidate_knobs(wl, target)
    assert len(cands) >= 2, cands
    for knobs in cands:
        _check(family, wl, knobs)


@pytest.mark.parametrize("mcpu", ["skylake-avx512", "haswell"])
@pytest.mark.parametrize("wl", [
    Conv2dWorkload(1, 17, 7, 9, 20, 3, 3, 1, 1, 1, 1, 1, 1),  # spatial padding and channel padding
    Conv2dWorkload(1, 34, 5, 6, 24, 1, 1),  # no spatial padding: data_pack exists for the channel blocks alone
], ids=lambda wl: wl.key())
def test_direct_zero_padded_ic_block(mcpu, wl):
    """C > vector lanes and C not a multiple of ``ic_block``: ``data_pack`` copies the input into
    ``ceil(C / ic_block)`` blocks and zero-fills the channels past C (its ``ch < C`` guard), and the packed weight
    has zero rows for them. The tuner's own candidates take this path (``_ic_block``: C has no divisor in
    4..lanes, so ``ic_block = lanes``)."""
    from convpipe.schedules import compute

    target = resolve_target(json.dumps({"kind": "llvm", "mcpu": mcpu}))
    lanes, c = target.vector_lanes, wl.in_channels
    assert c > lanes
    rule = RULES["direct"]
    padded = [k for k in rule.candidate_knobs(wl, target) if c % k["ic_block"]]
    assert padded, rule.candidate_knobs(wl, target)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(wl.data_shape).astype("float32")
    w = rng.standard_normal(wl.weight_shape).astype("float32")
    for knobs in padded:
        ib = knobs["ic_block"]
        geo = compute.direct_blocked_geometry(wl, knobs["oc_block"], ib, knobs["ow_tile"])
        assert geo["needs_pack"] and geo["c_outer"] * ib > c, (knobs, geo)
        packed = rule.pack_weight(w, wl, knobs)
        assert packed.shape[1] * ib > c and not packed[:, -1, :, :, c % ib:, :].any()  # zero padded channels
        got = run_kernel(rule, wl, target, knobs, x, w)
        assert_close(got, torch_conv(x, w, wl), TOL["direct"], f"{mcpu} direct {knobs} on {wl.describe()}")


def test_avx2_target_builds_and_matches():
    """AVX2 (8 lanes) knob defaults give correct kernels too (run on this AVX-512 host)."""
    target = resolve_target('{"kind": "llvm", "mcpu": "haswell"}')
    assert target.isa == "avx2" and target.vector_lanes == 8
    wl = Conv2dWorkload(1, 16, 12, 12, 24, 3, 3, 1, 1, 1, 1, 1, 1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(wl.data_shape).astype("float32")
    w = rng.standard_normal(wl.weight_shape).astype("float32")
    for family, rule in RULES.items():
        if rule.supports(wl, target):
            got = run_kernel(rule, wl, target, rule.default_knobs(wl, target), x, w)
            assert_close(got, torch_conv(x, w, wl), TOL[family], family)


def test_unsupported_reasons():
    target = resolve_target("x86")
    grouped = Conv2dWorkload(1, 8, 8, 8, 8, 3, 3, groups=2)
    assert RULES["direct"].unsupported_reason(grouped, target)
    assert RULES["winograd"].unsupported_reason(Conv2dWorkload(1, 8, 8, 8, 8, 3, 3, 2, 2), target)
    assert RULES["depthwise"].unsupported_reason(grouped, target)
    assert RULES["im2col"].unsupported_reason(grouped, target) is None
    dw_mult = Conv2dWorkload(1, 8, 8, 8, 16, 3, 3, groups=8)
    assert RULES["depthwise"].unsupported_reason(dw_mult, target) is None
    assert "multiplier 1" in RULES["depthwise"].unsupported_reason(dw_mult.with_layout(8), target)
    with pytest.raises(ValueError, match="divisible"):
        Conv2dWorkload(1, 12, 8, 8, 16, 1, 1, data_block=8)
    with pytest.raises(ValueError, match="cannot compute"):
        RULES["winograd"].build(Conv2dWorkload(1, 8, 8, 8, 8, 5, 5), target, {"m": 4})


RACE_CHECK = r"""
import sys; sys.path.insert(0, sys.argv[1])
import numpy as np
from conftest import run_kernel, torch_conv
from convpipe.schedules import Conv2dWorkload, resolve_target, rules_for
t = resolve_target("x86"); r = rules_for("x86")["im2col"]
wl = Conv2dWorkload(1, 2, 14, 3, 34, 1, 5, 1, 1, 0, 2, 0, 0, groups=2)  # K/G = 17: padded k-blocks per group
for seed in range(5):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(wl.data_shape).astype("float32"); w = rng.standard_normal(wl.weight_shape).astype("float32")
    err = np.abs(run_kernel(r, wl, t, r.default_knobs(wl, t), x, w) - torch_conv(x, w, wl)).max()
    assert err < 1e-4, err
# NCHW[x]c kernels: each thread stores whole channel blocks
for wl, fam in ((Conv2dWorkload(1, 32, 9, 9, 48, 3, 3, 1, 1, 1, 1, 1, 1).with_layout(16), "direct"),
                (Conv2dWorkload(1, 3, 15, 15, 32, 3, 3, 2, 2, 1, 1, 1, 1, out_block=8), "direct"),
                (Conv2dWorkload(1, 48, 9, 9, 48, 3, 3, 2, 2, 1, 1, 1, 1, groups=48).with_layout(8), "depthwise"),
                (Conv2dWorkload(1, 16, 10, 10, 32, 3, 3, 1, 1, 1, 1, 1, 1).with_layout(16), "winograd")):
    rb = rules_for("x86")[fam]
    x = rng.standard_normal(wl.data_shape).astype("float32"); w = rng.standard_normal(wl.weight_shape).astype("float32")
    err = np.abs(run_kernel(rb, wl, t, rb.default_knobs(wl, t), x, w) - torch_conv(x, w, wl)).max()
    assert err < 1e-3, (fam, wl.key(), err)
print("ok")
"""


def test_grouped_im2col_with_padded_k_blocks_on_two_threads():
    """Regression (found by the property test): grouped im2col whose K/G is not a multiple of oc_block wrote other
    groups' output channels from the wrong thread when run on 2 threads. Also runs NCHW[x]c kernels on 2 threads."""
    import os
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    p = subprocess.run([sys.executable, "-c", RACE_CHECK, here], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, TVM_NUM_THREADS="2"))
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr
