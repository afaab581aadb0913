"""Every CUDA source compiles with nvcc for three GPU generations, without register spills (no GPU needed).

Architectures: sm_70 (Volta), sm_80 (Ampere), sm_90 (Hopper). CUDA 13 dropped sm_70 from nvcc; where the
installed nvcc no longer lists it, sm_75 (Turing, the oldest it builds) stands in and the test says so.
Spill limit: 0 bytes of spill stores and loads per kernel (every kernel compiles without any today; a spill
in the per-pixel search would cost more than any change could gain)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from rerender.native.cuda_backend import nvcc_command

NATIVE = Path(__file__).resolve().parents[1] / "native"
SPILL_LIMIT_BYTES = 0
WANTED = ("sm_70", "sm_80", "sm_90")


def listed_architectures(nvcc: str) -> set[str]:
    out = subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True, timeout=60)
    return set(out.stdout.split())


def architectures(nvcc: str) -> list[str]:
    listed = listed_architectures(nvcc)
    chosen = []
    for arch in WANTED:
        if arch in listed:
            chosen.append(arch)
        elif arch == "sm_70" and "sm_75" in listed:
            chosen.append("sm_75")  # nvcc >= 13 builds Turing and newer only
        else:
            pytest.fail(f"nvcc builds none of {arch} (it lists {sorted(listed)})")
    return chosen


def ptxas_report(stderr: str) -> dict[str, dict[str, int]]:
    """Kernel name -> registers, spill stores, spill loads, stack frame (bytes), from `-Xptxas -v`."""
    kernels: dict[str, dict[str, int]] = {}
    current = None
    for line in stderr.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line) or re.search(
            r"Function properties for (\w+)", line
        )
        if m:
            current = kernels.setdefault(m.group(1), {})
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["registers"] = int(m.group(1))
    return kernels


def test_ptxas_report_is_parsed():
    sample = (
        "ptxas info    : Compiling entry function 'vote' for 'sm_90'\n"
        "ptxas info    : Function properties for vote\n"
        "    32 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n"
        "ptxas info    : Used 40 registers, used 0 barriers\n"
    )
    assert ptxas_report(sample) == {
        "vote": {"stack": 32, "spill_stores": 8, "spill_loads": 4, "registers": 40}
    }


@pytest.mark.slow
def test_every_cuda_source_compiles_for_three_architectures_without_spills(nvcc, tmp_path):
    sources = sorted((NATIVE / "cuda").glob("*.cu"))
    assert sources, "native/cuda holds the CUDA backend's kernels"
    for cu in sources:
        for arch in architectures(nvcc):
            out_path = tmp_path / f"{cu.stem}.{arch}.cubin"
            cmd = nvcc_command(nvcc, arch, out_path, extra=("-Xptxas", "-v"))
            cmd[-1] = str(cu)
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            assert run.returncode == 0, f"{cu.name} does not compile for {arch}:\n{run.stderr}"
            report = ptxas_report(run.stderr)
            assert report, f"no ptxas report for {cu.name} ({arch}):\n{run.stderr}"
            for kernel, info in report.items():
                spilled = info.get("spill_stores", 0) + info.get("spill_loads", 0)
                assert spilled <= SPILL_LIMIT_BYTES, (
                    f"{cu.name} kernel {kernel} spills {spilled} bytes on {arch} (limit {SPILL_LIMIT_BYTES}): "
                    f"{info}"
                )


def test_driver_api_declarations_match_cuda_h(tmp_path):
    # The extension loads libcuda.so.1 at run time with its own declarations; compiled against the toolkit's
    # cuda.h they must be the same types, signatures and constants (static_asserts in the source).
    import shutil

    cuda_h = Path("/usr/local/cuda/include/cuda.h")
    compiler = shutil.which("g++") or shutil.which("c++")
    if not cuda_h.is_file() or compiler is None:
        pytest.skip("no CUDA toolkit header (/usr/local/cuda/include/cuda.h) or no C++ compiler here")
    run = subprocess.run(
        [compiler, "-std=c++17", "-fopenmp", "-fsyntax-only", "-DRR_CHECK_AGAINST_CUDA_H",
         f"-I{cuda_h.parent}", f"-I{NATIVE / 'csrc'}", str(NATIVE / "csrc" / "synth_kernels_exec.cpp")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
