"""Winograd F(4x4, 3x3) conv2d for CUDA (Lavin & Gray 2016); the kernel transform U = G g G^T is precomputed at
compile time by :func:`..compute.winograd_pack_weight`. Four kernels:

1. ``data_pack``: one thread per (tile, input channel) gathers its alpha x alpha input window (zero padding in
   the load), keeps d B in registers and writes V = B^T d B;
2. ``bgemm``: alpha^2 batched GEMMs M = V U, tiled like :mod:`.im2col` (shared-memory operands, register tile);
3. ``inverse``: one thread per (tile, output channel) keeps M A in registers and writes Y = A^T M A (NHWC);
4. ``out``: crop the tiles into NCHW.

Schedules the shared :func:`..compute.winograd` compute with ``k_block = p_block = 1`` (GPU splits need not
divide: ragged edges are predicated).
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from .. import compute
from ..rule import Knobs
from ..target import TargetInfo
from ..workload import Conv2dWorkload
from . import _common as C


class WinogradCuda(C.CudaRule):
    """Knobs: ``tile`` (m of F(m x m, 3 x 3): 4, or 2 for small outputs), ``k_thr``/``k_reg``/``p_thr``/``p_reg``/
    ``c_tile`` for the batched GEMM (block tile ``p_thr*p_reg`` tiles x ``k_thr*k_reg`` output channels,
    threadIdx.y over tiles, threadIdx.x over channels, ``c_tile`` input channels per shared-memory step), ``tf_thr`` threads per block of the transform kernels. Supports 3x3,
    stride 1, dilation 1, groups 1.
    """

    family = "winograd"

    def knob_space(self, wl: Conv2dWorkload, target: TargetInfo):
        """``tile``: 2 or 4; ``k_thr``/``p_thr``/``tf_thr``: 1 .. 1024 threads; ``k_reg``/``p_reg``: 1 .. 64 (the
        register-tile cap); ``c_tile``: 1 .. 12288 (a shared-memory slice). :meth:`_valid` bounds threads per
        block, shared memory and the register tile."""
        return {
            "tile": (2, 4),
            "k_thr": C.THREADS,
            "k_reg": range(1, 65),
            "p_thr": C.THREADS,
            "p_reg": range(1, 65),
            "c_tile": C.SMEM_SLICE,
            "tf_thr": C.THREADS,
        }

    def default_knobs(self, wl, target):
        m = 4 if min(wl.out_h, wl.out_w) >= 8 else 2
        n_h, n_w = -(-wl.out_h // m), -(-wl.out_w // m)
        tiles = wl.batch * n_h * n_w
        k = wl.out_channels
        k_reg = 4 if k >= 32 else (2 if k >= 8 else 1)
        k_thr = C.pow2_at_most(C.ceil_div(k, k_reg), 8)
        p_reg = 2 if tiles >= 64 else 1
        p_thr = max(C.pow2_at_most(C.ceil_div(tiles, p_reg), 128 // k_thr), 32 // k_thr, 1)
        return {
            "tile": m,
            "k_thr": k_thr,
            "k_reg": k_reg,
            "p_thr": p_thr,
            "p_reg": p_reg,
            "c_tile": min(8, wl.in_channels),
            "tf_thr": 128,
        }

    def candidate_knobs(self, wl, target):
        base = self.default_knobs(wl, target)
        out = [base]
        for kt, kr, pt, pr, ct in ((8, 4, 16, 4, 8), (16, 4, 16, 2, 8), (8, 4, 32, 2, 8), (16, 2, 16, 2, 16), (4, 4, 32, 2, 8)):
            kn = {**base, "k_thr": kt, "k_reg": kr, "p_thr": pt, "p_reg": pr, "c_tile": ct}
            if kn not in out and self._valid(wl, kn) is None:
                out.append(kn)
        return out

    @staticmethod
    def _valid(wl, kn) -> str | None:
        if kn["tile"] not in (2, 4):
            return "tile must be 2 or 4"
        threads = kn["k_thr"] * kn["p_thr"]
        if threads > C.MAX_THREADS or kn["tf_thr"] > C.MAX_THREADS:
            return "too many threads per block"
        smem = 4 * kn["c_tile"] * (kn["k_thr"] * kn["k_reg"] + kn["p_thr"] * kn["p_reg"])
        if smem > C.MAX_STATIC_SMEM:
            return f"{smem} bytes smem"
        if kn["k_reg"] * kn["p_reg"] > 64:
            return "register tile over 64 accumulators"
        return None

    def packed_weight_shape(self, wl, knobs):
        return compute.winograd_packed_shape(wl, knobs["tile"])

    def pack_weight(self, weight, wl, knobs):
        return compute.winograd_pack_weight(weight, wl, knobs["tile"])

    def unscheduled(self, wl: Conv2dWorkload, knobs: Knobs) -> tvm.tirx.PrimFunc:
        """The shared target-independent compute this rule schedules."""
        return compute.create_prim_func(compute.winograd(wl, knobs["tile"]))

    def schedule(self, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> s_tir.Schedule:
        """The traced schedule behind :meth:`build` (tests replay its trace on CPU without thread bindings)."""
        sch = self.start(wl, target, knobs)
        tf = knobs["tf_thr"]
        # 1. input transform: one thread per (tile, input channel); the zero padding is done in its load, the
        #    alpha x alpha intermediate d B lives in registers
        sch.compute_inline(sch.get_sblock("pad_temp"))
        dp = sch.get_sblock("data_pack")
        eps, nu, p, ci = sch.get_loops(dp)
        sch.reorder(p, ci, eps, nu)
        bx, tx = sch.split(sch.fuse(p, ci), [None, tf])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
        dtmp = sch.get_sblock("data_tmp")
        sch.compute_at(dtmp, tx, preserve_unit_loops=True)
        sch.set_scope(dtmp, 0, "local")
        C.unroll_inner(sch, dtmp, tx)
        sch.unroll(eps)
        sch.unroll(nu)

        # 2. alpha^2 batched GEMMs M[p, eps, nu, k] = sum_c V[eps, nu, p, c] U[eps, nu, c, k]
        bg = sch.get_sblock("bgemm")
        p, eps, nu, ko, rc = sch.get_loops(bg)
        sch.reorder(eps, nu, p, ko, rc)
        bg, _, (u_s, v_s), rco = C.gemm_tile(
            sch,
            bg,
            m_thr=knobs["p_thr"],
            m_reg=knobs["p_reg"],
            n_thr=knobs["k_thr"],
            n_reg=knobs["k_reg"],
            k_tile=knobs["c_tile"],
            batch_loops=2,
        )
        C.coop_fetch(sch, u_s, knobs["k_thr"], knobs["p_thr"])
        C.coop_fetch(sch, v_s, knobs["k_thr"], knobs["p_thr"])
        sch.decompose_reduction(bg, rco)

        # 3. inverse transform: one thread per (tile, output channel); M A lives in registers
        m = knobs["tile"]
        inv = sch.get_sblock("inverse")
        n, y, x, ko = sch.get_loops(inv)
        yo, yi = sch.split(y, [None, m])
        xo, xi = sch.split(x, [None, m])
        sch.reorder(n, yo, xo, ko, yi, xi)
        bx, tx = sch.split(sch.fuse(n, yo, xo, ko), [None, tf])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
        itmp = sch.get_sblock("inv_tmp")
        sch.compute_at(itmp, tx, preserve_unit_loops=True)
        sch.set_scope(itmp, 0, "local")
        C.unroll_inner(sch, itmp, tx)
        sch.unroll(yi)
        sch.unroll(xi)

        # 4. crop + NHWC -> NCHW
        out = sch.get_sblock("out")
        bx, tx = sch.split(sch.fuse(*sch.get_loops(out)), [None, tf])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
        return sch
