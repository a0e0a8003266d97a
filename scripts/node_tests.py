#!/usr/bin/env python3
"""ONNX's node conformance tests through convpipe (issue 10): every test case the onnx package generates in memory
(``onnx.backend.test.case.node.collect_testcases``; onnx 1.23.2's wheel ships no ``data/node`` files) whose ops are
all CNN ops (:data:`IN_SCOPE`) is compiled with default flags by :class:`convpipe.compiler.onnx_backend
.ConvpipeBackend` and run on each of its data sets; outputs are compared with the test's expected outputs at the
test's own ``rtol``/``atol`` (``np.testing.assert_allclose`` semantics, as ONNX's backend runner does).

A deployment compiler takes weights and shape-like operands as constants (convpipe pre-packs conv weights at
compile time), so the inputs an op documents as parameters (:data:`CONSTANT_INPUTS`: Conv's W/B, Reshape's
shape, Resize's scales, ...) are baked in as initializers from each data set, the way exporters write them;
activations stay graph inputs.

Usage::

    .venv/bin/python scripts/node_tests.py                     # all in-scope cases -> docs/corpus/node_tests.{json,md}
    .venv/bin/python scripts/node_tests.py --ops Conv,Relu     # some ops only

Every case left out is listed in the report with its reason (an op outside CNNs). In-scope cases convpipe refuses by
design (:data:`REFUSED`: zero-size tensors, training mode, ...) are run too: they count as refused only while the
compile fails with a clear ``ConvpipeError``.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import signal
import sys
import time
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: ONNX ops a CNN spends time in, or that exporters put around them: the conformance cases of these are in scope.
IN_SCOPE = frozenset("""
Conv ConvTranspose BatchNormalization InstanceNormalization LayerNormalization GroupNormalization LRN
MaxPool AveragePool GlobalAveragePool GlobalMaxPool
Relu LeakyRelu PRelu Sigmoid HardSigmoid HardSwish Tanh Elu Selu Celu Gelu Softplus Softsign Mish ThresholdedRelu
Clip Erf Exp Log Sqrt Pow Neg Abs Reciprocal
Resize Upsample Concat Split Slice Pad Gemm MatMul Softmax LogSoftmax
Reshape Transpose Flatten Squeeze Unsqueeze Expand Tile DepthToSpace SpaceToDepth
Add Sub Mul Div Sum Mean Max Min ReduceMean ReduceMax ReduceMin ReduceSum ReduceL2
Dropout Identity Constant
""".split())

#: Per op, the indices of inputs that are parameters in real models (constants), baked in as initializers.
CONSTANT_INPUTS = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2),
    "LayerNormalization": (1, 2), "GroupNormalization": (1, 2), "PRelu": (1,), "Gemm": (1, 2),
    "Resize": (1, 2, 3), "Upsample": (1,), "Pad": (1, 2, 3), "Slice": (1, 2, 3, 4), "Split": (1,),
    "Reshape": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "Expand": (1,), "Tile": (1,), "Clip": (1, 2),
    "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceSum": (1,), "ReduceL2": (1,),
    "Dropout": (1, 2),
}


#: In-scope cases convpipe refuses by design, with a clear ConvpipeError naming the node or input (never a wrong
#: answer): (case-name regex, reason). They count as passing only while compile fails with a ConvpipeError.
REFUSED = [
    (r"bfloat16", "bfloat16 data (NumPy has no bfloat16; convpipe compiles float32 CNNs)"),
    (r"empty_set|zero_size|start_out_of_bounds|allowzero_reordered", "zero-size tensors"),
    (r"training_mode|^test_training_dropout", "training mode (batch statistics, random dropout): convpipe compiles "
     "inference graphs"),
    (r"^test_identity_(sequence|opt)$", "sequence / optional types"),
    (r"^test_constant$", "a graph without inputs (a constant)"),
    (r"^test_maxpool_with_argmax", "MaxPool's Indices output (TVM's ONNX importer does not produce it)"),
]


#: Cases whose expected output (from ONNX's Python reference) onnxruntime does not reproduce; convpipe's reference is
#: onnxruntime, so these are compared with onnxruntime's output on the same model (the report says so).
ORT_REFERENCE = {
    "test_resize_downsample_scales_linear_align_corners": "align_corners with scales: the reference uses the "
    "fractional output length (0.6 * 4 = 2.4), onnxruntime the whole one (2)",
    "test_resize_downsample_scales_cubic_align_corners": "align_corners with scales: the reference uses the "
    "fractional output length, onnxruntime the whole one",
}


def _onnxruntime_outputs(model, feed: list) -> list:
    import onnxruntime as ort

    m = type(model)()
    m.CopyFrom(model)
    m.ir_version = min(m.ir_version, 10)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), feed)})


def refusal_reason(name: str) -> str | None:
    """Why convpipe refuses the case ``name`` by design (:data:`REFUSED`), or None."""
    import re

    return next((why for pattern, why in REFUSED if re.search(pattern, name)), None)


class CaseTimeout(Exception):
    pass


def bake_constants(model, inputs: list):
    """Copy of ``model`` with the parameter inputs (:data:`CONSTANT_INPUTS`) of its nodes turned into initializers
    holding this data set's values; returns ``(model, the inputs still fed at run time)``."""
    import copy

    from onnx import numpy_helper

    m = copy.deepcopy(model)
    names = [i.name for i in m.graph.input]
    const = set()
    for node in m.graph.node:
        for idx in CONSTANT_INPUTS.get(node.op_type, ()):
            if idx < len(node.input) and node.input[idx] in names:
                const.add(node.input[idx])
    keep_inputs, feed = [], []
    for vi, value in zip(list(m.graph.input), inputs):
        if vi.name in const:
            m.graph.initializer.append(numpy_helper.from_array(value, vi.name))
        else:
            keep_inputs.append(vi)
            feed.append(value)
    del m.graph.input[:]
    m.graph.input.extend(keep_inputs)
    return m, feed


def run_case(case, timeout: float) -> dict:
    """Compile and run one conformance case on each data set; returns its record."""
    import numpy as np

    from convpipe.compiler.onnx_backend import ConvpipeBackend

    rec = {"name": case.name, "ops": sorted({n.op_type for n in case.model.graph.node}), "status": "pass",
           "error": "", "seconds": 0.0}
    t0 = time.perf_counter()

    def alarm(*_):
        raise CaseTimeout()

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(int(timeout))
    try:
        for inputs, expected in case.data_sets:
            model, feed = bake_constants(case.model, list(inputs))
            if case.name in ORT_REFERENCE:
                expected = _onnxruntime_outputs(model, feed)
            try:
                rep = ConvpipeBackend.prepare(model)
            except Exception as e:  # noqa: BLE001 -- recorded, the run goes on
                from convpipe.errors import ConvpipeError

                refused = isinstance(e, ConvpipeError) and refusal_reason(case.name)
                rec["status"] = "refused" if refused else "compile-failed"
                rec["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
                break
            if refusal_reason(case.name):
                rec["status"], rec["error"] = "compiled-not-refused", "expected a ConvpipeError (see REFUSED)"
                break
            try:
                got = rep.run(feed)
            except Exception as e:  # noqa: BLE001
                rec["status"], rec["error"] = "run-failed", f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
                break
            for g, want in zip(got, expected):
                try:
                    np.testing.assert_allclose(g, want, rtol=case.rtol, atol=case.atol)
                except (AssertionError, TypeError, ValueError) as e:
                    rec["status"] = "mismatch"
                    rec["error"] = " ".join(str(e).split())[:300]
                    break
            if rec["status"] != "pass":
                break
    except CaseTimeout:
        rec["status"], rec["error"] = "timeout", f"over {timeout:.0f} s"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    return rec


def markdown(report: dict) -> str:
    per_op = collections.defaultdict(lambda: collections.Counter())
    for r in report["results"]:
        for op in r["ops"]:
            per_op[op][r["status"]] += 1
    lines = ["# ONNX node conformance tests through convpipe", "",
             f"{report['created']}; onnx {report['onnx_version']}; `scripts/node_tests.py` (default flags, x86; "
             "parameter inputs baked in as constants, see the script). Tolerance: each case's own rtol/atol.", "",
             f"**{report['summary']}**", "", "| op | pass | refused | mismatch | compile-failed | run-failed | timeout |",
             "|---|---|---|---|---|---|---|"]
    for op in sorted(per_op):
        c = per_op[op]
        lines.append(f"| {op} | {c['pass']} | {c['refused']} | {c['mismatch']} | "
                     f"{c['compile-failed'] + c['compiled-not-refused']} | {c['run-failed']} | {c['timeout']} |")
    lines += ["", "## Failing cases", "", "| case | status | error |", "|---|---|---|"]
    for r in report["results"]:
        if r["status"] not in ("pass", "refused"):
            lines.append(f"| {r['name']} | {r['status']} | {r['error'].replace('|', '/')} |")
    lines += ["", "## Compared with onnxruntime instead of ONNX's reference output", "", "| case | why | status |",
              "|---|---|---|"]
    for r in report["results"]:
        if r["name"] in ORT_REFERENCE:
            lines.append(f"| {r['name']} | {ORT_REFERENCE[r['name']]} | {r['status']} |")
    lines += ["", "## Refused by design (a clear error, never a wrong answer)", "", "| case | reason | error |",
              "|---|---|---|"]
    for r in report["results"]:
        if r["status"] == "refused":
            lines.append(f"| {r['name']} | {refusal_reason(r['name'])} | {r['error'].replace('|', '/')} |")
    lines += ["", "## Left out (an op outside CNNs)", "", ", ".join(f"{n} ({why})" for n, why in report["left_out"])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ops", help="comma-separated ops: only cases whose ops include one of them")
    p.add_argument("--out", default=os.path.join(REPO, "docs", "corpus"))
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per case")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    import onnx
    from onnx.backend.test.case.node import collect_testcases

    cases = collect_testcases()
    wanted = set(args.ops.split(",")) if args.ops else None
    results, left_out = [], []
    for case in cases:
        ops = {n.op_type for n in case.model.graph.node}
        outside = sorted(ops - IN_SCOPE)
        if outside:
            left_out.append((case.name, f"{','.join(outside)} outside CNN ops"))
            continue
        if wanted and not (ops & wanted):
            continue
        rec = run_case(case, args.timeout)
        results.append(rec)
        print(f"[{len(results)}] {case.name}: {rec['status']}" + (f" ({rec['error'][:160]})" if rec["error"] else ""),
              flush=True)
    passed = sum(r["status"] == "pass" for r in results)
    refused = sum(r["status"] == "refused" for r in results)
    report = {"format": 1, "onnx_version": onnx.__version__,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "summary": f"{passed}/{len(results) - refused} in-scope node test cases pass, {refused} more refused by "
                         f"design with a clear error ({len(left_out)} of {len(cases)} cases left out: ops outside "
                         "CNNs)",
              "results": results, "left_out": left_out}
    os.makedirs(args.out, exist_ok=True)
    for name, text in (("node_tests.json", json.dumps(report, indent=1)), ("node_tests.md", markdown(report))):
        with open(os.path.join(args.out, name), "w") as f:
            f.write(text)
    print(report["summary"])
    return 0 if passed + refused == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
