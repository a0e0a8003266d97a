"""The one interface between ``compiler/`` and a conv2d schedule.

Modelled on TVM dlight's ``ScheduleRule`` (``python/tvm/s_tir/dlight/base/schedule_rule.py``): one rule per
(target architecture, algorithm family), one file per rule under ``schedules/<arch>/``. The compiler only ever
calls the methods below; it never knows a family's internals.

Calling convention of every built kernel (a TensorIR ``PrimFunc``)::

    kernel(data: float32[wl.data_tensor_shape],  # NCHW [N, C, H, W] (unpadded) or NCHW[x]c [N, C/x, H, W, x]
           packed_weight: float32[rule.packed_weight_shape(wl, knobs)],
           out: float32[wl.out_tensor_shape])    # NCHW [N, K, OH, OW] or NCHW[x]c [N, K/x, OH, OW, x]

(the blocks are ``wl.data_block`` / ``wl.out_block``; the CPU rules take both layouts, the CUDA rules NCHW only)

``packed_weight`` is ``rule.pack_weight(weight_oihw, wl, knobs)``, computed once with NumPy at compile time
(OIHW -> blocked layout, or the Winograd kernel transform G g G^T), so no weight transform runs at inference.
"""

from __future__ import annotations

import abc
from typing import ClassVar, Union

import numpy as np
import tvm

from .target import TargetInfo
from .workload import Conv2dWorkload

Knobs = dict[str, int]
#: The values one knob may take: a ``range`` (e.g. ``range(1, OW + 1)``) or an explicit tuple (e.g. the divisors
#: of ``OH``, or the Winograd tile sizes ``(2, 4, 6)``).
KnobDomain = Union[range, tuple[int, ...]]


def describe_domain(domain: KnobDomain) -> str:
    """``range(1, 13)`` -> ``"an integer in 1..12"``, ``(2, 4, 6)`` -> ``"one of 2, 4, 6"``."""
    if isinstance(domain, range):
        if domain.step != 1:
            return f"one of {domain.start}, {domain.start + domain.step}, ... < {domain.stop}"
        return f"an integer in {domain.start}..{domain.stop - 1}" if len(domain) else "no value (empty)"
    return "one of " + ", ".join(map(str, domain))


class Conv2dRule(abc.ABC):
    """A conv2d algorithm family scheduled for one target architecture.

    Subclasses set :attr:`family` (``"direct"``, ``"im2col"``, ``"winograd"``, ``"depthwise"``) and :attr:`arch`
    (``"x86"``, ``"arm"``, ``"cuda"``) and implement the abstract methods.
    """

    family: ClassVar[str]
    arch: ClassVar[str]
    #: Knobs a setting may leave out, with the value the rule then uses (see :meth:`complete_knobs`).
    optional_knobs: ClassVar[dict[str, int]] = {}

    def unsupported_reason(self, wl: Conv2dWorkload, target: TargetInfo) -> str | None:
        """``None`` when this family can compute ``wl`` on ``target``, else a short human-readable reason
        (by default the family's own requirement, :func:`convpipe.schedules.compute.unsupported_reason`)."""
        from .compute import unsupported_reason

        return unsupported_reason(self.family, wl)

    def supports(self, wl: Conv2dWorkload, target: TargetInfo) -> bool:
        return self.unsupported_reason(wl, target) is None

    @abc.abstractmethod
    def default_knobs(self, wl: Conv2dWorkload, target: TargetInfo) -> Knobs:
        """The knobs used without tuning (a heuristic from the shape and the target's vector width)."""

    def candidate_knobs(self, wl: Conv2dWorkload, target: TargetInfo) -> list[Knobs]:
        """Knob settings worth measuring when tuning; the default first."""
        return [self.default_knobs(wl, target)]

    # ---- the knob space ------------------------------------------------------------------------
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

    def validate_knobs(self, wl: Conv2dWorkload, target: TargetInfo, knobs: object) -> str | None:
        """``None`` when ``knobs`` is a valid setting of this rule for ``wl`` on ``target``, else a one-line
        reason naming the offending knob, what was expected and what was given.

        ``knobs`` may be anything (e.g. read from a JSON tuning database): it must be a ``dict`` holding exactly
        the knobs of :meth:`knob_space` (those in :attr:`optional_knobs` may be absent), each an ``int`` (not a
        ``bool``, float or string) inside its domain, and together meet :meth:`knob_constraints`.
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
        """:meth:`complete_knobs` of ``knobs`` after :meth:`validate_knobs` (what :meth:`build` runs first).

        Raises:
            ValueError: invalid knobs; the message names the rule, the reason and the workload.
        """
        reason = self.validate_knobs(wl, target, knobs)
        if reason is not None:
            raise ValueError(f"{self.arch}/{self.family}: invalid knobs {knobs!r:.200} for {wl.describe()}: {reason}")
        return self.complete_knobs(knobs)

    @abc.abstractmethod
    def packed_weight_shape(self, wl: Conv2dWorkload, knobs: Knobs) -> tuple[int, ...]:
        """Shape of the weight the kernel takes (after :meth:`pack_weight`)."""

    @abc.abstractmethod
    def pack_weight(self, weight: np.ndarray, wl: Conv2dWorkload, knobs: Knobs) -> np.ndarray:
        """OIHW ``float32[K, C/groups, KH, KW]`` -> the kernel's weight layout (NumPy, at compile time)."""

    @abc.abstractmethod
    def build(self, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> tvm.tirx.PrimFunc:
        """The scheduled kernel for ``wl`` (see the module docstring for its calling convention).

        Raises:
            ValueError: ``wl`` is unsupported (see :meth:`unsupported_reason`) or ``knobs`` are invalid for it.
        """

    def check(self, wl: Conv2dWorkload, target: TargetInfo) -> None:
        reason = self.unsupported_reason(wl, target)
        if reason is not None:
            raise ValueError(f"{self.arch}/{self.family} cannot compute {wl.describe()}: {reason}")
