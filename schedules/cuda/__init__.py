"""CUDA (sm_80 / sm_90) conv2d schedule rules, one file per algorithm family, and the epilogue-fusion rule that
applies bias/BatchNorm/activation/residual consumers inside their output stores (:mod:`.epilogue`)."""

from .depthwise import DepthwiseCuda
from .direct import DirectCuda
from .epilogue import ConvEpilogueCUDA
from .im2col import Im2colCuda
from .winograd import WinogradCuda

#: Every CUDA rule; the compiler looks them up by ``family``.
RULES = [DirectCuda(), Im2colCuda(), WinogradCuda(), DepthwiseCuda()]

__all__ = ["RULES", "ConvEpilogueCUDA", "DepthwiseCuda", "DirectCuda", "Im2colCuda", "WinogradCuda"]
