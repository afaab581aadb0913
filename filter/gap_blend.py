"""The blend of a gap's two propagations (docs/method.md §4.2): the forward weight of each frame, the
per-frame selection carried along the flow (`rerender.native.blend`), and the pull of the frames next to a
keyframe towards it (docs/decisions.md 18)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np

from ..engines.flow import FlowPair, warp
from .scene_cuts import Motion

if TYPE_CHECKING:
    from .propagation import PropagationOptions, Timings


def blend_weights(pairs: Sequence[FlowPair], mode: Literal["frames", "motion"]) -> list[float]:
    """The forward weight w_a of each of the n frames of a gap (`pairs` has n + 1 entries).

    Distance weighting favours the nearer keyframe: the forward error counts more, and the forward result
    less, the farther the frame is from the left keyframe.

    "frames" is the authors' blend exactly (docs/method.md §4.2): for a gap of K = n + 1 frame steps their
    counter i = 0 … K − 2 walks the in-between frames k_a + 1 + i, and w_a = i / (K − 1). So the frame right
    after the left keyframe (t = 0 here, t the 0-based position among the n frames, t = i) gets w_a = 0 (the
    forward side is forced), the last one before the right keyframe gets (n − 1) / n, never 1: w_a = t / n.
    (Their backward error maps are read in the backward chain's own order, k_b − 1 − i for frame
    k_a + 1 + i; that is an indexing slip of their script, not the formula, and is not reproduced: each
    frame's own errors are compared here.)

    "motion": the share of the gap's propagation cost (schedule.py's per-frame `Motion.cost`: occluded
    fraction plus flow magnitude) spent between the left keyframe and the frame, so a frame that has not
    moved since one keyframe is that keyframe's even when the other is nearer in frames. A floor of 5% of the
    gap's mean cost per frame keeps still stretches ordered; equal costs give the symmetric positions
    (t + 1) / (n + 1).
    """
    n = len(pairs) - 1
    if n < 1:
        return []
    if mode == "frames":
        return [t / n for t in range(n)]
    costs = np.array([pair_cost(pair) for pair in pairs], dtype=np.float64)
    costs += 0.05 * costs.mean() + 1e-9
    cumulative = np.cumsum(costs)
    return [float(c) for c in cumulative[:-1] / cumulative[-1]]


def pair_cost(pair: FlowPair) -> float:
    h, w = pair.occluded_later.shape[:2]
    return Motion(0.0, pair.occluded_fraction, pair.mean_motion, min(h, w)).cost


def blend_gap(
    forward_results: list,
    backward_results: list,
    pairs: Sequence[FlowPair],
    options: PropagationOptions,
    timings: Timings,
    keys: tuple[np.ndarray | None, np.ndarray | None] | None = None,
) -> list[np.ndarray]:
    """Per-frame blend in time order; the selection mask is carried forward along the flow (docs/method.md
    §4.2). `keys`: the stylized left and right keyframes (None where a side is missing); with
    `options.keyframe_pull` the frames next to them are pulled towards them (`pull_towards_keyframes`)."""
    images = _blend_frames(forward_results, backward_results, pairs, options, timings)
    if keys is not None and options.keyframe_pull > 0:
        started = time.perf_counter()
        images = pull_towards_keyframes(
            images, keys, pairs, options.keyframe_pull, options.keyframe_pull_reach
        )
        timings.add("blend", time.perf_counter() - started)
    return images


def pull_towards_keyframes(
    images: Sequence[np.ndarray],
    keys: tuple[np.ndarray | None, np.ndarray | None],
    pairs: Sequence[FlowPair],
    strength: float,
    reach: int,
) -> list[np.ndarray]:
    """Soften the keyframe "pop" without touching the keyframe: the `reach` frames on each side of a
    keyframe are mixed with the keyframe's stylized image carried to them along the flow, with weight
    strength * (reach - d + 1) / reach at d frames from it, only where the carried pixels were never
    occluded on the way (the mask is feathered over a few pixels so no seam shows).

    `images` are a gap's n blended frames; `keys` its stylized left and right keyframes (None: no side);
    `pairs` as in `blend_weights`."""
    out = [np.asarray(image) for image in images]
    n = len(out)
    left, right = keys
    # (keyframe, positions walked away from it, the flow and occlusion of each step into the next position)
    sides = []
    if left is not None:
        sides.append((left, range(n), lambda t: (pairs[t].later_to_earlier, pairs[t].occluded_later)))
    if right is not None:
        sides.append(
            (
                right,
                range(n - 1, -1, -1),
                lambda t: (pairs[t + 1].earlier_to_later, pairs[t + 1].occluded_earlier),
            )
        )
    for key, positions, step in sides:
        carried = key
        lost = np.zeros(key.shape[:2], bool)
        for d, t in enumerate(positions, 1):
            if d > reach:
                break
            flow, occluded = step(t)
            carried = warp(carried, flow)
            lost = warp(lost, flow, nearest=True) | occluded
            trusted = cv2.GaussianBlur((~lost).astype(np.float32), (7, 7), 0)
            weight = (strength * (reach - d + 1) / reach) * trusted[..., None]
            mixed = out[t].astype(np.float32) * (1 - weight) + carried.astype(np.float32) * weight
            out[t] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out


def _blend_frames(
    forward_results: list,
    backward_results: list,
    pairs: Sequence[FlowPair],
    options: PropagationOptions,
    timings: Timings,
) -> list[np.ndarray]:
    from ..native.blend import BlendParams, blend_pair

    n = len(forward_results)
    started = time.perf_counter()
    params = BlendParams(poisson=options.poisson)
    weights = blend_weights(pairs, options.blend_weights)
    images = []
    carried = None
    for t in range(n):
        result = blend_pair(forward_results[t], backward_results[t], weights[t], carried, params)
        images.append(result.image)
        if t + 1 < n:
            carried = warp(result.mask, pairs[t + 1].later_to_earlier, nearest=True)
    timings.add("blend", time.perf_counter() - started)
    return images
