"""CUDA (sm_80 / sm_90) conv2d schedule rules, one file per algorithm family."""

from .depthwise import DepthwiseCuda
from .direct import DirectCuda
from .im2col import Im2colCuda
from .winograd import WinogradCuda

#: Every CUDA rule; the compiler looks them up by ``family``.
RULES = [DirectCuda(), Im2colCuda(), WinogradCuda(), DepthwiseCuda()]
