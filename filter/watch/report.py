"""What the daemon says: a status line per job on stderr, or `--progress json` events on stdout (one JSON
object per line, the events of `run_job` with the clip's path added), and the `--status` table."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Literal, TextIO

from ..events import FrameEvent, JobEvent, WarningEvent
from .events import (
    ClipAbandoned,
    ClipDone,
    ClipFailed,
    ClipJobEvent,
    ClipRecovered,
    ClipStarted,
    DaemonMessage,
    Skipped,
    WatchEvent,
    Watching,
)
from .ledger import Row


class Reporter:
    """Thread-safe; text progress lines are throttled to one per job per `every` seconds."""

    def __init__(
        self,
        mode: Literal["text", "json"],
        out: TextIO | None = None,
        err: TextIO | None = None,
        every: float = 2.0,
    ) -> None:
        self.mode = mode
        self._out = out or sys.stdout
        self._err = err or sys.stderr
        self._every = every
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}

    def emit(self, event: WatchEvent) -> None:
        with self._lock:
            try:
                if self.mode == "json":
                    self._out.write(json.dumps(event.to_json(), default=str) + "\n")
                    self._out.flush()
                    return
                line = self._text(event)
                if line is not None:
                    self._err.write(f"rerender watch: {line}\n")
                    self._err.flush()
            except (BrokenPipeError, ValueError):
                # Whoever read our output went away (or closed it): the daemon's work does not depend on it.
                self.mode, self._out, self._err = "json", _Null(), _Null()

    def _text(self, e: WatchEvent) -> str | None:
        if isinstance(e, ClipJobEvent):
            return self._job_text(e.clip, e.event)
        if isinstance(e, ClipStarted):
            resume = f", reusing {e.reused_keyframes} keyframes" if e.reused_keyframes else ""
            return f"[start] {e.clip} (attempt {e.attempt}{resume})"
        if isinstance(e, ClipDone):
            self._last.pop(e.clip, None)
            dropped = f", {e.dropped} corrupt packets dropped" if e.dropped else ""
            return f"[done] {e.clip} -> {e.output} ({e.frames} frames, {e.seconds:.1f} s{dropped})"
        if isinstance(e, ClipFailed):
            return f"[failed] {e.clip}: {e.reason} (details: {e.report})"
        if isinstance(e, ClipAbandoned):
            return f"[abandoned] {e.clip}: {e.reason}; it will resume on the next start"
        if isinstance(e, ClipRecovered):
            return f"[recovered] {e.clip}: {e.action}"
        if isinstance(e, DaemonMessage):
            return f"[{e.kind}] {e.message}".rstrip()
        if isinstance(e, Watching | Skipped):
            return f"[{e.KIND}] {e.message}".rstrip()
        return None

    def _job_text(self, clip: str, e: JobEvent) -> str | None:
        if isinstance(e, FrameEvent):
            now = time.monotonic()
            if now - self._last.get(clip, 0.0) < self._every and e.done != e.total:
                return None
            self._last[clip] = now
            of = f"/{e.total}" if e.total else ""
            eta = f", eta {e.eta:.0f} s" if e.eta is not None else ""
            return f"[{e.done}{of} frames, {e.fps:.1f} fps{eta}] {clip}"
        if isinstance(e, WarningEvent):
            return f"[warning] {e.message}".rstrip()
        return None  # keyframe events and others: JSON only


class _Null:
    def write(self, _text: str) -> int:
        return 0

    def flush(self) -> None:
        pass


def format_status(rows: list[Row]) -> str:
    """The ledger as a table, newest last, with a count per state."""
    counts = {s: 0 for s in ("queued", "running", "done", "failed")}
    lines = [f"{'id':>4}  {'state':<8} {'tries':>5}  {'seconds':>8}  clip -> output / error"]
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
        seconds = f"{row.seconds:.1f}" if row.seconds is not None else "-"
        if row.state == "done":
            tail = f"-> {row.output}"
        elif row.state == "failed":
            tail = f"!! {row.error}"
        elif row.state == "running":
            tail = f"(by {row.owner})"
        else:
            tail = ""
        lines.append(
            f"{row.id:>4}  {row.state:<8} {row.attempts:>5}  {seconds:>8}  {row.path} {tail}".rstrip()
        )
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items()))
    return "\n".join(lines)
