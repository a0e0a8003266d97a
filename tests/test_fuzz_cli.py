"""Fuzzing the CLI with mutated inputs (issue 14): ONNX files (bytes and structure), artifact manifests, tuning
databases. Whatever the mutation, the command ends with exit 0, 1 or 2; a failure is exactly one
``convpipe: error:`` line and no traceback; and no file outside the output path is created, changed or removed.

The CLI runs in-process (``convpipe.cli.main``) so that a few hundred examples fit in CI; the ``ci`` hypothesis
profile is derandomised, so a failure reproduces (``HYPOTHESIS_PROFILE=thorough`` explores further)."""

from __future__ import annotations

import copy
import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convpipe import cli

EXAMPLES = int(os.environ.get("CONVPIPE_FUZZ_EXAMPLES", "250"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def tiny_model():
    """Conv 3->4 3x3 (bias) -> Relu -> MaxPool 2x2 -> Add(a constant) on a 1x3x8x8 input, seeded weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype("float32"), "w"),
             numpy_helper.from_array(rng.standard_normal(4).astype("float32"), "b"),
             numpy_helper.from_array(rng.standard_normal((1, 4, 1, 1)).astype("float32"), "k")]
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3],
                              strides=[1, 1], dilations=[1, 1], group=1, name="conv0"),
             helper.make_node("Relu", ["c"], ["r"], name="relu0"),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool0"),
             helper.make_node("Add", ["p", "k"], ["output"], name="add0")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 4, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def snapshot(root) -> dict[str, tuple]:
    """Every entry below ``root``: (kind, size, mtime_ns, mode) for files, ("dir",) for folders."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(d, name), root)] = ("dir",)
        for name in files:
            p = os.path.join(d, name)
            st_ = os.lstat(p)
            out[os.path.relpath(p, root)] = ("file", st_.st_size, st_.st_mtime_ns, st_.st_mode)
    return out


def run_cli(capsys, argv) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli.main(argv)
    err = capsys.readouterr().err
    return rc, err


def check_outcome(rc: int, err: str, what: str) -> None:
    assert rc in (0, 1, 2), f"{what}: exit {rc}\n{err}"
    assert "Traceback" not in err, f"{what}: traceback\n{err}"
    errors = [line for line in err.splitlines() if line.startswith("convpipe: error:")]
    assert len(errors) == (1 if rc == 2 else 0), f"{what}: exit {rc} with error lines {errors}\n{err}"


def untouched_except(before: dict, after: dict, output: str | None) -> None:
    """Everything in ``before`` is unchanged in ``after``; new entries only at or below ``output``."""
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    if output is not None:
        changed = {k for k in changed if not (k == output or k.startswith(output + os.sep))}
    assert not changed, f"files outside the output path were touched: {sorted(changed)}"


# ---- mutated ONNX files ----------------------------------------------------------------------------------------
_VALUES = st.sampled_from([0, -1, 1, 2, 3, 7, 1 << 20, 1 << 40])


@st.composite
def onnx_mutations(draw):
    """One to three structural mutations of :func:`tiny_model`, as (description, function) pairs."""
    from onnx import TensorProto

    kinds = st.sampled_from(["dim", "attr", "elem_type", "rename", "drop_node", "dup_node", "drop_init", "init_dims",
                             "op_type", "opset", "raw_data", "output_dim", "sane_hw", "sane_attr", "sane_attr",
                             "rename_all"])
    muts = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(kinds)
        if kind == "dim":
            axis, v = draw(st.integers(0, 3)), draw(_VALUES)

            def set_dim(m, a=axis, v=v):
                dim = m.graph.input[0].type.tensor_type.shape.dim[a]
                if v >= 0:
                    dim.dim_value = v
                else:
                    dim.dim_param = "N"  # a dynamic dim nobody pins
            muts.append((f"input dim {axis}={v}", set_dim))
        elif kind == "sane_hw":  # another valid input size (the graph's other shapes are re-inferred)
            axis, v = draw(st.integers(2, 3)), draw(st.integers(1, 24))
            muts.append((f"input dim {axis}={v}", lambda m, a=axis, v=v: setattr(
                m.graph.input[0].type.tensor_type.shape.dim[a], "dim_value", v)))
        elif kind == "sane_attr":  # a plausible Conv/MaxPool geometry
            node = draw(st.sampled_from([0, 2]))
            name = draw(st.sampled_from(["pads", "strides", "dilations"]))
            ints = (draw(st.lists(st.integers(0, 2), min_size=4, max_size=4)) if name == "pads"
                    else draw(st.lists(st.integers(1, 3), min_size=2, max_size=2)))

            def set_sane(m, node=node, name=name, ints=ints):
                from onnx import helper

                n = m.graph.node[node]
                keep = [a for a in n.attribute if a.name != name]
                del n.attribute[:]
                n.attribute.extend(keep + [helper.make_attribute(name, ints)])
            muts.append((f"node {node} {name}={ints}", set_sane))
        elif kind == "rename_all":  # a tensor renamed consistently, to a name no C identifier would take
            old = draw(st.sampled_from(["input", "c", "r", "output", "w"]))
            new = draw(st.sampled_from(["gpu_0/data_0", "x y", "a:b", "[v2]", "1st", "int", "a\"b", "ü"]))

            def rename_all(m, old=old, new=new):
                for vi in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info):
                    if vi.name == old:
                        vi.name = new
                for t in m.graph.initializer:
                    if t.name == old:
                        t.name = new
                for n in m.graph.node:
                    n.input[:] = [new if x == old else x for x in n.input]
                    n.output[:] = [new if x == old else x for x in n.output]
            muts.append((f"rename {old!r} to {new!r} everywhere", rename_all))
        elif kind == "output_dim":
            axis, v = draw(st.integers(0, 3)), draw(_VALUES.filter(lambda v: v >= 0))
            muts.append((f"output dim {axis}={v}", lambda m, a=axis, v=v: setattr(
                m.graph.output[0].type.tensor_type.shape.dim[a], "dim_value", v)))
        elif kind == "attr":
            node = draw(st.sampled_from([0, 2]))
            name = draw(st.sampled_from(["pads", "kernel_shape", "strides", "dilations", "group"]))
            ints = draw(st.lists(st.sampled_from([-1, 0, 1, 2, 3, 5, 1 << 30]), min_size=1, max_size=5))

            def set_attr(m, node=node, name=name, ints=ints):
                from onnx import helper

                n = m.graph.node[node]
                keep = [a for a in n.attribute if a.name != name]
                del n.attribute[:]
                n.attribute.extend(keep + [helper.make_attribute(name, ints[0] if name == "group" else ints)])
            muts.append((f"node {node} {name}={ints}", set_attr))
        elif kind == "elem_type":
            et = draw(st.sampled_from([TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT64, TensorProto.STRING,
                                       TensorProto.BOOL, TensorProto.UINT8]))
            where = draw(st.sampled_from(["input", "output", "init"]))

            def set_type(m, et=et, where=where):
                if where == "init":
                    m.graph.initializer[0].data_type = et
                else:
                    getattr(m.graph, where)[0].type.tensor_type.elem_type = et
            muts.append((f"{where} elem_type {et}", set_type))
        elif kind == "rename":
            new = draw(st.sampled_from(["", "gpu_0/data_0", "x y", "a:b", "[v2]", "../../x", "c", "input"]))
            where = draw(st.sampled_from(["input", "output", "node_out"]))

            def rename(m, new=new, where=where):
                if where == "input":
                    m.graph.input[0].name = new
                elif where == "output":
                    m.graph.output[0].name = new
                else:
                    m.graph.node[0].output[0] = new
            muts.append((f"rename {where} to {new!r}", rename))
        elif kind == "drop_node":
            i = draw(st.integers(0, 3))
            muts.append((f"drop node {i}", lambda m, i=i: m.graph.node.pop(i) if len(m.graph.node) > i else None))
        elif kind == "dup_node":
            i = draw(st.integers(0, 3))
            muts.append((f"duplicate node {i}", lambda m, i=i: m.graph.node.append(copy.deepcopy(m.graph.node[i]))
                         if len(m.graph.node) > i else None))
        elif kind == "drop_init":
            i = draw(st.integers(0, 2))
            muts.append((f"drop initializer {i}", lambda m, i=i: m.graph.initializer.pop(i)
                         if len(m.graph.initializer) > i else None))
        elif kind == "init_dims":
            i, dims = draw(st.integers(0, 2)), draw(st.lists(st.sampled_from([0, 1, 2, 3, 4, 1 << 30]), max_size=5))

            def set_dims(m, i=i, dims=dims):
                if len(m.graph.initializer) > i:
                    del m.graph.initializer[i].dims[:]
                    m.graph.initializer[i].dims.extend(dims)
            muts.append((f"initializer {i} dims={dims}", set_dims))
        elif kind == "op_type":
            i = draw(st.integers(0, 3))
            op = draw(st.sampled_from(["Relu", "Conv", "MaxPool", "Add", "Sigmoid", "ConvTranspose", "Identity",
                                       "Softmax", "NoSuchOp", "BatchNormalization", "Gemm"]))
            muts.append((f"node {i} op_type={op}", lambda m, i=i, op=op: setattr(m.graph.node[i], "op_type", op)
                         if len(m.graph.node) > i else None))
        elif kind == "opset":
            v = draw(st.sampled_from([1, 6, 11, 13, 21, 99]))
            muts.append((f"opset {v}", lambda m, v=v: setattr(m.opset_import[0], "version", v)))
        else:  # raw_data: truncate or extend an initializer's bytes
            i, n = draw(st.integers(0, 2)), draw(st.integers(-16, 16))

            def raw(m, i=i, n=n):
                t = m.graph.initializer[i] if len(m.graph.initializer) > i else None
                if t is not None and t.raw_data:
                    t.raw_data = t.raw_data[:n] if n < 0 else t.raw_data + b"\0" * n
            muts.append((f"initializer {i} raw_data {n:+d} bytes", raw))
    return muts


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _fresh(root, name: str) -> str:
    d = os.path.join(root, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


@FUZZ
@given(muts=onnx_mutations())
def test_fuzz_mutated_onnx_structure(fuzz_root, capsys, muts):
    d = _fresh(fuzz_root, "onnx")
    model = tiny_model()
    for _, fn in muts:
        try:
            fn(model)
        except (IndexError, ValueError, TypeError):
            pass  # a mutation that does not apply to this graph
    path = os.path.join(d, "m.onnx")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    before = snapshot(d)
    rc, err = run_cli(capsys, ["compile", path, "-o", os.path.join(d, "m.cpa"), "-q"])
    what = "compile after " + "; ".join(desc for desc, _ in muts)
    check_outcome(rc, err, what)
    untouched_except(before, snapshot(d), "m.cpa")
    assert os.path.isdir(os.path.join(d, "m.cpa")) == (rc == 0), what


@FUZZ
@given(edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.sampled_from(["flip", "cut", "insert", "drop"]),
                                st.integers(0, 255)), min_size=1, max_size=4))
def test_fuzz_mutated_onnx_bytes(fuzz_root, capsys, edits):
    d = _fresh(fuzz_root, "bytes")
    data = bytearray(tiny_model().SerializeToString())
    for where, op, byte in edits:
        i = int(where * len(data))
        if op == "flip" and data:
            data[i] ^= byte or 1
        elif op == "cut":
            data = data[:i]
        elif op == "insert":
            data[i:i] = bytes([byte])
        elif data:
            del data[i]
    path = os.path.join(d, "m.onnx")
    with open(path, "wb") as f:
        f.write(bytes(data))
    before = snapshot(d)
    rc, err = run_cli(capsys, ["compile", path, "-o", os.path.join(d, "m.cpa"), "-q"])
    check_outcome(rc, err, f"compile after byte edits {edits}")
    untouched_except(before, snapshot(d), "m.cpa")


# ---- mutated manifests -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def artifact(fuzz_root):
    import onnx

    d = _fresh(fuzz_root, "base")
    path = os.path.join(d, "m.onnx")
    onnx.save(tiny_model(), path)
    art = os.path.join(d, "m.cpa")
    assert cli.main(["compile", path, "-o", art, "-q"]) == 0
    return path, art


def json_paths(obj, prefix=()):
    """Every path (tuple of keys/indices) into a JSON value, the root included."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from json_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from json_paths(v, prefix + (i,))


_JUNK = st.sampled_from([None, 5, -1, 0, "x", "", [], {}, True, 1e308, 10**30, "../../etc/passwd", "/etc/passwd",
                         "model.so\x00x", [1, -3], [0], {"a": 1}, "float16", "sm_90", "arm", "cuda", "x86",
                         "0.0.0", [[1]], "../m.cpa/model.so"])


@st.composite
def json_mutations(draw, base):
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(json_paths(doc))
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "delete"] if path else ["replace"]))
        if not path:
            doc = copy.deepcopy(draw(_JUNK))  # a copy: a later mutation must not change _JUNK's own objects
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if op == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(draw(_JUNK))
        if not isinstance(doc, (dict, list)):
            break
    return doc


def _manifest(artifact):
    return json.load(open(os.path.join(artifact[1], "manifest.json")))


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_manifest(fuzz_root, artifact, capsys, data):
    onnx_path, art = artifact
    manifest = data.draw(json_mutations(_manifest(artifact)))
    d = _fresh(fuzz_root, "manifest")
    bad = os.path.join(d, "m.cpa")
    shutil.copytree(art, bad)
    with open(os.path.join(bad, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    before = snapshot(fuzz_root)
    out = os.path.join(d, "out.npz")
    for argv in (["inspect", bad], ["inspect", bad, "--json"], ["run", bad, "-o", out],
                 ["verify", bad, onnx_path]):
        rc, err = run_cli(capsys, argv)
        check_outcome(rc, err, f"{argv[0]} with manifest {json.dumps(manifest)[:600]}")
    untouched_except(before, snapshot(fuzz_root), os.path.join("manifest", "out.npz"))


# ---- mutated tuning databases ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tuning_db(artifact):
    """A real database for the tiny model: its one conv2d workload with the default choice's record."""
    from convpipe.compiler.importer import import_onnx
    from convpipe.compiler.select import auto_family
    from convpipe.compiler.tune import TuningDatabase, model_workloads
    from convpipe.schedules import resolve_target, rules_for

    target = resolve_target("x86")
    (wl,) = model_workloads(import_onnx(artifact[0]), target)
    fam, _ = auto_family(wl, rules_for("x86"), target)
    db = TuningDatabase(os.path.join(os.path.dirname(artifact[0]), "unused.json"))
    db.store(wl, target, {"family": fam, "knobs": rules_for("x86")[fam].default_knobs(wl, target), "ms": 0.01,
                          "gflops": 1.0, "workload": wl.to_dict(), "candidates": 1, "measured": "2026-11-29"})
    return {"format": 1, "records": db.records}


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_tuning_database(fuzz_root, artifact, tuning_db, capsys, data):
    doc = data.draw(json_mutations(tuning_db))
    d = _fresh(fuzz_root, "db")
    db = os.path.join(d, "tune.json")
    with open(db, "w") as f:
        json.dump(doc, f)
    before = snapshot(fuzz_root)
    rc, err = run_cli(capsys, ["compile", artifact[0], "-o", os.path.join(d, "m.cpa"), "--db", db, "-q"])
    check_outcome(rc, err, f"compile --db {json.dumps(doc)[:600]}")
    untouched_except(before, snapshot(fuzz_root), os.path.join("db", "m.cpa"))
