"""What the keyframe schedule measures between two frames (`Motion`), and the scene-cut detector.

A frame is compared with the one before it: the colour histograms' distance, the share of its pixels the
flow cannot match (forward-backward occlusion), and the mean flow. The adaptive schedule turns these into a
per-frame cost (`Motion.cost`, schedule.py's module doc); the scene-cut detector into one score against
`--scene-cut-threshold` (docs/decisions.md 17).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# A mean displacement of 2% of the short side per frame costs as much as a fully occluded frame.
MOTION_SCALE = 0.02


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


# The default `--scene-cut-threshold` (README, *Hard motion*: calibrated on bench/hard_motion.py's sequences).
SCENE_CUT_THRESHOLD = 0.5


@dataclass(frozen=True)
class SceneCut:
    """A scene cut the schedule found: frame `index` starts a new scene; the two measurements that made it
    one (`Motion` of the frame against the one before)."""

    index: int
    histogram_distance: float
    occluded_fraction: float

    @property
    def score(self) -> float:
        return cut_score(self.histogram_distance, self.occluded_fraction)


def cut_score(histogram_distance: float, occluded_fraction: float) -> float:
    """How much a frame looks like the first of a new shot, 0 .. 1: the mean of its colour-histogram
    distance to the previous frame and the share of its pixels the flow cannot match there."""
    return 0.5 * (float(histogram_distance) + float(occluded_fraction))


@dataclass(frozen=True)
class SceneCutDetector:
    """A cut is a frame whose `cut_score` exceeds `threshold`.

    A new shot changes the colours and leaves almost no pixel with a consistent match (occluded fraction
    near 1); fast motion, pans and zooms within a shot leave most pixels matched and the colours alike, and
    a shot's lighting change alone keeps the matches. Neither measurement decides alone: the mean needs
    both to be high, or one to be near its maximum. Calibrated at a 256 and 512 processing size on the
    harder test set (README, *Hard motion*)."""

    threshold: float = SCENE_CUT_THRESHOLD

    def score(self, motion: Motion) -> float:
        return cut_score(motion.histogram_distance, motion.occluded_fraction)

    def is_cut(self, motion: Motion) -> bool:
        return self.score(motion) > self.threshold
