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

This file runs the steps and writes the report; the steps are gpu_check_env.py (1, 2),
gpu_check_synthesis.py (3, 4) and gpu_check_tensorrt.py (5, 6).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpu_check_context import ROOT, Context, log
from gpu_check_env import environment, environment_plan, gpu_tests, gpu_tests_plan
from gpu_check_synthesis import propagation, propagation_plan, synthesis_parity, synthesis_parity_plan
from gpu_check_tensorrt import sd15_reduced_bundle, tensorrt_check, tensorrt_plan, tiny_bundle

# The steps import these lazily: propagation.py (clips, guides and the propagation chain) from bench/, and
# tiny_models.py (through bench/backends.py: random-weight models) from tests/.
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(1, str(ROOT / "tests"))


@dataclass
class Step:
    name: str
    budget_s: int
    would_measure: list[str]
    run: Callable[[Context], dict]
    plan: Callable[[Context], dict] = lambda ctx: {}


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
