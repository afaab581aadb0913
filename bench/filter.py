"""Benchmark of the streaming filter on the shared clips.

For each clip (its first `--frames` frames, re-encoded losslessly to NUT once so every run reads the same
input):
1. end-to-end frames per second of `run_job` (classic renderer, K = 10, file in, file out) and the share
   of wall time per stage: decode, flow, keyframe rendering, propagation (synthesis + guides, two chains
   in parallel threads), blending, resizing, encoding;
2. pipe vs file: the same `rerender run` as a subprocess, once with files and once through stdin/stdout
   (K = 1 so that I/O is what differs, not synthesis), as a ratio of wall times;
3. fidelity and temporal consistency for K in `--ks`: PSNR of the output against the classic stylization
   applied to every frame (what K = 1 outputs; mean squared error over all frames), and the warp error of the output: mean absolute
   difference between output t and output t-1 warped into t with the flow of the *input* (DIS), over
   pixels the forward-backward check keeps;
4. adaptive vs uniform keyframes at (about) equal keyframe count, with the same two measures, on the clip,
   on a still-then-moving version of it, and (`--adaptive-only`) on a *variable-pace* sequence cut from the
   clip: held still, then normal speed, then 3x speed, then still, then normal (`paced`), the kind of
   uneven motion where the paper's uniform sampling is named as a limitation; there with both blend
   weightings (`--blend-weights frames|motion`) and also on the clip's own frames (steady motion).

Timings are single runs on whatever machine runs this; on a shared machine they are noisy: compare the
ratios within one run, not absolute numbers across runs.

    python bench/filter.py --frames 21 --size 128
    python bench/filter.py --adaptive-only --size 128        # part 4 on the variable-pace sequences
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
from rerender.engines.flow import DISFlow, estimate_pair, warp
from rerender.filter.frames import Frame
from rerender.filter.graph import Filter, FilterOptions
from rerender.filter.job import parse_run_options, run_job
from rerender.filter.propagation import PropagationOptions
from rerender.filter.renderers.classic import ClassicRenderer
from rerender.filter.schedule import ScheduleOptions
from rerender.native.params import SynthParams

REPO = Path(__file__).resolve().parent.parent
STAGES = ("decode", "flow", "render", "propagation", "blend", "resize", "encode")


def first_frames_to_nut(clip: Path, frames: int, out: Path) -> None:
    with av.open(str(clip)) as src, av.open(str(out), "w", format="nut") as dst:
        video = src.streams.video[0]
        stream = dst.add_stream("ffv1", rate=video.average_rate or 25)
        stream.width, stream.height, stream.pix_fmt = (
            video.codec_context.width,
            video.codec_context.height,
            "yuv420p",
        )
        for i, frame in enumerate(src.decode(video)):
            if i >= frames:
                break
            frame = frame.reformat(format="yuv420p")
            frame.pts = i
            frame.time_base = 1 / stream.average_rate if stream.average_rate else None
            for packet in stream.encode(frame):
                dst.mux(packet)
        for packet in stream.encode(None):
            dst.mux(packet)


def decode_all(path: Path) -> list[Frame]:
    from rerender.filter.io import open_source

    with open_source(path) as src:
        return list(src.frames())


def stage_shares(timings: dict[str, float], wall: float) -> dict[str, float]:
    """Wall-time shares. Synthesis and guides run in two threads at once, so they are apportioned from the
    propagation's wall time (minus its blending) in the ratio of their per-thread sums."""
    propagation = max(0.0, timings.get("propagation_wall", 0.0) - timings.get("blend", 0.0))
    per_thread = timings.get("synthesis", 0.0) + timings.get("guides", 0.0)
    synthesis = propagation * timings.get("synthesis", 0.0) / per_thread if per_thread else 0.0
    shares = {name: timings.get(name, 0.0) / wall for name in STAGES if name != "propagation"}
    shares["synthesis"] = synthesis / wall
    shares["guides"] = (propagation - synthesis) / wall
    shares["other"] = max(0.0, 1.0 - sum(shares.values()))  # opening, Python glue, events
    return shares


def run_filter(frames: list[Frame], opts: FilterOptions) -> tuple[list[np.ndarray], list[int]]:
    keys: list[int] = []
    filt = Filter(ClassicRenderer(), opts, on_keyframe=lambda i, s, t: keys.append(i))
    out = []
    for frame in frames:
        filt.push(frame)
    filt.push(None)
    while True:
        try:
            out.append(filt.pull().image)
        except EOFError:
            return out, keys


def warp_error(outputs: list[np.ndarray], flows: list) -> float:
    """Mean |out_t - warp(out_{t-1})| over the non-occluded pixels, flows from the input frames."""
    errors = []
    for t in range(1, len(outputs)):
        pair = flows[t - 1]
        warped = warp(outputs[t - 1], pair.later_to_earlier)
        keep = ~pair.occluded_later
        errors.append(np.abs(outputs[t].astype(np.float32) - warped)[keep].mean())
    return float(np.mean(errors))


def quality(outputs, keys, reference, flows) -> tuple[float, float]:
    """PSNR of the mean squared error over *all* frames (keyframes count as exact), so that schedules with
    the same keyframe count are compared on the same frames; and the output's warp error."""
    mse = np.mean([np.mean((o.astype(np.float64) - r) ** 2) for o, r in zip(outputs, reference, strict=True)])
    fidelity = float(10 * np.log10(255**2 / mse)) if mse > 0 else float("inf")
    return fidelity, warp_error(outputs, flows)


# (source frames to step over per output frame, output frames): still, 1x, 3x, still, 1x.
PACE = ((0, 16), (1, 20), (3, 20), (0, 16), (1, 20))


def paced(frames: list[Frame], pace=PACE) -> list[Frame]:
    """A variable-speed sequence from the clip's frames (index 0 onwards), renumbered 0..n-1."""
    images, source = [], 0
    for step, count in pace:
        for _ in range(count):
            images.append(frames[min(source, len(frames) - 1)].image)
            source += step
    return [Frame(i, i, frames[0].time_base, image) for i, image in enumerate(images)]


def paced_length(pace=PACE) -> int:
    return sum(step * count for step, count in pace) + 1


def keyframe_count(n: int, k: int) -> int:
    return len(set(range(0, n, k)) | {n - 1})


def bench_clip(clip: Path, args, workdir: Path) -> None:
    nut = workdir / f"{clip.stem}.nut"
    first_frames_to_nut(clip, max(args.frames, paced_length()) if args.adaptive_only else args.frames, nut)
    frames = decode_all(nut)
    n = len(frames)
    h, w = frames[0].image.shape[:2]
    propagation = PropagationOptions(
        SynthParams(search_vote_iters=args.search_vote_iters, patchmatch_iters=args.patchmatch_iters)
    )
    base = FilterOptions(size=args.size, propagation=propagation)
    common = ["--size", str(args.size), "--search-vote-iters", str(args.search_vote_iters)]
    common += ["--patchmatch-iters", str(args.patchmatch_iters)]
    print(f"\n## {clip.name}: first {n} frames, {w}x{h}, processing short side {args.size}\n")
    if args.adaptive_only:
        return bench_adaptive(frames, base, args)

    # 1. End-to-end, file to file, K = 10, with the stage shares.
    options = parse_run_options(["-i", str(nut), "-o", str(workdir / "out.mkv"), "-K", "10", "-q", *common])
    started = time.perf_counter()
    result = run_job(options)
    wall = time.perf_counter() - started
    shares = stage_shares(result.timings, wall)
    print(
        f"end to end (K=10, file): {n / wall:.3f} frames/s, {wall:.1f} s for {n} frames, {result.keyframes} keyframes"
    )
    print("| stage | " + " | ".join(shares) + " | not synthesis |")
    print("|---" * (len(shares) + 2) + "|")
    rest = 1.0 - shares["synthesis"]
    print(
        "| share of wall time | "
        + " | ".join(f"{100 * v:.1f}%" for v in shares.values())
        + f" | {100 * rest:.1f}% |"
    )

    # 2. Pipe vs file (subprocesses, K = 1: every frame a keyframe, no synthesis, I/O dominates).
    cli = [sys.executable, "-m", "rerender.filter.cli", "run", "-K", "1", "-q", *common]
    started = time.perf_counter()
    subprocess.run([*cli, "-i", str(nut), "-o", str(workdir / "file.mkv")], check=True)
    file_wall = time.perf_counter() - started
    started = time.perf_counter()
    with open(nut, "rb") as stdin:
        piped = subprocess.run(
            [*cli, "-i", "-", "-o", "-", "-f", "nut"], stdin=stdin, capture_output=True, check=True
        )
    pipe_wall = time.perf_counter() - started
    print(
        f"\npipe vs file (K=1, subprocess): file {file_wall:.2f} s, pipe {pipe_wall:.2f} s, "
        f"pipe/file = {pipe_wall / file_wall:.2f} ({len(piped.stdout) / 1e6:.1f} MB piped out)"
    )

    if args.throughput_only:
        return
    # 3. Fidelity and warp error per K; the K = 1 output is the per-frame stylization (the reference).
    dis = DISFlow()
    inputs = [f.image for f in frames]
    flows = [estimate_pair(dis, a, b) for a, b in zip(inputs, inputs[1:], strict=False)]
    reference, _ = run_filter(frames, replace(base, schedule=ScheduleOptions(interval=1)))
    rows = []
    for k in args.ks:
        started = time.perf_counter()
        outputs, keys = (
            (reference, list(range(n)))
            if k == 1
            else run_filter(frames, replace(base, schedule=ScheduleOptions(interval=k)))
        )
        seconds = time.perf_counter() - started
        fidelity, consistency = quality(outputs, keys, reference, flows)
        rows.append((f"uniform K={k}", len(keys), fidelity, consistency, seconds))

    # 4. Adaptive vs uniform at (about) the same keyframe count, on the clip and on a still-then-moving
    # version of it (its first frame held for half the length, then the clip): where adaptive should help.
    held = [Frame(i, i, frames[0].time_base, frames[0].image) for i in range(n // 2)]
    still_then_moving = held + [
        Frame(n // 2 + i, n // 2 + i, f.time_base, f.image) for i, f in enumerate(frames)
    ]
    for label, sequence in (("clip", frames), ("held first frame, then the clip", still_then_moving)):
        rows += compare_adaptive(label, sequence, base, args.adaptive_k)
    print_rows(rows)
    print(f"\ninput warp error (the flow's own residual, a floor): {warp_error(inputs, flows):.2f}")


def bench_adaptive(frames: list[Frame], base: FilterOptions, args) -> None:
    """Adaptive vs uniform at equal keyframe count, each with both blend weightings, on the variable-pace
    sequence and on the clip's own first frames (steady motion: where adaptive should change little)."""
    sequences = {"variable pace": paced(frames), "steady": frames[: len(paced(frames))]}
    rows = []
    for label, sequence in sequences.items():
        for weights in ("frames", "motion"):
            options = replace(base, propagation=replace(base.propagation, blend_weights=weights))
            for k in args.ks:
                if k > 1:
                    name = f"{label}, {len(sequence)} frames, blend by {weights}"
                    rows += compare_adaptive(name, sequence, options, k)
    print_rows(rows)


def print_rows(rows: list[tuple]) -> None:
    print(
        "\n| schedule | keyframes | PSNR vs per-frame stylization, all frames (dB) | warp error of output (0-255) | seconds |"
    )
    print("|---|---|---|---|---|")
    for name, count, fidelity, consistency, seconds in rows:
        print(f"| {name} | {count} | {fidelity:.2f} | {consistency:.2f} | {seconds:.1f} |")


def compare_adaptive(label: str, frames: list[Frame], base: FilterOptions, k: int) -> list[tuple]:
    n = len(frames)
    dis = DISFlow()
    inputs = [f.image for f in frames]
    flows = [estimate_pair(dis, a, b) for a, b in zip(inputs, inputs[1:], strict=False)]
    reference, _ = run_filter(frames, replace(base, schedule=ScheduleOptions(interval=1)))
    started = time.perf_counter()
    outputs, keys = run_filter(frames, replace(base, schedule=ScheduleOptions(interval=k, mode="adaptive")))
    seconds = time.perf_counter() - started
    fidelity, consistency = quality(outputs, keys, reference, flows)
    rows = [(f"{label}: adaptive K={k}, keys {keys}", len(keys), fidelity, consistency, seconds)]
    k_equal = min(range(1, n), key=lambda kk: (abs(keyframe_count(n, kk) - len(keys)), kk))
    started = time.perf_counter()
    outputs, keys = run_filter(frames, replace(base, schedule=ScheduleOptions(interval=k_equal)))
    seconds = time.perf_counter() - started
    fidelity, consistency = quality(outputs, keys, reference, flows)
    rows.append((f"{label}: uniform K={k_equal}, keys {keys}", len(keys), fidelity, consistency, seconds))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--media", type=Path, default=REPO.parent / "shared" / "media")
    p.add_argument("--clips", default="", help="comma-separated substrings of clip names (default: all)")
    p.add_argument("--frames", type=int, default=21)
    p.add_argument("--size", type=int, default=128, help="processing short side (512 is the product default)")
    p.add_argument("--ks", default="1,5,10,20")
    p.add_argument("--adaptive-k", type=int, default=10)
    p.add_argument("--search-vote-iters", type=int, default=12)
    p.add_argument("--patchmatch-iters", type=int, default=6)
    p.add_argument(
        "--throughput-only", action="store_true", help="only parts 1 and 2 (fps, shares, pipe/file)"
    )
    p.add_argument(
        "--adaptive-only", action="store_true", help="only part 4, on variable-pace sequences (uses --ks)"
    )
    args = p.parse_args()
    args.ks = [int(k) for k in args.ks.split(",")]
    if not args.media.is_dir():
        print(f"bench/filter.py: no media folder at {args.media}; pass --media DIR", file=sys.stderr)
        return 2
    clips = sorted(args.media.glob("*.mp4"))
    if args.clips:
        clips = [c for c in clips if any(s in c.name for s in args.clips.split(","))]
    with tempfile.TemporaryDirectory(prefix="bench-filter-") as tmp:
        for clip in clips:
            bench_clip(clip, args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
