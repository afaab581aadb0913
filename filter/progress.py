"""Progress for `rerender run`: units of work, the ETA estimated from them, and the stderr reporters.

A job's work comes in four kinds of units, each with its own cost: frames read (decode, flow, schedule),
keyframes rendered, synthesis steps (one per in-between frame per propagation chain; a gap's frames are
released only when both chains and the blend are done) and frames written (resize back, encode).
`WorkState` is what a job has done of each, with the seconds each kind took; `estimate_eta` measures the
cost of one unit of each kind and multiplies it by the units left. The pushing thread reads frames,
renders keyframes and writes; the gaps propagate on a thread of their own meanwhile (`FilterOptions.overlap`),
so the two estimates are combined as a two-stage pipeline, not summed.

Every reporter is a callable taking the job's events (`job.run_job`'s `on_event`) plus `close()`.
`--progress json` prints each event as one JSON object per line, which is what NLE scripts and the
watch-folder daemon read. Warnings are printed in every mode, `none` included: quiet silences progress,
never the news that frames or streams were lost.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import TextIO

from tqdm import tqdm

from .events import (
    DoneEvent,
    ErrorEvent,
    FrameEvent,
    JobEvent,
    KeyframeEvent,
    NoteEvent,
    ProgressEvent,
    SceneCutEvent,
    StartEvent,
    WarningEvent,
    WorkCounts,
)
from .graph import GapProgress


@dataclass(frozen=True)
class WorkState:
    """A job's units of work at one moment. Totals are None when the frame count is unknown (a pipe)."""

    total: int | None  # frames in the video
    read: int  # frames decoded and pushed into the filter
    read_seconds: float  # the pushing thread's time for them (keyframe renders and waits excluded)
    keyframes: int
    keyframes_total: int | None  # planned: done + the schedule's expectation for the frames left
    render_seconds: float
    rendering: int | None  # index of the keyframe being rendered now
    synthesized: int  # synthesis steps done (each in-between frame takes one per chain)
    synthesis_total: int | None
    propagated: int  # in-between frames of finished gaps
    propagated_total: int | None  # in-between frames in the whole video (planned)
    propagation_seconds: float  # wall time of the finished gaps
    gap: GapProgress | None  # the gap propagating now
    written: int
    write_seconds: float
    overlap: bool = True  # gaps propagate while the next frames are read (FilterOptions.overlap)
    mean_gap: float = 9.0  # in-between frames per gap, for the last gap that nothing overlaps

    @property
    def units(self) -> tuple[int, int | None]:
        """(units done, units in all) over the four kinds: what a progress bar shows."""
        done = self.read + self.keyframes + self.synthesized + self.written
        totals = (self.total, self.keyframes_total, self.synthesis_total, self.total)
        if any(t is None for t in totals):
            return done, None
        return done, max(done, sum(totals))  # type: ignore[arg-type]

    def activity(self) -> str:
        """What runs now, e.g. "keyframe 3/4; propagating 12-20 (6/18 steps)"."""
        parts = []
        if self.rendering is not None:
            parts.append(f"keyframe {self.keyframes + 1}/{_or_unknown(self.keyframes_total)}")
        if self.gap is not None:
            g = self.gap
            parts.append(f"propagating {g.first}\u2013{g.last} ({g.done}/{g.steps} steps)")
        if not parts:
            if self.total is not None and self.read >= self.total:
                parts.append("writing")
            else:
                parts.append("reading")
        return "; ".join(parts)

    def counts(self, total_estimated: bool | None = None) -> WorkCounts:
        """The units as the events carry them (`total_estimated`: the total comes from the duration)."""
        return WorkCounts(
            read=self.read,
            keyframes=self.keyframes,
            keyframes_total=self.keyframes_total,
            synthesized=self.synthesized,
            synthesis_total=self.synthesis_total,
            written=self.written,
            total=self.total,
            total_estimated=total_estimated,
        )


def _or_unknown(value: int | None) -> str:
    return "?" if value is None else str(value)


class _RecentCost:
    """Seconds per unit of one kind over the more recent half of the units done: the first units carry
    one-time costs (imports, thread pools, the synthesizer's and the encoder's set-up) and the machine's
    load changes, so the cost the ETA uses follows the job instead of averaging its whole history."""

    def __init__(self) -> None:
        self._history: list[tuple[int, float]] = [(0, 0.0)]  # (units, seconds) cumulative, units increasing

    def update(self, units: int, seconds: float) -> float | None:
        if units > self._history[-1][0]:
            self._history.append((units, seconds))
        units, seconds = self._history[-1]
        if units == 0:
            return None
        then_units, then_seconds = next(h for h in reversed(self._history) if h[0] <= units / 2)
        return max(0.0, seconds - then_seconds) / (units - then_units)


class EtaEstimator:
    """The seconds a job has left, from a stream of `WorkState`s (`update`, called with each new state).

    Cost per unit of each kind: `_RecentCost` over the kind's units done; propagation is costed per
    in-between frame from the finished gaps (or, during the first gap, from its finished steps). The
    pushing thread's work left (reading, rendering, writing) and the propagation left overlap: the job
    ends after the longer of the two, and after the pushing thread's last keyframe the last gap still
    propagates (`mean_gap` frames). None while a kind of unit that has work left has no cost yet, or when
    the frame count is unknown.
    """

    def __init__(self) -> None:
        self._read = _RecentCost()
        self._render = _RecentCost()
        self._write = _RecentCost()
        self._propagate = _RecentCost()

    def update(self, state: WorkState) -> float | None:
        s = state
        read_cost = self._read.update(s.read, s.read_seconds)
        render_cost = self._render.update(s.keyframes, s.render_seconds)
        write_cost = self._write.update(s.written, s.write_seconds)
        frame_cost = self._propagate.update(s.propagated, s.propagation_seconds)
        if s.total is None or s.keyframes_total is None or s.propagated_total is None:
            return None
        read_left = max(0, s.total - s.read)
        keys_left = max(0, s.keyframes_total - s.keyframes)
        write_left = max(0, s.total - s.written)
        gap_share = 0.0
        if s.gap is not None and s.gap.steps:
            gap_share = s.gap.frames * s.gap.done / s.gap.steps
        frames_left = max(0.0, s.propagated_total - s.propagated - gap_share)
        if frame_cost is None and gap_share > 0:
            frame_cost = s.gap.seconds / gap_share  # type: ignore[union-attr]
        needed = [
            (read_left, read_cost),
            (keys_left, render_cost),
            (write_left, write_cost),
            (frames_left, frame_cost),
        ]
        if any(left > 0 and cost is None for left, cost in needed):
            return None
        main = sum(left * (cost or 0.0) for left, cost in needed[:3])
        background = frames_left * (frame_cost or 0.0)
        if not s.overlap:
            return main + background
        tail = min(background, s.mean_gap * (frame_cost or 0.0)) if read_left or keys_left else 0.0
        return max(main + tail, background)


class JsonProgress:
    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr

    def __call__(self, event: JobEvent) -> None:
        self.stream.write(json.dumps(event.to_json(), separators=(",", ":")) + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class BarProgress:
    """A bar over the job's units of work (frames read, keyframes rendered, synthesis steps, frames written)
    with what runs now, frames written and the ETA; the processing size and warnings as lines above it."""

    BAR_FORMAT = "rerender ({renderer}) {{percentage:3.0f}}%|{{bar}}| {{desc}}"

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self._bar: tqdm | None = None

    def _write(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def __call__(self, event: JobEvent) -> None:
        if isinstance(event, StartEvent):
            if event.processing_note:
                self._write(f"rerender run: {event.processing_note}")
            self._bar = tqdm(
                total=None,
                file=self.stream,
                dynamic_ncols=True,
                desc="starting",
                bar_format=self.BAR_FORMAT.format(renderer=event.renderer),
                unit="unit",
            )
        elif isinstance(event, FrameEvent | KeyframeEvent | ProgressEvent) and self._bar is not None:
            work = event.work
            planned = work.planned
            if planned is not None:
                self._bar.total = planned
            self._bar.n = work.done
            written = f"{work.written}/{_or_unknown(work.total)} written"
            eta = f"ETA {_clock(event.eta)}" if work.total is not None else "ETA ?"
            self._bar.set_description_str(f"{event.activity} | {written} | {eta}", refresh=False)
            self._bar.refresh()
        elif isinstance(event, WarningEvent | NoteEvent | SceneCutEvent):
            self._write(_line(event))
        elif isinstance(event, DoneEvent | ErrorEvent):
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class QuietProgress:
    """No progress at all; warnings and one-time notes (which backend serves the run) still go to stderr,
    one line each."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr

    def __call__(self, event: JobEvent) -> None:
        if isinstance(event, WarningEvent | NoteEvent | SceneCutEvent):
            print(_line(event), file=self.stream, flush=True)

    def close(self) -> None:
        pass


def _line(event: WarningEvent | NoteEvent | SceneCutEvent) -> str:
    """The stderr line of an event that every human-readable mode prints."""
    if isinstance(event, WarningEvent):
        return f"rerender run: warning: {event.message}"
    if isinstance(event, SceneCutEvent):
        return f"rerender run: {event.sentence()}"
    return f"rerender run: {event.message}"


def make_progress(mode: str, stream: TextIO | None = None) -> JsonProgress | BarProgress | QuietProgress:
    if mode == "json":
        return JsonProgress(stream)
    if mode == "bar":
        return BarProgress(stream)
    if mode == "none":
        return QuietProgress(stream)
    raise ValueError(f"progress mode must be bar, json or none; got {mode!r}")
