"""Implicit-GEMM conv2d for CUDA: the im2col gather is fused into the shared-memory load of the GEMM's B operand,
so the column matrix never exists in global memory. Supports every conv2d (any stride, padding, dilation,
groups): the universal fallback.
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from .. import compute
from ..rule import Knobs
from ..target import TargetInfo
from ..workload import Conv2dWorkload
from . import _common as C


class Im2colCuda(C.CudaRule):
    """GEMM per group: ``out[n, g, k, p] = sum_r W[g, k, r] * col[n, g, r, p]`` (k: output channel of the group,
    p: output pixel, r: (ic, kh, kw)).

    Knobs: ``k_thr`` x ``p_thr`` threads per block (threadIdx.y x threadIdx.x), ``k_reg`` x ``p_reg`` register tile
    per thread (block tile ``k_thr*k_reg`` x ``p_thr*p_reg``), ``r_tile`` the reduction slice staged in shared
    memory per step. Splits need not divide the GEMM sizes.
    """

    family = "im2col"

    def knob_space(self, wl: Conv2dWorkload, target: TargetInfo):
        """``k_thr``/``p_thr``: 1 .. 1024 threads; ``k_reg``/``p_reg``: 1 .. 64 (the register-tile cap);
        ``r_tile``: 1 .. 12288 (a shared-memory slice). Splits need not divide the GEMM; :meth:`_valid` bounds
        threads per block, shared memory and the register tile."""
        return {"k_thr": C.THREADS, "k_reg": range(1, 65), "p_thr": C.THREADS, "p_reg": range(1, 65), "r_tile": C.SMEM_SLICE}

    def default_knobs(self, wl, target):
        kg = wl.out_channels // wl.groups
        p_len = wl.out_h * wl.out_w
        k_reg = 4 if kg >= 32 else (2 if kg >= 8 else 1)
        k_thr = C.pow2_at_most(C.ceil_div(kg, k_reg), 16)
        p_reg = 4 if p_len >= 256 else 1
        p_thr = C.pow2_at_most(C.ceil_div(p_len, p_reg), 256 // k_thr)
        p_thr = max(p_thr, min(32 // k_thr, C.pow2_at_most(p_len, 32)), 1)
        r_len = (wl.in_channels // wl.groups) * wl.kernel_h * wl.kernel_w
        return {"k_thr": k_thr, "k_reg": k_reg, "p_thr": p_thr, "p_reg": p_reg, "r_tile": min(8, r_len)}

    def candidate_knobs(self, wl, target):
        base = self.default_knobs(wl, target)
        out = [base]
        for k_thr, k_reg, p_thr, p_reg, r_tile in (
            (8, 4, 16, 4, 8),
            (16, 4, 16, 4, 8),
            (8, 8, 16, 4, 8),
            (16, 4, 16, 4, 16),
            (8, 4, 32, 2, 8),
            (4, 2, 32, 2, 4),
        ):
            kn = {"k_thr": k_thr, "k_reg": k_reg, "p_thr": p_thr, "p_reg": p_reg, "r_tile": r_tile}
            if kn not in out and self._valid(wl, kn) is None:
                out.append(kn)
        return out

    @staticmethod
    def _valid(wl, kn) -> str | None:
        threads = kn["k_thr"] * kn["p_thr"]
        if threads > C.MAX_THREADS:
            return f"{threads} threads"
        smem = 4 * kn["r_tile"] * (kn["k_thr"] * kn["k_reg"] + kn["p_thr"] * kn["p_reg"])
        if smem > C.MAX_STATIC_SMEM:
            return f"{smem} bytes smem"
        if kn["k_reg"] * kn["p_reg"] > 64:
            return "register tile over 64 accumulators"
        return None

    def packed_weight_shape(self, wl, knobs):
        return compute.im2col_packed_shape(wl)

    def pack_weight(self, weight, wl, knobs):
        return compute.im2col_pack_weight(weight, wl)

    def unscheduled(self, wl: Conv2dWorkload, knobs: Knobs) -> tvm.tirx.PrimFunc:
        """The shared target-independent compute this rule schedules."""
        return compute.create_prim_func(compute.im2col_gemm(wl))

    def schedule(self, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> s_tir.Schedule:
        """The traced schedule behind :meth:`build` (tests replay its trace on CPU without thread bindings)."""
        sch = self.start(wl, target, knobs)
        if wl.pad_top or wl.pad_left or wl.pad_bottom or wl.pad_right:
            sch.compute_inline(sch.get_sblock("pad_temp"))
        gemm = sch.get_sblock("gemm")
        gemm, local, (w_s, col_s), ko = C.gemm_tile(
            sch,
            gemm,
            m_thr=knobs["k_thr"],
            m_reg=knobs["k_reg"],
            n_thr=knobs["p_thr"],
            n_reg=knobs["p_reg"],
            k_tile=knobs["r_tile"],
            batch_loops=2,
        )
        # implicit GEMM: the im2col gather happens inside the shared-memory fill of the B operand
        sch.compute_inline(sch.get_sblock("im2col"))
        C.coop_fetch(sch, w_s, knobs["p_thr"], knobs["k_thr"])
        C.coop_fetch(sch, col_s, knobs["p_thr"], knobs["k_thr"])
        # the NCHW store: "out" is a pure re-indexing of the GEMM result, written straight from registers
        sch.reverse_compute_inline(sch.get_sblock("out"))
        sch.decompose_reduction(gemm, ko)
        return sch
