#!/usr/bin/env python3
"""The cross-target corpus slice (issue 10): every model of the ``targets`` slice of ``scripts/corpus.json`` is
exported once, compiled for ``--target cuda --arch sm_80`` and ``--arch sm_90`` (offline: convpipe compiles the
device code with nvcc at build time and embeds the cubin, so a build that succeeds is nvcc-checked; the manifest's
``device_code`` must name the requested arch and a cubin) and for ``--target arm`` (cross-compiled NEON), and the
ARM artifact is run on the emulated aarch64 board (``scripts/arm_board.sh``: TVM RPC under QEMU, cortex-a72) and
compared with onnxruntime on the host, on a real photo (skimage's ``chelsea``, ImageNet-normalised, as
``scripts/corpus.py`` feeds), with issue 10's tolerance on every output::

    max |ours - onnxruntime| <= 1e-4 * max |onnxruntime| + 1e-5

Each step (export, each compile, the board run) runs in its own process under a timeout, so one crash or hang
costs one entry. A board that died is restarted before the next ARM run.

Usage::

    .venv/bin/python scripts/corpus_targets.py                    # the slice -> docs/corpus/targets.{json,md}
    .venv/bin/python scripts/corpus_targets.py --resume           # keep finished entries, run the rest
    .venv/bin/python scripts/corpus_targets.py --only 'mobilenet' --resume
    .venv/bin/python scripts/corpus_targets.py --board 127.0.0.1:9190   # use a running board (else one is started
                                                                        # under <work>/board and stopped at the end)
    .venv/bin/python scripts/corpus_targets.py --classes-only     # print the op classes of the slice's exports

Exports and artifacts go to ``out/corpus_targets/`` (git-ignored); an existing export is reused.

The slice and the op classes it covers
--------------------------------------
The slice is 33 of the models that passed the x86 corpus (``docs/corpus/corpus.json`` at commit 7093a55), at the
inputs listed there. It was chosen so that it covers every op class found in the exported ONNX files of those 43
models: :func:`op_classes` classifies the nodes of an exported graph (op types counted, Conv attributes and weight
shapes read, producer chains followed for the SE / SiLU / hard-swish / GELU / channel-shuffle patterns, ranks from
ONNX shape inference), and the union over the 43 exports equals the union over the slice's (checked with
``--classes-only`` and by ``tests/test_corpus_targets.py`` on the recorded report). Classes covered (the report's
``coverage`` lists which models carry each one):

- convolution: 1x1, 2x2 and 4x4 (ConvNeXt patchify stem and downsampling), 3x3, 5x5+ (5x5 depthwise, 7x7 stems
  and ConvNeXt depthwise), strided, depthwise, grouped (ResNeXt/RegNet/DPN), dilated (DeepLabV3/FCN/LRASPP
  backbones), computed weights (weight-standardised convs of NF-ResNet: the weight is a subgraph, not a constant)
- BatchNormalization left in the graph (not folded into a conv)
- activations: ReLU, ReLU6/Clip, LeakyReLU, Sigmoid, HardSigmoid, HardSwish, SiLU (x * sigmoid(x)), GELU (Erf form)
- squeeze-and-excitation (global pool -> convs -> sigmoid/hard-sigmoid gate -> Mul)
- residual Add, channel Concat, channel Split, channel Slice, channel shuffle (Reshape -> 5-D Transpose -> Reshape),
  NCHW<->NHWC Transpose (ConvNeXt)
- pooling: MaxPool, AveragePool, GlobalAveragePool, spatial ReduceMean
- Resize: linear (segmentation heads), nearest (HRNet's branch fusion)
- Gemm, MatMul, LayerNormalization, Flatten / Reshape, shape arithmetic (Shape/Gather), element-wise ops with
  constants (layer scale, Div/Mul/Sub)
- Softmax: no model of the x86-passing corpus has one, so the slice has none.

``--render`` rewrites ``targets.md`` and the summary from an existing ``targets.json`` without running anything.

Report fields (``targets.json``)
--------------------------------
``machine`` (cpu, isa, cores, nvcc version, the board's QEMU CPU), ``created``, ``tolerance``, ``slice``,
``coverage`` ({op class: [specs]}), ``claimed_classes_missing`` (classes of :data:`CLAIMED_CLASSES` no entry has),
``summary`` (one line: counts per target), ``wall_s`` (the run's wall time; a ``--resume`` run adds its own), and
``results``, one per model (``retries``: steps re-run once after a signal from outside ended them):

- ``spec``, ``input``, ``export_s``, ``op_classes`` ({class: count}), ``error`` (export's first error line)
- ``cuda_sm_80`` / ``cuda_sm_90``: ``status`` (``ok``, ``compile-failed``, ``compile-timeout``, ``bad-device-code``;
  ``export-failed`` / ``export-timeout`` on every target when the export failed),
  ``compile_s``, ``kernels`` (device kernels the manifest lists), ``cubin_bytes``, ``spills`` (kernels with
  register spills per ptxas), ``conv_families`` ({family: layers}), ``error`` (first line)
- ``arm``: ``status`` (``pass``, ``mismatch``, ``compile-failed``, ``compile-timeout``, ``run-failed``,
  ``run-timeout``), ``compile_s``,
  ``run_s`` (board run + onnxruntime), ``max_abs``, ``max_rel`` (max abs error / max |onnxruntime| over outputs),
  ``conv_families``, ``error``

``targets.md`` holds the same as a table with the summary line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from machine import cpu_name, isa  # noqa: E402
from corpus import (  # noqa: E402 -- one tolerance, one step runner, one check reader
    ATOL, RTOL, first_error_line, load_list, record_check, run_step)

BIN = os.path.dirname(sys.executable)
CONVPIPE = os.path.join(BIN, "convpipe")
BOARD_SH = os.path.join(HERE, "arm_board.sh")
SLICE = "targets"
CUDA_ARCHES = ("sm_80", "sm_90")
TARGETS = tuple(f"cuda_{a}" for a in CUDA_ARCHES) + ("arm",)
#: the op classes (names :func:`op_classes` gives) the slice covers: every class found in the 43 x86-passing exports
CLAIMED_CLASSES = frozenset({
    "conv", "conv 1x1", "conv 2x2", "conv 3x3", "conv 4x4", "conv 5x5+", "conv strided", "conv depthwise",
    "conv grouped", "conv dilated", "conv computed weights", "batchnorm", "relu", "relu6/clip", "leaky relu",
    "sigmoid", "hardsigmoid", "hardswish", "silu", "gelu (erf)", "SE block", "residual add", "concat (channels)",
    "split (channels)", "slice (channels)", "channel shuffle", "transpose nchw<->nhwc", "maxpool", "avgpool",
    "global avgpool", "reducemean spatial", "resize (linear)", "resize (nearest)", "gemm", "matmul", "layernorm",
    "flatten/reshape", "shape arithmetic", "elementwise with constant"})


# ---- op classes of an exported graph --------------------------------------------------------------------------
#: ONNX ops that name their op class alone (the others look at attributes, inputs or neighbours)
ONE_CLASS_OPS = {
    "BatchNormalization": "batchnorm",
    "Relu": "relu",
    "Clip": "relu6/clip",
    "LeakyRelu": "leaky relu",
    "PRelu": "prelu",
    "HardSwish": "hardswish",
    "Erf": "gelu (erf)",
    "Gelu": "gelu",
    "Sigmoid": "sigmoid",
    "HardSigmoid": "hardsigmoid",
    "MaxPool": "maxpool",
    "AveragePool": "avgpool",
    "GlobalAveragePool": "global avgpool",
    "GlobalMaxPool": "global maxpool",
    "Gemm": "gemm",
    "MatMul": "matmul",
    "LayerNormalization": "layernorm",
    "Softmax": "softmax",
    "Flatten": "flatten/reshape",
    "Reshape": "flatten/reshape",
    "Shape": "shape arithmetic",
    "Gather": "shape arithmetic",
}


def op_classes(onnx_path: str) -> dict[str, int]:
    """``{op class: count}`` of the ONNX graph at ``onnx_path`` (see the module docstring for the classes)."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(onnx_path)
    try:
        model = shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 -- ranks then unknown; classes needing them are skipped
        pass
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    rank, dims = {}, {}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        if vi.type.tensor_type.HasField("shape"):
            rank[vi.name] = len(vi.type.tensor_type.shape.dim)
            dims[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    prod = {o: n for n in g.node for o in n.output}
    const_names = set(inits)
    for n in g.node:  # graph order is topological
        if n.op_type == "Constant" or (n.input and all(i in const_names for i in n.input if i)):
            const_names.update(n.output)

    def attr(n, name, default=None):
        for a in n.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def init_of(name):  # the initializer behind ``name`` (through Identity), or None
        while name not in inits and name in prod and prod[name].op_type == "Identity":
            name = prod[name].input[0]
        return inits.get(name)

    def src(name):  # producing node of a non-constant input
        return None if name in const_names else prod.get(name)

    def reaches(name, ops, depth=8):  # does the producer chain of ``name`` (non-const inputs) reach ``ops``?
        frontier = [name]
        for _ in range(depth):
            nxt = []
            for x in frontier:
                p = src(x)
                if p is None:
                    continue
                if p.op_type in ops:
                    return True
                nxt += [i for i in p.input if i]
            frontier = nxt
        return False

    out: dict[str, int] = {}

    def add(cls):
        out[cls] = out.get(cls, 0) + 1

    for n in g.node:
        op = n.op_type
        ins = [i for i in n.input]
        if op in ONE_CLASS_OPS:
            add(ONE_CLASS_OPS[op])
        elif op == "Conv":
            ks = attr(n, "kernel_shape")
            w = init_of(ins[1])
            wshape = list(w.dims) if w is not None else dims.get(ins[1])
            if ks is None and wshape and len(wshape) == 4:
                ks = wshape[2:]
            group = attr(n, "group", 1)
            add("conv")
            if ks and all(ks):
                k = max(ks)
                add("conv 1x1" if k == 1 else "conv 3x3" if k == 3 else "conv 5x5+" if k >= 5 else f"conv {k}x{k}")
            if any(s > 1 for s in attr(n, "strides", [1])):
                add("conv strided")
            if any(d > 1 for d in attr(n, "dilations", [1])):
                add("conv dilated")
            if w is None:
                add("conv computed weights")
            if group > 1:
                cin_per_group = wshape[1] if wshape and len(wshape) == 4 else None
                add("conv depthwise" if cin_per_group == 1 else "conv grouped")
        elif op == "Mul":
            a, b = ins[0], ins[1]
            for gate, other in ((a, b), (b, a)):
                p = src(gate)
                if p is not None and p.op_type in ("Sigmoid", "HardSigmoid") and p.input[0] == other:
                    add("silu" if p.op_type == "Sigmoid" else "hardswish")
                    break
                if (p is not None and p.op_type in ("Sigmoid", "HardSigmoid", "Clip", "Div")
                        and reaches(gate, {"GlobalAveragePool", "ReduceMean"}, depth=8)
                        and rank.get(other) == 4 and p.input[0] != other):
                    add("SE block")
                    break
            else:
                if a in const_names or b in const_names:
                    add("elementwise with constant")
        elif op in ("Add", "Sub", "Div"):
            if ins[0] in const_names or ins[1] in const_names:
                add("elementwise with constant")
            elif op == "Add" and rank.get(ins[0]) == 4 and rank.get(ins[1]) == 4:
                add("residual add")
        elif op == "Concat":
            if rank.get(n.output[0]) == 4 and attr(n, "axis") in (1, -3):
                add("concat (channels)")
        elif op == "Split":
            if rank.get(ins[0]) == 4:
                add("split (channels)")
        elif op == "Slice":
            if rank.get(ins[0]) == 4:
                add("slice (channels)")
        elif op == "Transpose":
            r = rank.get(ins[0])
            add("channel shuffle" if r == 5 else "transpose nchw<->nhwc" if r == 4 else "transpose")
        elif op == "ReduceMean":
            axes = attr(n, "axes")
            if axes is None and len(ins) > 1 and ins[1] in inits:
                axes = list(numpy_helper.to_array(inits[ins[1]]))
            if ins[0] not in const_names and rank.get(ins[0]) == 4 and sorted(int(x) % 4 for x in axes or []) == [2, 3]:
                add("reducemean spatial")
        elif op == "Resize":
            mode = attr(n, "mode", b"nearest")
            add(f"resize ({(mode.decode() if isinstance(mode, bytes) else mode)})")
        elif op not in ("Identity", "Constant"):
            add(f"other: {op}")
    return out


# ---- the board --------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Board:
    """Our own emulated board (``scripts/arm_board.sh`` with a run dir of its own), or an address given."""

    def __init__(self, addr: str | None, run_dir: str):
        self.own = addr is None
        self.run_dir = run_dir
        self.addr = addr
        self.env = {**os.environ, "CONVPIPE_ARM_RUN_DIR": run_dir}

    def _sh(self, *args, timeout=900):
        return subprocess.run(["bash", BOARD_SH, *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def ensure(self) -> str:
        if not self.own:
            return self.addr
        if self.addr and self._sh("status", timeout=30).returncode == 0:
            return self.addr
        r = self._sh("setup", timeout=1800)
        if r.returncode != 0:
            raise RuntimeError(f"scripts/arm_board.sh setup failed: {first_error_line(r.stderr)}")
        port = _free_port()
        r = self._sh("start", str(port), timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"scripts/arm_board.sh start failed: {first_error_line(r.stderr)}")
        self.addr = f"127.0.0.1:{port}"
        return self.addr

    def stop(self):
        if self.own and self.addr:
            self._sh("stop", timeout=60)


def check_arm(artifact: str, onnx_path: str, addr: str) -> dict:
    """In its own process: run the ARM artifact on the board at ``addr`` and onnxruntime on the host on the photo
    ``scripts/corpus.py`` uses; per-output errors (JSON-able)."""
    import numpy as np

    from convpipe import remote
    from convpipe.compiler.verify import compare, run_onnxruntime
    from convpipe.compiler.zoo import photo, to_nchw

    with open(os.path.join(artifact, "manifest.json")) as f:
        manifest = json.load(f)
    (inp,) = manifest["inputs"]
    shape = inp["shape"]
    n, c, h, w = shape
    x = to_nchw(photo("chelsea"), (h, w))
    x = np.repeat(x, n, axis=0)[:, :c] if c <= 3 else np.random.default_rng(0).standard_normal(shape)
    x = np.ascontiguousarray(x.astype(inp.get("dtype", "float32")))
    session = remote.connect(addr, None, None, timeout_s=60)
    ours = remote.run_remote(os.path.join(artifact, manifest["library"]["file"]), [x], session,
                             [o["name"] for o in manifest["outputs"]])
    ref = run_onnxruntime(onnx_path, {inp["name"]: x})
    outs = []
    for chk, (name, r) in zip(compare(ours, ref, RTOL, ATOL), ref.items()):
        scale = float(np.abs(r.astype(np.float64)[np.isfinite(r)]).max()) if r.size else 0.0
        outs.append({"name": name, "max_abs": chk.max_abs, "max_rel": chk.max_rel, "max_ref": scale,
                     "ok": bool(np.isfinite(chk.max_abs) and chk.max_abs <= RTOL * scale + ATOL)})
    return {"outputs": outs}


# ---- one model --------------------------------------------------------------------------------------------------
def _families(manifest: dict) -> dict:
    fams = {}
    for layer in manifest.get("conv2d", []):
        fams[layer["family"]] = fams.get(layer["family"], 0) + 1
    return fams


def step(argv: list[str], timeout: float, rec: dict):
    """:func:`corpus.run_step`, retried once when the process was ended by a signal it did not raise itself (a
    SIGTERM/SIGKILL from outside; not our timeout): the retry is counted in ``rec["retries"]``."""
    st, secs, p = run_step(argv, timeout)
    if st == "failed" and p is not None and (p.returncode < 0 or "convpipe: terminated (SIG" in p.stderr):
        rec["retries"] = rec.get("retries", 0) + 1
        st, secs, p = run_step(argv, timeout)
    return st, secs, p


def _fail(st: str, p, timeout: float, what: str) -> tuple[str, str]:
    if st == "timeout":
        return f"{what}-timeout", f"{what} exceeded {timeout:.0f} s"
    return f"{what}-failed", first_error_line((p.stderr or "") + "\n" + (p.stdout or "")) if p else ""


def compile_cuda(onnx_path: str, art: str, arch: str, timeout: float) -> dict:
    rec = {"status": None, "compile_s": None, "kernels": None, "cubin_bytes": None, "spills": None,
           "conv_families": {}, "error": ""}
    st, secs, p = step([CONVPIPE, "compile", onnx_path, "-o", art, "--target", "cuda", "--arch", arch, "-q"],
                       timeout, rec)
    rec["compile_s"] = round(secs, 2)
    if st != "ok":
        rec["status"], rec["error"] = _fail(st, p, timeout, "compile")
        return rec
    with open(os.path.join(art, "manifest.json")) as f:
        m = json.load(f)
    dc = m.get("device_code") or {}
    kernels = dc.get("kernels", [])
    rec["kernels"] = len(kernels)
    rec["cubin_bytes"] = dc.get("binary_bytes")
    rec["spills"] = sum(1 for k in kernels if k.get("spill_stores") or k.get("spill_loads"))
    rec["conv_families"] = _families(m)
    if dc.get("arch") != arch or dc.get("format") != "cubin" or not dc.get("binary_sha256") or not kernels:
        rec["status"] = "bad-device-code"
        rec["error"] = f"manifest device_code: arch {dc.get('arch')}, format {dc.get('format')}, {len(kernels)} kernels"
    else:
        rec["status"] = "ok"
    return rec


def compile_and_run_arm(onnx_path: str, art: str, board: Board, timeout: float) -> dict:
    rec = {"status": None, "compile_s": None, "run_s": None, "max_abs": None, "max_rel": None,
           "conv_families": {}, "error": ""}
    st, secs, p = step([CONVPIPE, "compile", onnx_path, "-o", art, "--target", "arm", "-q"], timeout, rec)
    rec["compile_s"] = round(secs, 2)
    if st != "ok":
        rec["status"], rec["error"] = _fail(st, p, timeout, "compile")
        return rec
    with open(os.path.join(art, "manifest.json")) as f:
        rec["conv_families"] = _families(json.load(f))
    try:
        addr = board.ensure()
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        rec["status"], rec["error"] = "run-failed", f"board: {e}"[:300]
        return rec
    st, secs, p = step([sys.executable, os.path.abspath(__file__), "--check-arm", art, onnx_path, addr], timeout, rec)
    rec["run_s"] = round(secs, 2)
    if st != "ok":
        rec["status"], rec["error"] = _fail(st, p, timeout, "run")
        return rec
    return record_check(rec, p.stdout)


def run_entry(entry: dict, work: str, board: Board, timeout: float, targets=TARGETS) -> dict:
    spec, shape = entry["spec"], entry["input"]
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", spec)
    onnx_path = os.path.join(work, f"{slug}.onnx")
    rec = {"spec": spec, "input": shape, "export_s": None, "op_classes": {}, "error": ""}
    for t in TARGETS:
        rec[t] = None
    if not os.path.exists(onnx_path):
        st, secs, p = step([CONVPIPE, "export", spec, "-o", onnx_path, "--input-shape", ",".join(map(str, shape))],
                           timeout, rec)
        rec["export_s"] = round(secs, 2)
        if st != "ok":
            status, rec["error"] = _fail(st, p, timeout, "export")
            for t in TARGETS:
                rec[t] = {"status": status, "error": rec["error"]}
            return rec
    try:
        rec["op_classes"] = dict(sorted(op_classes(onnx_path).items()))
    except Exception as e:  # noqa: BLE001 -- classification is information; never lose the entry for it
        rec["op_classes"] = {f"unclassified: {type(e).__name__}": 1}
    for arch in CUDA_ARCHES:
        if f"cuda_{arch}" in targets:
            rec[f"cuda_{arch}"] = compile_cuda(onnx_path, os.path.join(work, f"{slug}.{arch}.cpa"), arch, timeout)
    if "arm" in targets:
        rec["arm"] = compile_and_run_arm(onnx_path, os.path.join(work, f"{slug}.arm.cpa"), board, timeout)
    return rec


# ---- the report -------------------------------------------------------------------------------------------------
def _nvcc_version() -> str:
    try:
        from convpipe.compiler.nvcc import NVCC

        out = subprocess.run([NVCC, "--version"], capture_output=True, text=True, timeout=30).stdout
        m = re.search(r"release [\d.]+, (V[\d.]+)", out)
        return m.group(1) if m else out.strip().splitlines()[-1]
    except Exception:  # noqa: BLE001
        return "unknown"


def summarize(recs: list[dict]) -> str:
    n = len(recs)
    ok = {t: sum(1 for r in recs if (r.get(t) or {}).get("status") in ("ok", "pass")) for t in TARGETS}
    arm_built = sum(1 for r in recs if (r.get("arm") or {}).get("status") in ("pass", "mismatch", "run-failed",
                                                                              "run-timeout"))
    spills = {a: sum((r.get(f"cuda_{a}") or {}).get("spills") or 0 for r in recs) for a in CUDA_ARCHES}
    return (f"{n} models: CUDA sm_80 {ok['cuda_sm_80']}/{n} compile (nvcc cubin), CUDA sm_90 {ok['cuda_sm_90']}/{n} "
            f"compile, ARM {arm_built}/{n} compile, {ok['arm']}/{n} match onnxruntime on the emulated board "
            f"(tolerance 1e-4*max|ref|+1e-5); kernels with register spills: {spills['sm_80']} (sm_80), "
            f"{spills['sm_90']} (sm_90)")


def coverage(recs: list[dict]) -> dict:
    cov: dict[str, list] = {}
    for r in recs:
        for c in r.get("op_classes", {}):
            cov.setdefault(c, []).append(r["spec"])
    return dict(sorted(cov.items()))


def write_report(report: dict, out_dir: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    report["summary"] = summarize(report["results"])
    report["coverage"] = coverage(report["results"])
    report["claimed_classes_missing"] = sorted(CLAIMED_CLASSES - set(report["coverage"]))
    for name, text in (("targets.json", json.dumps(report, indent=1)), ("targets.md", markdown(report))):
        tmp = os.path.join(out_dir, f".{name}.tmp-{os.getpid()}")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(out_dir, name))
    return report["summary"]


def markdown(report: dict) -> str:
    m = report["machine"]
    num = (lambda v: "-" if v is None else f"{v:.2e}")
    lines = [
        "# Cross-target corpus slice: CUDA (sm_80, sm_90, offline) and ARM (emulated board) vs onnxruntime",
        "",
        f"Host: {m['cpu']} ({m.get('isa', '?')}), {m['cores']} cores, no GPU; nvcc {m.get('nvcc', '?')}; ARM board: "
        f"QEMU user-mode aarch64 ({m.get('board_cpu', '?')}) running TVM RPC. {report['created']}. "
        "`scripts/corpus_targets.py` over the `targets` slice of `scripts/corpus.json`: each model exported with "
        "`convpipe export`, compiled with `convpipe compile --target cuda --arch sm_80|sm_90` (device code compiled "
        "by nvcc to a cubin at build time and embedded; no GPU here, so CUDA is compile-checked only) and "
        "`--target arm`; the ARM artifact runs on the emulated board and is compared with onnxruntime on a real "
        "photo: pass = max |ours - ort| <= 1e-4 * max |ort| + 1e-5 on every output.",
        "",
        f"**{report['summary']}**",
        "",
        f"Run wall time: {report['wall_s'] / 60:.1f} min (one model at a time, 2-core host)." if report.get("wall_s")
        else "",
        "",
        "Columns: CUDA status and compile seconds per arch, device kernels (sm_90), kernels with register spills "
        "(ptxas, sm_80/sm_90), ARM status, compile and board-run seconds, max abs / max relative (to max |ort|) "
        "error over the outputs.",
        "",
        "| model | input | sm_80 | s | sm_90 | s | kernels | spills | ARM | compile s | run s | max abs err | "
        "max rel err | error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        c8, c9, a = (r.get(t) or {} for t in TARGETS)
        errs = [f"{t}: {(r.get(t) or {}).get('error')}" for t in TARGETS if (r.get(t) or {}).get("error")]
        err = "; ".join(dict.fromkeys(errs)).replace("|", "\\|") or (r.get("error") or "").replace("|", "\\|")
        lines.append(
            f"| {r['spec']} | {'x'.join(map(str, r['input']))} | {c8.get('status', '-')} | {c8.get('compile_s', '-')} | "
            f"{c9.get('status', '-')} | {c9.get('compile_s', '-')} | {c9.get('kernels', '-')} | "
            f"{c8.get('spills', '-')}/{c9.get('spills', '-')} | {a.get('status', '-')} | "
            f"{a.get('compile_s', '-')} | {a.get('run_s', '-')} | {num(a.get('max_abs'))} | {num(a.get('max_rel'))} | "
            f"{err} |")
    missing = report.get("claimed_classes_missing", [])
    lines += ["", "## Op classes covered", "",
              f"Op classes counted in the exported ONNX files by `op_classes` in `scripts/corpus_targets.py`; the "
              f"{len(CLAIMED_CLASSES)} classes found in the 43 x86-passing exports: "
              + (f"missing from this slice: {', '.join(missing)}" if missing else "all covered by this slice") + ".",
              "", "| op class | models |", "|---|---|"]
    for c, specs in report["coverage"].items():
        lines.append(f"| {c} | {len(specs)}: {', '.join(specs)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--list", default=os.path.join(REPO, "scripts", "corpus.json"))
    p.add_argument("--slice", default=SLICE, help="slice of the list to run (default: targets)")
    p.add_argument("--only", help="regular expression: run the specs of the slice it matches")
    p.add_argument("--out", default=os.path.join(REPO, "docs", "corpus"), help="report directory")
    p.add_argument("--work", default=os.path.join(REPO, "out", "corpus_targets"), help="exports and artifacts")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per step")
    p.add_argument("--resume", action="store_true", help="keep entries already in the report")
    p.add_argument("--board", metavar="HOST:PORT", help="a running board (default: start one of our own)")
    p.add_argument("--classes-only", action="store_true", help="print the op classes of the slice's exports, run nothing")
    p.add_argument("--render", action="store_true", help="rewrite targets.md (and the summary) from targets.json")
    p.add_argument("--check-arm", nargs=3, metavar=("ARTIFACT", "ONNX", "ADDR"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.check_arm:
        print(json.dumps(check_arm(*args.check_arm)))
        return 0
    if args.render:
        with open(os.path.join(args.out, "targets.json")) as f:
            print(write_report(json.load(f), args.out))
        return 0
    data = load_list(args.list)
    wanted = data["slices"][args.slice]
    entries = [e for e in data["models"] if e["spec"] in wanted]
    missing = set(wanted) - {e["spec"] for e in entries}
    if missing:
        p.error(f"slice {args.slice} names specs not in the list: {sorted(missing)}")
    if args.only:
        entries = [e for e in entries if re.search(args.only, e["spec"])]
    os.makedirs(args.work, exist_ok=True)
    if args.classes_only:
        union = {}
        for e in entries:
            path = os.path.join(args.work, re.sub(r"[^A-Za-z0-9_.-]", "_", e["spec"]) + ".onnx")
            if os.path.exists(path):
                cls = op_classes(path)
                print(e["spec"], json.dumps(cls))
                for c in cls:
                    union.setdefault(c, []).append(e["spec"])
        print(json.dumps(dict(sorted(union.items())), indent=1))
        return 0
    board = Board(args.board, os.path.join(args.work, "board"))
    report = {"format": 1,
              "machine": {"cpu": cpu_name(), "isa": isa(), "cores": os.cpu_count(), "nvcc": _nvcc_version(),
                          "board_cpu": os.environ.get("CONVPIPE_ARM_CPU", "cortex-a72")},
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "tolerance": {"rtol_of_max_ref": RTOL, "atol": ATOL}, "slice": args.slice, "results": []}
    done = {}
    old_path = os.path.join(args.out, "targets.json")
    prev_wall = 0.0
    if args.resume and os.path.exists(old_path):
        with open(old_path) as f:
            old = json.load(f)
        done = {(r["spec"], tuple(r["input"])): r for r in old["results"]}
        prev_wall = old.get("wall_s") or 0.0
    order = {s: i for i, s in enumerate(wanted)}
    running = {e["spec"] for e in entries}
    kept = [r for r in done.values() if r["spec"] not in running and r["spec"] in order]
    t_start = time.perf_counter()
    try:
        for i, entry in enumerate(sorted(entries, key=lambda e: order[e["spec"]])):
            rec = done.get((entry["spec"], tuple(entry["input"])))
            if rec is None:
                rec = run_entry(entry, args.work, board, args.timeout)
            report["results"] = sorted(kept + [r for r in report["results"] if r["spec"] in running] + [rec],
                                       key=lambda r: order[r["spec"]])
            st = " ".join(f"{t}={(rec.get(t) or {}).get('status')}" for t in TARGETS)
            print(f"[{i + 1}/{len(entries)}] {entry['spec']}: {st} ({time.perf_counter() - t_start:.0f} s)", flush=True)
            report["wall_s"] = round(prev_wall + time.perf_counter() - t_start, 1)
            write_report(report, args.out)
    finally:
        board.stop()
    summary = write_report(report, args.out)
    print(summary)
    good = all((r.get(t) or {}).get("status") in ("ok", "pass") for r in report["results"] for t in TARGETS)
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
