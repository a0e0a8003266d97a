"""The one interface between ``compiler/`` and a conv2d schedule, and the template every rule follows.

Modelled on TVM dlight's ``ScheduleRule`` (``python/tvm/s_tir/dlight/base/schedule_rule.py``): one rule per
(target architecture, algorithm family), one file per rule under ``schedules/<arch>/``. The compiler only ever
calls the public methods of :class:`Conv2dRule`; it never knows a family's internals.

One template for CPU and CUDA alike (:class:`Conv2dRule`):

- applicability: :meth:`~Conv2dRule.unsupported_reason` = the target's requirement
  (:meth:`~Conv2dRule.target_reason`, declared by the target's base class: ``cpu/base.py``, ``cuda/base.py``)
  or else the family's (:meth:`~Conv2dRule.family_reason`, declared once per family by :class:`DirectFamily`,
  :class:`Im2colFamily`, :class:`WinogradFamily`, :class:`DepthwiseFamily`);
- knobs: :meth:`~Conv2dRule.knob_space` (each knob's domain) + :meth:`~Conv2dRule.knob_constraints` (conditions
  between knobs), checked by :meth:`~Conv2dRule.validate_knobs`;
- build: :meth:`~Conv2dRule.schedule` checks both, makes a fresh schedule of the family's target-independent
  compute (:meth:`~Conv2dRule.unscheduled`) and applies the rule's loop transformations
  (:meth:`~Conv2dRule.apply`); :meth:`~Conv2dRule.build` returns its PrimFunc.

Calling convention of every built kernel (a TensorIR ``PrimFunc``)::

    kernel(data: float32[wl.data_tensor_shape],  # NCHW [N, C, H, W] (unpadded) or NCHW[x]c [N, C/x, H, W, x]
           packed_weight: float32[rule.packed_weight_shape(wl, knobs)],
           out: float32[wl.out_tensor_shape])    # NCHW [N, K, OH, OW] or NCHW[x]c [N, K/x, OH, OW, x]

(the blocks are ``wl.data_block`` / ``wl.out_block``; the CPU rules take both layouts, the CUDA rules NCHW only)

``packed_weight`` is ``rule.pack_weight(weight_oihw, wl, knobs)``, computed once with NumPy at compile time
(OIHW -> blocked layout, or the Winograd kernel transform G g G^T), so no weight transform runs at inference.

Knob names: ``<axis>_<role>``, every value a positive ``int`` (except CPU depthwise's ``ow_tile = 0``, which
selects its LLVM-vectorised variant). Axes: ``oc``/``ic`` output/input channels (K/C), ``oh``/``ow`` output
rows/columns, ``p`` Winograd tiles (CPU and CUDA Winograd) or output pixels ``OH*OW`` (CUDA im2col's GEMM),
``r`` the im2col reduction ``C/G*KH*KW``, ``tf`` the Winograd transform kernels; ``m`` alone is the Winograd output
tile edge of F(m x m, 3 x 3). Roles:

- ``_block``: elements of a channel axis per block of a blocked layout (the packed weight's inner axis; the axis
  is zero-padded up to a multiple);
- ``_tile``: elements per register tile (CPU: the unrolled/vectorised accumulator tile of one reduction step;
  CUDA: the outputs one thread accumulates); the axis is padded up to a multiple where the rule says so;
- ``_thr``: CUDA threads per thread block along that axis;
- ``_step``: reduction elements staged in CUDA shared memory per step.

Each rule's docstring lists its knobs. Records written before these names (``x_vec``, ``y_block``, ``k_thr``,
Winograd's ``tile``, ...) are read through :func:`upgrade_knobs` (:data:`LEGACY_KNOB_NAMES`).
"""

from __future__ import annotations

import abc
from typing import Callable, ClassVar, Union

import numpy as np
import tvm
from tvm import s_tir

from .target import TargetInfo
from .workload import Conv2dWorkload

Knobs = dict[str, int]
#: The values one knob may take: a ``range`` (e.g. ``range(1, OW + 1)``) or an explicit tuple (e.g. the divisors
#: of ``OH``, or the Winograd tile sizes ``(2, 4, 6)``).
KnobDomain = Union[range, tuple[int, ...]]
#: How a rule packs the weight (:meth:`Conv2dRule.weight_packing`): ``(shape_fn, pack_fn, args)``, a pair of
#: :mod:`.compute` functions ``shape_fn(wl, *args)`` (the packed shape) and ``pack_fn(weight, wl, *args)``.
WeightPacking = tuple[Callable[..., tuple[int, ...]], Callable[..., np.ndarray], tuple[int, ...]]

#: Knob names before issue 13, per family (both CPU and CUDA rules of the family): old name -> current name.
#: No old name of a family is a current knob name of that family (``tests/test_knobs.py`` checks), so renaming
#: is unambiguous and :func:`upgrade_knobs` is idempotent.
LEGACY_KNOB_NAMES: dict[str, dict[str, str]] = {
    "direct": {  # CUDA (the CPU knobs kept their names)
        "k_thr": "oc_thr",
        "y_thr": "oh_thr",
        "y_reg": "oh_tile",
        "x_thr": "ow_thr",
        "x_reg": "ow_tile",
        "ic_tile": "ic_step",
    },
    "im2col": {
        "k_block": "oc_block",  # CPU
        "x_block": "ow_tile",  # CPU
        "k_thr": "oc_thr",  # CUDA
        "k_reg": "oc_tile",  # CUDA
        "p_reg": "p_tile",  # CUDA
        "r_tile": "r_step",  # CUDA
    },
    "winograd": {
        "tile": "m",  # CPU and CUDA
        "k_block": "oc_block",  # CPU
        "p_block": "p_tile",  # CPU
        "k_thr": "oc_thr",  # CUDA
        "k_reg": "oc_tile",  # CUDA
        "p_reg": "p_tile",  # CUDA
        "c_tile": "ic_step",  # CUDA
    },
    "depthwise": {
        "x_vec": "ow_tile",  # CPU, NCHW
        "y_block": "oh_tile",  # CPU, NCHW
        "x_tile": "ow_tile",  # CPU, NCHW[x]c
        "y_thr": "oh_thr",  # CUDA
        "y_reg": "oh_tile",  # CUDA
        "x_thr": "ow_thr",  # CUDA
        "x_reg": "ow_tile",  # CUDA
    },
}


def upgrade_knobs(family: object, knobs: object) -> object:
    """``knobs`` of a ``family`` setting (e.g. read from a tuning database) with every name of
    :data:`LEGACY_KNOB_NAMES` replaced by its current one, as a new ``dict`` (values and order kept; ``knobs`` is
    not modified). Current names pass unchanged, so upgrading twice is upgrading once.

    Anything this cannot rename is returned as it is, for :meth:`Conv2dRule.validate_knobs` to report: ``knobs``
    that is not a ``dict``, a ``family`` without legacy names, and an old name whose current name is already in
    the setting (then ``validate_knobs`` names the old one as an unknown knob). Never raises.
    """
    renames = LEGACY_KNOB_NAMES.get(family) if isinstance(family, str) else None
    if not renames or not isinstance(knobs, dict):
        return knobs
    out: dict = {}
    for name, value in knobs.items():
        new = renames.get(name) if isinstance(name, str) else None
        if new is not None and new not in knobs and new not in out:
            out[new] = value
        else:
            out[name] = value
    return out


def describe_domain(domain: KnobDomain) -> str:
    """``range(1, 13)`` -> ``"an integer in 1..12"``, ``(2, 4, 6)`` -> ``"one of 2, 4, 6"``."""
    if isinstance(domain, range):
        if domain.step != 1:
            return f"one of {domain.start}, {domain.start + domain.step}, ... < {domain.stop}"
        return f"an integer in {domain.start}..{domain.stop - 1}" if len(domain) else "no value (empty)"
    return "one of " + ", ".join(map(str, domain))


class Conv2dRule(abc.ABC):
    """A conv2d algorithm family scheduled for one target architecture (the template above).

    A concrete rule sets :attr:`family` (through its family base: :class:`DirectFamily`, ...) and :attr:`arch`
    (``"x86"``, ``"arm"``, ``"cuda"``, through its target base and leaf class) and implements
    :meth:`knob_space`, :meth:`default_knobs`, :meth:`weight_packing` (which gives :meth:`packed_weight_shape` and
    :meth:`pack_weight`), :meth:`unscheduled` and :meth:`apply`; optionally :meth:`knob_constraints`, :meth:`candidate_knobs`.
    """

    family: ClassVar[str]
    arch: ClassVar[str]
    #: Knobs a setting may leave out, with the value the rule then uses (see :meth:`complete_knobs`).
    optional_knobs: ClassVar[dict[str, int]] = {}

    # ---- applicability -------------------------------------------------------------------------
    def family_reason(self, wl: Conv2dWorkload) -> str | None:
        """``None`` when the family's compute applies to ``wl`` (on every target), else a short reason. Declared
        once per family by its base class; the default (im2col) computes every conv2d."""
        return None

    def target_reason(self, wl: Conv2dWorkload, target: TargetInfo) -> str | None:
        """``None`` when this target's rules take ``wl`` (e.g. its layouts), else a short reason. Declared by the
        target's base class (``cuda/base.py``: NCHW only); the default takes every workload."""
        return None

    def unsupported_reason(self, wl: Conv2dWorkload, target: TargetInfo) -> str | None:
        """``None`` when this rule can compute ``wl`` on ``target``, else a short human-readable reason: the
        target's requirement (:meth:`target_reason`) first, then the family's (:meth:`family_reason`)."""
        return self.target_reason(wl, target) or self.family_reason(wl)

    def supports(self, wl: Conv2dWorkload, target: TargetInfo) -> bool:
        """Whether :meth:`unsupported_reason` is ``None``."""
        return self.unsupported_reason(wl, target) is None

    def check(self, wl: Conv2dWorkload, target: TargetInfo) -> None:
        """Raise unless this rule :meth:`supports` ``wl`` on ``target``.

        Raises:
            ValueError: ``"<arch>/<family> cannot compute <workload>: <reason>"``.
        """
        reason = self.unsupported_reason(wl, target)
        if reason is not None:
            raise ValueError(f"{self.arch}/{self.family} cannot compute {wl.describe()}: {reason}")

    # ---- the knob space ------------------------------------------------------------------------
    @abc.abstractmethod
    def default_knobs(self, wl: Conv2dWorkload, target: TargetInfo) -> Knobs:
        """The knobs used without tuning (a heuristic from the shape and the target's vector width)."""

    def candidate_knobs(self, wl: Conv2dWorkload, target: TargetInfo) -> list[Knobs]:
        """Knob settings worth measuring when tuning; the default first."""
        return [self.default_knobs(wl, target)]

    @abc.abstractmethod
    def knob_space(self, wl: Conv2dWorkload, target: TargetInfo) -> dict[str, KnobDomain]:
        """Every knob this rule takes for ``wl`` on ``target``, and the values each may take on its own.

        Bounds come from the workload (a tile cannot exceed the dimension it tiles, a block that must divide a
        dimension is one of its divisors) and the target (vector lanes, register file, CUDA thread and
        shared-memory limits), so no setting inside the space makes :meth:`build` allocate or unroll without
        bound. Knobs in :attr:`optional_knobs` may be absent from a setting. Conditions between knobs (one must
        divide a quantity another determines, register-tile or shared-memory totals) are
        :meth:`knob_constraints`. Every :meth:`default_knobs` and :meth:`candidate_knobs` result lies in the
        space and meets the constraints. Call it only for workloads the rule :meth:`supports`.
        """

    def knob_constraints(self, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> str | None:
        """Conditions between knobs, checked after each knob is found inside :meth:`knob_space`: ``None`` when
        they hold, else a one-line reason naming the knobs (expected vs got). ``knobs`` is complete (optional
        knobs filled in) and every value an ``int``. The default has none."""
        return None

    def complete_knobs(self, knobs: Knobs) -> Knobs:
        """``knobs`` with every absent :attr:`optional_knobs` entry filled in with its default."""
        return {**self.optional_knobs, **knobs}

    def read_knobs(self, knobs: Knobs) -> Knobs:
        """``knobs`` as ints with the :attr:`optional_knobs` filled in (for :meth:`pack_weight` and
        :meth:`packed_weight_shape`, which take knobs :meth:`build` has validated)."""
        return self.complete_knobs({k: int(v) for k, v in knobs.items()})

    def validate_knobs(self, wl: Conv2dWorkload, target: TargetInfo, knobs: object) -> str | None:
        """``None`` when ``knobs`` is a valid setting of this rule for ``wl`` on ``target``, else a one-line
        reason naming the offending knob, what was expected and what was given.

        ``knobs`` may be anything (e.g. read from a JSON tuning database): it must be a ``dict`` holding exactly
        the knobs of :meth:`knob_space` (those in :attr:`optional_knobs` may be absent), each an ``int`` (not a
        ``bool``, float or string) inside its domain, and together meet :meth:`knob_constraints`. Old knob names
        are not accepted here: read stored settings through :func:`upgrade_knobs` first.
        ``wl`` must be a workload the rule :meth:`supports`.
        """
        if not isinstance(knobs, dict):
            return f"knobs must be an object of knob name -> integer, got {type(knobs).__name__} {knobs!r:.80}"
        space = self.knob_space(wl, target)
        unknown = [k for k in knobs if k not in space]
        if unknown:
            return f"unknown knob {unknown[0]!r} (the {self.arch}/{self.family} knobs here: {', '.join(space)})"
        for name, domain in space.items():
            if name not in knobs:
                if name in self.optional_knobs:
                    continue
                return f"knob {name!r} is missing (expected {describe_domain(domain)})"
            value = knobs[name]
            if not isinstance(value, int) or isinstance(value, bool):
                return f"knob {name!r}: expected {describe_domain(domain)}, got {type(value).__name__} {value!r:.40}"
            if value not in domain:
                return f"knob {name!r}: expected {describe_domain(domain)}, got {value}"
        return self.knob_constraints(wl, target, self.complete_knobs(knobs))

    def check_knobs(self, wl: Conv2dWorkload, target: TargetInfo, knobs: object) -> Knobs:
        """:meth:`complete_knobs` of ``knobs`` after :meth:`validate_knobs` (what :meth:`schedule` runs first).

        Raises:
            ValueError: invalid knobs; the message names the rule, the reason and the workload.
        """
        reason = self.validate_knobs(wl, target, knobs)
        if reason is not None:
            raise ValueError(f"{self.arch}/{self.family}: invalid knobs {knobs!r:.200} for {wl.describe()}: {reason}")
        return self.complete_knobs(knobs)

    # ---- the weight ----------------------------------------------------------------------------
    @abc.abstractmethod
    def weight_packing(self, wl: Conv2dWorkload, knobs: Knobs) -> WeightPacking:
        """The :mod:`.compute` packing of the weight for ``wl`` and ``knobs`` (complete, as ints: see
        :meth:`read_knobs`): ``(shape_fn, pack_fn, args)``, what :meth:`packed_weight_shape` and
        :meth:`pack_weight` call."""

    def packed_weight_shape(self, wl: Conv2dWorkload, knobs: Knobs) -> tuple[int, ...]:
        """Shape of the weight the kernel takes (after :meth:`pack_weight`)."""
        shape_fn, _, args = self.weight_packing(wl, self.read_knobs(knobs))
        return shape_fn(wl, *args)

    def pack_weight(self, weight: np.ndarray, wl: Conv2dWorkload, knobs: Knobs) -> np.ndarray:
        """OIHW ``float32[K, C/groups, KH, KW]`` -> the kernel's weight layout (NumPy, at compile time)."""
        _, pack_fn, args = self.weight_packing(wl, self.read_knobs(knobs))
        return pack_fn(weight, wl, *args)

    # ---- the kernel ----------------------------------------------------------------------------
    @abc.abstractmethod
    def unscheduled(self, wl: Conv2dWorkload, knobs: Knobs) -> tvm.tirx.PrimFunc:
        """The target-independent compute this rule schedules (from :mod:`.compute`), for complete, valid
        ``knobs`` (some knobs shape the compute: channel blocks, tile padding, the Winograd ``m``)."""

    @abc.abstractmethod
    def apply(self, sch: s_tir.Schedule, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> None:
        """The rule's loop transformations, applied in place to ``sch``, a fresh schedule of
        :meth:`unscheduled` (split/reorder/bind/cache/compute_at/inline: what is computed never changes).
        ``knobs`` are complete and valid for ``wl``, which the rule supports."""

    def schedule(self, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> s_tir.Schedule:
        """The traced schedule of ``wl``: :meth:`check`, :meth:`check_knobs`, a fresh schedule of
        :meth:`unscheduled`, then :meth:`apply`. (Its trace is what the CUDA tests replay on the CPU without
        thread bindings.)

        Raises:
            ValueError: ``wl`` is unsupported (see :meth:`unsupported_reason`) or ``knobs`` are invalid for it.
        """
        self.check(wl, target)
        kn = self.check_knobs(wl, target, knobs)
        sch = s_tir.Schedule(self.unscheduled(wl, kn))
        self.apply(sch, wl, target, kn)
        return sch

    def build(self, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> tvm.tirx.PrimFunc:
        """The scheduled kernel for ``wl`` (see the module docstring for its calling convention): the PrimFunc of
        :meth:`schedule`.

        Raises:
            ValueError: ``wl`` is unsupported (see :meth:`unsupported_reason`) or ``knobs`` are invalid for it.
        """
        return self.schedule(wl, target, knobs).mod["main"]


# ---- the families: what each computes and when it applies (the same on every target) ----------------------------
class DirectFamily(Conv2dRule):
    """Direct conv2d on channel-blocked data (:func:`.compute.direct_blocked`): ``groups == 1``, any kernel size,
    stride, padding and dilation."""

    family = "direct"

    def family_reason(self, wl: Conv2dWorkload) -> str | None:
        """``groups == 1``."""
        if wl.groups != 1:
            return "direct needs groups == 1 (grouped convs use im2col or depthwise)"
        return None


class Im2colFamily(Conv2dRule):
    """im2col + GEMM (:func:`.compute.im2col_rows`, :func:`.compute.im2col_gemm`): every conv2d (any stride,
    padding, dilation, groups), the universal fallback."""

    family = "im2col"


class WinogradFamily(Conv2dRule):
    """Winograd F(m x m, 3 x 3) (:func:`.compute.winograd`): 3x3, stride-1, dilation-1, groups-1 convs."""

    family = "winograd"

    #: The smallest output edge (pixels) from which the ``auto`` selection (``compiler/select.py``) prefers this
    #: family to a direct conv on the target: its transforms and its weight, ``(m + 2)^2 / 9`` times a direct
    #: conv's, must be amortised over enough output tiles.
    auto_min_output = 7

    def family_reason(self, wl: Conv2dWorkload) -> str | None:
        """A 3x3, stride-1, dilation-1, groups-1 conv (:meth:`.workload.Conv2dWorkload.is_winograd_shape`)."""
        if not wl.is_winograd_shape():
            return "Winograd needs a 3x3, stride-1, dilation-1, groups-1 conv"
        return None


class DepthwiseFamily(Conv2dRule):
    """Depthwise conv2d (:func:`.compute.depthwise`, :func:`.compute.depthwise_blocked`): ``groups == C_in``, any
    channel multiplier in NCHW; in NCHW[x]c channel multiplier 1 with the same layout in and out."""

    family = "depthwise"

    def family_reason(self, wl: Conv2dWorkload) -> str | None:
        """``groups == C_in``; NCHW[x]c data or output only with ``K == C`` and ``data_block == out_block``."""
        if not wl.is_depthwise:
            return "not depthwise (groups != C_in)"
        if (wl.data_block or wl.out_block) and (wl.out_channels != wl.in_channels or wl.data_block != wl.out_block):
            return "depthwise in NCHW[x]c needs channel multiplier 1 (K == C) and the same layout in and out"
        return None
