"""convpipe.runtime against hostile artifacts and hostile callers (issue 14 items 3, 8, 11, 12): OS threads stay
bounded however many short-lived threads call ``run``; a tampered or malformed manifest is refused with one line
naming every problem; a library path leading out of the artifact, a truncated or foreign ``.so`` and a library
whose sha256 differs from one pinned by the caller are refused before any dlopen; ``run`` refuses inputs that are
not arrays and outputs that differ from the manifest.

One tiny artifact (one 3x3 conv, 1x3x8x8 input) serves the whole file; tests that tamper with it work on copies.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import onnx_conv_model, torch_conv
from convpipe.errors import ConvpipeError
from convpipe.runtime import Module, load, read_manifest, verify_library

SHAPE = (1, 3, 8, 8)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """``(artifact path, weight, workload)``: Conv 3->4, 3x3, pad 1 on a 1x3x8x8 input, output ``y`` 1x4x8x8."""
    import onnx

    from convpipe.compiler.build import compile_model
    from convpipe.schedules import Conv2dWorkload

    d = tmp_path_factory.mktemp("hardening")
    wl = Conv2dWorkload(1, 3, 8, 8, 4, 3, 3, pad_top=1, pad_left=1, pad_bottom=1, pad_right=1)
    w = np.random.default_rng(0).standard_normal(wl.weight_shape).astype("float32")
    onnx.save(onnx_conv_model(wl, w), str(d / "tiny.onnx"))
    compile_model(str(d / "tiny.onnx"), str(d / "tiny.cpa"))
    return str(d / "tiny.cpa"), w, wl


def copy_of(tiny, tmp_path, name="copy.cpa"):
    dst = str(tmp_path / name)
    shutil.copytree(tiny[0], dst, symlinks=True)
    return dst


def edit_manifest(path, fn):
    mp = os.path.join(path, "manifest.json")
    with open(mp) as f:
        m = json.load(f)
    fn(m)
    with open(mp, "w") as f:
        json.dump(m, f)


def reseal(path, lib="model.so"):
    """Recompute the manifest's library sha256 (what anyone able to edit the .so can do)."""
    with open(os.path.join(path, lib), "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    edit_manifest(path, lambda m: m["library"].update(sha256=sha))
    return sha


def one_line_error(excinfo, *fragments):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    return msg


def xs(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(SHAPE).astype("float32") for _ in range(n)]


# ---- 3. OS threads stay bounded -------------------------------------------------------------------------------
LEAK_CHILD = r"""
import json, os, sys, threading, time
import numpy as np
import convpipe.runtime as rt
from convpipe.runtime import module as rtm

def threads():
    return len(os.listdir("/proc/self/task"))

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

m = rt.load(sys.argv[1], threads=2)
x = np.linspace(-1, 1, 192, dtype="float32").reshape(1, 3, 8, 8)
ref = m.run([x])["y"]
wrong = []

def one_run():
    if not np.array_equal(m.run([x])["y"], ref):
        wrong.append(1)

def spawn(n):
    ts = [threading.Thread(target=one_run) for _ in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()

spawn(10)  # warm-up: whatever long-lived threads the runtime keeps are started here
time.sleep(0.3)
t0, r0 = threads(), rss_mb()
deadline = time.monotonic() + float(sys.argv[2])
done = 0
while done < 1000 and time.monotonic() < deadline:
    spawn(10)  # 10 at a time: concurrent callers, each thread runs once and ends
    done += 10
time.sleep(0.5)
print(json.dumps({"done": done, "threads_before": t0, "threads_after": threads(), "rss_before": r0,
                  "rss_after": rss_mb(), "wrong": len(wrong),
                  "runners": getattr(getattr(rtm, "RUNNERS", None), "size", 0)}), flush=True)
os._exit(0)  # a leaking runtime would block interpreter exit joining spinning pool workers
"""


def test_short_lived_threads_leave_no_threads_behind(tiny):
    """1000 short-lived threads (10 at a time) each call ``run`` once: OS threads and RSS stay bounded. TVM's CPU
    thread pool is thread-local, so each new calling thread used to leave its own pool workers alive (a service
    running each request on a new thread died of it)."""
    p = subprocess.run([sys.executable, "-c", LEAK_CHILD, tiny[0], "40"], capture_output=True, text=True, timeout=150)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["done"] == 1000, f"only {r['done']} of 1000 threads ran in 40 s: {r}"
    assert r["wrong"] == 0, r
    grew = r["threads_after"] - r["threads_before"]
    # at most the runner threads not yet started after the warm-up, each with its TVM pool (threads=2: 1 worker)
    assert grew <= 2 * r["runners"] + 2, f"OS threads grew by {grew}: {r}"
    assert r["threads_after"] <= 64, r
    assert r["rss_after"] - r["rss_before"] < 48, f"RSS grew {r['rss_after'] - r['rss_before']:.0f} MB: {r}"


def concurrently(worker, n: int) -> list[Exception]:
    """Run ``worker(i)`` for i = 0 .. n-1, each in its own thread, all at once; the exceptions they raised (to
    be asserted on the main thread)."""
    errors = []

    def guarded(i):
        try:
            worker(i)
        except Exception as e:  # collected for the main thread
            errors.append(e)

    ts = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return errors


def test_concurrent_callers_get_their_own_results(tiny):
    """8 threads x 200 runs of one Module, each thread with its own input: every output equals the sequential one
    and the reference convolution."""
    path, w, wl = tiny
    m = load(path)
    inputs = xs(8, seed=1)
    expected = [m.run([x])["y"] for x in inputs]
    for x, y in zip(inputs, expected):
        np.testing.assert_allclose(y, torch_conv(x, w, wl), rtol=1e-4, atol=1e-5)

    def worker(i):
        for _ in range(200):
            np.testing.assert_array_equal(m.run({"x": inputs[i]})["y"], expected[i])

    errors = concurrently(worker, 8)
    assert not errors, errors[:3]


def test_errors_reach_the_calling_thread(tiny, tmp_path):
    """An error raised while a run is carried out for another thread is raised in that thread."""
    path = copy_of(tiny, tmp_path)
    edit_manifest(path, lambda m: m["outputs"][0].update(shape=[1, 4, 8, 9]))
    m = load(path)
    caught = []

    def worker():
        try:
            m.run([xs(1)[0]])
        except ConvpipeError as e:
            caught.append(str(e))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert caught and "output 'y'" in caught[0] and "[1, 4, 8, 9]" in caught[0], caught


def test_time_from_a_short_lived_thread(tiny):
    m = load(tiny[0])
    out = []
    t = threading.Thread(target=lambda: out.append(m.time([xs(1)[0]], number=2, repeat=2)))
    t.start()
    t.join()
    assert len(out[0]) == 2 and all(v > 0 for v in out[0])


# ---- 8. manifest schema -----------------------------------------------------------------------------------------
def _drop(*keys):
    def fn(m):
        d = m
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]
    return fn


def _set(value, *keys):
    def fn(m):
        d = m
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return fn


BAD_MANIFESTS = [
    (_drop("library", "file"), ["library.file: missing"]),
    (_drop("library", "sha256"), ["library.sha256: missing"]),
    (_set("model.so", "library"), ["library: expected an object, got str"]),
    (_set("abc", "library", "sha256"), ["library.sha256: expected 64 lowercase hex digits, got 'abc'"]),
    (_set(None, "target"), ["target: expected an object, got null"]),
    (_drop("target", "arch"), ["target.arch: missing"]),
    (_set("mips", "target", "arch"), ["target.arch: expected one of 'x86', 'arm', 'cuda', got 'mips'"]),
    (_drop("target", "isa"), ["target.isa: missing"]),
    (_set("llvm", "target", "tvm_target"), ["target.tvm_target: expected an object, got str"]),
    (_set(5, "inputs"), ["inputs: expected a non-empty list, got int"]),
    (_set([], "outputs"), ["outputs: expected a non-empty list, got an empty list"]),
    (_drop("inputs", 0, "name"), ["inputs[0].name: missing"]),
    (_set("", "inputs", 0, "name"), ["inputs[0].name: expected a non-empty string, got ''"]),
    (_set("1,3,8,8", "inputs", 0, "shape"), ["inputs[0].shape: expected a list of positive ints, got str"]),
    (_set([1, -3, 8, 8], "inputs", 0, "shape"), ["inputs[0].shape[1]: expected a positive int, got -3"]),
    (_set([1, 3, 8.0, 8], "outputs", 0, "shape"), ["outputs[0].shape[2]: expected a positive int, got 8.0"]),
    (_set([1, True, 8, 8], "inputs", 0, "shape"), ["inputs[0].shape[1]: expected a positive int, got true"]),
    (_set([1, 0, 8, 8], "inputs", 0, "shape"), ["inputs[0].shape[1]: expected a positive int, got 0"]),
    (_set("float33", "inputs", 0, "dtype"), ["inputs[0].dtype: expected one of", "got 'float33'"]),
    (_drop("outputs", 0, "dtype"), ["outputs[0].dtype: missing"]),
    (_drop("conv2d"), ["conv2d: missing"]),
    (_set({"index": 0}, "conv2d"), ["conv2d: expected a list, got object"]),
    (_drop("conv2d", 0, "workload", "in_h"), ["conv2d[0].workload.in_h: missing"]),
    (_set(-1, "conv2d", 0, "workload", "stride_h"), ["conv2d[0].workload.stride_h: expected an int >= 1, got -1"]),
    (_set(1, "conv2d", 0, "workload", "bogus"), ["conv2d[0].workload.bogus: unknown key"]),
    (_set(1, "conv2d", 0, "workload", "bo\ngus"), ["conv2d[0].workload.bo\\ngus: unknown key"]),
    (_set(2, "conv2d", 0, "workload", "groups"), ["conv2d[0].workload.groups: expected a divisor of"]),
    (_set("fast", "conv2d", 0, "gflop"), ["conv2d[0].gflop: expected a number >= 0, got 'fast'"]),
    (_set(["oc_block", 4], "conv2d", 0, "knobs"), ["conv2d[0].knobs: expected an object, got list"]),
    (_drop("convpipe_version"), ["convpipe_version: missing"]),
    (_set(5, "layout"), ["layout: expected 'NCHW' or 'NCHW<x>c', got 5"]),
    (_drop("source_onnx"), ["source_onnx: missing"]),
    (_set(["model.so"], "library", "file"), ["library.file: expected a relative path, got list"]),
    (_set("/tmp/elsewhere.so", "library", "file"),
     ["library.file: expected a path relative to the artifact directory, got '/tmp/elsewhere.so'"]),
    (_set({"arch": "sm_90", "kernels": []}, "device_code"),
     ["device_code.kernels: expected a non-empty list, got an empty list", "device_code.format: missing"]),
    (_set({"arch": "sm_90", "format": "cubin", "embedded_in": "model.so", "binary_sha256": [], "binary_bytes": 1,
           "source": "device.cu", "kernels": [{"kernel": "k", "registers": "many"}]}, "device_code"),
     ["device_code.kernels[0].registers: expected an int >= 0, got 'many'",
      "device_code.kernels[0].smem_bytes: missing"]),
]


@pytest.mark.parametrize("edit, fragments", BAD_MANIFESTS,
                         ids=[f"{i}:{f[1][0].split(':')[0]}" for i, f in enumerate(BAD_MANIFESTS)])
def test_malformed_manifest_is_one_line_error(tiny, tmp_path, edit, fragments):
    """Every malformed field is reported as a ConvpipeError naming the key path, expected vs got, in one line --
    by ``read_manifest`` (used by the CLI's ``inspect``) and by ``load``."""
    path = copy_of(tiny, tmp_path)
    edit_manifest(path, edit)
    with pytest.raises(ConvpipeError) as e:
        read_manifest(path)
    one_line_error(e, "manifest.json", *fragments)
    with pytest.raises(ConvpipeError) as e:
        load(path)
    one_line_error(e, *fragments)


def test_every_problem_is_reported_at_once(tiny, tmp_path):
    path = copy_of(tiny, tmp_path)

    def wreck(m):
        del m["library"]["sha256"]
        m["target"] = None
        m["inputs"][0]["shape"] = [1, 3, -8, 8]
        m["outputs"] = 5

    edit_manifest(path, wreck)
    with pytest.raises(ConvpipeError) as e:
        read_manifest(path)
    msg = one_line_error(e, "library.sha256: missing", "target: expected an object, got null",
                         "inputs[0].shape[2]: expected a positive int, got -8", "outputs: expected a non-empty list")
    assert msg.count("; ") >= 3, msg


@pytest.mark.parametrize("content", ["{", "[1, 2]", '{"format": true}', '"x"', "\xff\xfe garbage", "[" * 100000])
def test_unreadable_manifest(tiny, tmp_path, content):
    path = copy_of(tiny, tmp_path)
    with open(os.path.join(path, "manifest.json"), "w", encoding="latin-1") as f:
        f.write(content)
    with pytest.raises(ConvpipeError) as e:
        read_manifest(path)
    one_line_error(e, "manifest.json")


def test_valid_manifests_pass(tiny):
    """The compiler's manifest passes, and so does a CUDA manifest as the compiler writes it."""
    m = read_manifest(tiny[0])
    from convpipe.runtime.artifact import manifest_problems

    assert manifest_problems(m) == []
    cuda = json.loads(json.dumps(m))
    cuda["target"].update(arch="cuda", isa="sm_90", tvm_target={"kind": "cuda", "arch": "sm_90"})
    cuda["device_code"] = {
        "arch": "sm_90", "format": "cubin", "embedded_in": "model.so", "binary_sha256": ["ab" * 32],
        "binary_bytes": 4096, "source": "device.cu",
        "kernels": [{"kernel": "conv2d_direct_0_kernel", "registers": 40, "smem_bytes": 1024, "spill_stores": 0,
                     "spill_loads": 0, "stack_bytes": 0, "threads": 128, "occupancy": 0.75}],
    }
    assert manifest_problems(cuda) == []


def test_schema_knows_every_workload_field():
    """The manifest schema's conv2d workload keys are exactly Conv2dWorkload's fields (the runtime cannot import
    the compiler's schedules, so it keeps its own list)."""
    import dataclasses

    from convpipe.runtime.artifact import WORKLOAD_KEYS
    from convpipe.schedules import Conv2dWorkload

    assert set(WORKLOAD_KEYS) == {f.name for f in dataclasses.fields(Conv2dWorkload)}


def test_inspect_reports_a_malformed_manifest_in_one_line(tiny, tmp_path):
    from conftest import cli

    path = copy_of(tiny, tmp_path)
    edit_manifest(path, _drop("target", "tvm_target"))
    p = cli("inspect", path, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "target.tvm_target: missing" in p.stderr, p.stderr


# ---- 8. library paths -------------------------------------------------------------------------------------------
def test_library_path_outside_the_artifact_is_refused(tiny, tmp_path):
    """``library.file`` leading out of the artifact (``..``, or a ``model.so`` symlink to elsewhere) would load a
    library from elsewhere -- even one whose sha256 the manifest lists. Refused."""
    path = copy_of(tiny, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(os.path.join(path, "model.so"), elsewhere / "model.so")
    edit_manifest(path, lambda m: m["library"].update(file="../elsewhere/model.so"))
    with pytest.raises(ConvpipeError) as e:
        load(path)
    one_line_error(e, "outside the artifact directory")
    with pytest.raises(ConvpipeError) as e:
        verify_library(path, read_manifest(path))
    one_line_error(e, "outside the artifact directory")

    path2 = copy_of(tiny, tmp_path, "symlinked.cpa")
    os.remove(os.path.join(path2, "model.so"))
    os.symlink(elsewhere / "model.so", os.path.join(path2, "model.so"))
    with pytest.raises(ConvpipeError) as e:
        load(path2)
    one_line_error(e, "outside the artifact directory")


def test_symlink_inside_the_artifact_is_fine(tiny, tmp_path):
    path = copy_of(tiny, tmp_path)
    os.mkdir(os.path.join(path, "lib"))
    os.rename(os.path.join(path, "model.so"), os.path.join(path, "lib", "real.so"))
    os.symlink(os.path.join("lib", "real.so"), os.path.join(path, "model.so"))
    assert load(path).run([xs(1)[0]])["y"].shape == (1, 4, 8, 8)
    # and an artifact reached through a symlinked directory
    os.symlink(path, str(tmp_path / "link.cpa"))
    assert load(str(tmp_path / "link.cpa")).run([xs(1)[0]])["y"].shape == (1, 4, 8, 8)


# ---- 8. ELF checks before dlopen ---------------------------------------------------------------------------------
TRUNCATED_CHILD = r"""
import sys
import convpipe.runtime as rt
try:
    rt.load(sys.argv[1])
except rt.ConvpipeError as e:
    print("refused:", e)
"""


def test_truncated_library_with_resealed_sha_is_refused(tiny, tmp_path):
    """A truncated ``.so`` whose sha256 was recomputed used to kill the process with SIGBUS inside dlopen."""
    path = copy_of(tiny, tmp_path)
    lib = os.path.join(path, "model.so")
    os.truncate(lib, os.path.getsize(lib) // 2)
    reseal(path)
    p = subprocess.run([sys.executable, "-c", TRUNCATED_CHILD, path], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"load died with status {p.returncode}: {p.stderr[-2000:]}"
    assert "refused:" in p.stdout and "beyond the end of the file" in p.stdout, p.stdout
    assert len(p.stdout.strip().splitlines()) == 1


def _elf_fields(lib):
    with open(lib, "rb") as f:
        head = f.read(64)
    e_phoff, e_shoff = struct.unpack_from("<QQ", head, 0x20)
    e_phentsize, e_phnum, e_shentsize, e_shnum = struct.unpack_from("<HHHH", head, 0x36)
    return e_phoff, e_shoff, e_phentsize, e_phnum, e_shentsize, e_shnum


def _patch(lib, offset, fmt, *values):
    with open(lib, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, *values))


def _last_load_segment(lib):
    e_phoff, _, e_phentsize, e_phnum, _, _ = _elf_fields(lib)
    with open(lib, "rb") as f:
        data = f.read()
    loads = [e_phoff + i * e_phentsize for i in range(e_phnum)
             if struct.unpack_from("<I", data, e_phoff + i * e_phentsize)[0] == 1]
    return loads[-1]


def _set_filesz_past_eof(lib):
    ph = _last_load_segment(lib)
    _patch(lib, ph + 0x20, "<Q", os.path.getsize(lib) + 4096)  # p_filesz
    _patch(lib, ph + 0x28, "<Q", os.path.getsize(lib) + 8192)  # p_memsz


ELF_DAMAGE = [
    ("not ELF", lambda lib: open(lib, "wb").write(b"#!/bin/sh\necho hi\n" * 10), "not an ELF file"),
    ("empty", lambda lib: open(lib, "wb").close(), "not an ELF file"),
    ("32-bit", lambda lib: _patch(lib, 4, "B", 1), "32-bit"),
    ("big-endian", lambda lib: _patch(lib, 5, "B", 2), "big-endian"),
    ("aarch64", lambda lib: _patch(lib, 0x12, "<H", 183), "machine aarch64"),
    ("executable", lambda lib: _patch(lib, 0x10, "<H", 2), "not a shared library"),
    ("section table past EOF", lambda lib: _patch(lib, 0x28, "<Q", os.path.getsize(lib) - 100),
     "section-header table"),
    ("PT_LOAD past EOF", _set_filesz_past_eof, "PT_LOAD segment"),
    ("program headers past EOF", lambda lib: _patch(lib, 0x20, "<Q", os.path.getsize(lib) - 8), "program-header table"),
]


@pytest.mark.parametrize("what, damage, fragment", ELF_DAMAGE, ids=[d[0] for d in ELF_DAMAGE])
def test_malformed_elf_is_refused_before_dlopen(tiny, tmp_path, monkeypatch, what, damage, fragment):
    import tvm

    path = copy_of(tiny, tmp_path)
    damage(os.path.join(path, "model.so"))
    reseal(path)
    opened = []
    monkeypatch.setattr(tvm.runtime, "load_module", lambda *a, **k: opened.append(a) or pytest.fail("dlopen reached"))
    with pytest.raises(ConvpipeError) as e:
        load(path)
    one_line_error(e, "model.so", fragment)
    assert not opened


def test_check_elf_for_another_machine(tiny):
    """``check_elf(lib, machine)`` checks a library for a board before it is uploaded."""
    from convpipe.runtime import check_elf

    lib = os.path.join(tiny[0], "model.so")
    check_elf(lib)  # the host's own
    check_elf(lib, "x86_64")
    with pytest.raises(ConvpipeError, match="machine x86_64, expected aarch64"):
        check_elf(lib, "aarch64")


# ---- 12. pinning the library's sha256 --------------------------------------------------------------------------
def test_expected_sha256(tiny, tmp_path, monkeypatch):
    """``load(path, expected_sha256=...)``: the library must have that sha256, checked before any dlopen -- a
    library replaced together with its manifest's sha256 is refused; the right one (any case, spaces) loads."""
    import tvm

    path = copy_of(tiny, tmp_path)
    good = read_manifest(path)["library"]["sha256"]
    assert load(path, expected_sha256=good).run([xs(1)[0]])["y"].shape == (1, 4, 8, 8)
    assert Module(path, expected_sha256=f"  {good.upper()} ").inputs[0].name == "x"
    assert verify_library(path, read_manifest(path), expected_sha256=good).endswith("model.so")

    with open(os.path.join(path, "model.so"), "ab") as f:  # still a valid ELF, sha resealed in the manifest
        f.write(b"\0" * 16)
    reseal(path)
    load(path)  # the manifest alone cannot tell
    opened = []
    monkeypatch.setattr(tvm.runtime, "load_module", lambda *a, **k: opened.append(a))
    with pytest.raises(ConvpipeError) as e:
        load(path, expected_sha256=good)
    one_line_error(e, "sha256", good[:16], "expected")
    with pytest.raises(ConvpipeError) as e:
        Module(path, expected_sha256=good)
    with pytest.raises(ConvpipeError) as e:
        verify_library(path, read_manifest(path), expected_sha256=good)
    with pytest.raises(ConvpipeError) as e:
        load(path, expected_sha256="not-a-sha")
    one_line_error(e, "expected_sha256", "64 hex digits")
    assert not opened


# ---- 11. run's inputs and outputs -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "inputs, fragments",
    [
        (None, ["inputs: expected", "{name: array}", "got NoneType"]),
        (5, ["got int"]),
        ("x", ["got str"]),
        (b"x", ["got bytes"]),
        (np.zeros(SHAPE, "float32"), ["got a bare ndarray", "[array]"]),
        ({"x": "abc"}, ["input 'x': expected a NumPy array, got str"]),
        ({"x": None}, ["input 'x': expected a NumPy array, got NoneType"]),
        ([None], ["input 'x': expected a NumPy array, got NoneType"]),
        ({("x",): np.zeros(SHAPE, "float32")}, ["unexpected input(s)"]),
        ({"x": np.zeros(SHAPE, "float32").astype(object)}, ["input 'x': expected dtype float32, got object"]),
    ],
)
def test_run_refuses_what_is_not_inputs(tiny, inputs, fragments):
    m = load(tiny[0])
    with pytest.raises(ConvpipeError) as e:
        m.run(inputs)
    one_line_error(e, *fragments)


@pytest.mark.parametrize(
    "edit, fragments",
    [
        (_set([1, 4, 8, 9], "outputs", 0, "shape"), ["output 'y'", "expected shape [1, 4, 8, 9]", "got [1, 4, 8, 8]"]),
        (_set("float16", "outputs", 0, "dtype"), ["output 'y'", "expected dtype float16", "got float32"]),
    ],
)
def test_outputs_are_checked_against_the_manifest(tiny, tmp_path, edit, fragments):
    path = copy_of(tiny, tmp_path)
    edit_manifest(path, edit)
    m = load(path)
    with pytest.raises(ConvpipeError) as e:
        m.run([xs(1)[0]])
    one_line_error(e, *fragments)


def test_artifact_rebuilt_at_the_same_path_loads_the_new_library(tmp_path):
    """dlopen returns the image already mapped for a path: an artifact recompiled in place and loaded again in the
    same process used to run the old library (found while testing exact ops: tanh outputs from an Exp model)."""
    import onnx

    from convpipe.compiler.build import compile_model
    from convpipe.schedules import Conv2dWorkload

    wl = Conv2dWorkload(1, 3, 6, 6, 4, 3, 3, pad_top=1, pad_left=1, pad_bottom=1, pad_right=1)
    x = np.random.default_rng(3).standard_normal((1, 3, 6, 6)).astype("float32")
    art = str(tmp_path / "same.cpa")
    for seed in (0, 1):
        w = np.random.default_rng(seed).standard_normal((4, 3, 3, 3)).astype("float32")
        onnx.save(onnx_conv_model(wl, w), str(tmp_path / "m.onnx"))
        compile_model(str(tmp_path / "m.onnx"), art, "x86")
        np.testing.assert_allclose(load(art).run([x])["y"], torch_conv(x, w, wl), rtol=1e-4, atol=1e-5,
                                   err_msg=f"weights of build {seed}")


def test_library_swapped_after_its_check_is_not_loaded(tiny, tmp_path, monkeypatch):
    """The bytes dlopen maps are the bytes that were checked: a library replaced between verify_library and the
    load is refused (the load reads a private copy and re-checks its sha256)."""
    import convpipe.runtime.module as rtm

    path = copy_of(tiny, tmp_path)
    real = rtm.verify_libraries  # what Module calls to check the library (every library, for variable-size ones)

    def verify_then_swap(*args, **kwargs):
        lib = real(*args, **kwargs)
        with open(lib, "r+b") as f:
            f.seek(100)
            f.write(b"\0\1\2\3")
        return lib

    monkeypatch.setattr(rtm, "verify_libraries", verify_then_swap)
    with pytest.raises(ConvpipeError, match="changed after it was checked"):
        load(path)
