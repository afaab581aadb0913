"""The events of one re-rendering job (`job.run_job`'s `on_event`): one frozen dataclass per kind.

Readers (the progress reporters, the watch daemon, the preview) dispatch on the class and read attributes;
`to_json()` gives the JSON object that `rerender run --progress json` prints, one per line (`event` names
the kind, the fields follow in declaration order). `from_json` turns such an object back into its event,
checking every field's type, so a process that reads another's JSON lines (the watch daemon reading its
worker) gets typed events without loading objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol


@dataclass(frozen=True)
class WorkCounts:
    """A job's units of work at one moment (`progress.WorkState`); totals are None when unknown."""

    read: int
    keyframes: int
    keyframes_total: int | None
    synthesized: int
    synthesis_total: int | None
    written: int
    total: int | None
    total_estimated: bool | None = None  # set when `total` comes from the duration, not a frame count

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.total_estimated is None:
            del out["total_estimated"]
        return out

    @property
    def done(self) -> int:
        return self.read + self.keyframes + self.synthesized + self.written

    @property
    def planned(self) -> int | None:
        """All units (done and to do), or None while a total is unknown."""
        totals = (self.total, self.keyframes_total, self.synthesis_total, self.total)
        if any(t is None for t in totals):
            return None
        return max(self.done, sum(totals))  # type: ignore[arg-type]


class JobEvent(Protocol):
    KIND: ClassVar[str]

    def to_json(self) -> dict[str, Any]: ...


class _Event:
    KIND: ClassVar[str] = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.KIND}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, WorkCounts):
                value = value.to_json()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


@dataclass(frozen=True)
class StartEvent(_Event):
    KIND: ClassVar[str] = "start"
    total: int | None  # frames the stage will output (None: unknown, e.g. a pipe)
    input: str
    output: str | None  # None in the preview stages that write nothing
    width: int
    height: int
    processing_size: tuple[int, int]  # (width, height) of the processing canvas
    processing_note: str
    renderer: str
    keyframe_interval: int
    keyframes: str  # the schedule mode (uniform, adaptive)
    stage: str


@dataclass(frozen=True)
class KeyframeEvent(_Event):
    KIND: ClassVar[str] = "keyframe"
    index: int
    count: int
    eta: float | None
    activity: str
    work: WorkCounts


@dataclass(frozen=True)
class FrameEvent(_Event):
    KIND: ClassVar[str] = "frame"
    index: int
    done: int
    total: int | None
    fps: float
    eta: float | None
    activity: str
    work: WorkCounts


@dataclass(frozen=True)
class ProgressEvent(_Event):
    KIND: ClassVar[str] = "progress"
    eta: float | None
    activity: str
    work: WorkCounts


@dataclass(frozen=True)
class WarningEvent(_Event):
    KIND: ClassVar[str] = "warning"
    message: str


@dataclass(frozen=True)
class NoteEvent(_Event):
    """Information a user should see once (e.g. which backend serves the run)."""

    KIND: ClassVar[str] = "note"
    message: str


@dataclass(frozen=True)
class SceneCutEvent(_Event):
    """A scene cut the keyframe schedule found: frame `index` starts a new shot (and a new anchor)."""

    KIND: ClassVar[str] = "scene_cut"
    index: int
    histogram_distance: float
    occluded_fraction: float

    @classmethod
    def of(cls, cut: Any) -> SceneCutEvent:
        """The event of a `schedule.SceneCut`."""
        return cls(int(cut.index), float(cut.histogram_distance), float(cut.occluded_fraction))

    def sentence(self) -> str:
        return (
            f"scene cut at frame {self.index} (colour histogram distance {self.histogram_distance:.2f}, "
            f"{self.occluded_fraction:.0%} of the frame occluded)"
        )


@dataclass(frozen=True)
class DoneEvent(_Event):
    KIND: ClassVar[str] = "done"
    frames: int
    keyframes: int
    seconds: float
    fps: float | None
    dropped: int
    output: str | None


@dataclass(frozen=True)
class ErrorEvent(_Event):
    KIND: ClassVar[str] = "error"
    message: str


@dataclass(frozen=True)
class WorkersEvent(_Event):
    """Per-worker detail of a job on Ray (`filter/cluster`): `gaps`, one report per worker process that
    propagated gaps (worker "host:pid", node, gaps, frames, seconds); `keyframes`, one per keyframe actor
    (its host, pid, model loads, keyframes rendered, anchors rebuilt after a restart, open jobs). Each
    report is a flat object of numbers, strings and nulls."""

    KIND: ClassVar[str] = "workers"
    gaps: tuple[dict[str, Any], ...]
    keyframes: tuple[dict[str, Any], ...]


ProgressLike = KeyframeEvent | FrameEvent | ProgressEvent
EVENT_TYPES: tuple[type, ...] = (
    StartEvent,
    KeyframeEvent,
    FrameEvent,
    ProgressEvent,
    WarningEvent,
    NoteEvent,
    SceneCutEvent,
    DoneEvent,
    ErrorEvent,
    WorkersEvent,
)
_BY_KIND: dict[str, type] = {t.KIND: t for t in EVENT_TYPES}  # type: ignore[attr-defined]


class BadEvent(ValueError):
    """A JSON object that is not one of the job's events (unknown kind, a missing or mistyped field)."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


_CHECKS = {
    "int": _is_int,
    "int | None": lambda v: v is None or _is_int(v),
    "float": _is_number,
    "float | None": lambda v: v is None or _is_number(v),
    "str": lambda v: isinstance(v, str),
    "str | None": lambda v: v is None or isinstance(v, str),
    "bool | None": lambda v: v is None or isinstance(v, bool),
}


MAX_WORKER_REPORTS = 4096  # a workers event read back from JSON lists at most this many reports per kind


def _is_flat_report(v: Any) -> bool:
    return isinstance(v, dict) and all(
        isinstance(k, str) and (w is None or isinstance(w, str | bool) or _is_number(w)) for k, w in v.items()
    )


def _field_value(cls: type, name: str, annotation: str, value: Any) -> Any:
    if annotation == "WorkCounts":
        if not isinstance(value, dict):
            raise BadEvent(f"{cls.KIND}.{name}: expected an object")  # type: ignore[attr-defined]
        return _build(WorkCounts, value, f"{cls.KIND}.work")  # type: ignore[attr-defined]
    if annotation == "tuple[int, int]":
        if not (isinstance(value, list | tuple) and len(value) == 2 and all(map(_is_int, value))):
            raise BadEvent(f"{cls.KIND}.{name}: expected two whole numbers")  # type: ignore[attr-defined]
        return tuple(value)
    if annotation == "tuple[dict[str, Any], ...]":
        if not (isinstance(value, list | tuple) and len(value) <= MAX_WORKER_REPORTS):
            raise BadEvent(f"{cls.KIND}.{name}: expected a list of reports")  # type: ignore[attr-defined]
        if not all(map(_is_flat_report, value)):
            raise BadEvent(f"{cls.KIND}.{name}: a report is not a flat object")  # type: ignore[attr-defined]
        return tuple(dict(v) for v in value)
    if not _CHECKS[annotation](value):
        raise BadEvent(f"{name}: expected {annotation}, got {type(value).__name__}")
    return value


def _build(cls: type, data: dict[str, Any], label: str) -> Any:
    values = {}
    for f in fields(cls):
        if f.name not in data:
            if f.name == "total_estimated":
                continue
            raise BadEvent(f"{label}: {f.name} is missing")
        values[f.name] = _field_value(cls, f.name, str(f.type), data[f.name])
    return cls(**values)


def from_json(data: Any) -> JobEvent:
    """The event of one `to_json()` object. Raises BadEvent for anything else."""
    if not isinstance(data, dict) or data.get("event") not in _BY_KIND:
        raise BadEvent("not a job event")
    cls = _BY_KIND[data["event"]]
    return _build(cls, data, cls.KIND)  # type: ignore[attr-defined]
