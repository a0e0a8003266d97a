"""Benchmark convpipe's x86 conv2d schedule families against onnxruntime and PyTorch, layer by layer.

For each layer (default: the compute-bound ResNet-50 shapes below) this builds every family of
``convpipe.schedules.rules_for("x86")`` that supports it with its default knobs, checks its output against
``torch.nn.functional.conv2d``, and times it next to a single-``Conv`` ONNX model in onnxruntime and PyTorch eager,
all in the same process with the same thread count, so the figures are comparable on a shared machine.

Usage::

    python scripts/bench_layers_x86.py --threads 1
    python scripts/bench_layers_x86.py --threads 2 --layers 3x3_64_56,stem_7x7s2 --families direct,im2col

Prints one line per (layer, implementation): ms (best of ``--repeat`` runs) and GFLOP/s (``wl.flops``, the direct
algorithm's multiply-adds x 2, also for Winograd), plus the max relative error of ours against PyTorch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="threads for TVM, onnxruntime and torch (default 1)")
    p.add_argument("--layers", default="", help="comma-separated layer names (default: all; see --list)")
    p.add_argument("--families", default="", help="comma-separated families (default: every x86 rule)")
    p.add_argument("--repeat", type=int, default=7, help="timed repeats; the best is reported (default 7)")
    p.add_argument("--target", default="x86", help='convpipe target (default "x86": this host)')
    p.add_argument("--list", action="store_true", help="list the layers and exit")
    return p.parse_args()


ARGS = _parse()
os.environ["TVM_NUM_THREADS"] = str(ARGS.threads)  # before the TVM runtime starts its thread pool

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import tvm  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from convpipe.schedules import Conv2dWorkload, resolve_target, rules_for  # noqa: E402

W = Conv2dWorkload
#: name -> workload (N, C, H, W, K, KH, KW, sh, sw, pad t, l, b, r); ResNet-50 shapes unless noted.
LAYERS: dict[str, Conv2dWorkload] = {
    "3x3_64_56": W(1, 64, 56, 56, 64, 3, 3, 1, 1, 1, 1, 1, 1),
    "3x3_128_28": W(1, 128, 28, 28, 128, 3, 3, 1, 1, 1, 1, 1, 1),
    "3x3_256_14": W(1, 256, 14, 14, 256, 3, 3, 1, 1, 1, 1, 1, 1),
    "3x3_512_7": W(1, 512, 7, 7, 512, 3, 3, 1, 1, 1, 1, 1, 1),
    "1x1_64_256_56": W(1, 64, 56, 56, 256, 1, 1),
    "1x1_256_64_56": W(1, 256, 56, 56, 64, 1, 1),
    "1x1_512_2048_7": W(1, 512, 7, 7, 2048, 1, 1),
    "3x3s2_128_56": W(1, 128, 56, 56, 128, 3, 3, 2, 2, 1, 1, 1, 1),
    "1x1s2_256_512_56": W(1, 256, 56, 56, 512, 1, 1, 2, 2),
    "stem_7x7s2": W(1, 3, 224, 224, 64, 7, 7, 2, 2, 3, 3, 3, 3),
    "group32_3x3_128_56": W(1, 128, 56, 56, 128, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 32),  # ResNeXt-50
    "dw_3x3_96_56": W(1, 96, 56, 56, 96, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 96),  # MobileNetV2-like
}


def _best_ms(fn, repeat: int) -> float:
    """Best wall time of ``fn`` in ms, each sample averaging enough calls to take >= ~20 ms."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-6)
    number = max(1, int(0.02 / once))
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best * 1e3


def _torch_conv(wl: Conv2dWorkload, x: np.ndarray, w: np.ndarray):
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)

    def run():
        xp = torch.nn.functional.pad(xt, (wl.pad_left, wl.pad_right, wl.pad_top, wl.pad_bottom))
        return torch.nn.functional.conv2d(
            xp, wt, stride=(wl.stride_h, wl.stride_w), dilation=(wl.dilation_h, wl.dilation_w), groups=wl.groups
        )

    if wl.pad_top == wl.pad_bottom and wl.pad_left == wl.pad_right:  # symmetric: let torch pad (faster)

        def run():  # noqa: F811
            return torch.nn.functional.conv2d(
                xt, wt, stride=(wl.stride_h, wl.stride_w), padding=(wl.pad_top, wl.pad_left),
                dilation=(wl.dilation_h, wl.dilation_w), groups=wl.groups,
            )

    return run


def _ort_session(wl: Conv2dWorkload, w: np.ndarray, threads: int) -> ort.InferenceSession:
    node = helper.make_node(
        "Conv", ["x", "w"], ["y"], kernel_shape=[wl.kernel_h, wl.kernel_w], strides=[wl.stride_h, wl.stride_w],
        pads=[wl.pad_top, wl.pad_left, wl.pad_bottom, wl.pad_right], dilations=[wl.dilation_h, wl.dilation_w],
        group=wl.groups,
    )
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(wl.data_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(wl.out_shape))], [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def bench_layer(name: str, wl: Conv2dWorkload, target, rules: dict, families: list[str], repeat: int) -> None:
    """Print one line per implementation of ``wl``: ours (each supporting family), onnxruntime, torch."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(wl.data_shape, dtype=np.float32)
    w = (rng.standard_normal(wl.weight_shape, dtype=np.float32) / np.sqrt(np.prod(wl.weight_shape[1:]))).astype(
        np.float32
    )
    torch_run = _torch_conv(wl, x, w)
    ref = torch_run().numpy()
    scale = float(np.abs(ref).max()) + 1e-12

    def line(impl: str, ms: float, extra: str = "") -> None:
        print(f"{name:<20} {impl:<10} {ms:9.3f} ms {wl.gflop / ms * 1e3:8.1f} GFLOP/s  {extra}", flush=True)

    for fam in families:
        rule = rules.get(fam)
        if rule is None or not rule.supports(wl, target):
            continue
        try:
            knobs = rule.default_knobs(wl, target)
            t0 = time.perf_counter()
            func = rule.build(wl, target, knobs).with_attr("global_symbol", "main")
            ex = tvm.compile(tvm.IRModule({"main": func}), target=target.target)
            build_s = time.perf_counter() - t0
            args = [
                tvm.runtime.tensor(x),
                tvm.runtime.tensor(rule.pack_weight(w, wl, knobs).astype(np.float32)),
                tvm.runtime.tensor(np.zeros(wl.out_shape, np.float32)),
            ]
            kernel = ex["main"]
            kernel(*args)
            err = float(np.abs(args[2].numpy() - ref).max()) / scale
            ms = _best_ms(lambda: kernel(*args), repeat)
            line(fam, ms, f"err {err:.1e}  build {build_s:.2f}s  {knobs}")
        except Exception as e:  # report and go on: one broken family must not hide the others
            print(f"{name:<20} {fam:<10} FAILED: {type(e).__name__}: {str(e).splitlines()[0][:160]}", flush=True)

    sess = _ort_session(wl, w, ARGS.threads)
    line("onnxrt", _best_ms(lambda: sess.run(None, {"x": x}), repeat))
    line("torch", _best_ms(torch_run, repeat))


def main() -> int:
    if ARGS.list:
        for name, wl in LAYERS.items():
            print(f"{name:<20} {wl.describe()}  ({wl.gflop * 1e3:.0f} MFLOP)")
        return 0
    torch.set_num_threads(ARGS.threads)
    target = resolve_target(ARGS.target)
    rules = rules_for(target.arch)
    families = ARGS.families.split(",") if ARGS.families else list(rules)
    names = ARGS.layers.split(",") if ARGS.layers else list(LAYERS)
    unknown = [n for n in names if n not in LAYERS]
    if unknown:
        print(f"unknown layers {unknown}; known: {', '.join(LAYERS)}", file=sys.stderr)
        return 2
    print(f"# target {target.isa} ({target.vector_lanes} lanes), threads {ARGS.threads}, best of {ARGS.repeat}")
    for name in names:
        bench_layer(name, LAYERS[name], target, rules, families, ARGS.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
