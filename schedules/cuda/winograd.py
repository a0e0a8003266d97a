"""Winograd F(m x m, 3 x 3) conv2d for CUDA, m in {2, 4} (Lavin & Gray 2016); the kernel transform U = G g G^T is
precomputed at compile time by :func:`..compute.winograd_pack_weight`. Four kernels:

1. ``data_pack``: one thread per (tile, input channel) gathers its alpha x alpha input window (zero padding in
   the load), keeps d B in registers and writes V = B^T d B;
2. ``bgemm``: alpha^2 batched GEMMs M = V U, tiled like :mod:`.im2col` (shared-memory operands, register tile);
3. ``inverse``: one thread per (tile, output channel) keeps M A in registers and writes Y = A^T M A (NHWC);
4. ``out``: crop the tiles into NCHW.

Schedules the shared :func:`..compute.winograd` compute with ``oc_block = p_tile = 1`` (no padding of K or of
the tile count: GPU splits need not divide, ragged edges are predicated).
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from .. import compute
from ..rule import Knobs, WinogradFamily
from ..target import TargetInfo
from ..workload import Conv2dWorkload
from . import base as B


def _one_thread_each(sch: s_tir.Schedule, loop, threads: int):
    """Spread ``loop`` over thread blocks of ``threads`` threads (one iteration per thread); the thread loop."""
    bx, tx = sch.split(loop, [None, threads])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    return tx


def _transform_kernel(sch: s_tir.Schedule, loop, threads: int, tmp: str, *unrolled) -> None:
    """A transform kernel (input: ``data_pack`` = B^T (d B); inverse: ``inverse`` = A^T (M A)): one thread per
    iteration of ``loop`` (a (tile, channel) pair), its alpha x alpha (or m x m) ``unrolled`` loops unrolled and its
    intermediate block ``tmp`` (d B, M A) computed per thread in registers (``local``, every loop unrolled)."""
    tx = _one_thread_each(sch, loop, threads)
    block = sch.get_sblock(tmp)
    sch.compute_at(block, tx, preserve_unit_loops=True)
    sch.set_scope(block, 0, "local")
    B.unroll_inner(sch, block, tx)
    for lp in unrolled:
        sch.unroll(lp)


class WinogradCuda(WinogradFamily, B.CudaRule):
    """Winograd F(m x m, 3 x 3) for 3x3, stride-1, dilation-1, groups-1 convs.

    Knobs:
        m: the output tile edge of F(m x m, 3 x 3): 4, or 2 for small outputs (default).
        p_thr, oc_thr: threads per block of the batched GEMM along Winograd tiles and output channels
            (threadIdx.y, threadIdx.x).
        p_tile, oc_tile: Winograd tiles / output channels per thread of the batched GEMM (the register tile).
            Block tile ``p_thr*p_tile`` tiles x ``oc_thr*oc_tile`` output channels.
        ic_step: input channels (the GEMM's reduction) staged in shared memory per step.
        tf_thr: threads per block of the transform kernels (input transform, inverse transform, crop).
    """

    def knob_space(self, wl: Conv2dWorkload, target: TargetInfo):
        """``m``: 2 or 4; ``oc_thr``/``p_thr``/``tf_thr``: 1 .. 1024 threads; ``oc_tile``/``p_tile``: 1 .. 64 (the
        register-tile cap); ``ic_step``: 1 .. 12288 (a shared-memory slice). :meth:`knob_constraints` bounds
        threads per block, shared memory and the register tile."""
        return {
            "m": (2, 4),
            "oc_thr": B.THREADS,
            "oc_tile": range(1, 65),
            "p_thr": B.THREADS,
            "p_tile": range(1, 65),
            "ic_step": B.SMEM_SLICE,
            "tf_thr": B.THREADS,
        }

    def knob_constraints(self, wl, target, knobs) -> str | None:
        """At most 1024 threads per block (GEMM and transforms); both GEMM operand slices fit 48 KiB of shared
        memory; at most 64 accumulators per thread."""
        return B.gemm_knob_reason(knobs, "ic_step", "tf_thr")

    def default_knobs(self, wl, target):
        m = 4 if min(wl.out_h, wl.out_w) >= 8 else 2
        n_h, n_w = -(-wl.out_h // m), -(-wl.out_w // m)
        tiles = wl.batch * n_h * n_w
        k = wl.out_channels
        oc_tile = 4 if k >= 32 else (2 if k >= 8 else 1)
        oc_thr = B.pow2_at_most(B.ceil_div(k, oc_tile), 8)
        p_tile = 2 if tiles >= 64 else 1
        p_thr = max(B.pow2_at_most(B.ceil_div(tiles, p_tile), 128 // oc_thr), 32 // oc_thr, 1)
        return {
            "m": m,
            "oc_thr": oc_thr,
            "oc_tile": oc_tile,
            "p_thr": p_thr,
            "p_tile": p_tile,
            "ic_step": min(8, wl.in_channels),
            "tf_thr": 128,
        }

    def candidate_knobs(self, wl, target):
        base = self.default_knobs(wl, target)
        return self.add_candidates(wl, target, [base], (
            {**base, "oc_thr": kt, "oc_tile": kr, "p_thr": pt, "p_tile": pr, "ic_step": ct}
            for kt, kr, pt, pr, ct in ((8, 4, 16, 4, 8), (16, 4, 16, 2, 8), (8, 4, 32, 2, 8), (16, 2, 16, 2, 16),
                                       (4, 4, 32, 2, 8))
        ))

    def weight_packing(self, wl, knobs):
        return compute.winograd_packed_shape, compute.winograd_pack_weight, (knobs["m"],)

    def unscheduled(self, wl: Conv2dWorkload, knobs: Knobs) -> tvm.tirx.PrimFunc:
        """:func:`..compute.winograd` with the knobs' ``m`` (``oc_block = p_tile = 1``: nothing padded)."""
        return compute.create_prim_func(compute.winograd(wl, knobs["m"]))

    def apply(self, sch: s_tir.Schedule, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> None:
        """The four kernels of the module docstring."""
        tf = knobs["tf_thr"]
        # 1. input transform: one thread per (tile, input channel); the zero padding is done in its load, the
        #    alpha x alpha intermediate d B lives in registers
        sch.compute_inline(sch.get_sblock("pad_temp"))
        dp = sch.get_sblock("data_pack")
        eps, nu, p, ci = sch.get_loops(dp)
        sch.reorder(p, ci, eps, nu)
        _transform_kernel(sch, sch.fuse(p, ci), tf, "data_tmp", eps, nu)

        # 2. alpha^2 batched GEMMs M[p, eps, nu, k] = sum_c V[eps, nu, p, c] U[eps, nu, c, k]
        bg = sch.get_sblock("bgemm")
        p, eps, nu, ko, rc = sch.get_loops(bg)
        sch.reorder(eps, nu, p, ko, rc)
        bg, _, _, rco = B.gemm_tile(sch, bg, **B.gemm_knobs(knobs, m="p", n="oc", step="ic_step"), batch_loops=2)
        sch.decompose_reduction(bg, rco)

        # 3. inverse transform: one thread per (tile, output channel); M A lives in registers
        m = knobs["m"]
        inv = sch.get_sblock("inverse")
        n, y, x, ko = sch.get_loops(inv)
        yo, yi = sch.split(y, [None, m])
        xo, xi = sch.split(x, [None, m])
        sch.reorder(n, yo, xo, ko, yi, xi)
        _transform_kernel(sch, sch.fuse(n, yo, xo, ko), tf, "inv_tmp", yi, xi)

        # 4. crop + NHWC -> NCHW
        out = sch.get_sblock("out")
        _one_thread_each(sch, sch.fuse(*sch.get_loops(out)), tf)
