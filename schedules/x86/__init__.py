"""x86 (AVX-512 / AVX2) conv2d schedule rules: the shared CPU rules (``schedules/cpu/``), whose schedules and
knob heuristics were tuned on AVX-512 and are used here as they are."""

from ..cpu import DepthwiseCpu, DirectCpu, Im2colCpu, WinogradCpu


class DirectX86(DirectCpu):
    arch = "x86"


class Im2colX86(Im2colCpu):
    arch = "x86"


class WinogradX86(WinogradCpu):
    arch = "x86"


class DepthwiseX86(DepthwiseCpu):
    arch = "x86"


#: Every x86 rule; the compiler looks them up by ``family``.
RULES = [DirectX86(), Im2colX86(), WinogradX86(), DepthwiseX86()]
