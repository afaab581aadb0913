"""What the watch daemon reports: its own events (one frozen dataclass each) and the events of each clip's
job (`ClipJobEvent`, a job event of `filter.events` with the clip it belongs to).

`to_json()` is the object `rerender watch --progress json` prints per line; the text mode (`report.py`)
reads the attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ..events import JobEvent, StartEvent

MessageKind = Literal["stopping", "stopped", "warning"]


class _DaemonEvent:
    KIND: ClassVar[str] = ""

    def to_json(self) -> dict[str, Any]:
        return {"event": self.KIND, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


@dataclass(frozen=True)
class DaemonMessage(_DaemonEvent):
    """A line about the daemon itself (`stopping`, `stopped`, a `warning` about a scan or a clip)."""

    kind: MessageKind
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"event": self.kind, "message": self.message}


@dataclass(frozen=True)
class Watching(_DaemonEvent):
    KIND: ClassVar[str] = "watching"
    message: str
    inbox: str
    outbox: str


@dataclass(frozen=True)
class Skipped(_DaemonEvent):
    """Another daemon (another OUTBOX) already took the clip."""

    KIND: ClassVar[str] = "skipped"
    clip: str
    message: str


@dataclass(frozen=True)
class ClipStarted(_DaemonEvent):
    KIND: ClassVar[str] = "start"
    clip: str
    attempt: int
    reused_keyframes: int


@dataclass(frozen=True)
class ClipDone(_DaemonEvent):
    KIND: ClassVar[str] = "done"
    clip: str
    output: str
    frames: int | None
    dropped: int  # frames lost to corrupt packets: the output is shorter than the clip
    seconds: float


@dataclass(frozen=True)
class ClipFailed(_DaemonEvent):
    KIND: ClassVar[str] = "failed"
    clip: str
    reason: str
    report: str  # the error report's path, relative to OUTBOX


@dataclass(frozen=True)
class ClipAbandoned(_DaemonEvent):
    """The job stopped without a result (a signal, a lost lock); the clip resumes on the next start."""

    KIND: ClassVar[str] = "abandoned"
    clip: str
    reason: str


@dataclass(frozen=True)
class ClipRecovered(_DaemonEvent):
    KIND: ClassVar[str] = "recovered"
    clip: str
    action: str


@dataclass(frozen=True)
class ClipJobEvent:
    """One event of a clip's job; the job's `start` is printed as `job-start` (the daemon's own `start`
    and `done` carry the attempt and the output)."""

    clip: str
    event: JobEvent = field()

    def to_json(self) -> dict[str, Any]:
        out = {**self.event.to_json(), "clip": self.clip}
        if isinstance(self.event, StartEvent):
            out["event"] = "job-start"
        return out


WatchEvent = (
    DaemonMessage
    | Watching
    | Skipped
    | ClipStarted
    | ClipDone
    | ClipFailed
    | ClipAbandoned
    | ClipRecovered
    | ClipJobEvent
)
