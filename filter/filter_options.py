"""The streaming Filter's options (`FilterOptions`) and its report of the work done (`WorkDone`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..engines.flow import FB_ONLY, OcclusionRule
from .gaps import GapProgress
from .geometry import Fit
from .propagation import PropagationOptions
from .schedule import ScheduleOptions


@dataclass(frozen=True)
class FilterOptions:
    # The uniform or adaptive schedule's settings; a `KeyframeSchedule` given to the Filter replaces them.
    schedule: ScheduleOptions = field(default_factory=ScheduleOptions)
    size: int = 512  # processing size: short side, a multiple of 64
    fit: Fit = "pad"
    propagate_at: Literal["processing", "output"] = "processing"
    flow: str = "dis"
    occlusion: OcclusionRule = FB_ONLY  # which pixels count as occluded between frames (engines/flow.py)
    propagation: PropagationOptions = field(default_factory=PropagationOptions)
    # False: keyframes only (the preview ladder's "keyframes" stage); in-between frames are not emitted.
    propagate: bool = True
    # Propagate each gap in a background thread while the next frames are decoded and the next keyframe
    # is rendered (a diffusion keyframe then costs no propagation time); at most two gaps in flight.
    overlap: bool = True
    # False: an input whose short side is below `size` is processed at its own size (padded or cropped to
    # multiples of 64), never scaled up; `rerender run` sets it only when --size is given.
    upscale: bool = True

    def __post_init__(self) -> None:
        if self.propagate_at not in ("processing", "output"):
            raise ValueError(f"--propagate-at must be processing or output; got {self.propagate_at!r}")


# Seconds between `on_progress` calls while the pushing thread waits for a gap (back-pressure, flush).
PROGRESS_TICK = 0.5


@dataclass(frozen=True)
class WorkDone:
    """The Filter's units of work so far (`Filter.work()`), with the seconds each kind took: what progress
    reports count and what the ETA is estimated from (progress.py)."""

    frames_in: int  # frames pushed (converted, flow estimated, scheduled)
    keyframes: int  # keyframes rendered
    render_seconds: float
    rendering: int | None  # the frame index of the keyframe being rendered now
    synthesized: int  # synthesis steps finished, all chains and gaps (the gaps now running included)
    propagated: int  # in-between frames of finished gaps (synthesized from both sides and blended)
    propagated_steps: int  # the synthesis steps those gaps took
    propagation_seconds: float  # wall time of the finished gaps
    gaps: int  # finished gaps
    gap: GapProgress | None  # the oldest gap running now
    wait_seconds: float  # the pushing thread's time waiting for gaps (back-pressure), not work of its own
