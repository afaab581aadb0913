"""Keyframe schedules: uniform every K frames, adaptive to motion, or fixed by the user's files; scene cuts.

One protocol, `KeyframeSchedule`: the Filter asks it, frame by frame (`decide`) and at the end (`finish`),
which frames become keyframes (a `Plan`), and callers ask it which keyframes a stream of N frames is
expected to get (`expected_keyframes`, `keyframes_after`). `UniformSchedule`, `AdaptiveSchedule` and
`FixedSchedule` implement it; `make_schedule` builds the first two from `ScheduleOptions`.

docs/decisions.md, decision 2: keyframes are 0, K, 2K, ... and always the last frame (known at
the end of the stream); a scene cut makes its first frame a keyframe and a new anchor, and nothing is
propagated across it. The schedule is streaming: it decides for each frame as it arrives, from the motion
measured between that frame and the one before (`Motion`); only the adaptive one looks ahead, over the
frames the Filter buffers anyway.

Adaptive keyframes (the paper names uniform keyframe sampling as a limitation): propagation degrades with
the amount of new content (occlusions) and with large motion, so each frame has a cost
`occluded fraction + mean flow / (MOTION_SCALE * short side)`, and keyframes are placed so that the cost
between two keyframes is about K times the mean per-frame cost of the scene so far (`AdaptivePlanner`,
which looks up to 2K frames ahead: the Filter buffers the frames of a gap anyway). On
a stream of constant motion this is one keyframe every K frames, like uniform; still passages get fewer
keyframes (up to `max_factor` K apart) and busy passages more (down to K / `max_factor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from .errors import UsageError
from .scene_cuts import (
    MOTION_SCALE,
    SCENE_CUT_THRESHOLD,
    Motion,
    SceneCut,
    SceneCutDetector,
    colour_histogram,
    cut_score,
    histogram_distance,
)

__all__ = [  # the motion and cut names are re-exported: callers ask the schedule module for them
    "MOTION_SCALE",
    "SCENE_CUT_THRESHOLD",
    "Motion",
    "SceneCut",
    "SceneCutDetector",
    "colour_histogram",
    "cut_score",
    "histogram_distance",
]

KeyframeMode = Literal["uniform", "adaptive"]

# The per-frame cost the budget assumes at least (0.1% of the short side of motion per frame): a stream
# that starts still does not make its first moving frames look expensive by comparison.
MIN_MEAN_COST = 0.05


@dataclass(frozen=True)
class ScheduleOptions:
    interval: int = 10
    mode: KeyframeMode = "uniform"
    scene_cuts: bool = True
    max_factor: float = 2.0  # adaptive: keyframe spacing stays within [K / max_factor, K * max_factor]
    # A frame is a cut where its `cut_score` exceeds this (0 < X <= 1; 1 never fires).
    scene_cut_threshold: float = SCENE_CUT_THRESHOLD

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise ValueError(f"the keyframe interval K must be at least 1; got {self.interval}")
        if self.mode not in ("uniform", "adaptive"):
            raise ValueError(f"keyframe mode must be uniform or adaptive; got {self.mode!r}")
        if self.max_factor < 1:
            raise ValueError(f"max_factor must be >= 1; got {self.max_factor}")
        threshold = self.scene_cut_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ValueError(
                f"--scene-cut-threshold must be a number in (0, 1] (1 never fires; --no-scene-cuts turns "
                f"detection off); got {threshold!r}"
            )

    @property
    def detector(self) -> SceneCutDetector:
        return SceneCutDetector(float(self.scene_cut_threshold))


@dataclass(frozen=True)
class Plan:
    """What a schedule decided after a frame (`decide`) or at the end of the stream (`finish`).

    `keyframes`: frame indices, increasing, among the frames since the last keyframe (the frame just
    decided included), that become keyframes now; each closes the gap of frames before it. `anchor`: the
    one of them that starts a new scene (the first frame of the stream or of a scene): cross-frame state
    resets there and nothing propagates into it from an earlier keyframe. `cuts`: the scene cuts the
    schedule found while deciding this plan (each cut's frame is the plan's anchor; the first frame of the
    stream is an anchor but no cut). `warnings`: sentences for the user (`finish` only)."""

    keyframes: tuple[int, ...] = ()
    anchor: int | None = None
    warnings: tuple[str, ...] = ()
    cuts: tuple[SceneCut, ...] = ()

    def __post_init__(self) -> None:
        if any(b <= a for a, b in zip(self.keyframes, self.keyframes[1:], strict=False)):
            raise ValueError(f"plan keyframes must be increasing; got {self.keyframes}")
        if self.anchor is not None and self.anchor not in self.keyframes:
            raise ValueError(f"the anchor {self.anchor} must be one of the plan's keyframes {self.keyframes}")
        if any(cut.index != self.anchor for cut in self.cuts):
            raise ValueError(f"a plan's scene cuts must be its anchor {self.anchor}; got {self.cuts}")


class KeyframeSchedule(Protocol):
    """Where the keyframes of one stream go (one object per stream: it keeps state between frames).

    The Filter calls `decide` once per frame, in order, then `finish` once at the end; it renders the
    keyframes each `Plan` names and propagates the frames between them. Frames after the last keyframe of
    the final plan are propagated forward from it (a schedule may leave frames there, the fixed one does).
    `expected_keyframes` and `keyframes_after` read only the schedule's settings, never its state."""

    # True: `decide` wants the `Motion` of every frame (the flow pair is estimated even when nothing is
    # propagated, and colour histograms are kept for the cut detector). False: `decide` may get None.
    needs_motion: bool
    # How many of the newest frames since the last keyframe a later plan may still make keyframes (None:
    # any of them). When nothing is propagated (keyframes only) the Filter keeps just those frames.
    lookback: int | None

    def decide(self, index: int, motion: Motion | None) -> Plan:
        """Frame `index` arrived; `motion` relates it to the previous frame (None for the first)."""
        ...

    def finish(self) -> Plan:
        """The stream ended: the keyframes that close the frames still open. Raises a `UsageError` when
        the stream cannot be rendered with this schedule."""
        ...

    def expected_keyframes(self, total: int) -> list[int] | None:
        """The keyframes a stream of `total` frames gets, increasing, before scene cuts (each cut found
        adds one or two); None when they are decided on the way (adaptive)."""
        ...

    def keyframes_after(self, total: int, last_key: int | None) -> int:
        """How many keyframes a stream of `total` frames still gets after the keyframe at index `last_key`
        (None: before the first one), for progress reports; an estimate where `expected_keyframes` is
        None. Scene cuts are not foreseen."""
        ...


def _cut(options: ScheduleOptions, index: int, motion: Motion | None) -> tuple[SceneCut, ...]:
    """The scene cut at frame `index` as a one-element tuple, or () when there is none (or detection is off)."""
    if motion is None or not options.scene_cuts or not options.detector.is_cut(motion):
        return ()
    return (SceneCut(index, motion.histogram_distance, motion.occluded_fraction),)


def _uniform_after(total: int, interval: int, last_key: int | None, adaptive: bool) -> int:
    """Keyframes K apart and the last frame (uniform), or about one per K (adaptive), after `last_key`."""
    last = total - 1
    if last_key is None:
        return 1 + _uniform_after(total, interval, 0, adaptive) if total > 0 else 0
    if last_key >= last:
        return 0
    left = last - last_key
    if adaptive:
        return max(1, round(left / interval))
    return left // interval + (1 if left % interval else 0)


class UniformSchedule:
    """Keyframes 0, K, 2K, ... and the last frame (module doc); with scene cuts on, a cut makes the frame
    before it a keyframe (closing its scene) and itself an anchor, and the interval restarts there."""

    lookback = 1  # the frame before a cut, or the last frame, becomes a keyframe once the next one is seen

    def __init__(self, options: ScheduleOptions):
        self.options = options
        self.needs_motion = options.scene_cuts
        self._since_key = 0  # frames since the last keyframe
        self._previous: int | None = None

    def decide(self, index: int, motion: Motion | None) -> Plan:
        previous, self._previous = self._previous, index
        cut = _cut(self.options, index, motion)
        if previous is None or cut:
            closing = (previous,) if self._since_key else ()
            self._since_key = 0
            return Plan((*closing, index), anchor=index, cuts=cut)
        self._since_key += 1
        if self._since_key < self.options.interval:
            return Plan()
        self._since_key = 0
        return Plan((index,))

    def finish(self) -> Plan:
        if not self._since_key:
            return Plan()
        self._since_key = 0
        return Plan((self._previous,))

    def expected_keyframes(self, total: int) -> list[int] | None:
        keys = list(range(0, max(0, total), self.options.interval))
        if keys and keys[-1] != total - 1:
            keys.append(total - 1)
        return keys

    def keyframes_after(self, total: int, last_key: int | None) -> int:
        return _uniform_after(total, self.options.interval, last_key, adaptive=False)


class AdaptiveSchedule:
    """Keyframes placed by `AdaptivePlanner` over the frames since the last keyframe (module doc); scene
    cuts as in the uniform schedule, the frames before a cut closed with the planner's end split."""

    needs_motion = True
    lookback = None  # the planner's keyframe may be any frame of its window

    def __init__(self, options: ScheduleOptions):
        self.options = options
        self._planner = AdaptivePlanner(options.interval, options.max_factor)
        self._waiting: list[int] = []  # the frames since the last keyframe, the planner's positions
        self._started = False

    def decide(self, index: int, motion: Motion | None) -> Plan:
        cut = _cut(self.options, index, motion)
        if not self._started or cut:
            self._started = True
            return Plan((*self._close(), index), anchor=index, cuts=cut)
        self._waiting.append(index)
        position = self._planner.add(motion.cost if motion is not None else 0.0)
        if position is None:
            return Plan()
        key = self._waiting[position]
        self._waiting = self._waiting[position + 1 :]
        return Plan((key,))

    def finish(self) -> Plan:
        return Plan(self._close())

    def _close(self) -> tuple[int, ...]:
        if not self._waiting:
            return ()
        waiting, self._waiting = self._waiting, []
        return tuple(waiting[position] for position in self._planner.finish())

    def expected_keyframes(self, total: int) -> list[int] | None:
        return None

    def keyframes_after(self, total: int, last_key: int | None) -> int:
        return _uniform_after(total, self.options.interval, last_key, adaptive=True)


def make_schedule(options: ScheduleOptions) -> KeyframeSchedule:
    """A fresh uniform or adaptive schedule for one stream."""
    return AdaptiveSchedule(options) if options.mode == "adaptive" else UniformSchedule(options)


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
    """Keyframes exactly where the user's keyframe files are (the `frames` renderer's folder); no cut
    detection. Frames before the first file are propagated backward from it, frames after the last one
    forward."""

    needs_motion = False
    lookback = 0  # only the frame just decided ever becomes a keyframe

    def __init__(self, indices: frozenset[int]):
        if not indices:
            raise ValueError("a fixed schedule needs at least one keyframe index")
        if min(indices) < 0:
            raise ValueError(f"keyframe indices must be >= 0; got {min(indices)}")
        self.indices = frozenset(indices)
        self._frames = 0
        self._last = -1  # the last frame's index
        self._keyed = False

    def decide(self, index: int, motion: Motion | None) -> Plan:
        self._frames += 1
        self._last = index
        if index not in self.indices:
            return Plan()
        anchor = None if self._keyed else index
        self._keyed = True
        return Plan((index,), anchor)

    def finish(self) -> Plan:
        if self._frames and not self._keyed:
            raise UsageError(
                f"none of the keyframe files names a frame of this video (it has {self._frames} frames, the "
                f"first file names frame {min(self.indices)}); check the file numbering or "
                "--keyframes-first-index"
            )
        extra = sorted(i for i in self.indices if i > self._last)
        if not extra:
            return Plan()
        return Plan(
            warnings=(
                f"{len(extra)} keyframe file(s) name frames after the video's last frame {self._last} "
                f"(first unused: frame {extra[0]}); they were ignored",
            )
        )

    def expected_keyframes(self, total: int) -> list[int] | None:
        return sorted(i for i in self.indices if i < total)

    def keyframes_after(self, total: int, last_key: int | None) -> int:
        start = -1 if last_key is None else last_key
        return sum(1 for i in self.indices if start < i < total)
