"""Steps 1 and 2 of bench/gpu_check.py: the environment (versions, the device, the native module built from
this checkout) and every `gpu`-marked test."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from gpu_check_context import ROOT, Context, log


# --- 1. environment ----------------------------------------------------------------------------------------
def native_is_current() -> bool:
    """The compiled module exists and is newer than every native source it is built from."""
    built = sorted((ROOT / "native").glob("_synth*.so"))
    if not built:
        return False
    sources = [*(ROOT / "native" / "csrc").glob("*"), *(ROOT / "native" / "cuda").glob("*.cu")]
    return built[-1].stat().st_mtime >= max(p.stat().st_mtime for p in sources)


def build_native() -> list[str]:
    return [sys.executable, "-m", "pip", "install", "-e", ".", "--no-deps", "--no-build-isolation", "-q"]


def environment(ctx: Context) -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda}
    if not torch.cuda.is_available():
        raise RuntimeError(
            "torch sees no CUDA device (torch.cuda.is_available() is False): install a CUDA torch"
        )
    device = torch.device(ctx.device)
    props = torch.cuda.get_device_properties(device)
    out["device"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                     "memory_gib": round(props.total_memory / 2**30, 1)}  # fmt: skip
    try:
        import tensorrt

        out["tensorrt"] = tensorrt.__version__
    except ImportError as exc:
        out["tensorrt"] = f"not installed ({exc})"
    nvcc = shutil.which("nvcc")
    out["nvcc"] = (
        subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
        if nvcc
        else None
    )
    if not native_is_current():
        log("  building the native module from this checkout: " + " ".join(build_native()))
        run = subprocess.run(build_native(), cwd=ROOT, capture_output=True, text=True, timeout=300)
        if run.returncode != 0:
            raise RuntimeError(f"building the native module failed:\n{run.stderr[-4000:]}")
        out["native_built"] = True
    from rerender.native import available_backends

    out["backends"] = available_backends()
    if out["backends"]["cuda"] is not None:
        raise RuntimeError(f"the CUDA synthesis backend cannot run: {out['backends']['cuda']}")
    return out


def environment_plan(ctx: Context) -> dict:
    return {"native_module_current": native_is_current(), "would_build": " ".join(build_native())}


# --- 2. gpu-marked tests -----------------------------------------------------------------------------------
def pytest_command(junit: Path | None, collect_only: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", str(ROOT / "tests")]
    if collect_only:
        cmd.append("--collect-only")
    if junit is not None:
        cmd += ["--junitxml", str(junit)]
    return cmd


def gpu_tests(ctx: Context) -> dict:
    junit = ctx.scratch / "gpu_tests.xml"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ctx.device.split(":")[1] if ":" in ctx.device else "0"}
    run = subprocess.run(
        pytest_command(junit), cwd=ROOT, capture_output=True, text=True, timeout=240, env=env
    )
    out = {"exit_code": run.returncode, "tail": run.stdout[-3000:]}
    if junit.is_file():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        out.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
        out["failed"] = [
            f"{case.get('classname')}.{case.get('name')}"
            for case in suite.iter("testcase")
            if case.find("failure") is not None or case.find("error") is not None
        ]
    if run.returncode != 0:
        raise RuntimeError(f"gpu tests failed: {out.get('failed') or run.stdout[-2000:]}")
    if out.get("tests", 0) - out.get("skipped", 0) == 0:
        raise RuntimeError(f"no gpu test ran (all skipped or none collected): {run.stdout[-2000:]}")
    return out


def gpu_marked_tests() -> list[str]:
    """Test functions marked `gpu` (decorator or module-level pytestmark), found by reading the sources (a
    dry run does not import every test module)."""
    import ast

    def marks_gpu(node) -> bool:
        return "mark.gpu" in ast.unparse(node)

    found = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        module_gpu = any(
            isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
            and marks_gpu(n.value)
            for n in tree.body
        )  # fmt: skip
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                if module_gpu or any(marks_gpu(d) for d in node.decorator_list):
                    found.append(f"tests/{path.name}::{node.name}")
    return found


def gpu_tests_plan(ctx: Context) -> dict:
    ids = gpu_marked_tests()
    if not ids:
        raise RuntimeError("no gpu-marked tests found under tests/")
    return {"would_run": ids, "command": " ".join(pytest_command(ctx.scratch / "gpu_tests.xml"))}
