"""What cutting a scene's keyframe chain hierarchically changes (docs/scale-out.md), measured.

One sequential chain: every keyframe is rendered with the scene's anchor and the keyframe just before it,
in order, by one renderer (its scene state carried from keyframe to keyframe). The hierarchical chain with
stride M: the anchor, then every M-th keyframe as a coarse chain (each with the anchor and the previous
coarse keyframe), then each segment between two coarse keyframes starting from its coarse keyframe: the
renderer's scene state as it was right after that coarse keyframe, and that keyframe as "previous". The
segments would run in parallel on separate actors; here they run one after the other, which gives the
same images (each segment starts from its own copy of the state).

Reported per keyframe: whether it differs from the sequential chain, the mean absolute difference (0..255)
and the PSNR. The diffusion renderer runs the tiny random-weight SD1.5-shaped model (tests/tiny_models.py)
on a CPU, so the sizes of the differences say how much the chain's path matters to the sampler's
cross-frame constraints, not what a real model's pictures look like; the classic renderer is stateless
and must not differ at all.

    python bench/coarse_chain.py --keyframes 13 --stride 4 --steps 4
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from rerender.filter.job import parse_run_options  # noqa: E402
from rerender.filter.renderer_cache import make_renderer  # noqa: E402
from rerender.filter.renderers.base import KeyframeContext, RenderedKeyframe  # noqa: E402


def frames(count: int, k: int, size: int) -> list[np.ndarray]:
    from media import texture

    return [texture(i * k, size, size) for i in range(count)]


def sequential(renderer, images: list[np.ndarray]) -> list[np.ndarray]:
    out: list[RenderedKeyframe] = []
    for i, image in enumerate(images):
        anchor = None if i == 0 else out[0]
        previous = None if i == 0 else out[i - 1]
        stylized = renderer.render(image, KeyframeContext(i, i == 0, anchor, previous))
        out.append(RenderedKeyframe(i, image, stylized))
    return [r.stylized for r in out]


def hierarchical(renderer, images: list[np.ndarray], stride: int) -> list[np.ndarray]:
    out: dict[int, RenderedKeyframe] = {}
    states: dict[int, object] = {}
    coarse = list(range(0, len(images), stride))
    for n, i in enumerate(coarse):  # the coarse chain: anchor, then every stride-th keyframe
        anchor = None if i == 0 else out[0]
        previous = None if i == 0 else out[coarse[n - 1]]
        stylized = renderer.render(images[i], KeyframeContext(i, i == 0, anchor, previous))
        out[i] = RenderedKeyframe(i, images[i], stylized)
        states[i] = copy.deepcopy(getattr(renderer, "state", None))
    for c in coarse:  # each segment from its coarse keyframe's state (in parallel, on a cluster)
        if hasattr(renderer, "state"):
            renderer.state = copy.deepcopy(states[c])
        for i in range(c + 1, min(c + stride, len(images))):
            stylized = renderer.render(images[i], KeyframeContext(i, False, out[0], out[i - 1]))
            out[i] = RenderedKeyframe(i, images[i], stylized)
    return [out[i].stylized for i in range(len(images))]


def compare(name: str, a: list[np.ndarray], b: list[np.ndarray], stride: int) -> None:
    print(f"\n{name}: keyframe | coarse | differs | mean abs diff | PSNR dB")
    differing = 0
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
        mse = float((diff**2).mean())
        psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
        differing += bool(mse)
        coarse = "yes" if i % stride == 0 else ""
        print(f"{i:8d} | {coarse:6s} | {'yes' if mse else 'no':7s} | {diff.mean():13.3f} | {psnr:.1f}")
    print(f"{name}: {differing} of {len(a)} keyframes differ")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keyframes", type=int, default=13)
    p.add_argument("--stride", type=int, default=4, help="M: every M-th keyframe is in the coarse chain")
    p.add_argument("--k", type=int, default=3, help="frames between keyframes of the synthetic clip")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args()
    images = frames(args.keyframes, args.k, args.size)
    canvas = (args.size, args.size)
    io = ["-i", "in.mkv", "-o", "out.mkv", "--size", str(args.size)]

    classic = parse_run_options([*io, "--renderer", "classic"])
    compare(
        "classic",
        sequential(make_renderer(classic, canvas), images),
        hierarchical(make_renderer(classic, canvas), images, args.stride),
        args.stride,
    )

    import tiny_models

    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_models.write_diffusers_folder(Path(tmp) / "sd", tiny_models.build_components())
        argv = [*io, "--model", str(model), "--prompt", "a cat", "--steps", str(args.steps)]
        diffusion = parse_run_options(argv)
        compare(
            f"diffusion (tiny model, {args.steps} steps)",
            sequential(make_renderer(diffusion, canvas), images),
            hierarchical(make_renderer(diffusion, canvas), images, args.stride),
            args.stride,
        )


if __name__ == "__main__":
    main()
