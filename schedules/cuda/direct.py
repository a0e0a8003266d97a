"""Tiled direct conv2d for CUDA: shared-memory tiles of the (padded) input and of the weight per input-channel slice,
fetched cooperatively by all threads of the block, and a register tile per thread
(``oc_block`` output channels x ``y_reg`` rows x ``x_reg`` columns).
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from .. import compute
from ..rule import Knobs
from ..target import TargetInfo
from ..workload import Conv2dWorkload
from . import _common as C
from ._common import divisor_domain


def _halo(t: int, stride: int, k: int, dil: int) -> int:
    return (t - 1) * stride + (k - 1) * dil + 1


class DirectCuda(C.CudaRule):
    """Knobs: ``oc_block`` (output channels per thread, divides K: the ``NCHW[oc_block]c`` compute's inner axis),
    ``k_thr``/``y_thr``/``x_thr`` threads per block along output-channel blocks, rows and columns
    (threadIdx.z/y/x), ``y_reg``/``x_reg`` output rows/columns per thread, ``ic_tile`` input channels staged in
    shared memory per step. Block tile: ``k_thr*oc_block`` channels x ``y_thr*y_reg`` rows x ``x_thr*x_reg``
    columns; it must divide the output height/width (TVM's shared-buffer compaction over-allocates ragged
    tiles of strided convs). Supports ``groups == 1`` (any kernel size, stride, padding, dilation).
    """

    family = "direct"

    def knob_space(self, wl: Conv2dWorkload, target: TargetInfo):
        """``oc_block``: a divisor of K up to 64 (the register-tile cap); ``y_thr``/``y_reg``: divisors of OH and
        ``x_thr``/``x_reg`` divisors of OW (the block tile divides the output); ``k_thr``: 1 .. 1024 threads;
        ``ic_tile``: 1 .. 12288 (a shared-memory slice). :meth:`_valid` then bounds threads per block (1024),
        shared memory (48 KiB) and the register tile (64 accumulators)."""
        oh, ow = divisor_domain(wl.out_h), divisor_domain(wl.out_w)
        return {
            "oc_block": divisor_domain(wl.out_channels, 64),
            "k_thr": C.THREADS,
            "y_thr": oh,
            "y_reg": oh,
            "x_thr": ow,
            "x_reg": ow,
            "ic_tile": C.SMEM_SLICE,
        }

    def default_knobs(self, wl, target):
        k = wl.out_channels
        ob = next(b for b in (4, 2, 1) if k % b == 0)
        k_thr = C.pow2_at_most(k // ob, 4)
        x_reg = 2 if wl.out_w >= 16 and wl.out_w % 2 == 0 else 1
        x_thr = C.largest_divisor(wl.out_w // x_reg, 16)
        y_reg = 2 if wl.out_h >= 16 and wl.out_h % 2 == 0 else 1
        y_thr = C.largest_divisor(wl.out_h // y_reg, max(1, 128 // (k_thr * x_thr)))
        kn = {
            "oc_block": ob,
            "k_thr": k_thr,
            "y_thr": y_thr,
            "y_reg": y_reg,
            "x_thr": x_thr,
            "x_reg": x_reg,
            # 1x1: more channels per barrier (also dodges an 8-byte ptxas spill seen on sm_80 with ic_tile 8)
            "ic_tile": min(wl.in_channels, 16 if wl.kernel_h * wl.kernel_w == 1 else 8 if wl.kernel_h * wl.kernel_w <= 9 else 2),
        }
        while self._valid(wl, kn) and kn["ic_tile"] > 1:
            kn["ic_tile"] //= 2
        return kn

    def candidate_knobs(self, wl, target):
        out = [self.default_knobs(wl, target)]
        base = out[0]
        for yr in (1, 2, 4):
            for xr in (1, 2, 4):
                if wl.out_h % yr or wl.out_w % xr:
                    continue
                for ob, kt, budget in ((4, 4, 128), (4, 8, 256), (8, 4, 128), (2, 8, 256)):
                    xt = C.largest_divisor(wl.out_w // xr, 16)
                    yt = C.largest_divisor(wl.out_h // yr, max(1, budget // (kt * xt)))
                    kn = {**base, "oc_block": ob, "k_thr": kt, "y_thr": yt, "y_reg": yr, "x_thr": xt, "x_reg": xr}
                    if kn not in out and self._valid(wl, kn) is None:
                        out.append(kn)
        for ob, kt, yt, yr, xt, xr, ict in (
            (4, 8, 4, 2, 8, 2, 8),
            (8, 4, 4, 2, 8, 2, 8),
            (4, 4, 8, 1, 8, 2, 8),
            (4, 4, 4, 2, 16, 1, 8),
            (8, 8, 2, 2, 8, 2, 4),
            (2, 4, 4, 2, 8, 4, 8),
            (4, 8, 2, 2, 8, 2, 16),
        ):
            kn = {"oc_block": ob, "k_thr": kt, "y_thr": yt, "y_reg": yr, "x_thr": xt, "x_reg": xr, "ic_tile": ict}
            if kn not in out and self._valid(wl, kn) is None:
                out.append(kn)
        return out

    @staticmethod
    def _valid(wl, kn) -> str | None:
        if wl.out_channels % kn["oc_block"]:
            return f"oc_block {kn['oc_block']} does not divide K={wl.out_channels}"
        # ragged output tiles make TVM's shared-buffer compaction fall back to the whole image on strided convs
        if wl.out_h % (kn["y_thr"] * kn["y_reg"]) or wl.out_w % (kn["x_thr"] * kn["x_reg"]):
            return "the block tile must divide the output (OH, OW)"
        threads = kn["k_thr"] * kn["y_thr"] * kn["x_thr"]
        if threads > C.MAX_THREADS:
            return f"{threads} threads per block"
        th = _halo(kn["y_thr"] * kn["y_reg"], wl.stride_h, wl.kernel_h, wl.dilation_h)
        tw = _halo(kn["x_thr"] * kn["x_reg"], wl.stride_w, wl.kernel_w, wl.dilation_w)
        smem = 4 * kn["ic_tile"] * (th * tw + kn["k_thr"] * kn["oc_block"] * wl.kernel_h * wl.kernel_w)
        if smem > C.MAX_STATIC_SMEM:
            return f"{smem} bytes of shared memory"
        if kn["oc_block"] * kn["y_reg"] * kn["x_reg"] > 64:
            return "register tile over 64 accumulators"
        return None

    # the shared blocked direct compute with unit input-channel blocks and unit column tiles (oc_block divides K,
    # so nothing is padded but the input's zero border, which is inlined into the shared-memory fill)
    def packed_weight_shape(self, wl, knobs):
        return compute.direct_blocked_packed_shape(wl, knobs["oc_block"], 1)

    def pack_weight(self, weight, wl, knobs):
        return compute.direct_blocked_pack_weight(weight, wl, knobs["oc_block"], 1)

    def unscheduled(self, wl: Conv2dWorkload, knobs: Knobs) -> tvm.tirx.PrimFunc:
        """The shared target-independent compute this rule schedules."""
        return compute.create_prim_func(compute.direct_blocked(wl, knobs["oc_block"], 1, 1))

    def schedule(self, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> s_tir.Schedule:
        """The traced schedule behind :meth:`build` (tests replay its trace on CPU without thread bindings)."""
        sch = self.start(wl, target, knobs)
        conv = sch.get_sblock("conv")
        has_pad = compute.direct_blocked_geometry(wl, knobs["oc_block"], 1, 1)["needs_pack"]
        local = sch.cache_write(conv, 0, "local")
        n, ko, y, x, ki, ic, rh, rw, ci = sch.get_loops(conv)
        kb, kt = sch.split(ko, [None, knobs["k_thr"]])
        yb, yt, yr = sch.split(y, [None, knobs["y_thr"], knobs["y_reg"]])
        xb, xt, xr = sch.split(x, [None, knobs["x_thr"], knobs["x_reg"]])
        ico, ici = sch.split(ic, [None, knobs["ic_tile"]])
        sch.reorder(n, kb, yb, xb, kt, yt, xt, ico, ici, rh, rw, ci, yr, xr, ki)
        sch.bind(sch.fuse(n, kb), "blockIdx.z")
        sch.bind(yb, "blockIdx.y")
        sch.bind(xb, "blockIdx.x")
        sch.bind(kt, "threadIdx.z")
        sch.bind(yt, "threadIdx.y")
        sch.bind(xt, "threadIdx.x")
        # operand 0 is the padded input (or the data itself without padding), operand 1 the packed weight
        d_s = sch.cache_read(conv, 0, "shared")
        w_s = sch.cache_read(conv, 1, "shared")
        for s in (d_s, w_s):
            sch.compute_at(s, ico, preserve_unit_loops=True)
        if has_pad:  # the zero padding happens while filling shared memory
            sch.compute_inline(sch.get_sblock("data_pack"))
        threads = knobs["k_thr"] * knobs["y_thr"] * knobs["x_thr"]
        for s in (d_s, w_s):
            _coop_fetch_1d(sch, s, threads, knobs)
        sch.reverse_compute_at(local, xt, preserve_unit_loops=True)
        sch.reverse_compute_inline(sch.get_sblock("out"))
        C.unroll_inner(sch, local, xt)
        for lp in (rh, rw, ci, yr, xr, ki):
            sch.unroll(lp)
        sch.decompose_reduction(conv, ico)
        return sch


def _coop_fetch_1d(sch, block, threads: int, knobs) -> None:
    """Spread a shared-memory fill over the block's (z, y, x) threads."""
    n_own = len(sch.get(block).iter_vars)
    fused = sch.fuse(*sch.get_loops(block)[-n_own:])
    _, tz, ty, tx = sch.split(fused, [None, knobs["k_thr"], knobs["y_thr"], knobs["x_thr"]])
    sch.bind(tz, "threadIdx.z")
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
