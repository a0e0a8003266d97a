"""ARM (aarch64 NEON: 128-bit vectors, 4 fp32 lanes, 32 registers) conv2d schedule rules: the shared CPU rules
(``schedules/cpu/``) sized for NEON, with ARM's own knob defaults where they differ (``depthwise.py``,
``winograd.py``).

Every vectorised schedule keeps a register tile of at most 16 q-register accumulators and emits NEON FMA
(``fmla v.4s``); ``tests/test_arm.py`` checks both the instructions (disassembly) and the results (on an emulated
board, ``scripts/arm_board.sh``).
"""

from ..cpu import DirectCpu, Im2colCpu
from .depthwise import DepthwiseArm
from .winograd import WinogradArm


class DirectArm(DirectCpu):
    arch = "arm"


class Im2colArm(Im2colCpu):
    arch = "arm"


#: Every ARM rule; the compiler looks them up by ``family``.
RULES = [DirectArm(), Im2colArm(), WinogradArm(), DepthwiseArm()]
