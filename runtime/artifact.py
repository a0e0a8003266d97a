"""The artifact format: a directory holding the exported TVM library and ``manifest.json``.

``manifest.json`` (``format`` = 1)::

    {
      "format": 1,
      "convpipe_version": "0.1.0", "tvm_version": "0.27.0.post1",
      "target": {"arch": "x86", "isa": "avx512", "vector_lanes": 16, "num_cores": 2, "tvm_target": {...}},
      "library": {"file": "model.so", "sha256": "..."},
      "source_onnx": {"file": "model.onnx", "sha256": "..."},
      "inputs":  [{"name": "input", "shape": [1, 3, 224, 224], "dtype": "float32"}],
      "outputs": [{"name": "output", "shape": [1, 1000], "dtype": "float32"}],
      "conv2d": [{"index": 0, "workload": {...}, "family": "direct", "knobs": {...}, "reason": "...",
                  "kernel": "conv2d_direct_0", "gflop": 0.118}, ...],
      "schedule": "auto", "layout": "NCHW16c", "created": "2026-11-21T05:00:00Z",
      "device_code": {"arch": "sm_90", "format": "cubin", "embedded_in": "model.so", "binary_sha256": ["..."],
                      "binary_bytes": 412345, "source": "device.cu", "kernels": [...]},  # CUDA only
      "fallbacks": [{"stage": "layout", "op": "relax.split (lv3)",                      # optional
                     "fallback": "NCHW input (converted back from the blocked layout)", "why": "..."}]
    }

``fallbacks`` (optional; absent in older artifacts): where the compiler took a simpler, still correct path instead
of failing -- ``stage`` ``"layout"`` (an op the blocked NCHW[x]c layout could not be carried into ran on NCHW,
or ``op`` ``"model"``: the whole model in NCHW), ``"epilogue"`` (a consumer left as its own kernel instead of
being inlined into the conv kernel) or ``"generic"`` (a step a variable-size artifact's generic build could not
take on symbolic shapes: NCHW throughout, a conv2d left to TVM's legalization, TVM's Resize) or ``"winograd"`` (a
Winograd layer given a smaller tile or a direct conv by the accuracy guard); ``op``, ``fallback`` and ``why`` are
free text for people.

``accuracy`` (optional; absent in older artifacts; also per bucket build): the compile-time Winograd accuracy
guard (``convpipe.compiler.accuracy``)::

    "accuracy": {"checked": true, "reference": "onnxruntime (CPU, graph optimisations off)",
                 "input": "seeded N(0, 1) and a photo (...)", "rtol": 1e-4, "atol": 1e-5,
                 "attempts": [{"winograd": "Winograd as selected", "max_abs": 2.1e-4, "max_rel": 1.6e-4,
                               "ok": false}, {"winograd": "Winograd F(2, 3) at most", ...}],
                 "kept": 1}                                        # or {"checked": false, "why": "..."}

(``max_abs``/``max_rel`` are null for a non-finite mismatch).

``dynamic`` (optional; issue 16, variable input sizes; absent: a one-build artifact, as before)::

    "dynamic": {
      "inputs": [{"name": "x", "dims": [1, 3, [32, 1024], [32, 1024]], "dtype": "float32"}],  # int or [lo, hi]
      "builds": [
        {"name": "default", "kind": "bucket", "library": {"file": "model.so", "sha256": "..."},
         "inputs": [{"name": "x", "shape": [1, 3, 224, 224], "dtype": "float32"}],
         "outputs": [...], "layout": "NCHW16c", "conv2d": [...], "fallbacks": [...]},
        {"name": "generic", "kind": "generic", "library": {"file": "model.generic.so", "sha256": "..."},
         "outputs": [{"name": "y", "shape": [1, 4, "(h - 1) // 2 + 1", "(w - 1) // 2 + 1"], "dtype": "float32"}],
         "layout": "NCHW", "conv2d": [], "fallbacks": [{"stage": "generic", ...}, ...]}
      ],
      "no_generic": "why there is no generic build"                                        # only then
    }

A bucket build serves exactly its ``inputs`` shapes; the generic build (at most one) serves every other shape
whose dims lie in ``dynamic.inputs``; without one, only the bucket shapes are accepted. The first build is the
*default*: the top-level ``library``, ``inputs``, ``outputs``, ``conv2d``, ``layout`` and ``fallbacks`` are its
own (for a generic default: its inputs and outputs at the low end of each range), so a reader that knows only
one-build artifacts finds a valid one.

:func:`read_manifest` checks a manifest against this schema (:func:`manifest_problems`) and refuses it with one
single-line :class:`ConvpipeError` naming every problem (key path, expected vs got), so no reader of a manifest
(the runtime, ``convpipe inspect``) meets a missing key or a wrong type. ``library.file`` must stay inside the
artifact directory (:func:`library_path`), and :func:`check_elf` refuses a library that is not a well-formed
shared library for the machine about to ``dlopen`` it (a truncated one would die of SIGBUS inside ``dlopen``).

Trust: the library's sha256 in the manifest detects corruption only -- whoever can replace ``model.so`` can rewrite
the manifest too. Pin the sha256 you trust with ``verify_library(..., expected_sha256=...)`` (or
``convpipe.runtime.load(..., expected_sha256=...)``).

This module is shared by the compiler (which writes artifacts) and the runtime (which reads them); it imports only
the standard library.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import re
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable

from convpipe.errors import ConvpipeError

FORMAT = 1
MANIFEST = "manifest.json"
LIBRARY = "model.so"
#: A manifest larger than this is refused unread (a real one is a few KB to a few hundred KB).
MAX_MANIFEST_BYTES = 64 << 20
#: Element types an input or output may have (NumPy names): those the compiler's ONNX importer accepts.
DTYPES = ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8",
          "bool")
ARCHES = ("x86", "arm", "cuda")
#: Largest element count of one input or output (2**48: far beyond any memory, small enough for NumPy).
MAX_ELEMENTS = 1 << 48
#: ``conv2d[i].workload`` keys: required, then optional (``Conv2dWorkload``'s fields; a test keeps them equal).
WORKLOAD_REQUIRED = ("batch", "in_channels", "in_h", "in_w", "out_channels", "kernel_h", "kernel_w")
WORKLOAD_OPTIONAL = ("stride_h", "stride_w", "pad_top", "pad_left", "pad_bottom", "pad_right", "dilation_h",
                     "dilation_w", "groups", "dtype", "data_block", "out_block")
WORKLOAD_KEYS = WORKLOAD_REQUIRED + WORKLOAD_OPTIONAL


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- schema -------------------------------------------------------------------------------------------------
# A check is ``check(value, path, problems)``: it appends "PATH: expected X, got Y" for each problem it finds.
Check = Callable[[object, str, list], None]


def _kind(v) -> str:
    """JSON type of ``v``, as a problem's "got"."""
    if v is None:
        return "null"
    if isinstance(v, list):
        return "an empty list" if not v else "list"
    return {bool: "bool", int: "int", float: "float", str: "str", dict: "object"}.get(type(v), type(v).__name__)


def _value(v) -> str:
    """``v`` as a problem's "got": a scalar's value (shortened), a container's kind."""
    if v is None or isinstance(v, bool):
        return json.dumps(v)
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        r = repr(v)
        return r if len(r) <= 60 else r[:56] + "...'"
    return _kind(v)


def _one_line(text: str) -> str:
    """``text`` with control characters (a JSON key may hold a newline) escaped, so an error stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _string(v, path, problems) -> None:
    if not isinstance(v, str) or not v:
        problems.append(f"{path}: expected a non-empty string, got {_value(v)}")


def _text(v, path, problems) -> None:
    if not isinstance(v, str):
        problems.append(f"{path}: expected a string, got {_kind(v)}")


def _int(lo: int, what: str | None = None) -> Check:
    def check(v, path, problems):
        if not _is_int(v) or v < lo:
            problems.append(f"{path}: expected {what or f'an int >= {lo}'}, got {_value(v)}")
    return check


def _number(lo: float, hi: float | None = None) -> Check:
    def check(v, path, problems):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= lo
        if not ok or (hi is not None and v > hi):
            what = f"a number >= {lo:g}" if hi is None else f"a number in [{lo:g}, {hi:g}]"
            problems.append(f"{path}: expected {what}, got {_value(v)}")
    return check


def _one_of(*options: str) -> Check:
    def check(v, path, problems):
        if not isinstance(v, str) or v not in options:
            problems.append(f"{path}: expected one of {', '.join(map(repr, options))}, got {_value(v)}")
    return check


def _object(v, path, problems) -> None:
    if not isinstance(v, dict):
        problems.append(f"{path}: expected an object, got {_kind(v)}")


def _sha256(v, path, problems) -> None:
    if not isinstance(v, str) or not re.fullmatch(r"[0-9a-f]{64}", v):
        problems.append(f"{path}: expected 64 lowercase hex digits, got {_value(v)}")


def _relative_path(v, path, problems) -> None:
    if not isinstance(v, str) or not v or "\0" in v:
        problems.append(f"{path}: expected a relative path, got {_value(v) if isinstance(v, str) else _kind(v)}")
    elif os.path.isabs(v):
        problems.append(f"{path}: expected a path relative to the artifact directory, got {_value(v)}")


def _layout(v, path, problems) -> None:
    m = re.fullmatch(r"NCHW(?:([0-9]+)c)?", v) if isinstance(v, str) else None
    if m is None or (m.group(1) is not None and int(m.group(1)) < 1):
        problems.append(f"{path}: expected 'NCHW' or 'NCHW<x>c', got {_value(v)}")


def _list(item: Check, non_empty: bool = False, what: str | None = None) -> Check:
    def check(v, path, problems):
        if not isinstance(v, list) or (non_empty and not v):
            what_ = what or ("a non-empty list" if non_empty else "a list")
            problems.append(f"{path}: expected {what_}, got {_kind(v)}")
            return
        for i, x in enumerate(v):
            item(x, f"{path}[{i}]", problems)
    return check


def _record(required: dict[str, Check], optional: dict[str, Check] | None = None, closed: bool = False,
            then: Callable[[dict, str, list], None] | None = None) -> Check:
    """An object with ``required`` and ``optional`` keys (``closed``: no others); ``then(obj, path, problems)``
    runs when every key present passed its check."""
    optional = optional or {}

    def check(v, path, problems):
        if not isinstance(v, dict):
            problems.append(f"{path}: expected an object, got {_kind(v)}")
            return
        before = len(problems)
        prefix = f"{path}." if path else ""
        for key, sub in required.items():
            if key not in v:
                problems.append(f"{prefix}{key}: missing")
            else:
                sub(v[key], prefix + key, problems)
        for key, sub in optional.items():
            if key in v:
                sub(v[key], prefix + key, problems)
        if closed:
            problems.extend(f"{prefix}{key}: unknown key" for key in v if key not in required and key not in optional)
        if then is not None and len(problems) == before:
            then(v, path, problems)
    return check


def _shape(v, path, problems) -> None:
    if not isinstance(v, list):
        problems.append(f"{path}: expected a list of positive ints, got {_kind(v)}")
        return
    for i, d in enumerate(v):
        if not _is_int(d) or d < 1:
            problems.append(f"{path}[{i}]: expected a positive int, got {_value(d)}")
        elif d > MAX_ELEMENTS:
            problems.append(f"{path}[{i}]: expected at most {MAX_ELEMENTS}, got {_value(d)}")
    if len(v) > 32:
        problems.append(f"{path}: expected at most 32 dims, got {len(v)}")
    elif all(_is_int(d) and 1 <= d <= MAX_ELEMENTS for d in v) and math.prod(v) > MAX_ELEMENTS:
        problems.append(f"{path}: expected at most {MAX_ELEMENTS} elements in all, got {math.prod(v)}")


def _tensors(v, path, problems) -> None:
    """``inputs`` / ``outputs``: a non-empty list of {name, shape, dtype} with distinct names."""
    before = len(problems)
    _list(_record({"name": _string, "shape": _shape, "dtype": _one_of(*DTYPES)}), non_empty=True)(v, path, problems)
    if len(problems) == before:
        seen = set()
        for i, t in enumerate(v):
            if t["name"] in seen:
                problems.append(f"{path}[{i}].name: expected a name not used before, got {_value(t['name'])} again")
            seen.add(t["name"])


def _workload_consistent(w, path, problems) -> None:
    """What ``Conv2dWorkload`` itself refuses (the CLI builds one from each layer)."""
    g = w.get("groups", 1)
    if w["in_channels"] % g or w["out_channels"] % g:
        problems.append(f"{path}.groups: expected a divisor of in_channels={w['in_channels']} and "
                        f"out_channels={w['out_channels']}, got {g}")
    for block, channels in (("data_block", "in_channels"), ("out_block", "out_channels")):
        if w.get(block, 0) and w[channels] % w[block]:
            problems.append(f"{path}.{block}: expected a divisor of {channels}={w[channels]}, got {w[block]}")
    for ax, lo, hi in (("h", "pad_top", "pad_bottom"), ("w", "pad_left", "pad_right")):
        span = (w[f"kernel_{ax}"] - 1) * w.get(f"dilation_{ax}", 1) + 1
        if w[f"in_{ax}"] + w.get(lo, 0) + w.get(hi, 0) < span:
            problems.append(f"{path}: expected a non-empty output, got in_{ax}={w[f'in_{ax}']} padded by "
                            f"{w.get(lo, 0)}+{w.get(hi, 0)} under a kernel spanning {span}")


_WORKLOAD = _record(
    {k: _int(1) for k in WORKLOAD_REQUIRED},
    {**{k: _int(0) for k in ("pad_top", "pad_left", "pad_bottom", "pad_right", "data_block", "out_block")},
     **{k: _int(1) for k in ("stride_h", "stride_w", "dilation_h", "dilation_w", "groups")},
     "dtype": _string},
    closed=True, then=_workload_consistent,
)
_LAYER = _record(
    {"index": _int(0), "workload": _WORKLOAD, "family": _string, "knobs": _object, "gflop": _number(0)},
    {"kernel": _string, "reason": _text},
)
_KERNEL_REPORT = _record(
    {"kernel": _string, **{k: _int(0) for k in ("registers", "smem_bytes", "spill_stores", "spill_loads")}},
    {"stack_bytes": _int(0), "threads": _int(0), "occupancy": _number(0, 1)},
)
_DEVICE_CODE = _record(
    {"arch": _string, "format": _string, "embedded_in": _string, "binary_bytes": _int(0), "source": _string,
     "kernels": _list(_KERNEL_REPORT, non_empty=True)},
    {"binary_sha256": _list(_sha256)},
)
#: ``fallbacks[i].stage`` values: where the compiler took a simpler path instead of failing
FALLBACK_STAGES = ("layout", "epilogue", "generic", "winograd")
_FALLBACK = _record(
    {"stage": _one_of(*FALLBACK_STAGES), "op": _string, "fallback": _string, "why": _text},
)


def _bool(v, path, problems) -> None:
    if not isinstance(v, bool):
        problems.append(f"{path}: expected true or false, got {_value(v)}")


def _error_or_null(v, path, problems) -> None:
    """A measured error: a finite number >= 0, or null (a non-finite mismatch)."""
    if v is not None:
        _number(0.0)(v, path, problems)


def _accuracy_consistent(a, path, problems) -> None:
    if a["checked"] and not ("attempts" in a and a["attempts"] and "kept" in a):
        problems.append(f"{path}: a checked entry names its attempts and the one kept")
    elif a["checked"] and a["kept"] >= len(a["attempts"]):
        problems.append(f"{path}.kept: expected an index into attempts (< {len(a['attempts'])}), got {a['kept']}")


#: ``accuracy`` (optional; the compile-time Winograd accuracy guard, ``convpipe.compiler.accuracy``)
_ACCURACY = _record(
    {"checked": _bool},
    {"why": _text, "reference": _text, "input": _text, "rtol": _number(0.0), "atol": _number(0.0),
     "attempts": _list(_record({"winograd": _string, "max_abs": _error_or_null, "max_rel": _error_or_null,
                                "ok": _bool})),
     "kept": _int(0), "stopped": _text},
    then=_accuracy_consistent,
)


def _dim_spec(v, path, problems) -> None:
    """An accepted input dim: a positive int, or an inclusive range ``[lo, hi]`` with ``1 <= lo <= hi``."""
    if _is_int(v):
        if v < 1 or v > MAX_ELEMENTS:
            problems.append(f"{path}: expected a positive int or [lo, hi], got {_value(v)}")
    elif not (isinstance(v, list) and len(v) == 2 and all(_is_int(x) for x in v) and 1 <= v[0] <= v[1] <= MAX_ELEMENTS):
        problems.append(f"{path}: expected a positive int or [lo, hi] with 1 <= lo <= hi, got "
                        f"{_value(v) if not isinstance(v, list) else v}")


def _out_dim(v, path, problems) -> None:
    """A generic build's output dim: a positive int, or the text of a symbolic expression."""
    if not ((_is_int(v) and v >= 1) or (isinstance(v, str) and v)):
        problems.append(f"{path}: expected a positive int or an expression's text, got {_value(v)}")


_DYN_INPUT = _record({"name": _string, "dims": _list(_dim_spec, non_empty=True), "dtype": _one_of(*DTYPES)})
_DYN_OUTPUT = _record({"name": _string, "shape": _list(_out_dim), "dtype": _one_of(*DTYPES)})


def _build_consistent(b, path, problems) -> None:
    if b["kind"] == "bucket" and "inputs" not in b:
        problems.append(f"{path}.inputs: missing (a bucket build names its exact input shapes)")


_BUILD = _record(
    {"name": _string, "kind": _one_of("bucket", "generic"), "library": _record({"file": _relative_path,
                                                                                 "sha256": _sha256}),
     "outputs": _list(_DYN_OUTPUT, non_empty=True), "conv2d": _list(_LAYER)},
    {"inputs": _tensors, "layout": _layout, "fallbacks": _list(_FALLBACK), "accuracy": _ACCURACY},
    then=_build_consistent,
)


def _dynamic_consistent(d, path, problems) -> None:
    names = [b["name"] for b in d["builds"]]
    if len(set(names)) != len(names):
        problems.append(f"{path}.builds: expected distinct names, got {names}")
    if sum(b["kind"] == "generic" for b in d["builds"]) > 1:
        problems.append(f"{path}.builds: expected at most one generic build")


#: ``dynamic`` (optional; variable-size artifacts, issue 16): the dims each input accepts and every build.
_DYNAMIC = _record(
    {"inputs": _list(_DYN_INPUT, non_empty=True), "builds": _list(_BUILD, non_empty=True)},
    {"no_generic": _text},
    then=_dynamic_consistent,
)
_MANIFEST = _record(
    {
        "format": _int(FORMAT),
        "convpipe_version": _string,
        "tvm_version": _string,
        "target": _record({"arch": _one_of(*ARCHES), "isa": _string, "tvm_target": _object},
                          {"vector_lanes": _int(1), "num_cores": _int(1)}),
        "library": _record({"file": _relative_path, "sha256": _sha256}),
        "source_onnx": _record({"file": _string, "sha256": _sha256}),
        "inputs": _tensors,
        "outputs": _tensors,
        "conv2d": _list(_LAYER),
    },
    {"schedule": _string, "layout": _layout, "created": _string, "device_code": _DEVICE_CODE,
     "fallbacks": _list(_FALLBACK), "accuracy": _ACCURACY, "dynamic": _DYNAMIC},
)


def manifest_problems(manifest: object) -> list[str]:
    """Every way ``manifest`` (parsed JSON) departs from the format-1 schema in the module docstring, each as
    ``"KEY.PATH: expected X, got Y"`` (or ``"KEY.PATH: missing"``); ``[]`` when it conforms. Keys the schema does
    not name are allowed (except inside a conv2d workload)."""
    problems: list[str] = []
    if not isinstance(manifest, dict):
        return [f"manifest: expected an object, got {_kind(manifest)}"]
    _MANIFEST(manifest, "", problems)
    return problems


def read_manifest(path: str) -> dict:
    """Read and validate ``ARTIFACT/manifest.json`` (see :func:`manifest_problems`).

    Returns:
        The parsed manifest; every key the schema names has the type and range it states.

    Raises:
        ConvpipeError: ``path`` is not an artifact directory; its manifest is missing, not a regular file, larger
            than :data:`MAX_MANIFEST_BYTES`, not UTF-8 JSON, of an unknown format; or it breaks the schema -- one
            single-line error listing every problem (``"; "``-separated, the first 20).
    """
    if not os.path.exists(path):
        raise ConvpipeError(f"{path}: no such artifact")
    if not os.path.isdir(path):
        raise ConvpipeError(f"{path}: not an artifact (expected a directory made by 'convpipe compile')")
    mpath = os.path.join(path, MANIFEST)
    if not os.path.lexists(mpath):
        raise ConvpipeError(f"{path}: not an artifact: {MANIFEST} is missing")
    if not os.path.isfile(mpath):
        raise ConvpipeError(f"{mpath}: unreadable manifest: not a regular file")
    try:
        if os.path.getsize(mpath) > MAX_MANIFEST_BYTES:
            raise ConvpipeError(f"{mpath}: unreadable manifest: larger than {MAX_MANIFEST_BYTES >> 20} MiB")
        with open(mpath, "rb") as f:
            manifest = json.loads(f.read(MAX_MANIFEST_BYTES + 1).decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
        why = " ".join(str(e).split())
        raise ConvpipeError(f"{mpath}: unreadable manifest: {type(e).__name__}: {why}") from None
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if not _is_int(fmt) or fmt != FORMAT:
        got = _value(fmt) if isinstance(manifest, dict) else f"(a JSON {type(manifest).__name__}, not an object)"
        raise ConvpipeError(f"{mpath}: unknown manifest format {got}, expected {FORMAT}")
    problems = manifest_problems(manifest)
    if problems:
        more = f"; ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ConvpipeError(_one_line(f"{mpath}: malformed manifest ({len(problems)} problem"
                                      f"{'s' if len(problems) > 1 else ''}): " + "; ".join(problems[:20]) + more))
    return manifest


# ---- the library ----------------------------------------------------------------------------------------------
def library_path(path: str, manifest: dict) -> str:
    """The library's real path (symlinks resolved), which must lie inside the artifact directory.

    Raises:
        ConvpipeError: ``library.file`` resolves (``os.path.realpath``) outside the artifact directory -- an
            absolute path, ``..``, or a symlink leading elsewhere would load a library from elsewhere.
    """
    root = os.path.realpath(path)
    name = manifest["library"]["file"]
    lib = os.path.realpath(os.path.join(root, name))
    if lib == root or os.path.commonpath([root, lib]) != root:
        raise ConvpipeError(_one_line(f"{path}: library.file {name!r} resolves to {lib}, outside the artifact "
                                      f"directory {root}: refusing to load it"))
    return lib


def normalize_sha256(expected: object) -> str:
    """``expected`` as 64 lowercase hex digits (surrounding spaces and upper case accepted).

    Raises:
        ConvpipeError: it is not 64 hex digits.
    """
    s = expected.strip().lower() if isinstance(expected, str) else None
    if s is None or not re.fullmatch(r"[0-9a-f]{64}", s):
        raise ConvpipeError(f"expected_sha256: expected 64 hex digits, got {_value(expected)}")
    return s


def verify_library(path: str, manifest: dict, expected_sha256: str | None = None) -> str:
    """Return the library's real path after checking where it is and its sha256 (a CUDA library embeds its
    device binary, so this covers the GPU code too).

    The manifest's sha256 only detects corruption: whoever can replace the library can rewrite the manifest. To
    make sure the library is the one you built or reviewed, pass ``expected_sha256`` (obtained through a channel
    you trust); it is checked before anything loads the library.

    Args:
        path: the artifact directory.
        manifest: its manifest, as :func:`read_manifest` returns it.
        expected_sha256: if given, the sha256 (64 hex digits) the library must have.

    Raises:
        ConvpipeError: the library path leads outside the artifact (:func:`library_path`); the file is missing;
            its sha256 differs from ``expected_sha256`` or from the manifest's; ``expected_sha256`` is malformed.
    """
    pinned = normalize_sha256(expected_sha256) if expected_sha256 is not None else None
    lib = library_path(path, manifest)
    if not os.path.isfile(lib):
        raise ConvpipeError(f"{path}: library {manifest['library']['file']} is missing")
    got = sha256_file(lib)
    if pinned is not None and got != pinned:
        raise ConvpipeError(
            f"{lib}: sha256 {got[:16]}... differs from the expected {pinned[:16]}... (expected_sha256): "
            "not the library you pinned; refusing to load it"
        )
    want = manifest["library"]["sha256"]
    if got != want:
        raise ConvpipeError(
            f"{lib}: sha256 {got[:16]}... disagrees with the manifest's {want[:16]}...: "
            "the artifact was modified or corrupted; recompile it"
        )
    return lib


def _library_entries(manifest: dict) -> list[dict]:
    """Every library an artifact loads, each once: the default build's, then a variable-size artifact's other
    builds' in manifest order (each ``{"file", "sha256"}``)."""
    libs = [manifest["library"]]
    for b in manifest.get("dynamic", {}).get("builds", []):
        if all(b["library"]["file"] != x["file"] for x in libs):
            libs.append(b["library"])
    return libs


def pin_digest(path: str, manifest: dict | None = None) -> str:
    """The sha256 to pin an artifact with (``expected_sha256`` / ``--expect-sha256``), from the files' actual bytes.

    A one-library artifact: its library's sha256 (what ``sha256sum model.so`` prints). A variable-size artifact
    (several libraries, issue 16): the sha256 of the lines ``"<file> <sha256 of the file>\n"`` of every library
    (:func:`_library_entries` order), so one pin covers every library that loading it runs.

    Raises:
        ConvpipeError: a library path leads outside the artifact or the file is missing.
    """
    manifest = manifest if manifest is not None else read_manifest(path)
    return _digest(_library_hashes(path, manifest))


def _library_hashes(path: str, manifest: dict) -> list[tuple[str, str]]:
    """``(file, sha256 of its bytes now)`` for every library of the artifact (:func:`_library_entries` order)."""
    out = []
    for entry in _library_entries(manifest):
        lib = library_path(path, {"library": entry})
        if not os.path.isfile(lib):
            raise ConvpipeError(f"{path}: library {entry['file']} is missing")
        out.append((entry["file"], sha256_file(lib)))
    return out


def _digest(hashes: list[tuple[str, str]]) -> str:
    """:func:`pin_digest` of these ``(file, sha256)``: the one sha256 itself, else the sha256 of their lines."""
    if len(hashes) == 1:
        return hashes[0][1]
    return hashlib.sha256("".join(f"{f} {h}\n" for f, h in hashes).encode()).hexdigest()


def verify_libraries(path: str, manifest: dict, expected_sha256: str | None = None) -> str:
    """:func:`verify_library` for the default build, with ``expected_sha256`` pinning every library the artifact
    loads: for a variable-size artifact the pin is :func:`pin_digest` (a library's own sha256 is refused there:
    it would leave the others unpinned); each further library is then checked against the manifest by the caller
    (:func:`verify_library`), whose sha256s the pinned digest fixes. Returns the default library's real path.

    Raises:
        ConvpipeError: as :func:`verify_library`; the digest of the libraries differs from ``expected_sha256``.
    """
    if expected_sha256 is None or len(_library_entries(manifest)) == 1:
        return verify_library(path, manifest, expected_sha256=expected_sha256)
    pinned = normalize_sha256(expected_sha256)
    hashes = _library_hashes(path, manifest)
    got = _digest(hashes)
    # the manifest's sha256 of each library must be the pinned bytes' own: every later check (verify_library, the
    # private copy loaded) compares against the manifest, so a library swapped after this point is refused too
    claimed = [(e["file"], e["sha256"]) for e in _library_entries(manifest)]
    if got != pinned or claimed != hashes:
        raise ConvpipeError(
            f"{path}: the digest of its {len(_library_entries(manifest))} libraries {got[:16]}... differs from the "
            f"expected {pinned[:16]}... (expected_sha256 of a variable-size artifact pins every library: the digest "
            "`convpipe inspect` prints as 'pin'); refusing to load it")
    return verify_library(path, manifest)


@contextlib.contextmanager
def private_copy(lib: str, sha256: str):
    """Copy the library ``lib`` into a fresh private directory (mode 0700) and yield the copy's path, after checking
    that the bytes copied have ``sha256``; the directory is removed on exit (a library stays mapped after its file
    is unlinked).

    Why: the checks before loading (:func:`verify_library`, :func:`check_elf`) and ``dlopen`` must see the same
    bytes, and ``dlopen`` returns the image already mapped for a path it has loaded before, so an artifact rebuilt
    at the same path and loaded again in the same process ran the *old* library. A copy that no one else can
    write, at a path never used before, closes both gaps.

    Raises:
        ConvpipeError: the file changed after it was checked (its bytes no longer have ``sha256``), or it cannot
            be copied.
    """
    d = tempfile.mkdtemp(prefix="convpipe-lib-")
    try:
        dst = os.path.join(d, f"{sha256[:16]}.so")
        h = hashlib.sha256()
        try:
            with open(lib, "rb") as src, open(dst, "wb") as out:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    h.update(chunk)
                    out.write(chunk)
        except OSError as e:
            raise ConvpipeError(f"{lib}: cannot read the library: {e.strerror or e}") from None
        if h.hexdigest() != sha256:
            raise ConvpipeError(f"{lib}: the library changed after it was checked (sha256 {h.hexdigest()[:16]}..., "
                                f"expected {sha256[:16]}...); refusing to load it")
        yield dst
    finally:
        shutil.rmtree(d, ignore_errors=True)


#: ELF ``e_machine`` values, class (bits) and byte order by ``platform.machine()`` name.
ELF_MACHINES = {
    "x86_64": (62, 64, "little"), "aarch64": (183, 64, "little"), "i386": (3, 32, "little"),
    "armv7l": (40, 32, "little"), "ppc64le": (21, 64, "little"), "riscv64": (243, 64, "little"),
    "s390x": (22, 64, "big"),
}
_MACHINE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "i686": "i386", "x86": "i386", "armv8l": "armv7l"}
_ET_NAMES = {0: "NONE", 1: "REL", 2: "EXEC", 3: "DYN", 4: "CORE"}


def check_elf(path: str, machine: str | None = None, shown_as: str | None = None) -> None:
    """Refuse a file that ``dlopen`` must not be given: check it is a well-formed ELF shared library for
    ``machine`` (default: this host) whose headers and loadable segments lie within the file. A truncated library
    passes ``dlopen``'s first reads and dies of SIGBUS when a mapped page past the end is touched; this reads only
    the ELF and program headers (standard library ``struct``).

    Args:
        path: the library.
        machine: ``platform.machine()`` name of the machine that will load it (``"x86_64"``, ``"aarch64"``, ...);
            e.g. ``"aarch64"`` for a board before upload. Unknown names check class and byte order of this host.
        shown_as: the name errors give the file (the artifact's library when ``path`` is its private copy).

    Raises:
        ConvpipeError: not ELF; wrong class (32/64-bit), byte order, machine or type (not ``ET_DYN``); the
            program-header table, a ``PT_LOAD`` segment or the section-header table extends beyond the end of the
            file. One line naming the file and every problem.
    """
    host = machine is None
    name = (machine or platform.machine()).lower()
    name = _MACHINE_ALIASES.get(name, name)
    em, bits, order = ELF_MACHINES.get(name, (None, None, None))
    if host or em is None:
        bits, order = struct.calcsize("P") * 8, sys.byteorder
        em = ELF_MACHINES.get(name, (None,))[0]

    def refuse(why: str):
        raise ConvpipeError(f"{shown_as or path}: {why}: refusing to load it (truncated, corrupted or not built "
                            f"for {name})")

    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(64)
            if len(head) < 52 or head[:4] != b"\x7fELF":
                refuse(f"not an ELF file ({size} bytes, starts with {head[:4]!r})")
            ei_class, ei_data = head[4], head[5]
            got_bits = {1: 32, 2: 64}.get(ei_class)
            got_order = {1: "little", 2: "big"}.get(ei_data)
            if got_bits is None or got_order is None:
                refuse(f"not a valid ELF file (class byte {ei_class}, data byte {ei_data})")
            if got_bits != bits:
                refuse(f"a {got_bits}-bit ELF file, {name} loads {bits}-bit libraries")
            if got_order != order:
                refuse(f"a {got_order}-endian ELF file, {name} is {order}-endian")
            e = "<" if order == "little" else ">"
            if bits == 64:
                e_type, e_machine, _, _, e_phoff, e_shoff = struct.unpack_from(e + "HHIQQQ", head, 16)
                e_phentsize, e_phnum, e_shentsize, e_shnum = struct.unpack_from(e + "HHHH", head, 54)
                ph_fmt, ph_size = e + "IIQQQQQQ", 56
            else:
                e_type, e_machine, _, _, e_phoff, e_shoff = struct.unpack_from(e + "HHIIII", head, 16)
                e_phentsize, e_phnum, e_shentsize, e_shnum = struct.unpack_from(e + "HHHH", head, 42)
                ph_fmt, ph_size = e + "IIIIIIII", 32
            if em is not None and e_machine != em:
                mname = next((k for k, v in ELF_MACHINES.items() if v[0] == e_machine), f"#{e_machine}")
                refuse(f"an ELF file for machine {mname}, expected {name}")
            if e_type != 3:
                refuse(f"not a shared library (ELF type {_ET_NAMES.get(e_type, e_type)}, expected DYN)")
            problems = []
            if e_phnum == 0 or e_phnum == 0xFFFF or e_phentsize != ph_size:
                refuse(f"unusable program-header table ({e_phnum} entries of {e_phentsize} bytes)")
            ph_end = e_phoff + e_phnum * e_phentsize
            if ph_end > size:
                refuse(f"program-header table (bytes {e_phoff}..{ph_end}) extends beyond the end of the file "
                       f"({size} bytes)")
            f.seek(e_phoff)
            table = f.read(e_phnum * e_phentsize)
    except OSError as err:
        raise ConvpipeError(f"{path}: cannot read the library: {err}") from None
    for i in range(e_phnum):
        fields = struct.unpack_from(ph_fmt, table, i * ph_size)
        if bits == 64:
            p_type, _, p_offset, _, _, p_filesz, p_memsz, _ = fields
        else:
            p_type, p_offset, _, _, p_filesz, p_memsz, _, _ = fields
        if p_type == 1 and p_offset + p_filesz > size:  # PT_LOAD
            problems.append(f"PT_LOAD segment {i} (bytes {p_offset}..{p_offset + p_filesz}) extends beyond the end "
                            f"of the file ({size} bytes)")
        elif p_type == 1 and p_filesz > p_memsz:
            problems.append(f"PT_LOAD segment {i} has more file bytes ({p_filesz}) than memory bytes ({p_memsz})")
    if e_shnum:
        sh_end = e_shoff + e_shnum * e_shentsize
        if e_shentsize != (64 if bits == 64 else 40):
            problems.append(f"section headers of {e_shentsize} bytes, expected {64 if bits == 64 else 40}")
        elif sh_end > size:
            problems.append(f"section-header table (bytes {e_shoff}..{sh_end}) extends beyond the end of the file "
                            f"({size} bytes)")
    if problems:
        refuse("; ".join(problems))
