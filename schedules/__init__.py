"""How a conv2d runs on a target: TensorIR compute definitions (:mod:`.compute`) and, per target
architecture, one schedule rule per algorithm family (``x86/``, ``arm/``, ``cuda/``) behind one interface
(:class:`.rule.Conv2dRule`). The x86 and ARM rules share one schedule per family (``cpu/``), sized by the
target's vector width and register file.
"""

from __future__ import annotations

from .rule import Conv2dRule, Knobs
from .target import TargetError, TargetInfo, resolve_target
from .workload import Conv2dWorkload

#: Algorithm families, in the order the CLI lists them.
FAMILIES = ("direct", "im2col", "winograd", "depthwise")


def rules_for(arch: str) -> dict[str, Conv2dRule]:
    """The schedule rules of ``arch`` (``"x86"``, ``"arm"``, ``"cuda"``) keyed by family name.

    Raises:
        TargetError: no rules exist for ``arch``.
    """
    if arch == "x86":
        from .x86 import RULES
    elif arch == "arm":
        from .arm import RULES
    elif arch == "cuda":
        from .cuda import RULES
    else:
        raise TargetError(f"no conv2d schedules for architecture {arch!r}")
    return {r.family: r for r in RULES}


__all__ = [
    "FAMILIES",
    "Conv2dRule",
    "Conv2dWorkload",
    "Knobs",
    "TargetError",
    "TargetInfo",
    "resolve_target",
    "rules_for",
]
