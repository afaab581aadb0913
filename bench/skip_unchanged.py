"""Whole-pipeline effect of keeping unchanged pixels' carried matches (`PropagationOptions.skip_unchanged`,
docs/synthesis.md §11) on the hard-motion sequences of bench/hard_motion.py.

For each clip and sequence: the classic renderer at K = 10 (both chains and the blend), once per tolerance,
PSNR against the per-frame stylization and the output's warp error (bench/hard_motion.py `quality`). The
quality numbers are deterministic; the seconds are single runs (noise on a busy machine). The work per
synthesis, counted in patch evaluations, is in bench/propagation.py.

    python bench/skip_unchanged.py [--clips cottonbro,koolshooters] [--sequences speed5,hold-fast]
                                   [--skips none,2,4,8] [--size 256] [--length 31]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hard_motion import SEQUENCES, decode, frames_needed, quality, run_filter  # noqa: E402
from rerender.filter.graph import FilterOptions  # noqa: E402
from rerender.filter.propagation import PropagationOptions  # noqa: E402
from rerender.filter.schedule import ScheduleOptions  # noqa: E402

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--media", type=Path, default=MEDIA)
    p.add_argument("--clips", default="cottonbro,koolshooters")
    p.add_argument("--sequences", default="speed5,hold-fast")
    p.add_argument("--skips", default="none,2,4,8", help="tolerances in levels; none searches every pixel")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--length", type=int, default=31)
    p.add_argument("-K", type=int, default=10)
    args = p.parse_args()
    skips = [None if s == "none" else int(s) for s in args.skips.split(",")]
    clips = [c for c in sorted(args.media.glob("*.mp4")) if any(s in c.name for s in args.clips.split(","))]
    if not clips:
        print(f"bench/skip_unchanged.py: no clip matches {args.clips} in {args.media}", file=sys.stderr)
        return 2
    rows = []
    for clip in clips:
        frames = decode(clip, frames_needed(args.length), args.size)
        short = clip.name.split("-")[1]
        for name in args.sequences.split(","):
            images = SEQUENCES[name](frames, args.length)
            size = min(images[0].shape[:2])
            base = FilterOptions(size=size - size % 64 or 64, schedule=ScheduleOptions(interval=args.K))
            reference, _ = run_filter(images, replace(base, schedule=ScheduleOptions(interval=1)))
            for skip in skips:
                options = replace(base, propagation=PropagationOptions(skip_unchanged=skip))
                started = time.perf_counter()
                outputs, keys = run_filter(images, options)
                seconds = time.perf_counter() - started
                fidelity, warp_error, _ = quality(outputs, reference, images, keys)
                rows.append((short, name, "none" if skip is None else skip, fidelity, warp_error, seconds))
                print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    print("\n| clip | sequence | skip_unchanged | PSNR (dB) | warp error | seconds |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| {} | {} | {} | {:.2f} | {:.2f} | {:.0f} |".format(*row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
