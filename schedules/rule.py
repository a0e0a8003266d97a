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
from typing import ClassVar

import numpy as np
import tvm

from .target import TargetInfo
from .workload import Conv2dWorkload

Knobs = dict[str, int]


class Conv2dRule(abc.ABC):
    """A conv2d algorithm family scheduled for one target architecture.

    Subclasses set :attr:`family` (``"direct"``, ``"im2col"``, ``"winograd"``, ``"depthwise"``) and :attr:`arch`
    (``"x86"``, ``"arm"``, ``"cuda"``) and implement the abstract methods.
    """

    family: ClassVar[str]
    arch: ClassVar[str]

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
