"""x86 (AVX-512 / AVX2) conv2d schedule rules, one file per algorithm family."""

from .depthwise import DepthwiseX86
from .direct import DirectX86
from .im2col import Im2colX86
from .winograd import WinogradX86

#: Every x86 rule; the compiler looks them up by ``family``.
RULES = [DirectX86(), Im2colX86(), WinogradX86(), DepthwiseX86()]
