"""Per-clip locks: one folder per clip in INBOX's hidden `.rerender-locks` folder, created atomically, so that
two daemons (on one machine or on two machines sharing the folder) never take the same clip (as the
HandBrake watcher's `mkdir <relpath>.lock`; we rename a prepared folder into place instead of
mkdir, so a lock never exists without its owner file).

The lock folder holds `owner.json` (host, pid, process start time, a random token). A lock is stale when its
owner is on this host and that process is gone (kill -9, power loss), or when it is on another host and its
owner file has not been refreshed (the holder touches it every poll) for `stale_after` seconds of *our*
clock: we compare successive observations, never the remote mtime with our time, so clock skew between the
machines of a share does not matter.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..io.paths import pid_alive

LOCK_FOLDER = ".rerender-locks"


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), so a recycled pid is not mistaken for the old owner."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # Field 22 (starttime) counted after the parenthesised command name, which may contain spaces.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    start: str | None
    token: str

    @staticmethod
    def me() -> Owner:
        pid = os.getpid()
        return Owner(socket.gethostname(), pid, _process_start(pid), uuid.uuid4().hex)

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


class ClipLocks:
    """Acquire/release/refresh the locks of one INBOX for one daemon process."""

    def __init__(self, inbox: Path, owner: Owner, stale_after: float = 120.0) -> None:
        self.root = inbox / LOCK_FOLDER
        self.owner = owner
        self.stale_after = stale_after
        self._held: set[str] = set()
        self._observed: dict[
            str, tuple[float, float]
        ] = {}  # lock -> (owner mtime seen, when we first saw it)

    def path_for(self, rel: str) -> Path:
        # A hash keeps nested clip paths in one flat folder and any name length within limits.
        return self.root / (hashlib.sha1(rel.encode()).hexdigest()[:20] + ".lock")

    def acquire(self, rel: str) -> bool:
        """True if this process now holds the lock of `rel` (breaking a stale lock if needed).

        The lock folder is prepared under a hidden name with its owner file inside and renamed into place:
        rename is as atomic as mkdir (and fails when the name holds a non-empty folder), and a lock is never
        seen without its owner, so a kill -9 at any moment leaves a lock that is recognisably stale."""
        path = self.path_for(rel)
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            fresh = self.root / f".new-{uuid.uuid4().hex}"
            try:
                fresh.mkdir()
                self._write_owner(fresh, rel)
            except OSError:
                shutil.rmtree(fresh, ignore_errors=True)
                return False
            try:
                os.rename(fresh, path)
            except OSError:
                shutil.rmtree(fresh, ignore_errors=True)
                if not path.exists() or not self._break_if_stale(path):
                    return False
                continue
            self._held.add(rel)
            return True
        return False

    def holds(self, rel: str) -> bool:
        """Still ours? (Checked before an output is renamed into place.)"""
        owner = self._read_owner(self.path_for(rel))
        return owner is not None and owner.get("token") == self.owner.token

    def refresh(self) -> None:
        """Heartbeat for other hosts: touch the owner file of every lock held."""
        for rel in list(self._held):
            with contextlib.suppress(OSError):
                os.utime(self.path_for(rel) / "owner.json")

    def release(self, rel: str) -> None:
        self._held.discard(rel)
        path = self.path_for(rel)
        if self.holds(rel):
            shutil.rmtree(path, ignore_errors=True)

    def release_all(self) -> None:
        for rel in list(self._held):
            self.release(rel)

    def sweep(self) -> int:
        """Remove the stale locks of dead owners (left by kill -9 for clips nobody asks for again) and
        tombstones of interrupted breaks. Returns how many were removed."""
        removed = 0
        try:
            entries = list(self.root.iterdir())
        except OSError:
            return 0
        for entry in entries:
            if ".lock.stale-" in entry.name or entry.name.startswith(".new-"):
                # Tombstones and half-made locks live for microseconds unless their maker died; leave
                # young ones alone.
                try:
                    old = time.time() - entry.stat().st_mtime > 60
                except OSError:
                    continue
                if old:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed += 1
            elif entry.name.endswith(".lock") and self._is_stale(entry) and self._break_if_stale(entry):
                removed += 1
        return removed

    def holder(self, rel: str) -> str | None:
        owner = self._read_owner(self.path_for(rel))
        return None if owner is None else f"pid {owner.get('pid')} on {owner.get('host')}"

    # -- internals ---------------------------------------------------------------------------------------

    def _write_owner(self, path: Path, rel: str) -> None:
        data = {
            "host": self.owner.host,
            "pid": self.owner.pid,
            "start": self.owner.start,
            "token": self.owner.token,
            "clip": rel,
            "since": time.time(),
        }
        tmp = path / f".owner.{self.owner.token}"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path / "owner.json")

    @staticmethod
    def _read_owner(path: Path) -> dict | None:
        try:
            return json.loads((path / "owner.json").read_text())
        except (OSError, ValueError):
            return None

    def _is_stale(self, path: Path) -> bool:
        owner = self._read_owner(path)
        if owner is None:
            # Created but the owner file is not written yet (a few microseconds), or a crash right between
            # mkdir and the write: stale only once the folder itself is older than the timeout.
            try:
                age = time.time() - path.stat().st_mtime
            except OSError:
                return False
            return age > max(self.stale_after, 5.0)
        if owner.get("host") == self.owner.host:
            pid = int(owner.get("pid", -1))
            if pid == os.getpid():
                # Our own pid but another token: a previous run that had the same pid (pid 1 in a container).
                return owner.get("token") != self.owner.token
            if not pid_alive(pid):
                return True
            start = owner.get("start")
            return start is not None and _process_start(pid) not in (None, start)
        try:
            mtime = (path / "owner.json").stat().st_mtime
        except OSError:
            return False
        now = time.monotonic()
        seen = self._observed.get(str(path))
        if seen is None or seen[0] != mtime:
            self._observed[str(path)] = (mtime, now)
            return False
        return now - seen[1] > self.stale_after

    def _break_if_stale(self, path: Path) -> bool:
        """Remove a stale lock; True if it was removed (by us or meanwhile by someone else)."""
        if not path.exists():
            return True
        if not self._is_stale(path):
            return False
        judged = self._read_owner(path)
        # Rename first: only one of several daemons breaking the same lock wins the rename.
        tomb = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(path, tomb)
        except OSError:
            return True  # someone else broke it first
        taken = self._read_owner(tomb)
        if judged is not None and taken is not None and taken.get("token") != judged.get("token"):
            # Between our judgement and the rename another daemon broke the lock and took it: give it back.
            with contextlib.suppress(OSError):
                os.rename(tomb, path)
            return False
        shutil.rmtree(tomb, ignore_errors=True)
        self._observed.pop(str(path), None)
        return True
