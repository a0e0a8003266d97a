"""Targets: what the user names (``x86``, ``arm``, ``cuda``, or a TVM target JSON) and what a schedule needs to
know about it (:class:`TargetInfo`: architecture, SIMD width in fp32 lanes, core count).

TVM 0.27 refuses CLI-style target strings; targets are JSON dicts (see ``../shared/notes/tvm-0.27.md``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import tvm

#: Generic aarch64 board used by ``--target arm``: Cortex-A72 class, NEON (128-bit, 4 fp32 lanes).
ARM_DEFAULT = {
    "kind": "llvm",
    "mtriple": "aarch64-linux-gnu",
    "mcpu": "cortex-a72",
    "mattr": ["+neon"],
}


class TargetError(ValueError):
    """A target name or JSON that convpipe cannot use."""


@dataclass(frozen=True)
class TargetInfo:
    """What a conv2d schedule needs to know about its target.

    Attributes:
        arch: ``"x86"``, ``"arm"`` or ``"cuda"`` -- selects the folder of schedule rules.
        isa: the vector ISA the schedules are written for: ``"avx512"``, ``"avx2"``, ``"sse"``, ``"neon"``,
            or the CUDA arch (``"sm_90"``).
        vector_lanes: fp32 lanes of one SIMD register (16 AVX-512, 8 AVX2, 4 NEON/SSE; 1 for CUDA).
        num_cores: CPU threads the schedules may assume (``parallel`` loops), or SM count hint for CUDA.
        target: the TVM target (with host for CUDA).
        config: the JSON dict ``target`` was made from (what the manifest records; ``Target(config)`` remakes it).
    """

    arch: str
    isa: str
    vector_lanes: int
    num_cores: int
    target: tvm.target.Target
    config: dict

    def to_json(self) -> dict:
        return {
            "arch": self.arch,
            "isa": self.isa,
            "vector_lanes": self.vector_lanes,
            "num_cores": self.num_cores,
            "tvm_target": self.config,
        }


def _host_x86() -> dict:
    cpu = tvm.target.codegen.llvm_get_system_cpu()
    return {"kind": "llvm", "mcpu": cpu, "num-cores": os.cpu_count() or 1}


def resolve_target(spec: str | dict | tvm.target.Target, arch: str | None = None) -> TargetInfo:
    """Turn a user's target into a :class:`TargetInfo`.

    Args:
        spec: ``"x86"`` (this host's x86 CPU; AVX-512 vs AVX2 detected), ``"arm"`` (generic aarch64 NEON,
            :data:`ARM_DEFAULT`), ``"cuda"`` (needs ``arch``), a TVM target JSON string or dict, or a
            ``tvm.target.Target``.
        arch: CUDA compute capability such as ``"sm_80"``/``"sm_90"`` for ``spec="cuda"``; defaults to the local
            GPU's when one is present.

    Raises:
        TargetError: the spec is neither a known name nor a valid TVM target JSON, or names an unsupported kind.
    """
    if isinstance(spec, tvm.target.Target):
        return _info(spec, {"kind": spec.kind.name, "str": str(spec)})
    if isinstance(spec, dict):
        d = spec
    elif spec == "x86":
        d = _host_x86()
    elif spec == "arm":
        d = dict(ARM_DEFAULT)
    elif spec == "cuda":
        d = {"kind": "cuda", "arch": arch or _local_cuda_arch()}
    else:
        try:
            d = json.loads(spec)
        except json.JSONDecodeError:
            raise TargetError(
                f"unknown target {spec!r}: expected 'x86', 'arm', 'cuda' or a TVM target JSON such as "
                '\'{"kind": "llvm", "mcpu": "znver4"}\''
            ) from None
        if not isinstance(d, dict):
            raise TargetError(f"target JSON must be an object, got {spec!r}")
    if d.get("kind") == "cuda" and arch and not d.get("arch"):
        d = {**d, "arch": arch}
    return _info(_make_target(d), d)


def _make_target(d: dict) -> tvm.target.Target:
    d = dict(d)
    host = d.pop("host", None)
    try:
        if d.get("kind") == "cuda":
            return tvm.target.Target(d, host=host or {"kind": "llvm"})
        return tvm.target.Target(d, host=host) if host else tvm.target.Target(d)
    except Exception as e:  # TVM raises its own error types for bad configs
        raise TargetError(f"invalid TVM target {json.dumps(d)}: {e}") from None


def _local_cuda_arch() -> str:
    dev = tvm.cuda(0)
    if dev.exist:
        return "sm_" + dev.compute_version.replace(".", "")
    raise TargetError("--target cuda needs --arch sm_80|sm_90 when no GPU is present")


def _info(target: tvm.target.Target, config: dict) -> TargetInfo:
    kind = target.kind.name
    cores = int(target.attrs.get("num-cores", 0) or 0) or (os.cpu_count() or 1)
    if kind == "cuda":
        arch = str(target.attrs.get("arch", ""))
        if not arch:
            raise TargetError("cuda target needs an arch such as sm_80 or sm_90")
        return TargetInfo("cuda", arch, 1, cores, target, config)
    if kind != "llvm":
        raise TargetError(f"unsupported target kind {kind!r}: convpipe has schedules for llvm (x86, aarch64) and cuda")
    triple = str(target.attrs.get("mtriple", "") or tvm.target.codegen.llvm_get_system_triple())
    if triple.startswith(("aarch64", "arm64")):
        return TargetInfo("arm", "neon", 4, cores, target, config)
    if not triple.startswith(("x86_64", "i686", "i386")):
        raise TargetError(f"unsupported llvm triple {triple!r}: convpipe schedules x86_64 and aarch64")
    with target:
        if tvm.target.codegen.llvm_cpu_has_features(["avx512f"], target):
            return TargetInfo("x86", "avx512", 16, cores, target, config)
        if tvm.target.codegen.llvm_cpu_has_features(["avx2", "fma"], target):
            return TargetInfo("x86", "avx2", 8, cores, target, config)
    return TargetInfo("x86", "sse", 4, cores, target, config)
