"""What this CPU offers that charsdk's speed and int8 arithmetic depend on, read from /proc/cpuinfo.

x86 CPUs without VNNI multiply uint8 by int8 with an instruction (vpmaddubsw) that adds two neighbouring
products in int16 and saturates: an int8 export from before the pair limit (train/graph.py PAIR_LIMIT)
computes wrong products there. VNNI, Arm's dot products and the wasm runtime add in int32."""

from __future__ import annotations

import platform
from pathlib import Path

# u8 x s8 dot products in int32 (VNNI), bfloat16 arithmetic (training), the vector widths, Arm's dot product
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "asimddp", "bf16")
VNNI = {"avx512_vnni", "avx_vnni"}


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """Which of FLAGS this CPU has (from /proc/cpuinfo's text; [] where there is none)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    words = set(cpuinfo.split())
    return [flag for flag in FLAGS if flag in words]


def int16_pair_products(flags: list[str] | None = None, machine: str | None = None) -> bool:
    """Whether onnxruntime's u8 x s8 products here add pairs in int16 (x86 with AVX2 but no VNNI)."""
    flags = cpu_flags() if flags is None else flags
    machine = (machine or platform.machine()).lower()
    return machine in ("x86_64", "amd64") and "avx2" in flags and not VNNI & set(flags)
