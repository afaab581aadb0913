"""What the daemon says: a status line per job on stderr, or `--progress json` events on stdout (one JSON
object per line, the events of `run_job` with the clip's path added), and the `--status` table."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, Literal, TextIO

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

    def emit(self, event: dict[str, Any]) -> None:
        with self._lock:
            try:
                if self.mode == "json":
                    self._out.write(json.dumps(event, default=str) + "\n")
                    self._out.flush()
                    return
                line = self._text(event)
                if line is not None:
                    self._err.write(f"rerender watch: {line}\n")
                    self._err.flush()
            except (BrokenPipeError, ValueError):
                # Whoever read our output went away (or closed it): the daemon's work does not depend on it.
                self.mode, self._out, self._err = "json", _Null(), _Null()

    def _text(self, e: dict[str, Any]) -> str | None:
        kind, clip = e.get("event"), e.get("clip", "")
        if kind == "frame":
            now = time.monotonic()
            if now - self._last.get(clip, 0.0) < self._every and e.get("done") != e.get("total"):
                return None
            self._last[clip] = now
            total = e.get("total")
            of = f"/{total}" if total else ""
            eta = f", eta {e['eta']:.0f} s" if e.get("eta") is not None else ""
            fps = f", {e['fps']:.1f} fps" if e.get("fps") is not None else ""
            return f"[{e.get('done')}{of} frames{fps}{eta}] {clip}"
        if kind == "start":
            resume = f", reusing {e['reused_keyframes']} keyframes" if e.get("reused_keyframes") else ""
            return f"[start] {clip} (attempt {e.get('attempt')}{resume})"
        if kind == "done":
            self._last.pop(clip, None)
            dropped = f", {e['dropped']} corrupt packets dropped" if e.get("dropped") else ""
            return (
                f"[done] {clip} -> {e.get('output')} ({e.get('frames')} frames, {e.get('seconds', 0):.1f} s"
                f"{dropped})"
            )
        if kind == "failed":
            return f"[failed] {clip}: {e.get('reason')} (details: {e.get('report')})"
        if kind == "abandoned":
            return f"[abandoned] {clip}: {e.get('reason')}; it will resume on the next start"
        if kind == "recovered":
            return f"[recovered] {clip}: {e.get('action')}"
        if kind in ("watching", "stopping", "stopped", "warning", "skipped"):
            detail = e.get("message") or ""
            return f"[{kind}] {detail}".rstrip()
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
