"""The keyframe "pop" and the blend's pull towards the keyframes (filter/propagation.py
`pull_towards_keyframes`), side by side on the harder test set of bench/hard_motion.py.

For each clip and sequence: keyframes every K frames stylized as the classic renderer does (OpenCV
`stylization`), both propagation chains of every gap run once with the default propagation options, then
the gaps blended for each pull setting (strength 0 is today's blend). Prints, per setting, PSNR against the
per-frame stylization, the output warp error and the pop (bench/hard_motion.py `quality`: the warp error of
the steps into and out of a keyframe over that of the steps between two propagated frames). Quality numbers
are deterministic.

`--occluded-only`: instead, the share of each gap's in-between pixels that neither chain can carry from its
keyframe (occluded on the way from the left keyframe and on the way from the right one): what only the
synthesis invents (from the inpainted guides) whichever propagation the blend selects.

    python bench/keyframe_pops.py --clips antoni,koolshooters --sequences speed5,pan
    python bench/keyframe_pops.py --clips antoni,cottonbro,koolshooters --sequences speed5,pan --occluded-only
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from hard_motion import SEQUENCES, decode, frames_needed, quality  # noqa: E402
from propagation import stylize  # noqa: E402
from rerender.engines.flow import DISFlow, estimate_pair, warp  # noqa: E402
from rerender.filter.propagation import (  # noqa: E402
    KeySide,
    PropagationChain,
    PropagationOptions,
    Timings,
    blend_gap,
    edge_guide,
)

REPO = Path(__file__).resolve().parent.parent


def chains(images, keys, options):
    """Per gap: (forward results, backward results, pairs), the chains run once."""
    dis = DISFlow()
    pairs = [estimate_pair(dis, a, b) for a, b in zip(images, images[1:], strict=False)]
    gaps = []
    for left, right in zip(keys, keys[1:], strict=False):
        targets = images[left + 1 : right]
        gap_pairs = pairs[left:right]
        edges = [edge_guide(t) for t in targets]
        timings = Timings()
        forward_chain = PropagationChain(KeySide(images[left], stylize(images[left])), options, timings)
        backward_chain = PropagationChain(KeySide(images[right], stylize(images[right])), options, timings)
        n = len(targets)
        forward = [
            forward_chain.step(
                targets[t], edges[t], gap_pairs[t].later_to_earlier, gap_pairs[t].occluded_later
            )
            for t in range(n)
        ]
        backward: list = [None] * n
        for t in range(n - 1, -1, -1):
            p = gap_pairs[t + 1]
            backward[t] = backward_chain.step(targets[t], edges[t], p.earlier_to_later, p.occluded_earlier)
        gaps.append((forward, backward, gap_pairs))
    return gaps


def lost_in_both(images, keys) -> list[float]:
    """Per gap, the mean share of in-between pixels occluded on the way from both keyframes."""
    dis = DISFlow()
    pairs = [estimate_pair(dis, a, b) for a, b in zip(images, images[1:], strict=False)]
    shares = []
    for left, right in zip(keys, keys[1:], strict=False):
        n = right - left - 1
        from_left, lost = [], np.zeros(images[0].shape[:2], bool)
        for t in range(left + 1, right):
            lost = warp(lost, pairs[t - 1].later_to_earlier, nearest=True) | pairs[t - 1].occluded_later
            from_left.append(lost)
        from_right, lost = [None] * n, np.zeros(images[0].shape[:2], bool)
        for t in range(right - 1, left, -1):
            lost = warp(lost, pairs[t].earlier_to_later, nearest=True) | pairs[t].occluded_earlier
            from_right[t - left - 1] = lost
        shares.append(float(np.mean([(a & b).mean() for a, b in zip(from_left, from_right, strict=True)])))
    return shares


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--media", type=Path, default=REPO.parent / "shared" / "media")
    ap.add_argument("--clips", default="antoni")
    ap.add_argument("--sequences", default="speed5")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("-K", type=int, default=10)
    ap.add_argument("--gaps", type=int, default=2)
    ap.add_argument("--occluded-only", action="store_true")
    ap.add_argument(
        "--save",
        type=Path,
        default=None,
        help="folder for side-by-side PNGs (input | per-frame stylization | each setting) of the frames "
        "next to the middle keyframe and of a mid-gap frame",
    )
    ap.add_argument("--settings", default="0:1,0.5:1,0.5:2,1:2,0.7:3", help="strength:reach, comma-separated")
    args = ap.parse_args()
    if not args.media.is_dir():
        print(f"bench/keyframe_pops.py: no media folder at {args.media}; pass --media DIR", file=sys.stderr)
        return 2
    settings = [(float(a), int(b)) for a, b in (s.split(":") for s in args.settings.split(","))]
    length = args.gaps * args.K + 1
    keys = list(range(0, length, args.K))
    if args.occluded_only:
        print("| clip | sequence | pixels lost in both chains, per gap |")
        print("|---|---|---|")
    else:
        print("| clip | sequence | pull strength, reach | PSNR (dB) | warp error | pop |")
        print("|---|---|---|---|---|---|")
    for clip in sorted(args.media.glob("*.mp4")):
        if not any(c in clip.name for c in args.clips.split(",")):
            continue
        frames = decode(clip, frames_needed(length), args.size)
        short = clip.name.split("-")[1]
        for name in args.sequences.split(","):
            images = SEQUENCES[name](frames, length)
            if args.occluded_only:
                shares = ", ".join(f"{100 * share:.1f}%" for share in lost_in_both(images, keys))
                print(f"| {short} | {name} | {shares} |", flush=True)
                continue
            reference = [stylize(image) for image in images]
            options = PropagationOptions()
            gaps = chains(images, keys, options)
            shown: list[list[np.ndarray]] = []
            for strength, reach in settings:
                pulled = replace(options, keyframe_pull=strength, keyframe_pull_reach=reach)
                outputs = [reference[0]]
                for (forward, backward, pairs), left, right in zip(gaps, keys, keys[1:], strict=False):
                    side = (reference[left], reference[right])
                    outputs += blend_gap(forward, backward, pairs, pulled, Timings(), keys=side)
                    outputs.append(reference[right])
                fidelity, consistency, pop = quality(outputs, reference, images, keys)
                shown.append(outputs)
                print(
                    f"| {short} | {name} | {strength:g}, {reach} | {fidelity:.2f} | {consistency:.2f} | {pop:.2f} |",
                    flush=True,
                )
            if args.save is not None:
                save_side_by_side(args.save, f"{short}-{name}", images, reference, shown, keys)
    return 0


def save_side_by_side(folder: Path, stem: str, images, reference, outputs, keys) -> None:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    middle = keys[len(keys) // 2]
    for t in (middle - 1, middle + 1, (keys[0] + keys[1]) // 2):
        row = np.concatenate([images[t], reference[t], *(o[t] for o in outputs)], axis=1)
        cv2.imwrite(str(folder / f"{stem}-{t:03d}.png"), cv2.cvtColor(row, cv2.COLOR_RGB2BGR))


if __name__ == "__main__":
    raise SystemExit(main())
