"""Reproducible libx264 output on CPUs with AVX-512.

With x264's AVX-512 routines, encoding the same frames could give different bitstreams once other
threads (the synthesizer's pool) had run in the process; limited to AVX2 and below, every encode was
byte-identical (README, *Video I/O*, "Reproducible bytes", has the measurement and the command). The cap
is the default where AVX-512 is present; a user's own `asm` setting (in `x264-params` or `x264opts`) is
left as given.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping
from pathlib import Path

# x264's names for the instruction sets up to AVX2, with the /proc/cpuinfo flag that reports each.
AVX2_AND_BELOW = (
    ("MMX2", "mmxext"),
    ("SSE", "sse"),
    ("SSE2", "sse2"),
    ("SSE3", "pni"),
    ("SSSE3", "ssse3"),
    ("SSE4.1", "sse4_1"),
    ("SSE4.2", "sse4_2"),
    ("LZCNT", "abm"),
    ("BMI1", "bmi1"),
    ("BMI2", "bmi2"),
    ("AVX", "avx"),
    ("FMA3", "fma"),
    ("AVX2", "avx2"),
)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first CPU's feature flags on Linux x86-64; empty elsewhere (no cap is applied then)."""
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return frozenset()
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def avx2_cap(flags: Iterable[str]) -> str | None:
    """x264's `asm` value limiting it to what this CPU has up to AVX2, or None when no cap is needed
    (no AVX-512) or possible (a flag x264 would then assume is missing)."""
    flags = frozenset(flags)
    if "avx512f" not in flags:
        return None
    if "mmxext" not in flags and "sse" in flags:
        flags |= {"mmxext"}  # every SSE CPU has MMX2 (Intel reports it only as part of SSE)
    if not all(flag in flags for _, flag in AVX2_AND_BELOW):
        return None
    return ",".join(name for name, _ in AVX2_AND_BELOW)


def with_reproducible_asm(options: Mapping[str, str], flags: Iterable[str]) -> dict[str, str]:
    """`options` plus the AVX2 cap in `x264-params`, unless the user set `asm` themselves."""
    out = dict(options)
    for key in ("x264-params", "x264opts"):
        given = out.get(key, "")
        if any(part.split("=", 1)[0].strip() in ("asm", "no-asm") for part in given.split(":")):
            return out
    cap = avx2_cap(flags)
    if cap is None:
        return out
    params = out.get("x264-params", "")
    out["x264-params"] = f"{params}:asm={cap}" if params else f"asm={cap}"
    return out
