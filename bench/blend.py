"""Cost of the gradient-domain (Poisson) fusion against the rest of a propagated frame, side by side.

One gap of a shared clip (`bench/propagation.py`'s clips, centre-cropped to `--size` square; generated when
the media is absent): both keyframes stylized with OpenCV's `stylization`, DIS flows, the two propagation
chains with the paper's parameters (`filter/propagation.py`), then the blend of every in-between frame
without and with Poisson fusion, `--repeat` times each, interleaved. Prints per frame: flow, guides +
synthesis (both chains), blend without and with Poisson, and the extra cost of Poisson as a share of the
frame's total. On a shared machine absolute seconds are noisy; the ratio within one run is the result.

    python bench/blend.py --size 512 --gap 5 --repeat 3
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from propagation import read_clip, stylize  # noqa: E402
from rerender.engines.flow import DISFlow, estimate_pair  # noqa: E402
from rerender.filter.propagation import (  # noqa: E402
    KeySide,
    PropagationChain,
    PropagationOptions,
    Timings,
    blend_gap,
    edge_guide,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", default="v1")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--gap", type=int, default=5, help="keyframe distance: gap - 1 frames are blended")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    frames = read_clip(args.clip, 0, args.gap + 1, args.size)
    if len(frames) != args.gap + 1 or frames[0].shape[:2] != (args.size, args.size):
        raise SystemExit(f"need {args.gap + 1} frames of at least {args.size}x{args.size} from {args.clip}")
    n = args.gap - 1
    started = time.perf_counter()
    estimator = DISFlow()
    pairs = [estimate_pair(estimator, frames[i], frames[i + 1]) for i in range(args.gap)]
    flow_seconds = (time.perf_counter() - started) / n
    options = PropagationOptions(parallel_chains=False)
    timings = Timings()
    left = KeySide(frames[0], stylize(frames[0]))
    right = KeySide(frames[-1], stylize(frames[-1]))
    targets = frames[1:-1]
    edges = [edge_guide(t) for t in targets]
    forward_chain, backward_chain = (
        PropagationChain(left, options, timings),
        PropagationChain(right, options, timings),
    )
    forward = [
        forward_chain.step(targets[t], edges[t], pairs[t].later_to_earlier, pairs[t].occluded_later)
        for t in range(n)
    ]
    backward: list = [None] * n
    for t in range(n - 1, -1, -1):
        pair = pairs[t + 1]
        backward[t] = backward_chain.step(targets[t], edges[t], pair.earlier_to_later, pair.occluded_earlier)
    propagate_seconds = (timings.seconds["guides"] + timings.seconds["synthesis"]) / n
    blend: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeat):
        for poisson in (False, True):
            blend_timings = Timings()
            blend_gap(forward, backward, pairs, replace(options, poisson=poisson), blend_timings)
            blend[poisson].append(blend_timings.seconds["blend"] / n)
    plain, fused = min(blend[False]), min(blend[True])
    total = flow_seconds + propagate_seconds + fused
    h, w = frames[0].shape[:2]
    print(
        f"{args.clip}, {h}x{w}, gap {args.gap} ({n} blended frames), best of {args.repeat}; seconds per frame"
    )
    print("| flow | guides + synthesis (2 chains) | blend | blend + Poisson | Poisson share of the frame |")
    print("|---|---|---|---|---|")
    print(
        f"| {flow_seconds:.3f} | {propagate_seconds:.2f} | {plain:.3f} | {fused:.3f} | "
        f"{(fused - plain) / total:.1%} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
