"""The CPU a figure was measured on: the instruction sets charsdk's speed (and before the pair limit,
its int8 arithmetic) depends on. The same model runs ~3-5x faster with AVX-512 VNNI and BF16 than
with AVX2 alone, so every benchmark prints and records these beside its figures."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# u8 x s8 dot products in int32 (VNNI), bfloat16 arithmetic (training), and the vector widths
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "asimddp", "bf16")


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """Which of FLAGS this CPU has (from /proc/cpuinfo; [] where there is none)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    words = set(cpuinfo.split())
    return [flag for flag in FLAGS if flag in words]


def describe() -> dict:
    """The machine as the benchmarks' JSON records it."""
    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "cpu_flags": cpu_flags()}


def line() -> str:
    """One line for a benchmark's printed table."""
    flags = " ".join(cpu_flags()) or f"none of {' '.join(FLAGS)}"
    return f"machine: {os.cpu_count()} cores, {platform.machine()}, CPU flags: {flags}"
