"""Conv2d schedule rules for LLVM CPU targets: x86 (AVX-512, AVX2) and aarch64 (NEON).

One rule per algorithm family, written once and sized by the target (:class:`~..target.TargetInfo`): its fp32
vector lanes (16 AVX-512, 8 AVX2, 4 NEON) and its register file (:func:`.base.vector_registers`: 32 zmm, 16 ymm,
32 NEON q registers), which bounds every register tile. ``x86/`` and ``arm/`` subclass these rules with their
``arch`` and only what differs per target: knob heuristics measured on one ISA.
"""

from .depthwise import DepthwiseCpu
from .direct import DirectCpu
from .im2col import Im2colCpu
from .winograd import ERROR_BOUND, WinogradCpu

__all__ = ["ERROR_BOUND", "DepthwiseCpu", "DirectCpu", "Im2colCpu", "WinogradCpu"]
