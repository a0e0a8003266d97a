"""Implicit-GEMM conv2d for CUDA: the im2col gather is fused into the shared-memory load of the GEMM's B operand,
so the column matrix never exists in global memory. Supports every conv2d (any stride, padding, dilation,
groups): the universal fallback.
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from .. import compute
from ..rule import Im2colFamily, Knobs
from ..target import TargetInfo
from ..workload import Conv2dWorkload
from . import base as B


class Im2colCuda(Im2colFamily, B.CudaRule):
    """GEMM per group on :func:`..compute.im2col_gemm`: ``out[n, g, k, p] = sum_r W[g, k, r] * col[n, g, r, p]``
    (k: output channel of the group, p: output pixel ``y * OW + x``, r: (ic, kh, kw)).

    Knobs:
        oc_thr, p_thr: threads per block along the group's output channels and the output pixels
            (threadIdx.y, threadIdx.x).
        oc_tile, p_tile: output channels / output pixels per thread (the register tile). Block tile
            ``oc_thr*oc_tile`` x ``p_thr*p_tile``.
        r_step: reduction elements (of ``C/G*KH*KW``) staged in shared memory per step.

    Splits need not divide the GEMM sizes (ragged edges are predicated).
    """

    def knob_space(self, wl: Conv2dWorkload, target: TargetInfo):
        """``oc_thr``/``p_thr``: 1 .. 1024 threads; ``oc_tile``/``p_tile``: 1 .. 64 (the register-tile cap);
        ``r_step``: 1 .. 12288 (a shared-memory slice). Splits need not divide the GEMM; :meth:`knob_constraints`
        bounds threads per block, shared memory and the register tile."""
        return {
            "oc_thr": B.THREADS,
            "oc_tile": range(1, 65),
            "p_thr": B.THREADS,
            "p_tile": range(1, 65),
            "r_step": B.SMEM_SLICE,
        }

    def knob_constraints(self, wl, target, knobs) -> str | None:
        """At most 1024 threads per block; both operand slices fit 48 KiB of shared memory; at most 64
        accumulators per thread."""
        threads = knobs["oc_thr"] * knobs["p_thr"]
        if threads > B.MAX_THREADS:
            return f"oc_thr*p_thr = {threads} threads per block (at most {B.MAX_THREADS})"
        smem = 4 * knobs["r_step"] * (knobs["oc_thr"] * knobs["oc_tile"] + knobs["p_thr"] * knobs["p_tile"])
        if smem > B.MAX_STATIC_SMEM:
            return f"r_step={knobs['r_step']}: {smem} bytes of shared memory (at most {B.MAX_STATIC_SMEM})"
        if knobs["oc_tile"] * knobs["p_tile"] > 64:
            return "register tile oc_tile*p_tile over 64 accumulators"
        return None

    def default_knobs(self, wl, target):
        kg = wl.out_channels // wl.groups
        p_len = wl.out_h * wl.out_w
        oc_tile = 4 if kg >= 32 else (2 if kg >= 8 else 1)
        oc_thr = B.pow2_at_most(B.ceil_div(kg, oc_tile), 16)
        p_tile = 4 if p_len >= 256 else 1
        p_thr = B.pow2_at_most(B.ceil_div(p_len, p_tile), 256 // oc_thr)
        p_thr = max(p_thr, min(32 // oc_thr, B.pow2_at_most(p_len, 32)), 1)
        r_len = (wl.in_channels // wl.groups) * wl.kernel_h * wl.kernel_w
        return {"oc_thr": oc_thr, "oc_tile": oc_tile, "p_thr": p_thr, "p_tile": p_tile, "r_step": min(8, r_len)}

    def candidate_knobs(self, wl, target):
        base = self.default_knobs(wl, target)
        out = [base]
        for oc_thr, oc_tile, p_thr, p_tile, r_step in (
            (8, 4, 16, 4, 8),
            (16, 4, 16, 4, 8),
            (8, 8, 16, 4, 8),
            (16, 4, 16, 4, 16),
            (8, 4, 32, 2, 8),
            (4, 2, 32, 2, 4),
        ):
            kn = {"oc_thr": oc_thr, "oc_tile": oc_tile, "p_thr": p_thr, "p_tile": p_tile, "r_step": r_step}
            if kn not in out and self.knob_constraints(wl, target, kn) is None:
                out.append(kn)
        return out

    def packed_weight_shape(self, wl, knobs):
        return compute.im2col_packed_shape(wl)

    def pack_weight(self, weight, wl, knobs):
        return compute.im2col_pack_weight(weight, wl)

    def unscheduled(self, wl: Conv2dWorkload, knobs: Knobs) -> tvm.tirx.PrimFunc:
        """:func:`..compute.im2col_gemm` (output pixels on one flattened axis)."""
        return compute.create_prim_func(compute.im2col_gemm(wl))

    def apply(self, sch: s_tir.Schedule, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> None:
        """:func:`.base.gemm_tile` of the GEMM with the im2col gather (and zero padding) inlined into the
        shared-memory fill of the column operand, and the NCHW store written straight from registers."""
        if wl.pad_top or wl.pad_left or wl.pad_bottom or wl.pad_right:
            sch.compute_inline(sch.get_sblock("pad_temp"))
        gemm = sch.get_sblock("gemm")
        gemm, local, (w_s, col_s), ko = B.gemm_tile(
            sch,
            gemm,
            m_thr=knobs["oc_thr"],
            m_tile=knobs["oc_tile"],
            n_thr=knobs["p_thr"],
            n_tile=knobs["p_tile"],
            k_step=knobs["r_step"],
            batch_loops=2,
        )
        # implicit GEMM: the im2col gather happens inside the shared-memory fill of the B operand
        sch.compute_inline(sch.get_sblock("im2col"))
        B.coop_fetch(sch, w_s, knobs["p_thr"], knobs["oc_thr"])
        B.coop_fetch(sch, col_s, knobs["p_thr"], knobs["oc_thr"])
        # the NCHW store: "out" is a pure re-indexing of the GEMM result, written straight from registers
        sch.reverse_compute_inline(sch.get_sblock("out"))
        sch.decompose_reduction(gemm, ko)
