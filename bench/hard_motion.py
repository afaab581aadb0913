"""A harder public test set for propagation, built from the shared clips, and what it measures.

The shared clips move slowly (a head turn, a talking man, a close-up). Propagation fails on fast motion, so
this bench derives, from each clip, sequences with far more motion, all as code (nothing is stored):

- `speed3`, `speed5`: every 3rd / 5th frame (the clip played 3x / 5x faster);
- `pan`: a window of half the frame's width sweeping across it while the clip plays (a fast camera pan);
- `zoom`: a window shrinking from the whole frame to 60% of it (a fast zoom-in), resized to one size;
- `turn`: a centred square rotating by 3 degrees per frame (a fast-turning crop);
- `hold-fast`: the first frame held for 12 frames, then the clip at 5x.

Each sequence has `--length` frames (31: keyframes 0, 10, 20, 30 at K = 10) at short side `--size`.

Part A (`--part occlusion`, fast): the share of pixels the forward-backward check flags as occluded between
consecutive frames and between keyframes K apart, and how many of those flagged pixels in fact warp to within
3 levels (false occlusions), for the authors' rule and the photometric rule (engines/flow.py
`OcclusionRule`), for each DIS setting of `--flows`.

Part B (`--part pipeline`): the whole pipeline (classic renderer, both chains and the blend) at K = 10 for
each variant of the defaults (`--variants`: another occlusion rule, Poisson fusion off or on, frame weights): PSNR of all frames against the classic stylization applied to every frame, and the warp
error of the output (as bench/filter.py). Quality numbers are deterministic; seconds are single runs.

Part C (`--part cuts`): the scene-cut detector (filter/schedule.py) on every sequence, which must find no cut,
and on two clips joined (every ordered pair of clips, each at 5x, cropped to one size), which must find
exactly the join: each sequence's cuts, its largest cut score and the margin to `--scene-cut-threshold`.

    python bench/hard_motion.py --part occlusion
    python bench/hard_motion.py --part cuts
    python bench/hard_motion.py --part pipeline --clips cottonbro --sequences speed5,pan
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import av
import cv2
import numpy as np
from rerender.engines.flow import DISFlow, FlowEstimator, OcclusionRule, estimate_pair, warp
from rerender.filter.frames import Frame
from rerender.filter.graph import Filter, FilterOptions
from rerender.filter.propagation import PropagationOptions
from rerender.filter.renderers.classic import ClassicRenderer
from rerender.filter.schedule import (
    SCENE_CUT_THRESHOLD,
    Motion,
    ScheduleOptions,
    colour_histogram,
    histogram_distance,
    make_schedule,
)
from rerender.native.params import SynthParams

REPO = Path(__file__).resolve().parent.parent
RULES = {
    "fb (authors)": OcclusionRule(),
    "fb + photometric 3": OcclusionRule(photometric=3.0),
    "fb + photometric 6": OcclusionRule(photometric=6.0),
}


def _propagation(options: FilterOptions, **changes) -> FilterOptions:
    return replace(options, propagation=replace(options.propagation, **changes))


# Part B's variants: each changes the defaults in one way (the first is the defaults themselves).
VARIANTS: dict[str, Callable[[FilterOptions], FilterOptions]] = {
    "defaults": lambda o: o,
    # The authors' settings: Poisson fusion, weights by frame position, no keyframe pull, full search.
    "paper": lambda o: _propagation(
        o, poisson=True, blend_weights="frames", keyframe_pull=0.0, skip_unchanged=None
    ),
    "photometric 3": lambda o: replace(o, occlusion=RULES["fb + photometric 3"]),
    "photometric 6": lambda o: replace(o, occlusion=RULES["fb + photometric 6"]),
    "no poisson": lambda o: _propagation(o, poisson=False),
    "poisson": lambda o: _propagation(o, poisson=True),
    "frame weights": lambda o: _propagation(o, blend_weights="frames"),
    "no keyframe pull": lambda o: _propagation(o, keyframe_pull=0.0),
    "refined flow": lambda o: o,  # the estimator is FLOWS' below
    "refined flow photometric 3": lambda o: replace(o, occlusion=RULES["fb + photometric 3"]),
    "adaptive": lambda o: replace(o, schedule=replace(o.schedule, mode="adaptive")),
    "adaptive photometric 3": lambda o: replace(
        o, schedule=replace(o.schedule, mode="adaptive"), occlusion=RULES["fb + photometric 3"]
    ),
}
# Variants that change the flow estimator (None: the Filter's default, DIS medium).
FLOWS: dict[str, Callable[[], FlowEstimator]] = {
    "refined flow": lambda: DISFlow(refinement_iterations=20, smoothness=40.0),
    "refined flow photometric 3": lambda: DISFlow(refinement_iterations=20, smoothness=40.0),
}


def decode(clip: Path, count: int, short_side: int) -> list[np.ndarray]:
    """The first `count` frames, RGB, scaled so the short side is `short_side` (even sides)."""
    images = []
    with av.open(str(clip)) as container:
        for frame in container.decode(video=0):
            image = frame.to_ndarray(format="rgb24")
            h, w = image.shape[:2]
            scale = short_side / min(h, w)
            size = (2 * round(w * scale / 2), 2 * round(h * scale / 2))
            images.append(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
            if len(images) == count:
                break
    return images


def _crop(image: np.ndarray, x: float, y: float, w: int, h: int) -> np.ndarray:
    x0, y0 = int(round(x)), int(round(y))
    return np.ascontiguousarray(image[y0 : y0 + h, x0 : x0 + w])


def speed(step: int) -> Callable[[list[np.ndarray], int], list[np.ndarray]]:
    return lambda frames, n: [frames[min(i * step, len(frames) - 1)] for i in range(n)]


def pan(frames: list[np.ndarray], n: int) -> list[np.ndarray]:
    h, w = frames[0].shape[:2]
    cw = (w // 2) & ~1
    return [_crop(frames[min(i, len(frames) - 1)], (w - cw) * i / (n - 1), 0, cw, h) for i in range(n)]


def zoom(frames: list[np.ndarray], n: int) -> list[np.ndarray]:
    h, w = frames[0].shape[:2]
    out_w, out_h = int(w * 0.6) & ~1, int(h * 0.6) & ~1
    result = []
    for i in range(n):
        s = 1.0 - 0.4 * i / (n - 1)
        cw, ch = int(w * s), int(h * s)
        window = _crop(frames[min(i, len(frames) - 1)], (w - cw) / 2, (h - ch) / 2, cw, ch)
        result.append(cv2.resize(window, (out_w, out_h), interpolation=cv2.INTER_AREA))
    return result


def turn(frames: list[np.ndarray], n: int, degrees: float = 3.0) -> list[np.ndarray]:
    h, w = frames[0].shape[:2]
    side = int(min(h, w) / np.sqrt(2)) & ~1  # a centred square stays inside the frame at any angle
    result = []
    for i in range(n):
        image = frames[min(i, len(frames) - 1)]
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees * i, 1.0)
        rotated = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR)
        result.append(_crop(rotated, (w - side) / 2, (h - side) / 2, side, side))
    return result


def hold_fast(frames: list[np.ndarray], n: int, hold: int = 12, step: int = 5) -> list[np.ndarray]:
    return [frames[0]] * hold + speed(step)(frames, n - hold)


SEQUENCES: dict[str, Callable[[list[np.ndarray], int], list[np.ndarray]]] = {
    "speed3": speed(3),
    "speed5": speed(5),
    "pan": pan,
    "zoom": zoom,
    "turn": turn,
    "hold-fast": hold_fast,
}


def frames_needed(n: int) -> int:
    return 5 * n  # speed5 and hold-fast reach furthest


# Part A's estimators (`--flows`): DIS medium (the default), the same with a longer and smoother variational
# refinement, and DIS fast.
ESTIMATORS: dict[str, Callable[[], FlowEstimator]] = {
    "medium": DISFlow,
    "refined": lambda: DISFlow(refinement_iterations=20, smoothness=40.0),
    "fast": lambda: DISFlow("fast"),
}


def occlusion_rows(
    images: list[np.ndarray], k: int, flow: str = "medium"
) -> list[tuple[str, str, float, float]]:
    """(pairs, rule, occluded share, share of FB-flagged pixels that warp within 3 levels)."""
    dis = ESTIMATORS[flow]()
    pairs = {
        "consecutive": list(zip(images, images[1:], strict=False)),
        f"{k} apart": [(images[i], images[i + k]) for i in range(0, len(images) - k, k)],
    }
    rows = []
    for label, couples in pairs.items():
        for name, rule in RULES.items():
            occluded, photometric_share = [], []
            for earlier, later in couples:
                pair = estimate_pair(dis, earlier, later, rule)
                occluded.append(pair.occluded_later.mean())
                if rule.photometric is None:
                    warped = warp(earlier, pair.later_to_earlier)
                    close = np.abs(warped.astype(np.int16) - later).mean(axis=2) <= 3
                    flagged = pair.occluded_later
                    photometric_share.append(close[flagged].mean() if flagged.any() else 0.0)
            share = float(np.mean(photometric_share)) if photometric_share else float("nan")
            rows.append((label, name, float(np.mean(occluded)), share))
    return rows


def cut_decisions(images: list[np.ndarray], threshold: float) -> tuple[list[int], list[float]]:
    """The cuts a default uniform schedule finds on the sequence, and every frame's cut score (frame 0: 0)."""
    schedule = make_schedule(ScheduleOptions(scene_cut_threshold=threshold))
    dis, cuts, scores = DISFlow(), [], [0.0]
    schedule.decide(0, None)
    for i in range(1, len(images)):
        pair = estimate_pair(dis, images[i - 1], images[i])
        distance = histogram_distance(colour_histogram(images[i - 1]), colour_histogram(images[i]))
        motion = Motion(distance, pair.occluded_fraction, pair.mean_motion, min(images[i].shape[:2]))
        scores.append(schedule.options.detector.score(motion))
        cuts += [cut.index for cut in schedule.decide(i, motion).cuts]
    return cuts, scores


def joined(first: list[np.ndarray], second: list[np.ndarray], n: int) -> tuple[list[np.ndarray], int]:
    """The first clip at 5x for n // 2 frames, then the second at 5x, both cropped to their common size;
    and the index of the second clip's first frame (the one true cut)."""
    h = min(first[0].shape[0], second[0].shape[0])
    w = min(first[0].shape[1], second[0].shape[1])
    half = n // 2
    images = speed(5)(first, half) + speed(5)(second, n - half)
    return [_crop(image, (image.shape[1] - w) / 2, (image.shape[0] - h) / 2, w, h) for image in images], half


def cut_rows(clip_frames: dict[str, list[np.ndarray]], names: list[str], n: int, threshold: float) -> None:
    print(f"\n| clip | sequence | cuts found (expected) | largest score, frame | margin to {threshold} |")
    print("|---|---|---|---|---|")
    for short, frames in clip_frames.items():
        for name in names:
            cuts, scores = cut_decisions(SEQUENCES[name](frames, n), threshold)
            at = int(np.argmax(scores))
            print(
                f"| {short} | {name} | {cuts or 'none'} (none) | {scores[at]:.3f}, {at} | {threshold - scores[at]:+.3f} |"
            )
    for a, first in clip_frames.items():
        for b, second in clip_frames.items():
            if a == b:
                continue
            images, join = joined(first, second, n)
            cuts, scores = cut_decisions(images, threshold)
            inside = max(s for i, s in enumerate(scores) if i != join)
            print(
                f"| {a} + {b} | joined at 5x | {cuts or 'none'} ([{join}]) | {scores[join]:.3f} at the join, "
                f"{inside:.3f} elsewhere | {scores[join] - threshold:+.3f} |"
            )


def run_filter(
    images: list[np.ndarray], options: FilterOptions, flow: FlowEstimator | None = None
) -> tuple[list[np.ndarray], list[int]]:
    """The output frames and the keyframe indices."""
    keys: list[int] = []
    filt = Filter(ClassicRenderer(), options, flow=flow, on_keyframe=lambda index, *_: keys.append(index))
    out = []
    for i, image in enumerate(images):
        filt.push(Frame(i, i, None, image))
    filt.push(None)
    while True:
        try:
            out.append(filt.pull().image)
        except EOFError:
            return out, sorted(keys)


def quality(
    outputs: list[np.ndarray], reference: list[np.ndarray], images: list[np.ndarray], keys: list[int]
) -> tuple[float, float, float]:
    """PSNR over all frames against the per-frame stylization; output warp error (0-255) on the pixels the
    authors' forward-backward check keeps, with the flow of the *input* (the same for every rule); and the
    keyframe "pop": the mean warp error of the steps into and out of a keyframe over that of the steps
    between two propagated frames."""
    mse = np.mean([np.mean((o.astype(np.float64) - r) ** 2) for o, r in zip(outputs, reference, strict=True)])
    dis = DISFlow()
    errors = []
    for t in range(1, len(outputs)):
        pair = estimate_pair(dis, images[t - 1], images[t])
        warped = warp(outputs[t - 1], pair.later_to_earlier)
        keep = ~pair.occluded_later
        errors.append(np.abs(outputs[t].astype(np.float32) - warped)[keep].mean())
    touching = [e for t, e in enumerate(errors, 1) if t in keys or t - 1 in keys]
    inside = [e for t, e in enumerate(errors, 1) if t not in keys and t - 1 not in keys]
    pop = float(np.mean(touching) / np.mean(inside)) if touching and inside else float("nan")
    return float(10 * np.log10(255**2 / mse)), float(np.mean(errors)), pop


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--media", type=Path, default=REPO.parent / "shared" / "media")
    p.add_argument("--clips", default="", help="comma-separated substrings of clip names (default: all)")
    p.add_argument("--sequences", default=",".join(SEQUENCES), help=f"among {', '.join(SEQUENCES)}")
    p.add_argument("--part", choices=["occlusion", "pipeline", "both", "cuts"], default="both")
    p.add_argument("--scene-cut-threshold", type=float, default=SCENE_CUT_THRESHOLD, help="part C")
    p.add_argument("--size", type=int, default=256, help="short side of the sequences (and processing)")
    p.add_argument("--length", type=int, default=31)
    p.add_argument("-K", type=int, default=10)
    p.add_argument(
        "--variants",
        default="defaults,photometric 3,no poisson",
        help=f"part B, among: {', '.join(VARIANTS)}",
    )
    p.add_argument("--flows", default="medium", help=f"part A, among: {', '.join(ESTIMATORS)}")
    p.add_argument("--search-vote-iters", type=int, default=12)
    p.add_argument("--patchmatch-iters", type=int, default=6)
    args = p.parse_args()
    if not args.media.is_dir():
        print(f"bench/hard_motion.py: no media folder at {args.media}; pass --media DIR", file=sys.stderr)
        return 2
    clips = sorted(args.media.glob("*.mp4"))
    if args.clips:
        clips = [c for c in clips if any(s in c.name for s in args.clips.split(","))]
    names = [s for s in args.sequences.split(",") if s]
    unknown = [s for s in names if s not in SEQUENCES]
    if unknown:
        print(
            f"bench/hard_motion.py: unknown sequences {unknown}; expected {list(SEQUENCES)}", file=sys.stderr
        )
        return 2
    variants = [v for v in args.variants.split(",") if v]
    flows = [f for f in args.flows.split(",") if f]
    if any(f not in ESTIMATORS for f in flows):
        print(f"bench/hard_motion.py: --flows among {list(ESTIMATORS)}; got {flows}", file=sys.stderr)
        return 2
    if any(v not in VARIANTS for v in variants):
        print(f"bench/hard_motion.py: --variants among {list(VARIANTS)}; got {variants}", file=sys.stderr)
        return 2
    if args.part == "cuts":
        clip_frames = {
            clip.name.split("-")[1]: decode(clip, frames_needed(args.length), args.size) for clip in clips
        }
        cut_rows(clip_frames, names, args.length, args.scene_cut_threshold)
        return 0
    synth = SynthParams(search_vote_iters=args.search_vote_iters, patchmatch_iters=args.patchmatch_iters)
    if args.part in ("occlusion", "both"):
        print("\n| clip | sequence | pairs | rule | occluded | FB-flagged pixels within 3 levels |")
        print("|---|---|---|---|---|---|")
    pipeline_rows = []
    for clip in clips:
        frames = decode(clip, frames_needed(args.length), args.size)
        short = clip.name.split("-")[1]
        for name in names:
            images = SEQUENCES[name](frames, args.length)
            if args.part in ("occlusion", "both"):
                for flow in flows:
                    for pairs, rule, occluded, share in occlusion_rows(images, args.K, flow):
                        share_text = "" if np.isnan(share) else f"{100 * share:.0f}%"
                        print(
                            f"| {short} | {name} | {pairs} | DIS {flow}, {rule} | {100 * occluded:.1f}% "
                            f"| {share_text} |"
                        )
            if args.part in ("pipeline", "both"):
                size = min(images[0].shape[:2])
                base = FilterOptions(
                    size=size - size % 64 or 64,
                    propagation=PropagationOptions(synth),
                    schedule=ScheduleOptions(interval=args.K),
                )
                reference, _ = run_filter(images, replace(base, schedule=ScheduleOptions(interval=1)))
                for variant in variants:
                    started = time.perf_counter()
                    flow = FLOWS[variant]() if variant in FLOWS else None
                    outputs, keys = run_filter(images, VARIANTS[variant](base), flow)
                    seconds = time.perf_counter() - started
                    fidelity, consistency, pop = quality(outputs, reference, images, keys)
                    pipeline_rows.append(
                        (short, name, variant, fidelity, consistency, pop, len(keys), seconds)
                    )
                    print(
                        f"  {short} {name} {variant}: {fidelity:.2f} dB, warp {consistency:.2f}, pop {pop:.2f}, "
                        f"keyframes {keys}, {seconds:.0f} s",
                        file=sys.stderr,
                    )
    if pipeline_rows:
        print("\n| clip | sequence | variant | PSNR (dB) | warp error | pop | keyframes | seconds |")
        print("|---|---|---|---|---|---|---|---|")
        for row in pipeline_rows:
            print("| {} | {} | {} | {:.2f} | {:.2f} | {:.2f} | {} | {:.0f} |".format(*row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
