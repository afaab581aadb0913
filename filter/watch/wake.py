"""Native file events as a wake-up hint only: on Linux an inotify watch on INBOX and its
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
import struct
import sys
import threading
from pathlib import Path

_IN_CLOSE_WRITE = 0x008
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_ISDIR = 0x40000000
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
    """inotify watches on INBOX and its visible sub-folders (new sub-folders are added as they appear)."""

    def __init__(self, wake: Waker, libc=None, fd: int | None = None) -> None:
        self._wake = wake
        self._libc = libc
        self._fd = fd
        self._folders: dict[int, bytes] = {}  # watch descriptor -> folder
        self._closed = threading.Event()
        self._pipe = os.pipe() if fd is not None else None
        self._thread: threading.Thread | None = None

    @classmethod
    def start(cls, inbox: Path, wake: Waker) -> WakeHint:
        if not sys.platform.startswith("linux"):
            return cls(wake)
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        except (OSError, AttributeError):
            return cls(wake)
        if fd < 0:
            return cls(wake)
        hint = cls(wake, libc, fd)
        for folder, dirs, _files in os.walk(inbox):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            if not hint._add(os.fsencode(folder)):
                break
        hint._thread = threading.Thread(target=hint._loop, args=(fd, hint._pipe[0]), daemon=True)
        hint._thread.start()
        return hint

    def _add(self, folder: bytes) -> bool:
        if len(self._folders) >= _MAX_WATCHES:
            return False
        wd = self._libc.inotify_add_watch(self._fd, folder, _MASK)
        if wd >= 0:
            self._folders[wd] = folder
        return True

    def _loop(self, fd: int, stop_fd: int) -> None:
        while not self._closed.is_set():
            try:
                ready, _, _ = select.select([fd, stop_fd], [], [])
            except OSError:
                return
            if fd not in ready:
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            self._new_folders(data)
            self._wake.set()

    def _new_folders(self, data: bytes) -> None:
        """Watch sub-folders created (or moved in) after the start, e.g. by Resolve's "preserve source
        directory levels"; each event is `struct inotify_event` (wd, mask, cookie, len, name)."""
        offset = 0
        while offset + 16 <= len(data):
            wd, mask, _cookie, size = struct.unpack_from("iIII", data, offset)
            name = data[offset + 16 : offset + 16 + size].rstrip(b"\0")
            offset += 16 + size
            if mask & _IN_ISDIR and mask & (_IN_CREATE | _IN_MOVED_TO) and name and not name.startswith(b"."):
                parent = self._folders.get(wd)
                if parent is not None:
                    self._add(os.path.join(parent, name))

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
