"""``convpipe demo``: the main job, end to end on real models and real images.

1. ResNet-18 (torchvision architecture, BatchNorm statistics recalibrated on skimage photos) -> ONNX;
2. compile for this host's x86 CPU with ``--schedule auto``;
3. run it on a real photo (skimage's ``chelsea``) and verify against onnxruntime;
4. print the per-layer schedule table and the latency vs onnxruntime and PyTorch, side by side;
5. MTCNN P/R/O-Nets (facenet-pytorch's trained weights): export, compile, verify on a real face crop.
"""

from __future__ import annotations

import os

import numpy as np


def run_demo(out_dir: str, threads: int, mtcnn: bool = True, console=None) -> int:
    """Run the demo in ``out_dir``; returns 0 when every verification passes, else 1."""
    from rich.console import Console

    from convpipe.cli import _bench_table, _layer_table, _print_checks
    from convpipe.runtime import load

    from .bench import model_engines, set_threads, side_by_side
    from .build import compile_model
    from .export import export_onnx, torch_outputs
    from .verify import compare, run_onnxruntime
    from .zoo import ZOO

    con = console or Console()
    set_threads(threads)
    os.makedirs(out_dir, exist_ok=True)
    rtol, atol = 1e-3, 1e-4
    all_ok = True

    def one(name: str, bench: bool) -> bool:
        entry = ZOO[name]
        con.rule(f"{name}: {entry.description}")
        model = entry.build().eval()
        onnx_path = os.path.join(out_dir, f"{name}.onnx")
        artifact = os.path.join(out_dir, f"{name}.cpa")
        export_onnx(model, entry.input_shape, onnx_path, source=name)
        res = compile_model(onnx_path, artifact, "x86", "auto")
        con.print(f"compiled {onnx_path} -> {artifact} ({', '.join(f'{k} {v:.1f}s' for k, v in res.seconds.items())})")
        con.print(_layer_table(res.manifest["conv2d"], f"{name}: conv2d schedules (auto, {res.manifest['target']['isa']})"))
        x = entry.real_input(entry.input_shape)
        module = load(artifact)
        inputs = {module.inputs[0].name: x}
        ours = module.run(inputs)
        ref = run_onnxruntime(onnx_path, inputs)
        ok = _print_checks(con, compare(ours, ref, rtol, atol), rtol, atol)
        torch_ref = torch_outputs(model, x)
        t_err = max(float(np.abs(o - t).max()) for o, t in zip(ours.values(), torch_ref))
        con.print(f"max abs error vs PyTorch eager: {t_err:.3e}")
        first = next(iter(ours.values()))
        if first.ndim == 2 and first.shape[1] == 1000:
            top5 = np.argsort(-first[0])[:5]
            con.print(f"top-5 class ids on the photo (untrained classifier head): {top5.tolist()}")
        if bench:
            r = side_by_side(model_engines(artifact, onnx_path, inputs, threads, model))
            con.print(_bench_table(r, f"{name} latency, batch 1, {threads} thread(s)"))
        return ok

    all_ok &= one("resnet18", bench=True)
    if mtcnn:
        for name in ("pnet", "rnet", "onet"):
            all_ok &= one(name, bench=False)
    con.rule()
    con.print("[green]demo: every verification passed[/]" if all_ok else "[red]demo: a verification FAILED[/]")
    return 0 if all_ok else 1
