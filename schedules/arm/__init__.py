"""ARM (aarch64 NEON: 128-bit vectors, 4 fp32 lanes, 32 registers) conv2d schedule rules, one file per family.

Every vectorised schedule keeps a register tile of at most 16 q-register accumulators and emits NEON FMA
(``fmla v.4s``); ``tests/test_arm.py`` checks both the instructions (disassembly) and the results (on an emulated
board, ``scripts/arm_board.sh``).
"""

from .depthwise import DepthwiseArm
from .direct import DirectArm
from .im2col import Im2colArm
from .winograd import WinogradArm

#: Every ARM rule; the compiler looks them up by ``family``.
RULES = [DirectArm(), Im2colArm(), WinogradArm(), DepthwiseArm()]
