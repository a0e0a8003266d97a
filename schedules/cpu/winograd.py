"""Winograd F(m x m, 3 x 3) conv2d for CPUs (x86 AVX-512 / AVX2, aarch64 NEON), m in {2, 4, 6}.

Algorithm: Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016); stage structure after
``topi/nn/conv2d.py:_conv2d_winograd_nchw_impl``, matrices from ``topi/nn/winograd_util.py`` (Cook-Toom with the
interpolation points of Barabasz et al., arXiv:1803.10986). The kernel transform U = G g G^T runs in NumPy at
compile time (:func:`convpipe.schedules.compute.winograd_pack_weight`). See
:func:`convpipe.schedules.compute.winograd` for the stages and layouts.

Schedule (one parallel loop per stage; vector widths from the target's lanes):

- ``pad_temp``: NCHW -> zero-padded channels-last copy, parallel over rows, vectorised over channels;
- input transform: ``data_tmp`` (d B) computed at each (tile, channel vector) of ``data_pack`` (B^T d B), both
  fully unrolled over alpha x alpha so every output is its own sparse sum of constants, vectorised over C;
- batched GEMM: for each (eps, nu) and block of ``oc_block`` output channels (parallel), a register tile of
  ``p_tile`` tiles x ``oc_block`` channels (``p_tile * oc_block / lanes`` vector accumulators) accumulates
  broadcast(V) x vector(U) FMAs over C;
- output transform: ``inv_tmp`` (M A) at each (tile, channel vector) of ``inverse`` (A^T M A), unrolled,
  vectorised over K, parallel over tile rows; then a crop + transpose to NCHW ``out``.

Accuracy (max |ours - float64 reference| / max |reference|, random N(0,1) data and weights, C = K = 64..512,
measured here with ``torch.nn.functional.conv2d`` in float64; the direct fp32 algorithm gives ~1e-7):
see :data:`ERROR_BOUND`. F(6, 3) loses about one more decimal digit than F(4, 3); the default uses it only
where its bound is acceptable (see :meth:`WinogradCpu.default_knobs`).
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from .. import compute
from ..rule import Knobs, WinogradFamily
from ..target import TargetInfo
from ..workload import Conv2dWorkload
from .base import CpuRule, begin_schedule, register_tile_reason, vector_registers, vectorize_blocked_store

#: Documented bound on max |ours - float64| / max |float64| per tile size m (about 2x the worst measured value).
#: Measured (random N(0,1) data/weights, 3x3 pad 1, 64ch 56x56 / 128ch 28x28 / 256ch 14x14 / 512ch 7x7):
#: m=2: 3.1e-7 / 5.3e-7 / 6.1e-7 / 9.2e-7;  m=4: 1.8e-6 / 3.5e-6 / 3.9e-6 / 5.1e-6;
#: m=6: 8.7e-6 / 1.3e-5 / 1.7e-5 / 2.5e-5. The error grows roughly with sqrt(C).
ERROR_BOUND = {2: 2e-6, 4: 1e-5, 6: 5e-5}


def _pow2_divisor(n: int, cap: int) -> int:
    """Largest power of two dividing ``n``, at most ``cap``."""
    v = 1
    while v * 2 <= cap and n % (v * 2) == 0:
        v *= 2
    return v


def _unrolled_transform(sch: s_tir.Schedule, row, col, channels, tmp: str, at) -> None:
    """A transform stage (input: ``data_pack`` = B^T (d B); output: ``inverse`` = A^T (M A)): its ``row`` and
    ``col`` loops unrolled and its ``channels`` loop vectorised, and its intermediate block ``tmp`` (d B, M A)
    computed at loop ``at`` (the channel-vector loop) likewise: its two matrix loops unrolled, channels
    vectorised."""
    sch.unroll(row)
    sch.unroll(col)
    sch.vectorize(channels)
    block = sch.get_sblock(tmp)
    sch.compute_at(block, at)
    _, t_row, t_col, t_channels = sch.get_loops(block)[-4:]
    sch.unroll(t_row)
    sch.unroll(t_col)
    sch.vectorize(t_channels)


class WinogradCpu(WinogradFamily, CpuRule):
    """Winograd F(m x m, 3 x 3) for 3x3, stride-1, dilation-1, groups-1 convs (any N, C, K, H, W, pads).

    Knobs:
        m: the output tile edge of F(m x m, 3 x 3) (2, 4 or 6). ``alpha = m + 2``; multiplies per output fall
            from 9 (direct) to ``alpha^2 / m^2`` (4, 2.25, 1.78); transform cost and fp32 error grow with m
            (:data:`ERROR_BOUND`).
        oc_block: output channels per GEMM register tile, vectorised (defaults: a multiple of the target's
            vector lanes, 16 AVX-512, 8 AVX2, 4 NEON); K is zero-padded up to a multiple in the packed weight.
        p_tile: Winograd tiles per GEMM register tile, unrolled (accumulators = ``p_tile * oc_block / lanes``);
            the tile count is padded up to a multiple.

    Packed weight: ``float32[alpha, alpha, C, ceil(K / oc_block) * oc_block]`` (U = G g G^T).
    """

    #: The output tile edges m of F(m x m, 3 x 3) this rule builds (those with a measured :data:`ERROR_BOUND`).
    M_VALUES = tuple(sorted(ERROR_BOUND))

    #: On a CPU, Winograd pays inside a network from 14 x 14 outputs. Below, its packed weight U (``16 C K``
    #: floats for F(2, 3): 16 MB on ResNet's 512-channel 7 x 7 layers) no longer stays in cache between calls
    #: and is reused by only 16 tiles (a direct conv reuses its 9.4 MB weight over 49 pixels), so it streams from
    #: memory: alone, the 512 x 7 x 7 layer ran F(2, 3) 1.66 ms vs direct 1.73 ms, inside ResNet-18 F(2, 3) took
    #: 3.3-4.1 ms a call (55-69 GFLOP/s direct-equivalent). Measured end to end (Intel Xeon, AVX-512, 2026-11-30;
    #: ms, 1 / 2 threads, min output edge for Winograd 7 -> 14 -> 28): ResNet-18 26.3 / 15.5 -> 23.3 / 13.3 ->
    #: 22.8 / 13.6; ResNet-50 65.6 / 34.0 -> 62.9 / 33.0 -> 61.9 / 33.3.
    auto_min_output = 14

    def knob_space(self, wl: Conv2dWorkload, target: TargetInfo):
        """``m``: 2, 4 or 6 (:attr:`M_VALUES`); ``oc_block``: 1 .. 4 x lanes (up to four vectors of output channels;
        K is zero-padded up to it); ``p_tile``: 1 .. the number of vector registers; together a register tile of
        ``p_tile * oc_block / kv`` accumulators (``kv`` the vector width along K, the largest power of two
        <= lanes dividing ``oc_block``) within the register file (:meth:`knob_constraints`)."""
        return {
            "m": self.M_VALUES,
            "oc_block": range(1, 4 * target.vector_lanes + 1),
            "p_tile": range(1, vector_registers(target) + 1),
        }

    def knob_constraints(self, wl, target, knobs):
        """The GEMM register tile ``p_tile * oc_block / kv`` fits the vector register file."""
        kb = knobs["oc_block"]
        acc = knobs["p_tile"] * (kb // _pow2_divisor(kb, target.vector_lanes))
        return register_tile_reason(acc, target, "p_tile x oc_block / kv")

    def default_knobs(self, wl, target):
        """``m``: F(4, 3) (error bound 1e-5), F(2, 3) when the output is at most 8 pixels on a side (F(4, 3)
        would pad 7x7 to 8x8 and its 2.25x larger U makes small-spatial, many-channel layers weight-bandwidth
        bound). F(6, 3) is never the default (bound 5e-5, and not faster here); it is a tuning candidate.
        ``oc_block``: up to 4 vectors of output channels; ``p_tile``: tiles filling 16 (32-register files:
        AVX-512, NEON) / 12 (AVX2) vector accumulators (64 x 4 measured best on AVX-512 on the layers in the
        module docstring)."""
        lanes = target.vector_lanes
        m = self._default_m(wl)
        nkv = max(1, min(4, -(-wl.out_channels // lanes)))
        oc_block = lanes * nkv
        # vector accumulators that leave registers for U and broadcasts
        acc = 16 if vector_registers(target) >= 32 else 12
        n_h, n_w = compute.winograd_tiles(wl, m)
        p_tile = max(1, min(acc // nkv, wl.batch * n_h * n_w))
        return {"m": m, "oc_block": oc_block, "p_tile": p_tile}

    @staticmethod
    def _default_m(wl: Conv2dWorkload) -> int:
        return 2 if min(wl.out_h, wl.out_w) <= 8 else 4

    def candidate_knobs(self, wl, target):
        d = self.default_knobs(wl, target)
        lanes = target.vector_lanes
        out = [d]
        for m in (2, 4, 6):
            for kb, pb in ((d["oc_block"], d["p_tile"]), (lanes * 2, 8), (lanes, 14), (lanes * 3, 5)):
                cand = {"m": m, "oc_block": kb, "p_tile": pb}
                if cand not in out:
                    out.append(cand)
        return out

    def weight_packing(self, wl, knobs):
        return compute.winograd_packed_shape, compute.winograd_pack_weight, (knobs["m"], knobs["oc_block"])

    def unscheduled(self, wl: Conv2dWorkload, knobs: Knobs) -> tvm.tirx.PrimFunc:
        """:func:`..compute.winograd` with the knobs' ``m``, channel padding and tile padding."""
        return compute.create_prim_func(compute.winograd(wl, knobs["m"], knobs["oc_block"], knobs["p_tile"]))

    def apply(self, sch: s_tir.Schedule, wl: Conv2dWorkload, target: TargetInfo, knobs: Knobs) -> None:
        """The schedule of the module docstring, stage by stage."""
        lanes = target.vector_lanes
        m = knobs["m"]
        kb, pb = knobs["oc_block"], knobs["p_tile"]
        kv = _pow2_divisor(kb, lanes)  # vector width along K
        cv = _pow2_divisor(wl.in_channels, lanes)  # vector width along C (input transform)
        begin_schedule(sch)

        # pad + NCHW -> NHWC
        pad = sch.get_sblock("pad_temp")
        n, y, x, c = sch.get_loops(pad)
        co, ci = sch.split(c, [None, cv])
        sch.parallel(sch.fuse(n, y))
        sch.vectorize(ci)

        # input transform
        dp = sch.get_sblock("data_pack")
        eps, nu, p, c = sch.get_loops(dp)
        co, ci = sch.split(c, [None, cv])
        sch.reorder(p, co, eps, nu, ci)
        sch.parallel(p)
        _unrolled_transform(sch, eps, nu, ci, "data_tmp", co)

        # batched GEMM
        bg = sch.get_sblock("bgemm")
        p, eps, nu, k, rc = sch.get_loops(bg)
        po, pi = sch.split(p, [None, pb])
        ko, kvo, kvi = sch.split(k, [None, kb // kv, kv])
        sch.reorder(eps, nu, ko, po, rc, pi, kvo, kvi)
        sch.parallel(sch.fuse(eps, nu, ko))
        acc = sch.cache_write(bg, 0, "local")
        sch.reverse_compute_at(acc, po)
        sch.unroll(pi)
        sch.unroll(kvo)
        sch.vectorize(kvi)
        wl_loops = sch.get_loops(acc)
        a_p, a_k = wl_loops[-2:]
        a_ko, a_ki = sch.split(a_k, [None, kv])
        sch.unroll(a_p)
        sch.unroll(a_ko)
        sch.vectorize(a_ki)
        sch.decompose_reduction(bg, rc)

        # output transform
        inv = sch.get_sblock("inverse")
        n, y, x, k = sch.get_loops(inv)
        th, vh = sch.split(y, [None, m])
        tw, vw = sch.split(x, [None, m])
        ko, ki = sch.split(k, [None, kv])
        sch.reorder(n, th, tw, ko, vh, vw, ki)
        sch.parallel(sch.fuse(n, th))
        _unrolled_transform(sch, vh, vw, ki, "inv_tmp", ko)

        # crop + NHWC -> NCHW
        o = sch.get_sblock("out")
        n, k, y, x = sch.get_loops(o)
        if wl.out_block:  # NHWC -> NCHW[x]c: contiguous reads and vector stores of x channels
            sch.reorder(n, y, k, x)
            sch.parallel(sch.fuse(n, y))
            vectorize_blocked_store(sch, k, [x], wl.out_block)
        else:
            sch.reorder(n, y, k, x)
            sch.parallel(sch.fuse(n, y))
