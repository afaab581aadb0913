"""Helpers of the watch daemon's tests (test_watch_daemon.py, test_hostile_watch.py): `rerender watch` as a
real process whose `--progress json` events are collected, and what the tests read in INBOX and OUTBOX.
The fixtures that go with them (`folders`, `no_daemon_left_behind`) are in conftest.py."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import av

RERENDER = [sys.executable, "-m", "rerender.filter.cli"]
FAST = ["--poll", "0.2", "--stable", "0.5"]
# The folder's preset for every test: the classic renderer at the smallest processing size, every frame a
# keyframe (no propagation), so a 64x48 clip takes well under a second even on a loaded machine; it also
# checkpoints one keyframe per frame, which the resume tests need.
PRESET = 'size = 64\nkeyframe-interval = 1\nrenderer = "classic"\n'


def count_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def visible_files(outbox: Path) -> list[str]:
    """What an editor's file browser shows in OUTBOX (hidden staging excluded), as POSIX paths."""
    found = []
    for folder, dirs, files in os.walk(outbox):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith("."):
                found.append(Path(folder, name).relative_to(outbox).as_posix())
    return sorted(found)


def locks_left(inbox: Path) -> list[str]:
    """Clip locks still in INBOX (finish marks, `*.json`, stay there by design)."""
    return [n for n in os.listdir(inbox / ".rerender-locks") if not n.endswith(".json")]


def ledger_rows(outbox: Path) -> list[dict]:
    db = sqlite3.connect(outbox / ".rerender" / "ledger.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM clips ORDER BY id")]
    finally:
        db.close()


class Daemon:
    """`rerender watch ... --progress json` in the background; its events are collected from stdout."""

    def __init__(self, inbox: Path, outbox: Path, *extra: str, log: Path | None = None) -> None:
        preset = inbox.parent / "preset.toml"
        if not preset.exists():
            preset.write_text(PRESET)
        argv = [*RERENDER, "watch", str(inbox), "--out", str(outbox), *FAST, "--progress", "json"]
        argv += ["--preset", str(preset), *extra]
        self.events: list[dict] = []
        self._stderr = open(log or os.devnull, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        STARTED.append(self.proc)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def of(self, kind: str) -> list[dict]:
        return [e for e in list(self.events) if e.get("event") == kind]

    def wait_until(self, predicate, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited with {self.proc.returncode}: {self.events[-5:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; last events: {self.events[-5:]}")
            time.sleep(0.05)

    def wait(self, timeout: float = 120.0) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(timeout=10)
            self._stderr.close()
        return code

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.wait()


STARTED: list[subprocess.Popen] = []


def once(inbox: Path, outbox: Path, *extra: str, timeout: float = 120.0) -> Daemon:
    daemon = Daemon(inbox, outbox, "--once", *extra)
    assert daemon.wait(timeout) == 0
    return daemon
