"""Native file events as a wake-up hint only (ecosystem.md §5.3): on Linux an inotify watch on INBOX and its
sub-folders sets the loop's wake event so a dropped clip is noticed before the next poll. The poll scan
stays the source of truth: inotify misses writes made by other machines on NFS/SMB, and anything that goes
wrong here just leaves the daemon polling. Uses libc through ctypes, so no dependency is added.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import select
import sys
import threading
from pathlib import Path

_IN_CLOSE_WRITE = 0x008
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
# Not IN_MODIFY: a clip being written would wake the loop for every chunk; its stability window is timed by
# the loop anyway.
_MASK = _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE
_MAX_WATCHES = 512  # the default max_user_watches is small and shared with every other program


class Waker:
    """Wakes the watch loop early. A self-pipe rather than a threading.Event, because `set()` is called from
    signal handlers, where taking the Event's internal lock can deadlock the main thread that holds it."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def set(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # a full pipe already means "wake up"
            os.write(self._write, b"!")

    def wait(self, timeout: float) -> bool:
        """Sleep until `set()` or `timeout` seconds, then forget the wake-ups received. True if woken."""
        ready: list = []
        with contextlib.suppress(InterruptedError, OSError, ValueError):
            ready, _, _ = select.select([self._read], [], [], max(0.0, timeout))
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._read, 4096):
                pass
        return bool(ready)

    def close(self) -> None:
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)


class WakeHint:
    def __init__(self, fd: int | None, wake: Waker) -> None:
        self._fd = fd
        self._wake = wake
        self._closed = threading.Event()
        self._pipe = os.pipe() if fd is not None else None
        self._thread: threading.Thread | None = None
        if fd is not None:
            self._thread = threading.Thread(target=self._loop, args=(fd, self._pipe[0]), daemon=True)
            self._thread.start()

    @classmethod
    def start(cls, inbox: Path, wake: Waker) -> WakeHint:
        if not sys.platform.startswith("linux"):
            return cls(None, wake)
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd < 0:
                return cls(None, wake)
            count = 0
            for folder, dirs, _files in os.walk(inbox):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                if libc.inotify_add_watch(fd, os.fsencode(folder), _MASK) >= 0:
                    count += 1
                if count >= _MAX_WATCHES:
                    break
            return cls(fd, wake)
        except (OSError, AttributeError):
            return cls(None, wake)

    def _loop(self, fd: int, stop_fd: int) -> None:
        while not self._closed.is_set():
            try:
                ready, _, _ = select.select([fd, stop_fd], [], [])
            except OSError:
                return
            if fd in ready:
                with contextlib.suppress(BlockingIOError, OSError):
                    os.read(fd, 65536)
                self._wake.set()

    def close(self) -> None:
        self._closed.set()
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                os.write(self._pipe[1], b"x")
        # The reader thread exits on the pipe; the descriptors are closed only after it has.
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if self._pipe is not None:
            for fd in self._pipe:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._pipe = None
