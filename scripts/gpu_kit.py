#!/usr/bin/env python
"""A GPU benchmark kit: everything a CUDA run needs, compiled here, for a GPU host that has Python, NumPy,
onnxruntime and (optionally) PyTorch but no TVM compiler, no nvcc and no network.

Why: convpipe's CUDA artifacts embed their device code (``compiler/cuda_device.py``) and its runtime works with a
runtime-only TVM (``TVM_USE_RUNTIME_LIB=1`` or no ``libtvm_compiler.so``), so the full 100 MB TVM wheel and a CUDA
toolchain are needed only where we compile. The kit holds:

- ``site/``: the pinned ``apache-tvm`` without ``libtvm_compiler.so`` (runtime only, ~6.5 MB compressed),
  ``apache-tvm-ffi`` and TVM's other requirements but NumPy for the GPU host's Python (``--python``, default
  3.12), and the ``convpipe`` package;
- ``models/NAME_bB/``: the CUDA artifact of each requested model at batch B, a real input (``input.npy``) and
  onnxruntime's outputs for it computed here on the CPU (``reference.npz``); with ``--with-onnx`` also the ONNX
  file, for onnxruntime's CUDA provider where the GPU host has it;
- ``layers/``: with ``--layers``, ResNet-18's 3x3 stride-1 conv2d kernels at batch 32 as standalone libraries
  plus their workloads (the ``auto`` family and knobs), for per-layer timing and % of the FP32 peak.

``run`` (on the GPU host, with ``PYTHONPATH=KIT/site``) verifies every artifact against onnxruntime's outputs,
times it (TVM ``time_evaluator``, inputs on the GPU) next to PyTorch eager on the GPU (cuDNN; torchvision models,
random weights -- timing only) and onnxruntime's CUDA provider when installed, times the layer kernels next to
cuDNN's conv2d, and writes ``results.json`` and ``results.md``.

Usage::

    .venv/bin/python scripts/gpu_kit.py build --arch sm_90 --models resnet18:1 --layers --out .gpukit
    # on the GPU host, in the repository root:
    PYTHONPATH=.gpukit/site python3 scripts/gpu_kit.py run --kit .gpukit --out results

Sizes: ``site/`` ~25 MiB; a CUDA ResNet-18 artifact ~94 MiB (weights, the Winograd layers' transformed weights
1.78x larger), MobileNetV2 ~15 MiB, P-Net < 1 MiB. A kit that must travel under a size limit holds a few models
(``--models`` takes ``NAME:BATCH`` items), or travels in pieces (``split -b 60m`` / ``cat``). ``build --target x86`` makes the same kit for this CPU (a check of the
kit itself).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: ResNet-18's 3x3 stride-1 layers (C = K, output H = W): the compute-bound 3x3 layers of the GPU target
LAYERS = [(64, 56), (128, 28), (256, 14), (512, 7)]
#: FP32 FMA lanes per SM (CUDA C Programming Guide, "Arithmetic Instructions" throughput table)
FP32_LANES_PER_SM = {(8, 0): 64, (8, 6): 128, (8, 7): 128, (8, 9): 128, (9, 0): 128}
#: models the GPU host can rebuild with torchvision for the PyTorch column (random weights: timing only)
TORCHVISION = {"resnet18", "resnet50", "mobilenet_v2"}


# ------------------------------------------------------------------------------------------------------------
# build (here)
# ------------------------------------------------------------------------------------------------------------
def _pinned(name: str) -> str:
    with open(os.path.join(REPO, "requirements.txt")) as f:
        for line in f:
            if line.split("==")[0].strip().lower() == name:
                return line.split("==")[1].split()[0].strip()
    raise SystemExit(f"{name} is not pinned in requirements.txt")


def build_site(site: str, python: str) -> None:
    """Runtime-only TVM + tvm-ffi (+ typing_extensions, ml_dtypes) for ``python`` (e.g. ``3.12``) + convpipe,
    unpacked into ``site``; the host brings NumPy."""
    tag = python.replace(".", "")
    with tempfile.TemporaryDirectory() as d:
        plat = [f"--platform=manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28)] + ["--platform=manylinux2014_x86_64"]
        from importlib.metadata import version

        # TVM's and tvm-ffi's own requirements besides NumPy, at the versions this environment runs
        deps = [f"{n}=={version(n)}" for n in ("typing_extensions", "ml_dtypes")]
        for spec in (f"apache-tvm=={_pinned('apache-tvm')}", f"apache-tvm-ffi=={_pinned('apache-tvm-ffi')}", *deps):
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            f"--python-version={python}", "--implementation=cp", f"--abi=cp{tag}", "--abi=none",
                            *plat, "-d", d, spec], check=True)
        for whl in glob.glob(os.path.join(d, "*.whl")):
            with zipfile.ZipFile(whl) as z:
                z.extractall(site)
        src = os.path.join(d, "convpipe-src")  # build from a copy: setuptools leaves build/ beside the sources
        shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", ".cache", "out", ".gpukit", "build",
                                                                  "*.egg-info", "__pycache__", "docs"))
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", site, src], check=True)
    os.remove(os.path.join(site, "tvm", "lib", "libtvm_compiler.so"))
    # C++ headers and sources (CUTLASS, DLPack, runtime sources) serve only compilation
    for sub in (("tvm", "3rdparty"), ("tvm", "src"), ("tvm_ffi", "3rdparty"), ("tvm_ffi", "include"), ("tvm_ffi", "src")):
        shutil.rmtree(os.path.join(site, *sub), ignore_errors=True)
    for lib in glob.glob(os.path.join(site, "tvm", "lib", "*.so")):
        os.chmod(lib, 0o755)  # zipfile drops the mode bits


def build_models(kit: str, specs: list[str], target: str, arch: str | None, with_onnx: bool = False) -> None:
    from convpipe.compiler.build import compile_model
    from convpipe.compiler.verify import run_onnxruntime
    from convpipe.compiler.export import export_onnx
    from convpipe.compiler.zoo import ZOO

    for spec in specs:
        name, _, batch = spec.partition(":")
        batch = int(batch or 1)
        entry = ZOO[name]
        shape = (batch,) + tuple(entry.input_shape[1:])
        d = os.path.join(kit, "models", f"{name}_b{batch}")
        os.makedirs(d, exist_ok=True)
        export_onnx(entry.build(), shape, os.path.join(d, "model.onnx"), source=name)
        t0 = time.perf_counter()
        res = compile_model(os.path.join(d, "model.onnx"), os.path.join(d, "model.cpa"), target, arch=arch)
        x = np.concatenate([entry.real_input((1,) + shape[1:])] * batch)
        np.save(os.path.join(d, "input.npy"), x)
        ref = run_onnxruntime(os.path.join(d, "model.onnx"), {"input": x})
        np.savez(os.path.join(d, "reference.npz"), *[ref[k] for k in ref])
        if not with_onnx:
            os.remove(os.path.join(d, "model.onnx"))
        with open(os.path.join(d, "meta.json"), "w") as f:
            json.dump({"model": name, "batch": batch, "input": list(shape), "compile_s": time.perf_counter() - t0,
                       "torchvision": name if name in TORCHVISION else None,
                       "target": res.manifest["target"]}, f, indent=1)
        print(f"built {d} ({res.manifest['target']['isa']})")


def build_layers(kit: str, arch: str, batch: int = 32) -> None:
    """``KIT/layers/``: each of :data:`LAYERS` at ``batch`` as a standalone CUDA library for ``arch`` (``main(data,
    packed weight, output)``, device code embedded: :func:`convpipe.compiler.kernel.compile_kernel`) with the
    ``auto`` family and knobs, and ``layers.json`` describing them (NCHW shapes, packed weight shape, GFLOP)."""
    from convpipe.compiler.kernel import compile_kernel
    from convpipe.compiler.select import choose
    from convpipe.schedules import Conv2dWorkload, resolve_target, rules_for

    target = resolve_target("cuda", arch=arch)
    d = os.path.join(kit, "layers")
    os.makedirs(d, exist_ok=True)
    meta = []
    for c, hw in LAYERS:
        wl = Conv2dWorkload(batch, c, hw, hw, c, 3, 3, 1, 1, 1, 1, 1, 1)
        ch = choose(wl, target, rules_for("cuda"))
        lib = f"conv_{c}_{hw}.so"
        compile_kernel(ch.rule, wl, target, ch.knobs).export_library(os.path.join(d, lib))
        meta.append({"layer": f"{c}->{c} 3x3 @{hw}", "batch": batch, "lib": lib, "family": ch.family, "knobs": ch.knobs,
                     "data": list(wl.data_shape), "packed_weight": list(ch.rule.packed_weight_shape(wl, ch.knobs)),
                     "weight": list(wl.weight_shape), "out": list(wl.out_shape), "gflop": wl.gflop})
    with open(os.path.join(d, "layers.json"), "w") as f:
        json.dump(meta, f, indent=1)


def cmd_build(args) -> int:
    kit = os.path.abspath(args.out)
    if os.path.exists(kit):
        shutil.rmtree(kit)
    os.makedirs(kit)
    build_site(os.path.join(kit, "site"), args.python)
    build_models(kit, [s for s in args.models.split(",") if s], args.target, args.arch, args.with_onnx)
    if args.layers:
        if args.target != "cuda":
            raise SystemExit("--layers: CUDA only")
        build_layers(kit, args.arch or "sm_90")
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(kit) for f in fs)
    print(f"kit {kit}: {size / 2**20:.1f} MiB")
    return 0


# ------------------------------------------------------------------------------------------------------------
# run (on the GPU host: runtime-only TVM, NumPy, onnxruntime, optional PyTorch)
# ------------------------------------------------------------------------------------------------------------
def _median_ms(fn, n: int, reps: int = 5) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t0) / n * 1e3)
    return statistics.median(times)


def _torch_device(cuda: bool):
    try:
        import torch
    except ImportError:
        return None, None
    if cuda and not torch.cuda.is_available():
        return torch, None
    return torch, torch.device("cuda" if cuda else "cpu")


def run_model(d: str) -> dict:
    import convpipe.runtime as rt

    meta = json.load(open(os.path.join(d, "meta.json")))
    x = np.load(os.path.join(d, "input.npy"))
    m = rt.load(os.path.join(d, "model.cpa"))
    cuda = m.manifest["target"]["arch"] == "cuda"
    ours = m.run([x])
    refs = np.load(os.path.join(d, "reference.npz"))
    ref = [refs[f"arr_{i}"] for i in range(len(refs.files))]
    errs = [float(np.max(np.abs(a - b) / (1e-4 + 1e-3 * np.abs(b)))) for a, b in zip(ours.values(), ref)]
    row = dict(meta, verified=max(errs) <= 1.0, worst_err_over_tol=max(errs),
               max_abs_err=max(float(np.max(np.abs(a - b))) for a, b in zip(ours.values(), ref)), ms={})
    row["ms"]["convpipe"] = statistics.median(m.time([x], number=20, repeat=5)) * 1e3
    onnx_path = os.path.join(d, "model.onnx")
    if os.path.isfile(onnx_path):
        import onnxruntime as ort

        if not cuda:
            s = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
            row["ms"]["onnxruntime"] = _median_ms(lambda: s.run(None, {"input": x}), 5)
        elif "CUDAExecutionProvider" in ort.get_available_providers():
            s = ort.InferenceSession(onnx_path, providers=["CUDAExecutionProvider"])
            s.run(None, {"input": x})
            row["ms"]["onnxruntime-cuda"] = _median_ms(lambda: s.run(None, {"input": x}), 20)
    torch, tdev = _torch_device(cuda)
    torchvision = None
    if torch is not None and tdev is not None and meta.get("torchvision"):
        try:
            import torchvision
        except Exception as e:  # noqa: BLE001 -- a torchvision built for another torch fails in its op registry
            row["pytorch_skipped"] = f"torchvision unusable here: {e}"
    if torchvision is not None:
        model = getattr(torchvision.models, meta["torchvision"])(weights=None).eval().to(tdev)
        tx = torch.from_numpy(x).to(tdev)

        def run_torch():
            with torch.no_grad():
                model(tx)
            if cuda:
                torch.cuda.synchronize()

        for _ in range(5):
            run_torch()
        row["ms"]["pytorch"] = _median_ms(run_torch, 20)
    row["device"] = _device_name(cuda)
    return row


def _device_name(cuda: bool) -> str:
    import tvm

    return tvm.cuda(0).device_name if cuda else "cpu"


def fp32_peak_gflops(dev) -> float | None:
    """SMs x FP32 lanes per SM x 2 FLOP x max SM clock (GFLOP/s); None for an unknown compute capability."""
    major, minor = (int(v) for v in dev.compute_version.split("."))
    lanes = FP32_LANES_PER_SM.get((major, minor))
    return None if lanes is None else dev.multi_processor_count * lanes * 2 * dev.max_clock_rate * 1e3 / 1e9


def run_layers(d: str) -> list[dict]:
    """Time each layer kernel on GPU 0 (random data: timing only; correctness is the models' verification and
    ``tests/test_cuda.py``'s GPU tests) next to cuDNN's conv2d on the same shapes."""
    import tvm

    dev = tvm.cuda(0)
    peak = fp32_peak_gflops(dev)
    torch, tdev = _torch_device(True)
    rows = []
    rng = np.random.default_rng(0)
    for m in json.load(open(os.path.join(d, "layers.json"))):
        lib = tvm.runtime.load_module(os.path.join(d, m["lib"]))
        args = [tvm.runtime.tensor(rng.standard_normal(s).astype("float32"), dev)
                for s in (m["data"], m["packed_weight"])] + [tvm.runtime.tensor(np.zeros(m["out"], "float32"), dev)]
        secs = statistics.median(lib.time_evaluator("main", dev, number=20, repeat=5)(*args).results)
        row = dict(m, ours_ms=secs * 1e3, gflops=m["gflop"] / secs, peak_gflops=peak,
                   pct_peak=100 * m["gflop"] / secs / peak if peak else None)
        if tdev is not None:
            torch.backends.cudnn.benchmark = True
            tx = torch.randn(m["data"], device=tdev)
            tw = torch.randn(m["weight"], device=tdev)
            for _ in range(5):
                torch.nn.functional.conv2d(tx, tw, padding=1)
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(20):
                torch.nn.functional.conv2d(tx, tw, padding=1)
            end.record()
            torch.cuda.synchronize()
            row["cudnn_ms"] = start.elapsed_time(end) / 20
        rows.append(row)
    return rows


def layer_table(layers: list[dict]) -> list[str]:
    """Markdown lines of :func:`run_layers`' rows: ours vs cuDNN, GFLOP/s, % of the FP32 peak."""
    lines = [f"| layer (batch {layers[0]['batch']}) | family | ours ms | cuDNN ms | GFLOP/s (direct-conv FLOPs) | "
             "% FP32 peak |", "|---|---|---|---|---|---|"]
    for r in layers:
        cud = f"{r['cudnn_ms']:.3f}" if r.get("cudnn_ms") else "—"
        pct = f"{r['pct_peak']:.0f}%" if r.get("pct_peak") else "—"
        lines.append(f"| {r['layer']} | {r['family']} | {r['ours_ms']:.3f} | {cud} | {r['gflops']:.0f} | {pct} |")
    lines.append(f"\nFP32 peak {layers[0]['peak_gflops']} GFLOP/s = SMs x FP32 lanes/SM x 2 x max clock.")
    return lines


def report(models: list[dict], layers: list[dict]) -> str:
    lines = ["| model | batch | device | verified | convpipe ms | PyTorch ms | ORT ms | PyTorch / convpipe |",
             "|---|---|---|---|---|---|---|---|"]
    for r in models:
        ms = r["ms"]
        ort_ms = ms.get("onnxruntime-cuda", ms.get("onnxruntime"))
        f = lambda v: f"{v:.3f}" if v else "—"  # noqa: E731
        ratio = f"{ms['pytorch'] / ms['convpipe']:.2f}x" if ms.get("pytorch") else "—"
        lines.append(f"| {r['model']} | {r['batch']} | {r['device']} | {'yes' if r['verified'] else 'NO'} | "
                     f"{f(ms['convpipe'])} | {f(ms.get('pytorch'))} | {f(ort_ms)} | {ratio} |")
    if layers:
        lines += [""] + layer_table(layers)
    return "\n".join(lines)


def cmd_run(args) -> int:
    kit = os.path.abspath(args.kit)
    models = []
    for d in sorted(glob.glob(os.path.join(kit, "models", "*"))):
        models.append(run_model(d))
        print(json.dumps(models[-1]), flush=True)
    layers = run_layers(os.path.join(kit, "layers")) if os.path.isdir(os.path.join(kit, "layers")) else []
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"models": models, "layers": layers}, f, indent=1)
    text = report(models, layers)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return 0 if all(r["verified"] for r in models) else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile the kit here")
    b.add_argument("--target", default="cuda", choices=("cuda", "x86"))
    b.add_argument("--arch", help="CUDA arch (default sm_90: H100/H200)")
    b.add_argument("--models", default="resnet18:1", help="NAME:BATCH[,NAME:BATCH...] from the zoo")
    b.add_argument("--layers", action="store_true", help="add ResNet-18's 3x3 layer kernels at batch 32 (CUDA)")
    b.add_argument("--with-onnx", action="store_true", help="carry the ONNX files (for onnxruntime's CUDA provider)")
    b.add_argument("--python", default="3.12", help="the GPU host's Python version (for tvm-ffi's wheel)")
    b.add_argument("--out", default=".gpukit")
    b.set_defaults(func=cmd_build)
    r = sub.add_parser("run", help="run the kit (on the GPU host)")
    r.add_argument("--kit", default=".gpukit")
    r.add_argument("--out", default="gpukit-results")
    r.set_defaults(func=cmd_run)
    args = p.parse_args(argv)
    if args.cmd == "build" and args.target == "cuda" and not args.arch:
        args.arch = "sm_90"
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
