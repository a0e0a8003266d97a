"""What every benchmark report records about the machine it ran on: the CPU model, its widest SIMD ISA, the measured
FP32 FMA peak (``scripts/fma_peak.c``) and the measured main-memory bandwidth (``scripts/stream_bw.c``, STREAM copy
and triad), each per thread count. The two C probes are built with the host's ``gcc -O3 -march=native -fopenmp``
into a work directory; a probe that cannot be built or run is reported as ``{"error": ...}`` rather than stopping
the benchmark.

Usage from a script in this folder::

    from machine import machine_info
    info = machine_info([1, 2], work="out/bench/work")   # {"cpu", "isa", "cores", "fma_peak", "bandwidth"}
    print(describe(info))
"""

from __future__ import annotations

import json
import os
import platform
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))


def cpu_name() -> str:
    """The CPU model as ``/proc/cpuinfo`` names it (``platform.processor()`` elsewhere, else ``"unknown"``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def isa() -> str:
    """The widest SIMD extension this CPU reports: ``AVX-512``, ``AVX2``, ``NEON`` (else the machine name)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith(("flags", "Features"))), [])
    except OSError:
        flags = []
    for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("asimd", "NEON")):
        if flag in flags:
            return name
    return platform.machine()


def _build(name: str, work: str) -> tuple[str | None, str]:
    """Compile ``scripts/<name>.c`` into ``work``; returns (executable or None, the command or gcc's error)."""
    exe = os.path.join(work, name)
    os.makedirs(work, exist_ok=True)
    cmd = ["gcc", "-O3", "-march=native", "-fopenmp", os.path.join(HERE, f"{name}.c"), "-o", exe]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        return None, f"gcc: {e}"
    if r.returncode:
        return None, r.stderr.strip()[:500]
    return exe, " ".join(cmd)


def fma_peak(thread_counts: list[int], work: str, launches: int = 3) -> dict:
    """FP32 FMA peak, GFLOP/s: ``{"command", "per_threads": {"T": {"gflops", "isa", ...}}}``, best of
    ``launches`` launches of ``fma_peak`` per thread count (each launch itself the best of 5 runs)."""
    exe, cmd = _build("fma_peak", work)
    if exe is None:
        return {"error": cmd, "per_threads": {}}
    res = {"command": cmd, "per_threads": {}}
    for t in sorted(set(thread_counts)):
        best = None
        for _ in range(launches):
            o = subprocess.run([exe, str(t), "100000000"], capture_output=True, text=True, check=True)
            d = json.loads(o.stdout)
            if best is None or d["gflops"] > best["gflops"]:
                best = d
        res["per_threads"][str(t)] = best
    return res


def bandwidth(thread_counts: list[int], work: str) -> dict:
    """Main-memory bandwidth, GB/s: ``{"command", "per_threads": {"T": {"copy_gbs", "triad_gbs", "n"}}}``
    (STREAM copy and triad over three 320 MB float64 arrays, best of 7)."""
    exe, cmd = _build("stream_bw", work)
    if exe is None:
        return {"error": cmd, "per_threads": {}}
    res = {"command": cmd, "per_threads": {}}
    for t in sorted(set(thread_counts)):
        o = subprocess.run([exe, str(t)], capture_output=True, text=True, check=True)
        d = json.loads(o.stdout)
        d.pop("check", None)
        res["per_threads"][str(t)] = d
    return res


def machine_info(thread_counts: list[int], work: str) -> dict:
    """``{"cpu", "isa", "cores", "fma_peak", "bandwidth"}`` for the thread counts a benchmark uses (1 is always
    measured too). Run it while nothing else is running: both probes saturate the cores they use."""
    counts = sorted(set([1] + list(thread_counts)))
    return {"cpu": cpu_name(), "isa": isa(), "cores": os.cpu_count(), "fma_peak": fma_peak(counts, work),
            "bandwidth": bandwidth(counts, work)}


def describe(info: dict) -> str:
    """One Markdown paragraph: CPU, ISA, cores, FMA peak and bandwidth per thread count."""
    parts = [f"**Machine:** {info['cpu']} ({info['isa']}, {info['cores']} logical cores)."]
    for probe, measured, value, not_measured in (
        ("fma_peak", "Measured FP32 FMA peak", lambda v: f"{v['gflops']:.0f} GFLOP/s", "FMA peak"),
        ("bandwidth", "Measured memory bandwidth (STREAM triad)", lambda v: f"{v['triad_gbs']:.1f} GB/s", "Bandwidth"),
    ):
        res = info.get(probe, {})
        if res.get("per_threads"):
            parts.append(f"{measured}: " + ", ".join(
                f"{value(v)} at {t} thread{'s' if int(t) > 1 else ''}" for t, v in res["per_threads"].items()) + ".")
        elif "error" in res:
            parts.append(f"{not_measured} not measured ({res['error'][:120]}).")
    return " ".join(parts)
