"""Detection: a stat scan of INBOX and the stability rule that decides when a clip is fully written.

A poll loop, not file events, is the source of truth: inotify does not see writes made from other machines on
NFS/SMB shares, and watchdog's PollingObserver dies silently when a share goes away. A
clip is taken only once its size and modification time (and those of its sidecar) stayed the same for
`--stable` seconds, the rule of the HandBrake watchers and SetConnect's "Stabletimer".
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Containers an NLE renders to; anything else in INBOX (notes, project files, sidecars) is left alone, as the
# HandBrake watcher's NON_VIDEO_FILE_ACTION=ignore does.
VIDEO_SUFFIXES = frozenset(
    {
        ".mp4",
        ".mov",
        ".mkv",
        ".avi",
        ".mxf",
        ".webm",
        ".m4v",
        ".mts",
        ".m2ts",
        ".ts",
        ".mpg",
        ".mpeg",
        ".wmv",
        ".flv",
        ".y4m",
        ".nut",
    }
)
# Names that tools use while a file is still being written or copied.
TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".filepart", "~")
# Top-level folders of INBOX where originals are moved after processing (`--done-action move`).
RESERVED_FOLDERS = frozenset({"done", "failed"})
SIDECAR_SUFFIX = ".toml"


def is_hidden_or_temp(name: str) -> bool:
    lower = name.lower()
    return name.startswith((".", "~")) or lower.endswith(TEMP_SUFFIXES)


def is_clip_name(name: str) -> bool:
    """True for a visible, finished-looking name with a video container suffix."""
    return not is_hidden_or_temp(name) and os.path.splitext(name.lower())[1] in VIDEO_SUFFIXES


@dataclass(frozen=True)
class SeenClip:
    """One clip as the last scan saw it. `rel` is the POSIX path relative to INBOX."""

    rel: str
    size: int
    mtime_ns: int
    sidecar: tuple[int, int] | None  # (size, mtime_ns) of `<clip>.toml`, None without a sidecar

    @property
    def signature(self) -> tuple[int, int, tuple[int, int] | None]:
        return (self.size, self.mtime_ns, self.sidecar)


@dataclass(frozen=True)
class ScanResult:
    clips: dict[str, SeenClip]
    errors: list[str]  # folders that could not be read this time (a share that went away): retried next poll


def scan_inbox(inbox: Path) -> ScanResult:
    """Every clip below `inbox`, skipping hidden folders, the reserved top-level folders and symlinked folders
    (symlinked clips are listed, by the link's own size and time, for the daemon to refuse).

    Errors are collected, never raised: a share that is briefly unavailable must not stop the daemon
    (watchdog#1065 is exactly that failure)."""
    clips: dict[str, SeenClip] = {}
    errors: list[str] = []
    stack: list[tuple[str, str]] = [(str(inbox), "")]
    while stack:
        folder, rel_folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            errors.append(f"{folder}: {exc.strerror or exc}")
            continue
        names = {entry.name for entry in entries}
        for entry in entries:
            rel = f"{rel_folder}{entry.name}"
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name.startswith(".") or (not rel_folder and entry.name in RESERVED_FOLDERS):
                        continue
                    stack.append((entry.path, rel + "/"))
                    continue
                # A symbolic link with a clip's name is seen (by the link's own size and time) so that the
                # daemon can refuse it with a reason; it is never followed. FIFOs, sockets and devices are
                # left alone.
                if not is_clip_name(entry.name):
                    continue
                if not (entry.is_symlink() or entry.is_file(follow_symlinks=False)):
                    continue
                st = entry.stat(follow_symlinks=False)
                sidecar = None
                if entry.name + SIDECAR_SUFFIX in names:
                    sst = os.lstat(os.path.join(folder, entry.name + SIDECAR_SUFFIX))
                    sidecar = (sst.st_size, sst.st_mtime_ns)
            except OSError as exc:
                # Deleted between listing and stat, or a share hiccup: this file is simply not seen this time.
                errors.append(f"{entry.path}: {exc.strerror or exc}")
                continue
            clips[rel] = SeenClip(rel, st.st_size, st.st_mtime_ns, sidecar)
    return ScanResult(clips, errors)


class StabilityTracker:
    """Remembers when each clip's signature was first seen; a clip is stable once it has been unchanged for
    `stable_seconds` of this process's monotonic clock (not file mtimes, which are skewed on shares)."""

    def __init__(self, stable_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._stable = stable_seconds
        self._clock = clock
        self._first_seen: dict[str, tuple[tuple, float]] = {}

    def update(self, clips: dict[str, SeenClip], *, complete: bool = True) -> list[SeenClip]:
        """Feed one scan; returns the clips that are stable now. With `complete=False` (the scan had errors)
        clips missing from this scan are kept rather than forgotten."""
        now = self._clock()
        stable: list[SeenClip] = []
        for rel, clip in clips.items():
            previous = self._first_seen.get(rel)
            if previous is None or previous[0] != clip.signature:
                self._first_seen[rel] = (clip.signature, now)
                continue
            # An empty file is a clip whose writer has not started yet, never a finished clip.
            if clip.size > 0 and now - previous[1] >= self._stable:
                stable.append(clip)
        if complete:
            for rel in set(self._first_seen) - set(clips):
                del self._first_seen[rel]
        return stable

    def next_due(self) -> float | None:
        """Seconds until the earliest clip seen but not yet stable becomes stable (None: nothing waits)."""
        now = self._clock()
        waits = [self._stable - (now - first) for _sig, first in self._first_seen.values()]
        pending = [w for w in waits if w > 0]
        return min(pending) if pending else None

    def unsettled(self, clips: dict[str, SeenClip]) -> list[str]:
        """Clips seen but not stable yet (still being written, or seen for the first time)."""
        now = self._clock()
        out = []
        for rel, clip in clips.items():
            previous = self._first_seen.get(rel)
            if previous is None or clip.size == 0 or now - previous[1] < self._stable:
                out.append(rel)
        return out
