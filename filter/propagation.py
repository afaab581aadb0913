"""Propagation of two neighbouring keyframes over the frames between them, and their blend.

docs/method.md §4 and docs/decisions.md 9. For a gap between keyframes L and R with frames
1..n in between:
- the forward chain synthesizes frames 1, 2, ..., n from L's stylized image, the backward chain frames
  n, ..., 1 from R's; the two chains run in parallel threads (the native synthesizer releases the GIL);
- each step uses the paper's four guides (docs/method.md §4), source = keyframe side, target = frame t:
  colour (the input frames, weight 6), edge (3x3 Laplacian of the inputs, 0.5), temporal (the chain's
  previous output warped into frame t, 0.5) and positional (a coordinate ramp carried frame by frame along
  the flow, 2); occluded pixels of the warped guides are Telea-inpainted with radius 30;
- the chain's previous nearest-neighbour field, moved along the flow, seeds the next step (`init_nnf`):
  most patches only move with the video, so PatchMatch starts close to the answer;
- the synthesis backend is resolved once per gap (`make_synthesizer`) and both chains hold that
  synthesizer: a step only builds guides and calls it;
- the two results are blended per frame (error-based selection whose mask is carried forward in time
  along the flow, the histogram-preserving blend and the Poisson fusion: docs/method.md §4.2) by
  `gap_blend.blend_gap`, which also pulls the frames next to each keyframe towards it.
All images here are RGB uint8 in one propagation space (processing size by default).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Literal

import cv2
import numpy as np

from ..engines.flow import FlowPair, warp
from ..native.params import Guide, SynthParams, default_threads
from ..native.synthesize import Synthesizer, make_synthesizer
from .gap_blend import blend_gap, blend_weights, pair_cost, pull_towards_keyframes

# 3x3 Laplacian, 4 at the centre and -1 at the 4-neighbours (docs/method.md §4), saturated to uint8 by filter2D.
LAPLACIAN = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], dtype=np.float32)


@dataclass(frozen=True)
class GuideWeights:
    """Guide weights of the official implementation (docs/method.md §4): colour, edge, temporal, positional."""

    colour: float = 6.0
    edge: float = 0.5
    temporal: float = 0.5
    positional: float = 2.0


@dataclass(frozen=True)
class PropagationOptions:
    """How a gap is propagated. `synth`: the synthesis parameters, the official ones by default
    (docs/decisions.md 9); its `threads=None` means the cores shared between the two chains (`chain_threads`)."""

    synth: SynthParams = field(default_factory=SynthParams)
    weights: GuideWeights = field(default_factory=GuideWeights)
    backend: Literal["auto", "cpu", "cuda"] = "auto"
    device: str | None = None  # the GPU of the CUDA backend ("cuda:N"); None: torch's current device
    inpaint_radius: int = 30
    carry_nnf: bool = True
    parallel_chains: bool = True
    # Gradient-domain fusion in the blend (docs/method.md §4.2, the authors' formulation): off by default,
    # since it measured lower fidelity and a higher warp error on every hard-motion sequence (README).
    poisson: bool = False
    # Cost follows motion (docs/synthesis.md §11): a pixel whose four target guides differ by at most this
    # many levels from the previous frame's guides moved along the flow, over its whole patch and outside
    # the occlusions, keeps its carried match without a search. None searches every pixel of every frame.
    # 4 is the measured best (README, Native synthesizer: same fidelity, less work than 2; 8 loses fidelity).
    skip_unchanged: int | None = 4
    # Where in the gap a frame counts as being for the blend's distance weighting (`blend_weights`):
    # "frames" is the authors' formula; "motion" measured better on uneven motion (README).
    blend_weights: Literal["frames", "motion"] = "motion"
    # The blend pulls the `keyframe_pull_reach` frames on each side of a keyframe towards the keyframe
    # carried along the flow, by up to this share (`pull_towards_keyframes`); 0 turns it off. The defaults
    # measured best on the harder test set (README, *Hard motion*; docs/decisions.md 18).
    keyframe_pull: float = 0.7
    keyframe_pull_reach: int = 4

    def __post_init__(self) -> None:
        if self.blend_weights not in ("frames", "motion"):
            raise ValueError(f"--blend-weights must be frames or motion; got {self.blend_weights!r}")
        skip = self.skip_unchanged
        if skip is not None and (isinstance(skip, bool) or not isinstance(skip, int) or not 0 <= skip <= 255):
            raise ValueError(
                f"skip_unchanged must be None or an integer from 0 to 255 (levels); got {skip!r}"
            )
        if not 0.0 <= self.keyframe_pull <= 1.0:  # also refuses nan
            raise ValueError(f"--keyframe-pull expects a share from 0 to 1; got {self.keyframe_pull!r}")
        if not 1 <= self.keyframe_pull_reach <= 100:
            raise ValueError(f"keyframe_pull_reach must be 1..100 frames; got {self.keyframe_pull_reach!r}")


class Timings:
    """Seconds spent per stage, summed across threads (for progress and bench/filter.py)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


def chain_threads(parallel_chains: bool) -> int:
    """Default threads per chain: the cores split between the chains that run at once, the same rule as
    `synthesize()`'s default for one call (`rerender.native.params.default_threads`)."""
    return default_threads(2 if parallel_chains else 1)


def edge_guide(image: np.ndarray) -> np.ndarray:
    return cv2.filter2D(image, -1, LAPLACIAN, borderType=cv2.BORDER_REPLICATE)


def positional_ramp(height: int, width: int) -> np.ndarray:
    """R = row / (H-1) * 255, G = col / (W-1) * 255, B = 0 (docs/method.md §4, positional guide)."""
    ramp = np.zeros((height, width, 3), np.uint8)
    ramp[..., 0] = np.round(np.linspace(0, 255, height, dtype=np.float32))[:, None]
    ramp[..., 1] = np.round(np.linspace(0, 255, width, dtype=np.float32))[None, :]
    return ramp


def identity_nnf(height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs, ys], axis=2).astype(np.int32)


def inpaint_occluded(
    image: np.ndarray, occluded: np.ndarray, radius: int, reduced_radius: int = 8
) -> np.ndarray:
    """Fill occluded guide pixels by Telea inpainting with `radius` (docs/method.md §4: r = 30).

    Telea's cost grows with the hole's area times the radius squared (0.7 s for a 3% hole at 512x960 with
    r = 30), so the image is reduced by radius / `reduced_radius` first: the reduction averages valid
    pixels only, Telea (with the reduced radius) fills the blocks with no valid pixel, and the result is
    enlarged back into the occluded pixels only. Guides need the fill's low frequencies, which this keeps;
    known pixels are never touched.
    """
    if not occluded.any():
        return image
    h, w = occluded.shape
    factor = max(1, -(-radius // reduced_radius))
    if factor == 1 or min(h, w) < 16 * factor:
        return cv2.inpaint(image, occluded.astype(np.uint8), radius, cv2.INPAINT_TELEA)
    size = (-(-w // factor), -(-h // factor))
    valid = (~occluded).astype(np.float32)
    total = cv2.resize(image.astype(np.float32) * valid[..., None], size, interpolation=cv2.INTER_AREA)
    weight = cv2.resize(valid, size, interpolation=cv2.INTER_AREA)
    small = total / np.maximum(weight, 1e-6)[..., None]
    small = np.clip(small + 0.5, 0, 255).astype(np.uint8)
    hole = weight < 1e-3
    if hole.any():
        small = cv2.inpaint(small, hole.astype(np.uint8), max(1, -(-radius // factor)), cv2.INPAINT_TELEA)
    filled = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    out = image.copy()
    out[occluded] = filled[occluded]
    return out


def unchanged_pixels(
    previous: Sequence[np.ndarray],
    current: Sequence[np.ndarray],
    flow: np.ndarray,
    occluded: np.ndarray,
    tolerance: int,
    patch_size: int,
    nearest: bool = True,
) -> np.ndarray:
    """Pixels whose whole patch is unchanged since the previous frame (docs/synthesis.md §11): every guide of
    the current frame within `tolerance` levels of the previous frame's guide moved along `flow` (nearest,
    as the NNF is carried), and no pixel of the patch occluded. bool [H, W]."""
    same = ~occluded
    for before, now in zip(previous, current, strict=True):
        moved = warp(before, flow, nearest=nearest)
        diff = np.abs(moved.astype(np.int16) - now.astype(np.int16))
        same &= (diff.max(axis=2) if diff.ndim == 3 else diff) <= tolerance
    kernel = np.ones((patch_size, patch_size), np.uint8)
    eroded = cv2.erode(same.astype(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE)
    return eroded.astype(bool)


def carry_nnf(nnf: np.ndarray, flow: np.ndarray, style_size: tuple[int, int]) -> np.ndarray:
    """Move a nearest-neighbour field one frame along the flow (nearest sampling, clipped to the style)."""
    moved = warp(nnf.astype(np.float32), flow, nearest=True)
    moved[..., 0] = np.clip(moved[..., 0], 0, style_size[1] - 1)
    moved[..., 1] = np.clip(moved[..., 1], 0, style_size[0] - 1)
    return np.ascontiguousarray(moved.astype(np.int32))


@dataclass(frozen=True)
class KeySide:
    """A keyframe as a chain's starting point: its input and stylized images in propagation space."""

    source: np.ndarray
    stylized: np.ndarray

    @property
    def edge(self) -> np.ndarray:
        return edge_guide(self.source)


class PropagationChain:
    """One direction of one gap: synthesizes frame after frame from a keyframe (docs/method.md §4).

    `synthesizer`: the backend to run, resolved by the caller once for many chains; None resolves
    `options.backend` / `options.device` here, once for this chain."""

    def __init__(
        self,
        key: KeySide,
        options: PropagationOptions,
        timings: Timings,
        synthesizer: Synthesizer | None = None,
    ):
        self.key = key
        self.options = options
        self.timings = timings
        if synthesizer is None:
            synthesizer = make_synthesizer(options.backend, options.device)
        self.synthesizer = synthesizer
        h, w = key.source.shape[:2]
        self._key_edge = key.edge
        self._ramp = positional_ramp(h, w)
        self._previous_output = key.stylized
        self._previous_positional = self._ramp
        self._previous_nnf = identity_nnf(h, w)
        # The previous frame's target guides (colour, edge, temporal, positional): the keyframe's own at first.
        self._previous_targets = (key.source, self._key_edge, key.stylized, self._ramp)
        threads = options.synth.threads or chain_threads(options.parallel_chains)
        self._params = replace(options.synth, threads=threads)

    def step(self, target: np.ndarray, target_edge: np.ndarray, flow: np.ndarray, occluded: np.ndarray):
        """`flow` maps the target's pixels into the previous frame of the chain; returns a SynthResult."""
        o = self.options
        w = o.weights
        started = time.perf_counter()
        temporal = inpaint_occluded(
            warp(self._previous_output, flow, nearest=True), occluded, o.inpaint_radius
        )
        positional = inpaint_occluded(
            warp(self._previous_positional, flow, nearest=True), occluded, o.inpaint_radius
        )
        init_nnf = carry_nnf(self._previous_nnf, flow, self.key.stylized.shape[:2]) if o.carry_nnf else None
        targets = (target, target_edge, temporal, positional)
        keep = None
        if init_nnf is not None and o.skip_unchanged is not None:
            keep = unchanged_pixels(
                self._previous_targets, targets, flow, occluded, o.skip_unchanged, self._params.patch_size
            )
        self._previous_targets = targets
        guides = [
            Guide(self.key.source, target, w.colour),
            Guide(self._key_edge, target_edge, w.edge),
            Guide(self.key.stylized, temporal, w.temporal),
            Guide(self._ramp, positional, w.positional),
        ]
        self.timings.add("guides", time.perf_counter() - started)
        started = time.perf_counter()
        result = self.synthesizer(self.key.stylized, guides, self._params, init_nnf, keep)
        self.timings.add("synthesis", time.perf_counter() - started)
        self._previous_output = result.image
        self._previous_positional = positional
        self._previous_nnf = result.nnf
        return result


def propagate_gap(
    left: KeySide | None,
    right: KeySide | None,
    targets: Sequence[np.ndarray],
    pairs: Sequence[FlowPair],
    options: PropagationOptions,
    timings: Timings,
    check_cancel: Callable[[], None] = lambda: None,
    synthesizer: Synthesizer | None = None,
) -> list[np.ndarray]:
    """Stylize the n frames between two keyframes; returns n RGB uint8 images in order.

    `targets` are the n in-between frames; `pairs[t]` relates position t to t + 1 where position 0 is the
    left keyframe and position n + 1 the right one (so len(pairs) == n + 1). A missing side (None) makes
    the gap one-sided: frames before the first or after the last of the user's keyframe files.
    `synthesizer`: the backend both chains run, made once by a caller that propagates many gaps; None
    resolves `options.backend` / `options.device` once for this gap.
    """
    n = len(targets)
    if n == 0:
        return []
    if len(pairs) != n + 1:
        raise ValueError(f"a gap of {n} frames needs {n + 1} flow pairs; got {len(pairs)}")
    if left is None and right is None:
        raise ValueError("a gap needs at least one keyframe side")
    edges = [edge_guide(t) for t in targets]
    if synthesizer is None:
        synthesizer = make_synthesizer(options.backend, options.device)

    def forward() -> list:
        chain = PropagationChain(left, options, timings, synthesizer)  # type: ignore[arg-type]
        out = []
        for t in range(n):
            check_cancel()
            out.append(chain.step(targets[t], edges[t], pairs[t].later_to_earlier, pairs[t].occluded_later))
        return out

    def backward() -> list:
        chain = PropagationChain(right, options, timings, synthesizer)  # type: ignore[arg-type]
        out: list = [None] * n
        for t in range(n - 1, -1, -1):
            check_cancel()
            pair = pairs[t + 1]
            out[t] = chain.step(targets[t], edges[t], pair.earlier_to_later, pair.occluded_earlier)
        return out

    if right is None:
        return [r.image for r in forward()]
    if left is None:
        return [r.image for r in backward()]
    if options.parallel_chains:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="rerender-chain") as pool:
            forward_future = pool.submit(forward)
            backward_future = pool.submit(backward)
            forward_results = forward_future.result()
            backward_results = backward_future.result()
    else:
        forward_results, backward_results = forward(), backward()
    keys = (left.stylized, right.stylized)  # the pull towards both keyframes (docs/method.md §4.2)
    return blend_gap(forward_results, backward_results, pairs, options, timings, keys=keys)


__all__ = ["blend_gap", "blend_weights", "pair_cost", "pull_towards_keyframes"]  # gap_blend's, re-exported
