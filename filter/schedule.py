"""Keyframe schedule: uniform every K frames, adaptive to motion, or fixed by the user's files; scene cuts.

docs/decisions.md, decision 2: keyframes are 0, K, 2K, ... and always the last frame (known at
the end of the stream); a scene cut makes its first frame a keyframe and a new anchor, and nothing is
propagated across it. The schedule is streaming: it decides for each frame as it arrives, from the motion
measured between that frame and the one before (`Motion`), and never looks further ahead.

Adaptive keyframes (the paper names uniform keyframe sampling as a limitation): propagation degrades with
the amount of new content (occlusions) and with large motion, so each frame has a cost
`occluded fraction + mean flow / (MOTION_SCALE * short side)`, and keyframes are placed so that the cost
between two keyframes is about K times the mean per-frame cost of the scene so far (`AdaptivePlanner`,
which looks up to 2K frames ahead: the Filter buffers the frames of a gap anyway). On
a stream of constant motion this is one keyframe every K frames, like uniform; still passages get fewer
keyframes (up to `max_factor` K apart) and busy passages more (down to K / `max_factor`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

KeyframeMode = Literal["uniform", "adaptive"]

# A mean displacement of 2% of the short side per frame costs as much as a fully occluded frame.
MOTION_SCALE = 0.02
# The per-frame cost the budget assumes at least (0.1% of the short side of motion per frame): a stream
# that starts still does not make its first moving frames look expensive by comparison.
MIN_MEAN_COST = 0.05


@dataclass(frozen=True)
class Motion:
    """What the schedule knows about frame i relative to frame i - 1."""

    histogram_distance: float  # Bhattacharyya distance of the colour histograms, 0 (same) .. 1
    occluded_fraction: float  # forward-backward occlusion of frame i w.r.t. frame i - 1
    mean_motion: float  # mean flow magnitude in pixels
    short_side: int

    @property
    def cost(self) -> float:
        """Per-frame propagation difficulty used by the adaptive schedule (module doc)."""
        motion = self.mean_motion / (MOTION_SCALE * max(1, self.short_side))
        return self.occluded_fraction + min(1.0, motion)


def colour_histogram(image: np.ndarray) -> np.ndarray:
    """Normalised hue-saturation-value histogram of a small copy (cheap: ~0.1 ms per frame)."""
    h, w = image.shape[:2]
    scale = min(1.0, 128.0 / max(h, w))
    small = cv2.resize(
        image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
    )
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, [16, 4, 4], [0, 180, 0, 256, 0, 256])
    return cv2.normalize(hist, None).flatten()


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(cv2.compareHist(a, b, cv2.HISTCMP_BHATTACHARYYA))


@dataclass(frozen=True)
class SceneCutDetector:
    """A cut is a large colour-histogram jump, or a moderate one where the flow fails (most pixels of the
    new frame have no consistent match in the previous one).

    Calibrated on the shared Pexels clips at a 256 processing size: within a shot the histogram distance
    stayed below 0.14 and the occluded fraction below 0.23; at artificial cuts between the clips they
    were 0.88-0.92 and 0.995-1.0."""

    histogram_threshold: float = 0.55
    histogram_with_flow_threshold: float = 0.2
    flow_failure_fraction: float = 0.6

    def is_cut(self, motion: Motion) -> bool:
        if motion.histogram_distance > self.histogram_threshold:
            return True
        return (
            motion.histogram_distance > self.histogram_with_flow_threshold
            and motion.occluded_fraction > self.flow_failure_fraction
        )


class Decision(enum.Enum):
    PROPAGATE = "propagate"  # an in-between frame
    KEYFRAME = "keyframe"  # a keyframe in the current scene
    ANCHOR = "anchor"  # the first frame of the stream or of a new scene (cross-frame state resets)


@dataclass(frozen=True)
class ScheduleOptions:
    interval: int = 10
    mode: KeyframeMode = "uniform"
    scene_cuts: bool = True
    max_factor: float = 2.0  # adaptive: keyframe spacing stays within [K / max_factor, K * max_factor]
    detector: SceneCutDetector = SceneCutDetector()

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise ValueError(f"the keyframe interval K must be at least 1; got {self.interval}")
        if self.mode not in ("uniform", "adaptive"):
            raise ValueError(f"keyframe mode must be uniform or adaptive; got {self.mode!r}")
        if self.max_factor < 1:
            raise ValueError(f"max_factor must be >= 1; got {self.max_factor}")


class KeyframeSchedule:
    """Decides, frame by frame, which frames are uniform keyframes and which start a scene (anchors).

    In adaptive mode it only finds anchors; the keyframes inside a scene come from `AdaptivePlanner`,
    which looks ahead over the frames the Filter buffers anyway."""

    def __init__(self, options: ScheduleOptions):
        self.options = options
        self._since_key = 0  # frames since the last keyframe
        self._started = False

    @property
    def needs_motion(self) -> bool:
        return self.options.scene_cuts or self.options.mode == "adaptive"

    def decide(self, motion: Motion | None) -> Decision:
        """`motion` relates this frame to the previous one (None for the first frame)."""
        opts = self.options
        if not self._started:
            self._started = True
            return self._key(Decision.ANCHOR)
        if motion is not None and opts.scene_cuts and opts.detector.is_cut(motion):
            return self._key(Decision.ANCHOR)
        self._since_key += 1
        if opts.mode == "uniform" and self._since_key >= opts.interval:
            return self._key(Decision.KEYFRAME)
        return Decision.PROPAGATE

    def _key(self, decision: Decision) -> Decision:
        self._since_key = 0
        return decision


class AdaptivePlanner:
    """Adaptive keyframes with lookahead (module doc).

    `add(cost)` is called for each frame after the last keyframe, in order; once a window of
    `interval * max_factor` frames is buffered, it returns the position (0 = the first frame after the
    last keyframe) of the next keyframe: the first frame where the cost spent since the last keyframe
    reaches K times the mean per-frame cost of the scene so far, lookahead included (at least
    MIN_MEAN_COST), no sooner than
    K / max_factor frames. With constant motion that is every K frames; a still stretch followed by motion
    gets its keyframe inside the motion. `finish()` (at a cut or the end) places the remaining keyframes so
    that the frames left are split into gaps of equal cost, the last frame being a keyframe.
    """

    def __init__(self, interval: int, max_factor: float):
        self.interval = interval
        self.shortest = max(1, round(interval / max_factor))
        self.window = max(interval, round(interval * max_factor))
        self._costs: list[float] = []
        self._total = 0.0  # every cost seen in the scene, for the mean the budget scales with
        self._count = 0

    def add(self, cost: float) -> int | None:
        cost = max(0.0, cost)
        self._costs.append(cost)
        self._total += cost
        self._count += 1
        if len(self._costs) < self.window:
            return None
        budget = self.interval * max(MIN_MEAN_COST, self._total / self._count)
        spent = 0.0
        position = self.window - 1
        for i, c in enumerate(self._costs):
            spent += c
            if i + 1 >= self.shortest and spent >= budget:
                position = i
                break
        self._costs = self._costs[position + 1 :]
        return position

    def finish(self) -> list[int]:
        """Keyframe positions among the frames after the last keyframe; the last one is always included."""
        n = len(self._costs)
        self._costs, costs = [], self._costs
        self._total, self._count = 0.0, 0  # a cut or the end: the next scene has its own mean
        if n == 0:
            return []
        gaps = max(1, round(n / self.interval))
        cumulative = np.cumsum(np.maximum(costs, 1e-6))
        targets = cumulative[-1] * np.arange(1, gaps) / gaps
        inner = {int(np.searchsorted(cumulative, t)) for t in targets}
        return sorted(p for p in inner if p < n - 1) + [n - 1]


class FixedSchedule:
    """Keyframes exactly where the user's keyframe files are (the `frames` renderer); no cut detection."""

    def __init__(self, indices: frozenset[int]):
        if not indices:
            raise ValueError("a fixed schedule needs at least one keyframe index")
        self.indices = indices

    needs_motion = False

    def is_keyframe(self, index: int) -> bool:
        return index in self.indices


def keyframes_after(
    total: int,
    options: ScheduleOptions,
    last_key: int | None,
    fixed: frozenset[int] | None = None,
) -> int:
    """How many keyframes a stream of `total` frames still gets after the keyframe at index `last_key`
    (None: before the first one), for progress reports: uniform K apart and always the last frame, about
    one per K adaptive, the files' indices with a fixed schedule. Scene cuts are not foreseen (each one
    found adds a keyframe or two)."""
    last = total - 1
    if fixed is not None:
        start = -1 if last_key is None else last_key
        return sum(1 for i in fixed if start < i <= last)
    if last_key is None:
        return 1 + keyframes_after(total, options, 0) if total > 0 else 0
    if last_key >= last:
        return 0
    left = last - last_key
    if options.mode == "uniform":
        return left // options.interval + (1 if left % options.interval else 0)
    return max(1, round(left / options.interval))
