"""The ``convpipe`` command line: export, compile, run, verify, inspect, bench, tune, demo.

User errors (bad files, inputs, artifacts, targets) print one ``convpipe: error: ...`` line and exit 2; ``verify``
exits 1 when an output does not match; SIGINT exits 130 and SIGTERM 143, after removing what the command had
half-written; an unexpected internal error prints one line and exits 3 (``--traceback`` shows it whole). Heavy
modules (torch, onnx, TVM) are imported by the subcommand that needs them.

Each subcommand parses its arguments, calls the compiler / runtime (which return data) and prints what they
return with :mod:`convpipe.report`, where every table and report lives.

Security: no file a command reads (an ONNX model's metadata, an artifact's manifest, a tuning database) chooses
code to run; only command-line arguments name Python factories (``export MODEL``, ``bench --torch-model``).
Loading an artifact runs its native code: see ``--expect-sha256``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from convpipe import report
from convpipe.errors import ConvpipeError
from convpipe.report import KERNEL_KINDS, kernel_kind  # noqa: F401 -- their old home; used by tests/scripts

FAMILY_CHOICES = ("auto", "direct", "im2col", "winograd", "depthwise")
LAYOUT_HELP = (
    "activation layout between convs: auto (NCHW[x]c through the network on CPU targets, x chosen per model), "
    "nchw, or nchw<x>c such as nchw16c (default auto)"
)


# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------
def _load_inputs(specs: list[str] | None, infos) -> dict:
    """``NAME=file.npy`` (or a bare ``file.npy`` for a one-input model) -> ``{name: array}``.

    Raises:
        ConvpipeError: an input named twice, a bare path for a multi-input model, a missing or non-.npy file."""
    import numpy as np

    out = {}
    names = [i.name for i in infos]
    for spec in specs or []:
        name, sep, path = spec.partition("=")
        if not sep:
            if len(names) != 1:
                raise ConvpipeError(f"--input {spec!r}: the model has inputs {names}; write NAME=file.npy")
            name, path = names[0], spec
        if name in out:
            raise ConvpipeError(f"--input {name}: given more than once")
        if not os.path.isfile(path):
            raise ConvpipeError(f"--input {name}: {path}: no such file")
        try:
            out[name] = np.load(path, allow_pickle=False)
        except Exception as e:
            raise ConvpipeError(f"--input {name}: {path}: not a .npy array: {e}") from None
    return out


def _sized_infos(infos, specs: list[str] | None) -> list:
    """The inputs to generate (``run``/``verify``/``bench``/``profile`` without ``--input``): ``infos`` (the
    artifact's default shapes) with the exact shapes ``--input-shape NAME=D0,D1,...`` gives (a bare shape: the
    first input) -- how a variable-size artifact is run at another size in its range.

    Raises:
        ConvpipeError: a bad shape, or a name that is not an input of the artifact."""
    from convpipe.compiler.importer import parse_input_shapes
    from convpipe.runtime import IOInfo

    shapes = parse_input_shapes(specs)
    names = [i.name for i in infos]
    if "" in shapes:
        shapes[names[0]] = shapes.pop("")
    bad = [n for n in shapes if n not in names]
    if bad:
        raise ConvpipeError(f"--input-shape names {bad}, not inputs of the artifact; its inputs are {names}")
    return [IOInfo(i.name, tuple(shapes.get(i.name, i.shape)), i.dtype) for i in infos]


class _Runner:
    """Runs an artifact locally (:mod:`convpipe.runtime`) or on a board over TVM RPC (``--remote``/``--tracker``)."""

    def __init__(self, args):
        from convpipe.runtime import io_info, load, read_manifest

        self.remote = getattr(args, "remote", None) or getattr(args, "tracker", None)
        expected_sha256 = getattr(args, "expect_sha256", None)
        if self.remote:
            import tvm

            from convpipe import remote
            from convpipe.runtime import verify_libraries

            self.manifest = read_manifest(args.artifact)
            self.lib = verify_libraries(args.artifact, self.manifest, expected_sha256=expected_sha256)
            if self.manifest["tvm_version"] != tvm.__version__:
                raise ConvpipeError(f"artifact built with TVM {self.manifest['tvm_version']}, this host has {tvm.__version__}")
            self.inputs, self.outputs = io_info(self.manifest, "inputs"), io_info(self.manifest, "outputs")
            self.device = getattr(args, "device", None) or ("cuda" if self.manifest["target"]["arch"] == "cuda" else "cpu")
            self.session = remote.connect(args.remote, args.tracker, args.key, timeout_s=args.timeout)
            remote.remote_device(self.session, self.device)  # fail now, before any upload, if it has no GPU
        else:
            self.module = load(args.artifact, device=getattr(args, "device", None), expected_sha256=expected_sha256)
            self.manifest, self.inputs, self.outputs = self.module.manifest, self.module.inputs, self.module.outputs

    def run(self, inputs: dict) -> dict:
        if not self.remote:
            return self.module.run(inputs)
        from convpipe import remote
        from convpipe.runtime import check_inputs

        if "dynamic" in self.manifest:  # over RPC only the default build's library is uploaded
            given = {k: list(getattr(v, "shape", ())) for k, v in inputs.items()}
            want = {i.name: list(i.shape) for i in self.inputs}
            if any(given.get(k, v) != v for k, v in want.items()):
                raise ConvpipeError(f"inputs {given}: over --remote/--tracker a variable-size artifact runs its default "
                                    f"build only, at {want}; run other sizes on the board itself")
        arrays = check_inputs(self.inputs, inputs)
        return remote.run_remote(self.lib, arrays, self.session, [o.name for o in self.outputs], device=self.device)


def _add_input_args(s) -> None:
    """``--input``, ``--seed`` and ``--input-shape``: the inputs of ``run``, ``profile`` and ``verify``."""
    s.add_argument("--input", action="append", metavar="NAME=x.npy")
    s.add_argument("--seed", type=int, default=0, help="seed for generated inputs when none are given")
    s.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                   help="a variable-size artifact: the shape to generate inputs at (any size in its range; default: "
                        "its default build's)")


def _add_remote_args(s) -> None:
    s.add_argument("--device", choices=("cpu", "cuda"), help="device, local or on --remote (default: the artifact's target)")
    s.add_argument("--remote", metavar="HOST:PORT", help="run on a TVM RPC server (a board, or a GPU host)")
    s.add_argument("--tracker", metavar="HOST:PORT", help="run on a board taken from a TVM RPC tracker")
    s.add_argument("--key", help="device key for --tracker")
    s.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the board (default 30)")
    _add_sha_arg(s)


def _add_sha_arg(s) -> None:
    s.add_argument("--expect-sha256", metavar="HEX",
                   help="refuse the artifact unless its library's sha256 is this one -- for a variable-size artifact the "
                        "digest of all its libraries; `inspect` prints it as 'pin' (loading an artifact runs its "
                        "native code; the sha256 in its manifest only detects corruption)")


def _parse_size(text: str) -> int:
    """``"64G"``, ``"512MiB"``, ``"1e9"`` -> bytes (argparse type for ``--max-memory``)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    try:
        n = float(t[:-1] if scale > 1 else t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 64G, 512M or 1000000000") from None
    if not n > 0 or n == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive size")
    return int(n)


# ------------------------------------------------------------------------------------------------------------
# subcommands
# ------------------------------------------------------------------------------------------------------------
def cmd_export(args) -> int:
    from convpipe.compiler.export import export_onnx
    from convpipe.compiler.importer import parse_shape
    from convpipe.compiler.zoo import get_model

    given = parse_shape(args.input_shape) if args.input_shape else None
    model, default_shape, _ = get_model(args.model, given)
    shape = given or default_shape
    if shape is None:
        raise ConvpipeError(f"model {args.model!r} has no default input shape: give --input-shape N,C,H,W")
    names = export_onnx(model, shape, args.output, opset=args.opset, source=args.model)
    print(report.export_line(args.model, shape, args.output, names))
    return 0


def cmd_compile(args) -> int:
    from convpipe.compiler.build import compile_model
    from convpipe.compiler.importer import parse_buckets, parse_input_specs

    db = None
    if args.db:
        from convpipe.compiler.tune import TuningDatabase

        db = TuningDatabase(args.db, strict=args.strict)
    res = compile_model(
        args.model, args.output, args.target, args.schedule, parse_input_specs(args.input_shape), db, args.arch,
        args.layout, max_memory=args.max_memory, fast_math=args.fast_math, buckets=parse_buckets(args.buckets),
        accuracy_guard=args.accuracy_guard,
    )
    con = report.console()
    if not args.quiet:
        con.print(report.layer_table(res.manifest["conv2d"], f"{args.output}: conv2d schedules ({res.manifest['target']['isa']})"))
    if "dynamic" in res.manifest and not args.quiet:
        report.print_dynamic(con, res.manifest["dynamic"])
    line = report.accuracy_line(res.manifest.get("accuracy"))
    if line and (not args.quiet or res.manifest["accuracy"].get("kept")):
        con.print(line)
    con.print(report.compile_line(args.model, res))
    return 0


def cmd_run(args) -> int:
    import numpy as np

    module = _Runner(args)
    inputs = _load_inputs(args.input, module.inputs)
    if not inputs:
        from convpipe.compiler.importer import random_inputs

        inputs = random_inputs(_sized_infos(module.inputs, args.input_shape), args.seed)
    outputs = module.run(inputs)
    if args.output:
        try:
            np.savez(args.output, **outputs)
        except OSError as e:
            raise ConvpipeError(f"-o {args.output}: cannot write it: {e.strerror or e}") from None
    for name, a in outputs.items():
        print(report.output_line(name, a))
    if args.output:
        print(f"wrote {args.output}")
    return 0


def cmd_profile(args) -> int:
    from convpipe.runtime import load

    if args.threads:
        from convpipe.compiler.bench import set_threads

        set_threads(args.threads)
    module = load(args.artifact, expected_sha256=args.expect_sha256)
    inputs = _load_inputs(args.input, module.inputs)
    if not inputs:
        from convpipe.compiler.importer import random_inputs

        inputs = random_inputs(_sized_infos(module.inputs, args.input_shape), args.seed)
    kernels, run_ms = module.profile(inputs, args.runs)
    conv2d = module.manifest.get("conv2d") if "dynamic" not in module.manifest else None
    if args.json:
        print(json.dumps(report.profile_json(kernels, run_ms, conv2d, args.peak), indent=1))
        return 0
    report.print_profile(report.console(), args.artifact, kernels, run_ms, args.runs, args.top, conv2d, args.peak)
    return 0


def cmd_verify(args) -> int:
    from convpipe.compiler.importer import random_inputs
    from convpipe.compiler.verify import compare, run_onnxruntime

    module = _Runner(args)
    inputs = _load_inputs(args.input, module.inputs)
    generated = [i for i in _sized_infos(module.inputs, args.input_shape) if i.name not in inputs]
    inputs.update(random_inputs(generated, args.seed))
    ours = module.run(inputs)
    ref = run_onnxruntime(args.model, inputs)
    checks = compare(ours, ref, args.rtol, args.atol)
    ok = all(c.ok for c in checks)
    con = report.console()
    con.print(report.checks_table(checks, args.rtol, args.atol))
    con.print(report.verify_verdict(ok))
    return 0 if ok else 1


def cmd_inspect(args) -> int:
    from convpipe.runtime import pin_digest, read_manifest

    m = read_manifest(args.artifact)
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    try:
        pin = pin_digest(args.artifact, m)
    except ConvpipeError:  # a missing library: inspect still shows the manifest (run/load say what is wrong)
        pin = None
    report.print_inspect(report.console(), args.artifact, m, pin)
    return 0


def cmd_bench(args) -> int:
    import tempfile

    con = report.console()
    target = args.model
    onnx_path = None
    tmp = None
    schedules = FAMILY_CHOICES if args.schedule == "all" else args.schedule.split(",")
    bad = [s for s in schedules if s not in FAMILY_CHOICES]
    if bad:
        raise ConvpipeError(f"--schedule {args.schedule}: unknown {bad}; expected all or a list of {FAMILY_CHOICES}")
    from convpipe.compiler.layout import parse_layout

    layouts = args.layout.split(",")
    for layout in layouts:
        parse_layout(layout)
    if os.path.isfile(target) and target.endswith(".onnx"):
        from convpipe.compiler.bench import compile_variants
        from convpipe.compiler.importer import parse_input_shapes

        onnx_path = target
        tmp = tempfile.TemporaryDirectory(prefix="convpipe-bench-")
        artifact = compile_variants(onnx_path, tmp.name, schedules, layouts, args.target,
                                    parse_input_shapes(args.input_shape), arch=args.arch, max_memory=args.max_memory)
    elif len(schedules) > 1 or args.schedule != "auto" or args.layout != "auto" or args.target != "x86" or args.arch:
        raise ConvpipeError("--schedule/--layout/--target/--arch apply when benchmarking an .onnx (an artifact's are fixed)")
    else:
        artifact = target
    inputs = None
    if args.input_shape and onnx_path is None:  # an artifact: the size to time (variable-size artifacts)
        from convpipe.compiler.importer import random_inputs
        from convpipe.runtime import io_info, read_manifest

        inputs = random_inputs(_sized_infos(io_info(read_manifest(artifact), "inputs"), args.input_shape))
    if args.remote or args.tracker:
        from convpipe import remote
        from convpipe.compiler.importer import random_inputs

        args.artifact = artifact
        runner = _Runner(args)
        inputs = inputs or random_inputs(runner.inputs)
        times = remote.time_remote(runner.lib, list(inputs.values()), runner.session, number=max(1, args.rounds), repeat=3,
                                   device=runner.device)
        where = args.remote or f"tracker {args.tracker} key {args.key}"
        con.print(report.remote_bench_line(where, times, max(1, args.rounds)))
        return 0
    from convpipe.compiler.bench import artifact_device, bench_artifact

    device = args.device or artifact_device(artifact)
    res = bench_artifact(artifact, onnx_path, args.threads, args.rounds, inputs=inputs, device=device,
                         torch_model=args.torch_model, expected_sha256=args.expect_sha256)
    con.print(report.bench_table(res, report.bench_title(args.model, device, args.threads, args.rounds)))
    return 0


def cmd_tune(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from convpipe.compiler.importer import import_onnx, parse_input_shapes
    from convpipe.compiler.tune import TuningDatabase, candidates, model_workloads, tune_workloads
    from convpipe.schedules import TargetError, resolve_target

    try:
        target = resolve_target(args.target, args.arch)
    except TargetError as e:
        raise ConvpipeError(str(e)) from None
    from convpipe.compiler.bench import set_threads

    # always set: with TVM_NUM_THREADS unset TVM's pool starts one worker per *physical* core it counts (1 on a
    # 2-vCPU VM), so the default "all cores" measured at 1 thread and the records then served 2-thread builds
    set_threads(args.threads)
    imported = import_onnx(args.model, parse_input_shapes(args.input_shape))
    workloads = model_workloads(imported, target, args.layout)
    db = TuningDatabase(args.db, strict=args.strict)
    con = report.console()
    measure = None
    if args.remote or args.tracker:
        from convpipe import remote
        from convpipe.compiler.kernel import remote_measure

        measure = remote_measure(args.remote, args.tracker, args.key)
        if target.arch == "cuda":
            remote.remote_device(measure.session, "cuda")  # fail now, not once per candidate
    elif target.arch == "cuda":
        from convpipe.runtime.module import cuda_gpu_missing

        if cuda_gpu_missing():
            raise ConvpipeError("tuning for CUDA measures on a GPU: none is present here; give --remote HOST:PORT (a GPU host's TVM RPC server)")
    elif target.arch == "arm":
        raise ConvpipeError(f"tuning for {target.arch} needs the board: give --remote HOST:PORT or --tracker HOST:PORT --key KEY")
    total = sum(len(candidates(wl, target)) for wl in workloads)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=con, transient=False) as bar:
        task = bar.add_task("tuning", total=total)

        def progress(line: str) -> None:
            bar.update(task, advance=1, description=line)

        results = tune_workloads(workloads, target, db, args.budget_s, args.retune, measure, progress)
        bar.update(task, completed=total)
    import tvm

    pool = tvm.get_global_func("runtime.NumThreads")() if not (args.remote or args.tracker) else args.threads
    con.print(report.tune_table(results, args.db, target, pool))
    con.print(report.tune_summary(results, args.db))
    return 0


def cmd_demo(args) -> int:
    from convpipe.compiler.demo import run_demo

    con = report.console()
    results = run_demo(args.out, threads=args.threads, mtcnn=not args.no_mtcnn,
                       on_model=lambda name, description: report.print_demo_heading(con, name, description))
    return 0 if report.print_demo(con, results) else 1


# ------------------------------------------------------------------------------------------------------------
# parser
# ------------------------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error printed as one ``convpipe: error:`` line (exit 2) like every other error."""

    def error(self, message: str):
        self.exit(2, f"convpipe: error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="convpipe", description=__doc__.splitlines()[0])
    from convpipe import __version__

    p.add_argument("--version", action="version", version=f"convpipe {__version__}")
    p.add_argument("--traceback", action="store_true", help="show Python tracebacks for user errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("export", help="export a PyTorch model to ONNX")
    s.add_argument("model", metavar="MODEL", help="zoo name (resnet18, resnet50, mobilenet_v2, pnet, rnet, onet, ...), torchvision/NAME, "
                        "timm/NAME or package.module:factory")
    s.add_argument("-o", "--output", required=True, help="output .onnx path")
    s.add_argument("--input-shape", help="N,C,H,W (default: the zoo model's)")
    s.add_argument("--opset", type=int, default=17)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("compile", help="compile an ONNX model into an artifact directory")
    s.add_argument("model", metavar="MODEL.onnx")
    s.add_argument("-o", "--output", required=True, metavar="ARTIFACT")
    s.add_argument("--target", default="x86", help="x86 (this host), arm, cuda, or a TVM target JSON")
    s.add_argument("--arch", help="CUDA arch for --target cuda: sm_80 | sm_90 (default: the local GPU's)")
    s.add_argument("--schedule", default="auto", choices=FAMILY_CHOICES)
    s.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                   help="pin an input's dims (repeatable); a dim may be a range LO..HI (e.g. x=1,3,32..1024,32..1024): "
                        "the artifact then takes any size in range")
    s.add_argument("--buckets", action="append", metavar="NAME=D0,D1,...",
                   help="an exact shape to compile ahead with the full fixed-shape pipeline (repeatable, one bucket "
                        "each; several inputs: a=...;b=...); other sizes in range run the generic build")
    s.add_argument("--db", help="tuning database (JSON) whose measured choices take precedence")
    s.add_argument("--layout", default="auto", help=LAYOUT_HELP)
    s.add_argument("--strict", action="store_true",
                   help="with --db: an invalid tuning record is an error (default: skipped with a warning)")
    s.add_argument("--max-memory", type=_parse_size, metavar="SIZE",
                   help="largest tensor the model may need, e.g. 64G (default: this machine's memory)")
    s.add_argument("--fast-math", action="store_true",
                   help="allow approximate exp/tanh/erf/division (TVM fast-math, nvcc --use_fast_math); default: "
                        "exact fp32 math, as onnxruntime")
    s.add_argument("--no-accuracy-guard", dest="accuracy_guard", action="store_false",
                   help="skip the Winograd accuracy guard (default: when the model has Winograd layers and runs here, "
                        "compare it once with onnxruntime and step F(4,3) -> F(2,3) -> direct until the whole network "
                        "is within 1e-4*max|ref|+1e-5)")
    s.add_argument("-q", "--quiet", action="store_true", help="do not print the layer table")
    s.set_defaults(func=cmd_compile)

    s = sub.add_parser("run", help="run an artifact on .npy inputs")
    s.add_argument("artifact", metavar="ARTIFACT")
    _add_input_args(s)
    s.add_argument("-o", "--output", metavar="out.npz", help="write outputs keyed by ONNX output name")
    _add_remote_args(s)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("profile", help="time every kernel of an artifact (where a run's time goes)")
    s.add_argument("artifact", metavar="ARTIFACT")
    _add_input_args(s)
    s.add_argument("--runs", type=int, default=10, help="instrumented runs to average (default 10)")
    s.add_argument("--threads", type=int, help="CPU threads for TVM's pool (default: TVM's own)")
    s.add_argument("--top", type=int, default=25, help="kernels listed (the rest summed in one row)")
    s.add_argument("--json", action="store_true", help="print JSON instead of tables")
    s.add_argument("--peak", type=float, metavar="GFLOPS",
                   help="the machine's FMA peak at this thread count (e.g. from scripts/fma_peak.c): adds %% of peak")
    _add_sha_arg(s)
    s.set_defaults(func=cmd_profile)

    s = sub.add_parser("verify", help="compare an artifact with onnxruntime (exit 1 on mismatch)")
    s.add_argument("artifact", metavar="ARTIFACT")
    s.add_argument("model", metavar="MODEL.onnx")
    _add_input_args(s)
    s.add_argument("--rtol", type=float, default=1e-3)
    s.add_argument("--atol", type=float, default=1e-4)
    _add_remote_args(s)
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("inspect", help="show an artifact's manifest and per-layer conv2d schedules")
    s.add_argument("artifact", metavar="ARTIFACT")
    s.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("bench", help="latency of convpipe vs onnxruntime vs OpenVINO (when installed) vs PyTorch, "
                                     "side by side")
    s.add_argument("model", metavar="ARTIFACT|MODEL.onnx")
    s.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    s.add_argument("--rounds", type=int, default=7)
    s.add_argument("--schedule", default="auto", metavar="S[,S...]|all",
                   help="when given an .onnx: compile with each of these schedules (auto, direct, im2col, winograd, "
                        "depthwise) and time every build side by side")
    s.add_argument("--layout", default="auto", metavar="L[,L...]",
                   help="when given an .onnx: compile with each of these layouts (auto, nchw, nchw<x>c) and time "
                        "every build side by side")
    s.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                   help="an .onnx: pin its input dims; an artifact: the shape to time (a variable-size artifact: any "
                        "size in its range)")
    s.add_argument("--target", default="x86", help="when given an .onnx: compile for x86 (default) or cuda")
    s.add_argument("--arch", help="CUDA arch for --target cuda (default: the local GPU's)")
    s.add_argument("--max-memory", type=_parse_size, metavar="SIZE",
                   help="when given an .onnx: largest tensor the model may need (default: this machine's memory)")
    s.add_argument("--torch-model", metavar="MODEL",
                   help="also time this PyTorch model (a zoo name or package.module:factory, as for export)")
    _add_remote_args(s)
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("tune", help="measure schedule candidates per conv2d workload into a tuning database")
    s.add_argument("model", metavar="MODEL.onnx")
    s.add_argument("--db", default="tune.json", help="tuning database (JSON; created or extended)")
    s.add_argument("--budget-s", type=float, default=300.0, help="measuring time budget in seconds (default 300)")
    s.add_argument("--target", default="x86")
    s.add_argument("--arch", help="CUDA arch for --target cuda")
    s.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...")
    s.add_argument("--layout", default="auto", help=LAYOUT_HELP)
    s.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="CPU threads for the measured kernels (default: all cores, %(default)s here)")
    s.add_argument("--retune", action="store_true", help="re-measure workloads already in the database")
    s.add_argument("--strict", action="store_true",
                   help="an invalid record in the database is an error (default: re-measured, with a warning)")
    s.add_argument("--remote", metavar="HOST:PORT", help="measure on a TVM RPC server (the board)")
    s.add_argument("--tracker", metavar="HOST:PORT", help="measure on a board from a TVM RPC tracker")
    s.add_argument("--key", help="device key for --tracker")
    s.set_defaults(func=cmd_tune)

    s = sub.add_parser("demo", help="the main job: ResNet-18 compile/verify/latency, then MTCNN face detection on "
                                    "real photos (annotated PNGs)")
    s.add_argument("--out", default="out/demo", help="working directory (default out/demo)")
    s.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    s.add_argument("--no-mtcnn", action="store_true", help="skip the MTCNN face detector")
    s.set_defaults(func=cmd_demo)
    return p


def _unsuppress(e: BaseException) -> None:
    """Show the original exception under ``--traceback``: many user errors are raised ``from None`` so that the
    one-line message stands alone, which hides their ``__context__`` (the onnx / TVM / OS error that caused them)
    from Python's traceback printer; clear that flag along the chain (errors raised ``from e`` show it already)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if e.__cause__ is None and e.__context__ is not None:
            e.__suppress_context__ = False
        e = e.__cause__ or e.__context__


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that ``finally`` clauses remove half-written output."""


def _raise_terminated(signum, _frame):
    raise Terminated(signum)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _warnings_as_lines() -> None:
    """convpipe's library warnings (logger ``convpipe``, e.g. a skipped tuning record) as one
    ``convpipe: warning: ...`` line each on stderr, whatever logging setup TVM makes meanwhile."""
    import logging

    class StderrLines(logging.StreamHandler):
        @property
        def stream(self):  # the current sys.stderr, not the one at creation (tests capture it per test)
            return sys.stderr

        @stream.setter
        def stream(self, _value):
            pass

    log = logging.getLogger("convpipe")
    if not any(type(h).__name__ == "StderrLines" for h in log.handlers):
        h = StderrLines()
        h.setFormatter(logging.Formatter("convpipe: warning: %(message)s"))
        log.addHandler(h)
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _warnings_as_lines()
    if args.command in ("bench", "demo"):
        # before any thread pool starts: see convpipe.compiler.bench
        from convpipe.compiler.bench import set_threads

        set_threads(args.threads)
    import threading

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main else None
    try:
        return args.func(args)
    except ConvpipeError as e:
        if args.traceback:
            _unsuppress(e)
            raise
        print(f"convpipe: error: {' '.join(str(e).splitlines())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convpipe: interrupted (SIGINT); partial output removed", file=sys.stderr)
        return 130
    except Terminated:
        print("convpipe: terminated (SIGTERM); partial output removed", file=sys.stderr)
        return 143
    except MemoryError:
        print(f"convpipe: error: {args.command}: out of memory", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 -- a bug of ours: one line for the user, the traceback on request
        if args.traceback:
            raise
        print(f"convpipe: internal error in {args.command}: {_one_line(e)} (rerun with --traceback and report it)",
              file=sys.stderr)
        return 3
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
