"""bench/gpu_check.py, the prepared device check: its dry run walks every step on a CPU-only machine, and a real
run without a GPU fails loudly with the first failure named (the GPU run itself happens on a GPU machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
STEPS = ["environment", "gpu_tests", "synthesis_parity", "propagation", "tensorrt_tiny", "tensorrt_sd15"]


def run(tmp_path, *args):
    out = tmp_path / "check.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--json", str(out), *args],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    return proc, (json.loads(out.read_text()) if out.is_file() else None)


def test_dry_run_walks_every_step_and_says_what_it_would_measure(tmp_path):
    proc, report = run(tmp_path, "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for i, step in enumerate(STEPS, start=1):
        assert f"[{i}/{len(STEPS)}] {step}" in proc.stdout
    assert proc.stdout.count("would measure:") >= len(STEPS)
    assert report["dry_run"] is True and list(report["steps"]) == STEPS
    assert all(s["status"] == "planned" for s in report["steps"].values()), report
    tests = report["steps"]["gpu_tests"]["plan"]["would_run"]
    assert "tests/test_native.py::test_cuda_matches_cpu_on_a_shift" in tests
    assert "tests/test_backends_tensorrt.py::test_tensorrt_matches_onnxruntime" in tests
    assert report["steps"]["synthesis_parity"]["plan"]["size"] == [512, 960]


def test_without_a_gpu_the_check_fails_loudly(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the check would run for real")
    proc, report = run(tmp_path, "--only", "environment")
    assert proc.returncode == 1
    assert "FIRST FAILURE: environment: RuntimeError: torch sees no CUDA device" in proc.stdout
    assert report["steps"]["environment"]["status"] == "failed"


def test_bad_flags_are_refused(tmp_path):
    proc, _ = run(tmp_path, "--dry-run", "--only", "nonsense")
    assert proc.returncode == 2 and "unknown steps ['nonsense']" in proc.stderr
    proc, _ = run(tmp_path, "--dry-run", "--device", "cuda:../x")
    assert proc.returncode == 2 and "--device must be cuda:N" in proc.stderr
