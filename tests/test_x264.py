"""Reproducible libx264 output (filter/io/x264.py): the AVX2 cap's rules, and two runs of one job giving
the same bytes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rerender.filter.io.x264 import AVX2_AND_BELOW, avx2_cap, cpu_flags, with_reproducible_asm

UP_TO_AVX2 = {flag for _, flag in AVX2_AND_BELOW}
CAP = "MMX2,SSE,SSE2,SSE3,SSSE3,SSE4.1,SSE4.2,LZCNT,BMI1,BMI2,AVX,FMA3,AVX2"


def test_the_cap_applies_only_with_avx512_and_everything_below():
    assert avx2_cap(UP_TO_AVX2) is None  # no AVX-512: x264 detects the CPU itself
    assert avx2_cap(UP_TO_AVX2 | {"avx512f", "avx512bw"}) == CAP
    assert avx2_cap((UP_TO_AVX2 - {"mmxext"}) | {"avx512f"}) == CAP  # Intel reports MMX2 as part of SSE
    assert avx2_cap((UP_TO_AVX2 - {"bmi2"}) | {"avx512f"}) is None  # never claim a set the CPU lacks


def test_a_users_own_asm_setting_is_kept():
    flags = UP_TO_AVX2 | {"avx512f"}
    assert with_reproducible_asm({"crf": "18"}, flags) == {"crf": "18", "x264-params": f"asm={CAP}"}
    assert with_reproducible_asm({"x264-params": "keyint=50"}, flags) == {
        "x264-params": f"keyint=50:asm={CAP}"
    }
    for mine in ({"x264-params": "keyint=50:asm=AVX512"}, {"x264opts": "no-asm=1"}):
        assert with_reproducible_asm(mine, flags) == mine
    assert with_reproducible_asm({"crf": "18"}, UP_TO_AVX2) == {"crf": "18"}


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse sse2 avx2 avx512f\n\nprocessor\t: 1\n")
    flags = cpu_flags(info)
    assert flags in (frozenset(), frozenset({"fpu", "sse", "sse2", "avx2", "avx512f"}))  # empty off Linux x86
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_two_runs_of_a_propagating_job_write_the_same_bytes(tmp_path):
    """Keyframes every 5 frames with propagation between them (the synthesizer's threads run in the
    process); on this project's AVX-512 machine x264's output differed from run to run before the cap."""
    outputs = []
    for run in range(2):
        out = tmp_path / f"run{run}.mp4"
        argv = [sys.executable, "-m", "rerender.filter.cli", "run", "-q", "-o", str(out)]
        argv += ["-i", "lavfi:testsrc2=size=320x180:rate=25:duration=1", "-K", "5", "--size", "128"]
        argv += ["--search-vote-iters", "2", "--patchmatch-iters", "2"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        outputs.append(Path(out).read_bytes())
    assert outputs[0] == outputs[1]
