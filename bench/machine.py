"""The machine a figure was measured on: every benchmark prints and records the CPU flags its figures
depend on (charsdk.cpu), since the same model runs several times faster with AVX-512 VNNI and BF16
than with AVX2 alone."""

from __future__ import annotations

import os
import platform

from charsdk.cpu import FLAGS, cpu_flags


def describe() -> dict:
    """The machine as the benchmarks' JSON records it."""
    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "cpu_flags": cpu_flags()}


def line() -> str:
    """One line for a benchmark's printed table."""
    flags = " ".join(cpu_flags()) or f"none of {' '.join(FLAGS)}"
    return f"machine: {os.cpu_count()} cores, {platform.machine()}, CPU flags: {flags}"


def kind(flags: list[str] | None = None, machine: str | None = None) -> str:
    """The CPU kind a figure's file is named by: amx_bf16 (AMX tiles for bfloat16 products), avx512_vnni,
    avx2, or the architecture (Arm: aarch64). Defaults: this machine's flags and architecture."""
    flags = cpu_flags() if flags is None else flags
    return next((flag for flag in ("amx_bf16", "avx512_vnni", "avx2") if flag in flags),
                machine or platform.machine())
