"""Progress on stderr for `rerender run`: a tqdm bar, JSON lines for programs, or nothing.

Every reporter is a callable taking the job's events (`job.run_job`'s `on_event`) plus `close()`.
`--progress json` prints each event as one JSON object per line, which is what NLE scripts and the
watch-folder daemon read.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

from tqdm import tqdm


class JsonProgress:
    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr

    def __call__(self, event: dict) -> None:
        self.stream.write(json.dumps(event, separators=(",", ":")) + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass


class BarProgress:
    """frames done/total (when known), fps and ETA from tqdm; keyframes and warnings as notes above it."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self._bar: tqdm | None = None
        self._keyframes = 0

    def __call__(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "start":
            self._bar = tqdm(
                total=event.get("total"),
                unit="frame",
                file=self.stream,
                dynamic_ncols=True,
                desc=f"rerender ({event.get('renderer')})",
            )
        elif kind == "keyframe":
            self._keyframes = event.get("count", self._keyframes + 1)
            if self._bar is not None:
                self._bar.set_postfix(keyframes=self._keyframes, refresh=False)
        elif kind == "frame":
            if self._bar is not None:
                self._bar.update(1)
        elif kind == "warning":
            message = f"rerender run: warning: {event.get('message')}"
            if self._bar is not None:
                self._bar.write(message, file=self.stream)
            else:
                print(message, file=self.stream)
        elif kind in ("done", "error"):
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class QuietProgress:
    def __call__(self, event: dict) -> None:
        pass

    def close(self) -> None:
        pass


def make_progress(mode: str, stream: TextIO | None = None) -> JsonProgress | BarProgress | QuietProgress:
    if mode == "json":
        return JsonProgress(stream)
    if mode == "bar":
        return BarProgress(stream)
    if mode == "none":
        return QuietProgress()
    raise ValueError(f"progress mode must be bar, json or none; got {mode!r}")
