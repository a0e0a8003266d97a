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
        return B.gemm_knob_reason(knobs, "r_step")

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
        return self.add_candidates(wl, target, [self.default_knobs(wl, target)], (
            {"oc_thr": oc_thr, "oc_tile": oc_tile, "p_thr": p_thr, "p_tile": p_tile, "r_step": r_step}
            for oc_thr, oc_tile, p_thr, p_tile, r_step in (
                (8, 4, 16, 4, 8),
                (16, 4, 16, 4, 8),
                (8, 8, 16, 4, 8),
                (16, 4, 16, 4, 16),
                (8, 4, 32, 2, 8),
                (4, 2, 32, 2, 4),
            )
        ))

    def weight_packing(self, wl, knobs):
        return compute.im2col_packed_shape, compute.im2col_pack_weight, ()

    def unscheduled(self, wl: Conv2dWorkload, knobs: Knobs) -> tvm.tirx.PrimFunc:
        """:func:`..compute.im2col_gemm` (output pixels on one flattened axis)."""
        return compute.create_prim_func(compute.im2col_gemm(wl))

    def apply(self, sch: s_tir.Schedule, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> None:
        """:func:`.base.gemm_tile` of the GEMM with the im2col gather (and zero padding) inlined into the
        shared-memory fill of the column operand, and the NCHW store written straight from registers."""
        if wl.pad_top or wl.pad_left or wl.pad_bottom or wl.pad_right:
            sch.compute_inline(sch.get_sblock("pad_temp"))
        gemm = sch.get_sblock("gemm")
        # implicit GEMM: the im2col gather happens inside the shared-memory fill of the B operand
        gemm, _, _, ko = B.gemm_tile(
            sch, gemm, **B.gemm_knobs(knobs, m="oc", n="p", step="r_step"), batch_loops=2, gather="im2col"
        )
        # the NCHW store: "out" is a pure re-indexing of the GEMM result, written straight from registers
        sch.reverse_compute_inline(sch.get_sblock("out"))
        sch.decompose_reduction(gemm, ko)
