"""The prepared device check: everything this project's GPU paths must show on a real GPU, in one command.

    python bench/gpu_check.py [--device cuda:0] [--json gpu_check.json] [--budget-s 450] [--dry-run]

One run (no network; about 8 minutes at most on one H100-class GPU; every step has its own time limit):

  1. environment       torch/CUDA/TensorRT/nvcc versions, the device; builds the native module from this
                       checkout if it is missing (pip install -e . --no-deps --no-build-isolation)
  2. gpu_tests         every `gpu`-marked test (pytest -m gpu), pass/fail counts and the failures
  3. synthesis_parity  CUDA vs CPU synthesis at 512x960 (image and NNF), alone and while a torch matmul loop
                       runs on another stream; matmul throughput alone and beside synthesis
  4. propagation       s/frame at 512x512 with the paper and fast presets, CUDA beside the CPU figure
  5. tensorrt_tiny     the tiny test model exported to TensorRT fp16: parity against torch, keyframe time
                       (ControlNet + UNet steps and a decode) with torch and with TensorRT
  6. tensorrt_sd15     the same for a reduced-size SD1.5 (its structure with a fifth of the channels, random
                       weights; bench/backends.py's reduced model) at 512x512

Every result goes into one JSON file (written after each step, so a cut-off run keeps what it measured). A
failing step is reported at once with its traceback; the run goes on with the next step (one GPU session
should show every problem), prints the first failure again at the end and exits 1. `--dry-run` walks the
same steps on a CPU-only machine: it prepares each step's inputs and prints what it would measure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # propagation.py: clips, guides and the propagation chain
sys.path.insert(1, str(ROOT / "tests"))  # tiny_models.py (through bench/backends.py): random-weight models

PARITY_SIZE = (512, 960)
PROPAGATION_SIZE = 512
KEYFRAME_STEPS = 20


@dataclass
class Step:
    name: str
    budget_s: int
    would_measure: list[str]
    run: Callable[[Context], dict]
    plan: Callable[[Context], dict] = lambda ctx: {}


@dataclass
class Context:
    device: str
    dry_run: bool
    scratch: Path
    results: dict = field(default_factory=dict)


def log(message: str) -> None:
    print(message, flush=True)


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


# --- 3. synthesis parity -----------------------------------------------------------------------------------
def parity_frames(size: tuple[int, int] = PARITY_SIZE):
    """Keyframe, its stylisation and the next frame at 512x960 with the paper's four guides."""
    import cv2
    from propagation import GUIDE_WEIGHTS, FlowStep, edge, generated_clip, positional, stylize
    from rerender.native import Guide

    h, w = size
    frames = [cv2.resize(f, (w, h)) for f in generated_clip(2, max(h, w), seed=7)]
    key, cur = frames
    style = stylize(key)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    step = FlowStep(dis, key, cur)
    pos = positional(h, w)
    guides = [
        Guide(key, cur, GUIDE_WEIGHTS["colour"]),
        Guide(edge(key), edge(cur), GUIDE_WEIGHTS["edge"]),
        Guide(style, step.warp(style), GUIDE_WEIGHTS["temporal"]),
        Guide(pos, step.warp(pos), GUIDE_WEIGHTS["positional"]),
    ]
    return style, guides, stylize(cur)


def matmul_loop(device: str, stop: threading.Event, counts: list[int]) -> None:
    """Busy work for the GPU on its own torch stream (a stand-in for the UNet), counting finished matmuls."""
    import torch

    stream = torch.cuda.Stream(device)
    with torch.cuda.stream(stream):
        a = torch.randn(4096, 4096, device=device, dtype=torch.float16)
        while not stop.is_set():
            for _ in range(8):
                a = (a @ a).clamp_(-1, 1)
            stream.synchronize()
            counts[0] += 8


def matmul_rate(device: str, seconds: float) -> float:
    stop, counts = threading.Event(), [0]
    thread = threading.Thread(target=matmul_loop, args=(device, stop, counts))
    thread.start()
    time.sleep(seconds)
    stop.set()
    thread.join()
    return counts[0] / seconds


def synthesis_parity(ctx: Context) -> dict:
    from propagation import psnr
    from rerender.native import PRESETS, synthesize

    style, guides, truth = parity_frames()
    params = PRESETS["paper"]
    t0 = time.perf_counter()
    cpu = synthesize(style, guides, params, backend="cpu")
    cpu_s = time.perf_counter() - t0
    synthesize(style, guides, params, backend="cuda", device=ctx.device)  # compile + warm the pool
    t0 = time.perf_counter()
    gpu = synthesize(style, guides, params, backend="cuda", device=ctx.device)
    gpu_s = time.perf_counter() - t0
    rate_alone = matmul_rate(ctx.device, 3.0)
    stop, counts = threading.Event(), [0]
    thread = threading.Thread(target=matmul_loop, args=(ctx.device, stop, counts))
    thread.start()
    time.sleep(0.5)
    c0, t0 = counts[0], time.perf_counter()
    loaded = synthesize(style, guides, params, backend="cuda", device=ctx.device)
    loaded_s = time.perf_counter() - t0
    c1 = counts[0]
    stop.set()
    thread.join()
    out = {
        "size": list(PARITY_SIZE),
        "cpu_seconds": cpu_s,
        "cuda_seconds": gpu_s,
        "nnf_equal_fraction": float((gpu.nnf == cpu.nnf).all(-1).mean()),
        "image_mean_abs_diff": float(np.abs(gpu.image.astype(int) - cpu.image.astype(int)).mean()),
        "error_mean_ratio": float(gpu.error.mean() / max(cpu.error.mean(), 1e-9)),
        "psnr_cpu_vs_truth": psnr(cpu.image, truth),
        "psnr_cuda_vs_truth": psnr(gpu.image, truth),
        "beside_matmul": {
            "cuda_seconds": loaded_s,
            "identical_to_alone": bool((loaded.nnf == gpu.nnf).all() and (loaded.image == gpu.image).all()),
            "matmuls_per_s_alone": rate_alone,
            "matmuls_per_s_beside_synthesis": (c1 - c0) / max(loaded_s, 1e-9),
        },
    }
    # Same kernels and schedule; only nvcc's float contraction may move a patch error's last bits, which can
    # flip near-ties: the result must be as good, not bit-equal.
    problems = []
    if abs(out["psnr_cuda_vs_truth"] - out["psnr_cpu_vs_truth"]) > 0.3:
        problems.append("CUDA and CPU fidelity differ by more than 0.3 dB")
    if not 0.95 < out["error_mean_ratio"] < 1.05:
        problems.append("CUDA's mean patch error is not within 5% of the CPU's")
    if not out["beside_matmul"]["identical_to_alone"]:
        problems.append("CUDA synthesis beside another stream's work differs from synthesis alone")
    if problems:
        raise RuntimeError("; ".join(problems) + f": {out}")
    return out


def synthesis_parity_plan(ctx: Context) -> dict:
    # The same preparation at a quarter of the size (the full size only costs time on a CPU-only machine).
    style, guides, _ = parity_frames((PARITY_SIZE[0] // 4, PARITY_SIZE[1] // 4))
    return {
        "size": list(PARITY_SIZE),
        "prepared_at_quarter_size": [list(style.shape), [list(g.target.shape) for g in guides]],
        "preset": "paper",
    }


# --- 4. propagation timing ---------------------------------------------------------------------------------
def propagation_inputs(frames: int):
    import cv2
    from propagation import FlowStep, generated_clip, stylize

    clip = generated_clip(frames + 1, PROPAGATION_SIZE, seed=3)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    steps = [FlowStep(dis, clip[i - 1], clip[i]) for i in range(1, len(clip))]
    return clip, stylize(clip[0]), steps


def propagation(ctx: Context) -> dict:
    from propagation import CONFIGS, propagate

    out = {"size": PROPAGATION_SIZE}
    for name in ("paper", "fast"):
        config = CONFIGS[name]
        clip, key_style, steps = propagation_inputs(6)
        _, cuda_s, _ = propagate(clip, key_style, steps, config, None, backend="cuda")
        _, cpu_s, _ = propagate(clip[:3], key_style, steps[:2], config, None, backend="cpu")
        out[name] = {
            "cuda_s_per_frame": float(np.mean(cuda_s[1:])),  # the first frame compiles and fills the pool
            "cpu_s_per_frame": float(np.mean(cpu_s)),
            "cuda_frames": len(cuda_s) - 1,
            "cpu_frames": len(cpu_s),
        }
        log(
            f"  {name}: CUDA {out[name]['cuda_s_per_frame']:.3f} s/frame, CPU {out[name]['cpu_s_per_frame']:.2f}"
        )
    return out


def propagation_plan(ctx: Context) -> dict:
    clip, _, steps = propagation_inputs(2)
    return {"frames": len(clip), "presets": ["paper", "fast"], "flow_steps": len(steps)}


# --- 5./6. TensorRT ----------------------------------------------------------------------------------------
def tiny_bundle():
    """The random-weight tiny test model (tests/tiny_models.py), as bench/backends.py builds it."""
    from backends import _bundle, _tiny_configs

    return _bundle(*_tiny_configs())


def sd15_reduced_bundle():
    """SD1.5's structure with a fifth of its channels, random weights (bench/backends.py's reduced model)."""
    from backends import _bundle, _reduced_configs

    return _bundle(*_reduced_configs())


def keyframe_seconds(networks, steps: int, inputs) -> float:
    """One keyframe's network work: `steps` ControlNet + UNet evaluations at batch 2 (CFG), then a decode."""
    import torch

    sample, timestep, embeddings, hint, refs, scale = inputs
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        control = networks.controlnets[0][0](sample, timestep, embeddings, hint, scale)
        networks.unet(sample, timestep, embeddings, control, refs)
    networks.vae_decoder(sample[:1])
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def tensorrt_check(ctx: Context, make_bundle, size: tuple[int, int], name: str) -> dict:
    import torch
    from rerender.engines.runtime import ReferenceStates, cross_frame_mask
    from rerender.engines.specs import SizeRange
    from rerender.engines.tensorrt_backend import load_tensorrt_networks
    from rerender.engines.torch_backend import torch_networks
    from rerender.export.bundle import ExportPlan, build_engines, export_bundle

    device = torch.device(ctx.device)
    root = ctx.scratch / name
    bundle = make_bundle()
    t0 = time.perf_counter()
    manifest, _ = export_bundle(
        bundle, root / "export", ExportPlan(SizeRange(size, size, size), "fp16"), model=f"random-{name}",
        controlnets=("random-controlnet",), progress=lambda _: None,
    )  # fmt: skip
    build_engines(root / "export", manifest, device=device, progress=lambda _: None)
    build_s = time.perf_counter() - t0
    trt, session = load_tensorrt_networks(root / "export", (0.7,), device)
    ref = torch_networks(make_bundle(), device, torch.float16)  # the same seed: the same weights
    try:
        g = torch.Generator().manual_seed(0)
        h, w = size[0] // 8, size[1] // 8
        width = bundle.unet.config.cross_attention_dim
        layers = ref.unet.layers
        inputs = (
            torch.randn(2, 4, h, w, generator=g).half().to(device),
            torch.tensor([501, 501], device=device),
            torch.randn(2, 77, width, generator=g).half().to(device),
            torch.rand(2, 3, *size, generator=g).half().to(device),
            ReferenceStates(
                tuple(torch.randn(2, 2 * la.tokens(h, w), la.channels, generator=g).half().to(device)
                      for la in layers),
                cross_frame_mask(layers, "loose").to(device),
            ),
            torch.tensor([0.7], device=device),
        )  # fmt: skip

        def once(networks):
            sample, timestep, embeddings, hint, refs, scale = inputs
            control = networks.controlnets[0][0](sample, timestep, embeddings, hint, scale)
            noise, _ = networks.unet(sample, timestep, embeddings, control, refs)
            return noise.float().clone()

        want, got = once(ref), once(trt)
        torch.cuda.synchronize()
        scale = float(want.abs().max().clamp_min(1e-6))
        out = {
            "size": list(size),
            "export_and_build_seconds": build_s,
            "unet_max_abs_diff": float((got - want).abs().max()),
            "unet_max_rel_diff": float((got - want).abs().max()) / scale,
        }
        keyframe_seconds(ref, 2, inputs)  # warm-up
        keyframe_seconds(trt, 2, inputs)
        out["keyframe_seconds_torch_fp16"] = keyframe_seconds(ref, KEYFRAME_STEPS, inputs)
        out["keyframe_seconds_tensorrt_fp16"] = keyframe_seconds(trt, KEYFRAME_STEPS, inputs)
    finally:
        session.unload()
    # fp16 engines against fp16 torch: kernels differ in accumulation order, not in the function computed.
    if out["unet_max_rel_diff"] > 0.02:
        raise RuntimeError(f"TensorRT and torch disagree beyond 2% of the output range: {out}")
    return out


def tensorrt_plan(ctx: Context, make_bundle, size: tuple[int, int], name: str) -> dict:
    import importlib.util

    bundle = make_bundle()  # built here too: the dry run proves the model can be made
    return {
        "size": list(size),
        "unet_parameters": sum(p.numel() for p in bundle.unet.parameters()),
        "controlnet_parameters": sum(p.numel() for m, _ in bundle.controlnets for p in m.parameters()),
        "tensorrt_installed": importlib.util.find_spec("tensorrt") is not None,
        "would": f"export fp16 ONNX, build engines, compare one ControlNet+UNet step with torch fp16, time "
        f"{KEYFRAME_STEPS} ControlNet+UNet steps and a decode with each",
    }


# --- the run -----------------------------------------------------------------------------------------------
STEPS = [
    Step("environment", 360, ["versions of torch, CUDA, TensorRT, nvcc", "the device", "backends"],
         environment, environment_plan),
    Step("gpu_tests", 240, ["pass/fail counts of every gpu-marked test", "the failing test ids"],
         gpu_tests, gpu_tests_plan),
    Step("synthesis_parity", 120,
         ["CUDA vs CPU at 512x960: NNF equal fraction, image mean abs diff, error ratio, PSNR vs truth",
          "CUDA beside a torch matmul loop on another stream: identical result, seconds, matmul throughput"],
         synthesis_parity, synthesis_parity_plan),
    Step("propagation", 120, ["s/frame at 512x512, paper and fast presets, CUDA and CPU"],
         propagation, propagation_plan),
    Step("tensorrt_tiny", 90, ["tiny model fp16 engines: UNet parity vs torch, keyframe seconds torch vs TRT"],
         lambda ctx: tensorrt_check(ctx, tiny_bundle, (128, 128), "tensorrt_tiny"),
         lambda ctx: tensorrt_plan(ctx, tiny_bundle, (128, 128), "tensorrt_tiny")),
    Step("tensorrt_sd15", 150,
         ["reduced SD1.5 fp16 engines at 512x512: UNet parity vs torch, keyframe seconds torch vs TRT"],
         lambda ctx: tensorrt_check(ctx, sd15_reduced_bundle, (512, 512), "tensorrt_sd15"),
         lambda ctx: tensorrt_plan(ctx, sd15_reduced_bundle, (512, 512), "tensorrt_sd15")),
]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda:0", help="cuda:N (default cuda:0)")
    ap.add_argument("--json", default="gpu_check.json", help="where the results go (default gpu_check.json)")
    ap.add_argument("--budget-s", type=int, default=450, help="stop starting steps after this many seconds")
    ap.add_argument("--only", default=None, help="comma-separated step names (default: all)")
    ap.add_argument(
        "--dry-run", action="store_true", help="walk every step on CPU; print what it would measure"
    )
    args = ap.parse_args(argv)
    if not re.fullmatch(r"cuda:\d{1,2}", args.device):
        ap.error(f"--device must be cuda:N, got {args.device!r}")
    if not 30 <= args.budget_s <= 3600:
        ap.error("--budget-s must be 30 to 3600")
    names = [s.name for s in STEPS]
    only = names if args.only is None else args.only.split(",")
    unknown = sorted(set(only) - set(names))
    if unknown:
        ap.error(f"unknown steps {unknown}; choose from {names}")
    out_path = Path(args.json)
    started = time.perf_counter()
    report = {
        "dry_run": args.dry_run,
        "device": args.device,
        "steps": {},
        "started": time.strftime("%FT%TZ", time.gmtime()),
    }
    first_failure = None
    with tempfile.TemporaryDirectory(prefix="rerender-gpu-check-") as scratch:
        ctx = Context(args.device, args.dry_run, Path(scratch))
        chosen = [s for s in STEPS if s.name in only]
        for i, step in enumerate(chosen, start=1):
            log(f"[{i}/{len(chosen)}] {step.name} (limit {step.budget_s} s)")
            for item in step.would_measure:
                log(f"  {'would measure' if args.dry_run else 'measures'}: {item}")
            elapsed = time.perf_counter() - started
            entry: dict = {"would_measure": step.would_measure}
            if not args.dry_run and elapsed > args.budget_s:
                entry.update(
                    status="skipped", reason=f"out of time ({elapsed:.0f} s of {args.budget_s} s used)"
                )
                first_failure = first_failure or f"{step.name}: {entry['reason']}"
            else:
                t0 = time.perf_counter()
                try:
                    if args.dry_run:
                        entry.update(status="planned", plan=step.plan(ctx))
                        for key, value in entry["plan"].items():
                            shown = (
                                value
                                if not isinstance(value, list) or len(value) < 6
                                else f"{len(value)} items"
                            )
                            log(f"  {key}: {shown}")
                    else:
                        entry.update(status="ok", result=step.run(ctx))
                except Exception as exc:  # every failure is reported, the next step still runs
                    entry.update(
                        status="failed",
                        error=f"{type(exc).__name__}: {exc}",
                        traceback=traceback.format_exc(),
                    )
                    log(f"  FAILED: {type(exc).__name__}: {exc}")
                    first_failure = first_failure or f"{step.name}: {type(exc).__name__}: {exc}"
                entry["seconds"] = round(time.perf_counter() - t0, 2)
                if not args.dry_run and entry["seconds"] > step.budget_s:
                    entry["over_limit"] = True
            report["steps"][step.name] = entry
            report["seconds"] = round(time.perf_counter() - started, 2)
            out_path.write_text(json.dumps(report, indent=1, default=str))
    log(f"wrote {out_path} ({report['seconds']} s)")
    if first_failure:
        log(f"FIRST FAILURE: {first_failure}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
