"""Finish marks: what any daemon watching this INBOX has already rendered, kept next to the locks.

The ledger lives in OUTBOX, so two daemons that share an INBOX but write to different OUTBOXes (one per
machine, because a SQLite WAL ledger needs one machine) would each render every clip once the other's lock
is gone. A mark `INBOX/.rerender-locks/<clip hash>.<settings hash>.json`, written atomically after the
ledger says done or failed, tells them it was taken (the HandBrake watcher's shared success/failure
lists). Keyed by the clip's size and mtime and the settings hash too: a changed clip, or a
daemon with another preset (another look), renders it again.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path

from .lock import ClipLocks


class FinishMarks:
    def __init__(self, locks: ClipLocks) -> None:
        self._locks = locks

    def _path(self, rel: str, settings_hash: str) -> Path:
        lock = self._locks.path_for(rel)
        return lock.with_name(f"{lock.stem}.{settings_hash}.json")

    def write(self, rel: str, size: int, mtime_ns: int, settings_hash: str, record: dict) -> None:
        path = self._path(rel, settings_hash)
        data = {"clip": rel, "size": size, "mtime_ns": mtime_ns, **record}
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        with contextlib.suppress(OSError):  # a mark is an optimisation for other daemons, never required
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data))
            os.replace(tmp, path)

    def read(self, rel: str, size: int, mtime_ns: int, settings_hash: str) -> dict | None:
        """The mark of exactly this clip version and settings, or None."""
        try:
            data = json.loads(self._path(rel, settings_hash).read_text())
        except (OSError, ValueError):
            return None
        if (data.get("clip"), data.get("size"), data.get("mtime_ns")) != (rel, size, mtime_ns):
            return None
        return data
