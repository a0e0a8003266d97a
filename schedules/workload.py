"""The conv2d workload: everything a schedule needs to know about one conv2d layer.

A workload is target independent and hashable; it is the key of the per-layer schedule choice and of the
tuning database. The weight is OIHW (``(C_out, C_in / groups, KH, KW)``, as ONNX ``Conv`` defines it); data and
output are each NCHW, or NCHW[x]c (channels blocked: ``[N, C/x, H, W, x]``) when the compiler runs the network in
the blocked layout (:mod:`convpipe.compiler.layout`). All ``float32``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Conv2dWorkload:
    """One conv2d layer, ONNX ``Conv`` semantics, NCHW data and OIHW weight.

    Attributes:
        batch, in_channels, in_h, in_w: data shape ``(N, C, H, W)``.
        out_channels: ``K``, the number of filters.
        kernel_h, kernel_w: filter size ``(KH, KW)``.
        stride_h, stride_w: strides in pixels.
        pad_top, pad_left, pad_bottom, pad_right: zero padding in pixels (asymmetric allowed).
        dilation_h, dilation_w: dilation factors.
        groups: ``C`` and ``K`` are both divisible by it; depthwise is ``groups == C``.
        dtype: element type of data, weight and output (``float32`` only for now).
        data_block: 0 for NCHW data; ``x > 0`` for NCHW[x]c data ``[N, C/x, H, W, x]`` (``x`` divides ``C``).
        out_block: 0 for NCHW output; ``x > 0`` for NCHW[x]c output ``[N, K/x, OH, OW, x]`` (``x`` divides
            ``K``). The compiler uses ``data_block == out_block`` inside the blocked network and
            ``(0, x)`` for a first conv whose input channels (e.g. 3) do not block.
    """

    batch: int
    in_channels: int
    in_h: int
    in_w: int
    out_channels: int
    kernel_h: int
    kernel_w: int
    stride_h: int = 1
    stride_w: int = 1
    pad_top: int = 0
    pad_left: int = 0
    pad_bottom: int = 0
    pad_right: int = 0
    dilation_h: int = 1
    dilation_w: int = 1
    groups: int = 1
    dtype: str = "float32"
    data_block: int = 0
    out_block: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name != "dtype":
                if not isinstance(v, int) or isinstance(v, bool):
                    raise TypeError(f"Conv2dWorkload.{f.name} must be an int, got {v!r}")
                if v < 0:
                    raise ValueError(f"Conv2dWorkload.{f.name} must be >= 0, got {v}")
        if self.groups < 1 or self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"groups={self.groups} must divide in_channels={self.in_channels} "
                f"and out_channels={self.out_channels}"
            )
        if self.data_block and self.in_channels % self.data_block:
            raise ValueError(f"data layout NCHW{self.data_block}c needs in_channels={self.in_channels} divisible")
        if self.out_block and self.out_channels % self.out_block:
            raise ValueError(f"output layout NCHW{self.out_block}c needs out_channels={self.out_channels} divisible")
        if self.out_h < 1 or self.out_w < 1:
            raise ValueError(f"conv2d output would be empty: {self.describe()}")

    # ---- derived shapes -------------------------------------------------------------------------
    @property
    def out_h(self) -> int:
        eff = (self.kernel_h - 1) * self.dilation_h + 1
        return (self.in_h + self.pad_top + self.pad_bottom - eff) // self.stride_h + 1

    @property
    def out_w(self) -> int:
        eff = (self.kernel_w - 1) * self.dilation_w + 1
        return (self.in_w + self.pad_left + self.pad_right - eff) // self.stride_w + 1

    @property
    def data_shape(self) -> tuple[int, int, int, int]:
        """``(N, C, H, W)``."""
        return (self.batch, self.in_channels, self.in_h, self.in_w)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        """OIHW: ``(K, C / groups, KH, KW)``."""
        return (self.out_channels, self.in_channels // self.groups, self.kernel_h, self.kernel_w)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        """``(N, K, OH, OW)``."""
        return (self.batch, self.out_channels, self.out_h, self.out_w)

    @property
    def layout(self) -> str:
        """``"NCHW"``, ``"NCHW{x}c"`` (data and output alike) or ``"{data}->{output}"``."""
        d = f"NCHW{self.data_block}c" if self.data_block else "NCHW"
        o = f"NCHW{self.out_block}c" if self.out_block else "NCHW"
        return d if d == o else f"{d}->{o}"

    @property
    def data_tensor_shape(self) -> tuple[int, ...]:
        """Shape of the data tensor: ``(N, C, H, W)`` or ``(N, C/x, H, W, x)`` (``x = data_block``)."""
        b = self.data_block
        n, c, h, w = self.data_shape
        return (n, c // b, h, w, b) if b else (n, c, h, w)

    @property
    def out_tensor_shape(self) -> tuple[int, ...]:
        """Shape of the output tensor: ``(N, K, OH, OW)`` or ``(N, K/x, OH, OW, x)`` (``x = out_block``)."""
        b = self.out_block
        n, k, h, w = self.out_shape
        return (n, k // b, h, w, b) if b else (n, k, h, w)

    def with_layout(self, data_block: int, out_block: int | None = None) -> "Conv2dWorkload":
        """The same conv with data (and output: ``out_block``, default the same) in NCHW (0) or NCHW[x]c."""
        return dataclasses.replace(self, data_block=data_block, out_block=data_block if out_block is None else out_block)

    @property
    def is_depthwise(self) -> bool:
        """``groups == C_in`` (each input channel has its own filters; ``K = multiplier * C``)."""
        return self.groups == self.in_channels and self.groups > 1

    @property
    def flops(self) -> int:
        """Multiply-adds x 2 of the direct algorithm (the convention for GFLOP/s figures)."""
        return (
            2
            * self.batch
            * self.out_channels
            * self.out_h
            * self.out_w
            * (self.in_channels // self.groups)
            * self.kernel_h
            * self.kernel_w
        )

    @property
    def gflop(self) -> float:
        return self.flops / 1e9

    def is_winograd_shape(self) -> bool:
        """3x3 kernel, stride 1, dilation 1, no groups: the convs Winograd F(m, 3) applies to."""
        return (
            self.kernel_h == 3
            and self.kernel_w == 3
            and self.stride_h == 1
            and self.stride_w == 1
            and self.dilation_h == 1
            and self.dilation_w == 1
            and self.groups == 1
        )

    # ---- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Conv2dWorkload":
        return cls(**d)

    def key(self) -> str:
        """A stable string key, used by the tuning database."""
        return (
            f"n{self.batch}_c{self.in_channels}_h{self.in_h}_w{self.in_w}_k{self.out_channels}"
            f"_r{self.kernel_h}x{self.kernel_w}_s{self.stride_h}x{self.stride_w}"
            f"_p{self.pad_top}.{self.pad_left}.{self.pad_bottom}.{self.pad_right}"
            f"_d{self.dilation_h}x{self.dilation_w}_g{self.groups}_{self.dtype}"
            + (f"_{self.layout.lower().replace('->', '_to_')}" if self.data_block or self.out_block else "")
        )

    def describe(self) -> str:
        return (
            f"conv2d N={self.batch} C={self.in_channels} H={self.in_h} W={self.in_w} K={self.out_channels} "
            f"kernel={self.kernel_h}x{self.kernel_w} stride={self.stride_h}x{self.stride_w} "
            f"pad=({self.pad_top},{self.pad_left},{self.pad_bottom},{self.pad_right}) "
            f"dilation={self.dilation_h}x{self.dilation_w} groups={self.groups}"
            + (f" layout={self.layout}" if self.data_block or self.out_block else "")
        )
