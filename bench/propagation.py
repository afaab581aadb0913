"""Propagation benchmark of rerender.native: speed and fidelity of guided patch synthesis.

For each clip: keyframe = cv2.stylization(frame k, sigma_s=60, sigma_r=0.45); it is propagated along frames
k+1 .. k+N with the paper's four guides (Rerender-A-Video, Yang et al. 2023: colour 6, Laplacian edge 0.5, temporal
0.5, positional 2; OpenCV DIS flow instead of GMFlow, forward-backward occlusion alpha 0.01 beta 0.5, Telea
inpainting r = 30). Fidelity = PSNR and MAE against cv2.stylization applied to each target frame directly.
Configurations are run side by side on the same frames, so their ratios are comparable even on a busy machine.

    python bench/propagation.py [--frames 10] [--size 512] [--clips v1,v2,v3] [--configs paper,paper+init,fast]
                                [--backend cpu|cuda] [--threads N]

Besides wall and CPU seconds (noise on a busy machine) it reports what does not depend on the machine: the
patch distances computed per frame (`SynthResult.patch_evaluations`) and the fidelity. Configurations run
side by side on the same frames, so on an idle machine their time ratios are comparable in one run.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from rerender.filter.propagation import unchanged_pixels
from rerender.native import PRESETS, Guide, SynthParams, synthesize

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
CLIPS = {
    "v1": "pexels-antoni-shkraba-8048492-540x960-25fps.mp4",
    "v2": "pexels-cottonbro-studio-6649832-960x506-25fps.mp4",
    "v3": "pexels-koolshooters-7322716.mp4",
}
GUIDE_WEIGHTS = {"colour": 6.0, "edge": 0.5, "temporal": 0.5, "positional": 2.0}


@dataclass(frozen=True)
class Config:
    name: str
    params: SynthParams
    carry_nnf: bool  # start each frame from the previous frame's NNF moved along the flow
    skip: int | None = None  # keep the carried match where the guides did not change (synthesis.md §11)
    skip_bilinear: bool = False  # compare with the previous guides warped bilinearly (not nearest)


CONFIGS = {
    "paper": Config("paper 12x6", PRESETS["paper"], False),
    "paper+init": Config("paper 12x6 + init_nnf", PRESETS["paper"], True),
    "fast": Config("fast: 2 levels 4x2 + init_nnf", PRESETS["fast"], True),
    # For the record: EbSynth's own defaults and the schedule that showed PatchMatch iterations past 2 are idle.
    "default6x4": Config(
        "6x4 (EbSynth defaults)", SynthParams(search_vote_iters=6, patchmatch_iters=4), False
    ),
    "12x2": Config("12x2", SynthParams(patchmatch_iters=2), False),
    # Cost follows motion: pixels whose guides changed by at most `skip` levels keep the carried match.
    "paper+skip0": Config("paper 12x6 + init_nnf + skip 0", PRESETS["paper"], True, 0),
    "paper+skip2": Config("paper 12x6 + init_nnf + skip 2", PRESETS["paper"], True, 2),
    "paper+skip4": Config("paper 12x6 + init_nnf + skip 4", PRESETS["paper"], True, 4),
    "paper+skip8": Config("paper 12x6 + init_nnf + skip 8", PRESETS["paper"], True, 8),
    "paper+skip4b": Config("paper 12x6 + init_nnf + skip 4 bilinear", PRESETS["paper"], True, 4, True),
    "paper+skip8b": Config("paper 12x6 + init_nnf + skip 8 bilinear", PRESETS["paper"], True, 8, True),
    "fast+skip2": Config("fast + skip 2", PRESETS["fast"], True, 2),
    "fast+skip4": Config("fast + skip 4", PRESETS["fast"], True, 4),
    "paper+3x3": Config("paper 12x6 + init_nnf + 3x3 pass", SynthParams(extra_pass_3x3=True), True),
    "fast+3x3": Config(
        "fast + 3x3 pass",
        SynthParams(pyramid_levels=2, search_vote_iters=4, patchmatch_iters=2, extra_pass_3x3=True),
        True,
    ),
}


def read_clip(name: str, start: int, count: int, size: int) -> list[np.ndarray]:
    """RGB frames start .. start+count-1, centre-cropped to size x size (generated when the media is absent)."""
    path = MEDIA / CLIPS[name]
    if not path.exists():
        return generated_clip(count, size, seed=sum(map(ord, name)))
    cap = cv2.VideoCapture(str(path))
    cap.set(cv2.CAP_PROP_POS_FRAMES, start)
    frames = []
    while len(frames) < count:
        ok, bgr = cap.read()
        if not ok:
            break
        h, w = bgr.shape[:2]
        y0, x0 = max(0, (h - size) // 2), max(0, (w - size) // 2)
        frames.append(cv2.cvtColor(bgr[y0 : y0 + size, x0 : x0 + size], cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


def generated_clip(count: int, size: int, seed: int) -> list[np.ndarray]:
    """A textured background with a moving, rotating blob: enough structure for flow and matching."""
    rng = np.random.default_rng(seed)
    tex = cv2.GaussianBlur((rng.random((size + 64, size + 64, 3)) * 255).astype(np.uint8), (0, 0), 3)
    tex = cv2.normalize(tex, None, 0, 255, cv2.NORM_MINMAX)
    frames = []
    for i in range(count):
        f = tex[2 * i : 2 * i + size, i : i + size].copy()
        cv2.ellipse(
            f, (size // 3 + 4 * i, size // 2), (size // 6, size // 9), 10 * i, 0, 360, (220, 60, 40), -1
        )
        frames.append(f)
    return frames


def stylize(rgb: np.ndarray) -> np.ndarray:
    bgr = cv2.stylization(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), sigma_s=60, sigma_r=0.45)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def edge(rgb: np.ndarray) -> np.ndarray:
    """docs/method.md §4: 3x3 Laplacian (4 at the centre, -1 at the 4-neighbours) per channel, saturated to uint8."""
    k = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], np.float32)
    return cv2.filter2D(rgb, -1, k)


def positional(h: int, w: int) -> np.ndarray:
    """docs/method.md §4: R = row / (H-1) * 255, G = col / (W-1) * 255, B = 0."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.dstack([ys / (h - 1) * 255, xs / (w - 1) * 255, np.zeros_like(xs)]).round().astype(np.uint8)


class FlowStep:
    """Flow between consecutive frames prev -> cur: backward flow (cur pixel -> prev position) and occlusion."""

    def __init__(self, dis, prev: np.ndarray, cur: np.ndarray):
        g0, g1 = (cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in (prev, cur))
        self.back = dis.calc(g1, g0, None)  # at each pixel of cur: displacement to prev
        fwd = dis.calc(g0, g1, None)
        h, w = g1.shape
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        self.map_x = xs + self.back[..., 0]
        self.map_y = ys + self.back[..., 1]
        fwd_at = cv2.remap(fwd, self.map_x, self.map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        # Forward-backward consistency (alpha 0.01, beta 0.5), as in the reference's occlusion mask.
        diff = ((self.back + fwd_at) ** 2).sum(-1)
        mag = (self.back**2).sum(-1) + (fwd_at**2).sum(-1)
        outside = (self.map_x < 0) | (self.map_x > w - 1) | (self.map_y < 0) | (self.map_y > h - 1)
        self.occluded = ((diff > 0.01 * mag + 0.5) | outside).astype(np.uint8) * 255

    def warp(self, prev_image: np.ndarray, inpaint: bool = True) -> np.ndarray:
        out = cv2.remap(
            prev_image, self.map_x, self.map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE
        )
        return cv2.inpaint(out, self.occluded, 30, cv2.INPAINT_TELEA) if inpaint else out

    def carry_nnf(self, nnf: np.ndarray) -> np.ndarray:
        """The previous frame's match of the pixel each current pixel came from."""
        h, w = nnf.shape[:2]
        xs = np.clip(np.rint(self.map_x), 0, w - 1).astype(np.intp)
        ys = np.clip(np.rint(self.map_y), 0, h - 1).astype(np.intp)
        return np.ascontiguousarray(nnf[ys, xs])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


class Chain:
    """Forward propagation of the keyframe along frames[1:], the reference pipeline's sequential chain, one
    frame per `step()` call (so `main` can interleave the configurations frame by frame)."""

    def __init__(self, frames, key_style, steps, config: Config, threads: int | None, backend: str = "cpu"):
        self.frames, self.key_style, self.steps, self.config, self.backend = (
            frames,
            key_style,
            steps,
            config,
            backend,
        )
        self.params = config.params if threads is None else replace(config.params, threads=threads)
        key = frames[0]
        h, w = key.shape[:2]
        self.pos_src = positional(h, w)
        # The keyframe matches itself: the identity NNF, carried along the flow, starts the first frame.
        ys, xs = np.mgrid[0:h, 0:w]
        self.pos_tgt, self.prev_out = self.pos_src, key_style
        self.nnf = np.dstack([xs, ys]).astype(np.int32)
        self.previous = (key, edge(key), key_style, self.pos_src)  # the previous frame's target guides
        self.outputs, self.seconds, self.cpu_seconds, self.evaluations, self.kept = [], [], [], [], []

    def step(self, j: int) -> None:
        step, key, key_style = self.steps[j - 1], self.frames[0], self.key_style
        self.pos_tgt = step.warp(self.pos_tgt)
        current = (self.frames[j], edge(self.frames[j]), step.warp(self.prev_out), self.pos_tgt)
        guides = [
            Guide(key, current[0], GUIDE_WEIGHTS["colour"]),
            Guide(edge(key), current[1], GUIDE_WEIGHTS["edge"]),
            Guide(key_style, current[2], GUIDE_WEIGHTS["temporal"]),
            Guide(self.pos_src, current[3], GUIDE_WEIGHTS["positional"]),
        ]
        init = step.carry_nnf(self.nnf) if self.config.carry_nnf else None
        keep = None
        if init is not None and self.config.skip is not None:
            occluded = step.occluded > 0
            keep = unchanged_pixels(
                self.previous,
                current,
                step.back,
                occluded,
                self.config.skip,
                self.params.patch_size,
                nearest=not self.config.skip_bilinear,
            )
            self.kept.append(float(keep.mean()))
        self.previous = current
        t0, c0 = time.perf_counter(), time.process_time()
        res = synthesize(key_style, guides, self.params, backend=self.backend, init_nnf=init, keep=keep)
        self.seconds.append(time.perf_counter() - t0)
        self.cpu_seconds.append(time.process_time() - c0)  # all threads: robust to other load on the machine
        self.evaluations.append(res.patch_evaluations or 0)
        self.prev_out, self.nnf = res.image, res.nnf
        self.outputs.append(res.image)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", default="v1,v2,v3")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--frames", type=int, default=10, help="frames propagated after the keyframe")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--configs", default="paper,paper+init,fast")
    ap.add_argument(
        "--threads",
        default=None,
        help="threads per synthesis, or a comma list (e.g. 1,2) to run every config with each, interleaved",
    )
    ap.add_argument("--backend", choices=["cpu", "cuda"], default="cpu")
    args = ap.parse_args()
    configs = [CONFIGS[c] for c in args.configs.split(",")]
    thread_counts = [None] if args.threads is None else [int(t) for t in args.threads.split(",")]
    runs = [(c, t) for c in configs for t in thread_counts]
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    rows = []
    for clip in args.clips.split(","):
        frames = read_clip(clip, args.start, args.frames + 1, args.size)
        source = "media" if (MEDIA / CLIPS[clip]).exists() else "generated"
        key_style = stylize(frames[0])
        truth = [stylize(f) for f in frames[1:]]
        steps = [FlowStep(dis, frames[i - 1], frames[i]) for i in range(1, len(frames))]
        chains = [Chain(frames, key_style, steps, c, t, args.backend) for c, t in runs]
        # Frame by frame, every configuration in turn: load that comes and goes hits them all alike.
        for j in range(1, len(frames)):
            for chain in chains:
                chain.step(j)
        base = None
        for (config, threads), chain in zip(runs, chains, strict=True):
            p = [psnr(o, t) for o, t in zip(chain.outputs, truth, strict=True)]
            mae = [
                float(np.abs(o.astype(int) - t.astype(int)).mean())
                for o, t in zip(chain.outputs, truth, strict=True)
            ]
            base = np.mean(p) if base is None else base
            kept_mean = f"{100 * np.mean(chain.kept):.0f}%" if chain.kept else "-"
            name = config.name if threads is None else f"{config.name}, {threads} thr"
            rows.append(
                (f"{clip} ({source})", name, np.mean(chain.seconds), np.mean(chain.cpu_seconds),
                 np.mean(chain.evaluations) / 1e6, kept_mean, np.mean(p), np.mean(p) - base, mae)
            )  # fmt: skip
            print(f"  done {clip} {name}: {np.mean(chain.seconds):.2f} s/frame", flush=True)
    n = args.frames
    print(
        f"\n{n} frames propagated per clip at {args.size}x{args.size}, backend {args.backend}, "
        f"threads={args.threads or 'default'}"
    )
    print("wall = seconds per frame as measured now; cpu = CPU seconds per frame summed over all threads")
    print(
        "patch evaluations = millions of patch distances per frame; kept = pixels keeping the carried match"
    )
    print("dPSNR = PSNR mean minus the first configuration's on the same clip")
    print(
        f"| clip | config | wall s/frame | cpu s/frame | patch evaluations (M) | kept | PSNR mean (dB) | dPSNR "
        f"| MAE f{n // 2} / f{n} |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for clip, name, wall, cpu, evals, kept, mean_p, delta, mae in rows:
        mid = mae[max(0, n // 2 - 1)]
        print(
            f"| {clip} | {name} | {wall:.2f} | {cpu:.2f} | {evals:.1f} | {kept} | {mean_p:.2f} | {delta:+.2f} "
            f"| {mid:.2f} / {mae[-1]:.2f} |"
        )
    print(
        "reference EbSynth CPU build (README; 2 cores, 512x512): 12x6 36-42 s/frame, 6x4 13.6-16.9 s/frame;"
    )
    print("its MAE f5 / f10: v1 2.89 / 2.86, v2 2.23 / 2.80, v3 3.89 / 5.08")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
