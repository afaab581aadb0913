"""Benchmark of `rerender run --ray` on a local Ray cluster, and a projection to N GPUs.

1. The same input (an FFmpeg test source, classic renderer, K = 10) run locally (one process, gaps on one
   background thread) and on a local Ray cluster with 1 and 2 workers (`ray.init(num_cpus=N)`, one CPU per
   gap task, so N gaps propagate at once). Each Ray configuration runs in a child process of its own (a
   fresh cluster), 1 + `--repeats` times: the first run pays for starting the worker processes; the
   fastest of the others is reported (the local run: the fastest of `--repeats`).
   Reported: wall seconds, the speed-up against the 1-worker run and against the local run, and the
   driver's share: its CPU seconds (decode, flow, schedule, encode, Ray's client) over the wall time.
2. A projection (a model, not a measurement) of a long video on N GPUs from the measured per-frame costs:
   the driver's per-frame cost `d` (everything the driver does, in order), the propagation cost per
   in-between frame `p` (one worker), and a keyframe cost `r` (`--keyframe-seconds`: the classic renderer's
   measured cost by default; pass a diffusion keyframe's seconds on one GPU to project that). Keyframes of
   a scene are one chain on one actor, gaps spread over N workers, the driver is one process; the three
   overlap (streaming), so the time is about max(F/K * r, F * p / N, F * d); with the hierarchical coarse
   chain (docs/scale-out.md; not built) the chain term would be F/(K*M) * r for the coarse chain plus
   ceil(F/(K*M) / N) * (M - 1) * r for the segments, N at a time.

    python bench/ray.py --frames 100 --size 128
    python bench/ray.py --frames 100 --size 128 --keyframe-seconds 6 --project-frames 15000

Timings are single runs; on a shared machine they are noisy (say so when quoting them).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where `import ray` would find this file.
sys.path[:] = [e for e in sys.path if Path(e or ".").resolve() != Path(__file__).resolve().parent]

from rerender.filter.job import parse_run_options, run_job  # noqa: E402

PROJECTED_GPUS = (1, 2, 4, 8, 16, 32, 64, 128)


def job_argv(args: argparse.Namespace, out: Path, *extra: str) -> list[str]:
    duration = args.frames / 25
    return [
        "-i", f"lavfi:testsrc2=size={args.width}x{args.height}:rate=25:duration={duration:g}",
        "-o", str(out), "--codec", "ffv1", "--size", str(args.size), "-K", str(args.k),
        "--no-scene-cuts", "--progress", "none", *extra,
    ]  # fmt: skip


def measure(argv: list[str]) -> dict:
    """One run_job: wall and driver CPU seconds, the job's stage seconds, frames and keyframes."""
    options = parse_run_options(argv)
    workers: list[dict] = []

    def on_event(event) -> None:
        if getattr(event, "KIND", "") == "workers":
            workers[:] = list(event.gaps)

    cpu, wall = time.process_time(), time.perf_counter()
    result = run_job(options, on_event=on_event)
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    return {
        "wall": wall,
        "driver_cpu": cpu,
        "frames": result.frames,
        "keyframes": result.keyframes,
        "timings": result.timings,
        # On Ray: the seconds the workers spent in gap tasks and the frames those gaps held.
        "gap_seconds": sum(w["seconds"] for w in workers),
        "gap_frames": sum(w["frames"] for w in workers),
    }


def child(args: argparse.Namespace) -> None:
    """One Ray configuration in this process: a fresh local cluster of `--child` CPUs, two runs."""
    import ray

    ray.init(num_cpus=args.child, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    extra = ("--ray", "--ray-cpus-per-gap", "1", "--ray-max-gaps", str(2 * args.child))
    out = Path(args.out)
    first = measure(job_argv(args, out, *extra))
    warm = [measure(job_argv(args, out, *extra)) for _ in range(max(1, args.repeats))]
    second = min(warm, key=lambda r: r["wall"])
    ray.shutdown()
    print(json.dumps({"first": first, "second": second}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--height", type=int, default=192)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("-K", "--k", type=int, default=10)
    p.add_argument("--workers", default="1,2", help="local Ray worker counts (CPUs of the local cluster)")
    p.add_argument("--keyframe-seconds", type=float, default=None, help="keyframe cost for the projection")
    p.add_argument("--project-frames", type=int, default=15000, help="frames of the projected video")
    p.add_argument("--coarse", type=int, default=10, help="M of the (not built) coarse chain, projection")
    p.add_argument("--repeats", type=int, default=2, help="warm runs per configuration; the fastest counts")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default="/tmp/rerender-bench-ray.mkv", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        child(args)
        return

    local = min(
        (measure(job_argv(args, Path(args.out))) for _ in range(max(1, args.repeats))),
        key=lambda r: r["wall"],
    )
    print(
        f"input: {args.frames} frames {args.width}x{args.height}, processing short side {args.size}, K={args.k}"
    )
    print(f"local (one process): {local['wall']:.2f} s, driver CPU {local['driver_cpu']:.2f} s")
    runs = {}
    for n in (int(w) for w in args.workers.split(",")):
        done = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--child", str(n)],
            capture_output=True,
            text=True,
            check=True,
        )
        runs[n] = json.loads(done.stdout.strip().splitlines()[-1])
    base = runs[min(runs)]["second"]["wall"]
    print("ray workers | wall s (first run) | speed-up vs 1 worker | vs local | driver CPU share")
    for n, r in runs.items():
        s = r["second"]
        print(
            f"{n:11d} | {s['wall']:6.2f} ({r['first']['wall']:6.2f}) | {base / s['wall']:20.2f} | "
            f"{local['wall'] / s['wall']:8.2f} | {s['driver_cpu'] / s['wall']:.0%}"
        )

    # Projection from the measured costs (the 1-worker Ray run: one gap at a time, nothing overlapping it).
    one = runs[min(runs)]["second"]
    frames, keys = one["frames"], one["keyframes"]
    t = one["timings"]
    p_frame = one["gap_seconds"] / max(1, one["gap_frames"])  # inside the tasks: no queueing counted
    d_frame = one["driver_cpu"] / frames
    r_key = (
        args.keyframe_seconds if args.keyframe_seconds is not None else t.get("render", 0.0) / max(1, keys)
    )
    label = "given" if args.keyframe_seconds is not None else "measured, classic renderer"
    print(
        f"\nPROJECTION (a model, not a measurement): F={args.project_frames} frames, K={args.k}; "
        f"per keyframe r={r_key:.3f} s ({label}), per propagated frame p={p_frame:.3f} s (measured, one "
        f"worker), driver per frame d={d_frame:.4f} s (measured)"
    )
    f, k, m = args.project_frames, args.k, args.coarse
    print(f"GPUs | chain s | gaps s | driver s | projected s | limit | coarse chain (M={m}, not built) s")
    for n in PROJECTED_GPUS:
        chain = f / k * r_key
        gaps = f * (1 - 1 / k) * p_frame / n
        driver = f * d_frame
        total = max(chain, gaps, driver)
        limit = {chain: "keyframe chain", gaps: "gaps", driver: "driver"}[total]
        segments = f / (k * m)  # coarse keyframes; each segment then renders its M - 1 keyframes in order
        coarse = max(segments * r_key + math.ceil(segments / n) * (m - 1) * r_key, gaps, driver)
        print(
            f"{n:4d} | {chain:7.0f} | {gaps:6.0f} | {driver:8.0f} | {total:11.0f} | {limit:14s} | {coarse:.0f}"
        )


if __name__ == "__main__":
    main()
