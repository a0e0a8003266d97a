"""Offline CUDA check: build every CUDA conv2d family for a layer with its default knobs, compile the generated CUDA
with nvcc (TVM's deployment flags) for sm_80 and sm_90, print registers/thread, shared memory and spills.

    python scripts/check_cuda.py [N C H W K KH KW STRIDE PAD]   (default: 1 64 56 56 64 3 3 1 1)
"""

from __future__ import annotations

import sys

from convpipe.schedules import Conv2dWorkload, resolve_target
from convpipe.schedules.cuda import RULES
from convpipe.compiler.nvcc import cuda_source, ptxas_report


def main(argv: list[str]) -> int:
    n, c, h, w, k, kh, kw, s, p = (int(a) for a in argv) if argv else (1, 64, 56, 56, 64, 3, 3, 1, 1)
    wl = Conv2dWorkload(n, c, h, w, k, kh, kw, s, s, p, p, p, p)
    print(wl.describe())
    bad = 0
    for arch in ("sm_80", "sm_90"):
        t = resolve_target("cuda", arch=arch)
        for rule in RULES:
            if not rule.supports(wl, t):
                continue
            kn = rule.default_knobs(wl, t)
            for rep in ptxas_report(cuda_source(rule.build(wl, t, kn), t.target), arch):
                bad += rep.spills + rep.stack_bytes > 0
                print(f"{arch} {rule.family:9s} {rep.kernel:13s} regs={rep.registers:3d} smem={rep.smem_bytes:6d} "
                      f"spill={rep.spill_stores}/{rep.spill_loads} stack={rep.stack_bytes}  knobs={kn}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
