"""Opening what was dropped in INBOX without following links out of it.

Whoever can drop files in INBOX is not trusted with the rest of the machine, so a clip or sidecar is opened
component by component from INBOX's own descriptor with O_NOFOLLOW: a symbolic link anywhere below INBOX
(the file itself, or a sub-folder swapped for a link after the scan) is refused, never followed, and so is
anything that is not a regular file (a FIFO would block the daemon, a device would stream forever). The
open descriptor then pins the file: the job reads the clip through `/proc/self/fd/N`, which reopens that
very inode, so replacing the file by a link between this check and the decoder's open changes nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import InputError

# A sidecar is a handful of `key = value` lines; anything bigger is not one (and must not fill the memory).
MAX_SIDECAR_BYTES = 64 * 1024

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # opening a FIFO for reading must not wait for a writer
_PROC_FD = "/proc/self/fd"

LINK_ADVICE = "the watch folder takes only regular files: copy the file into INBOX instead of linking it"


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _refusal(rel: str, what: str, name: str, dir_fd: int, *, folder: bool) -> InputError | None:
    """The one-line refusal when `name` (in `dir_fd`) is a symbolic link, else None."""
    try:
        mode = os.lstat(name, dir_fd=dir_fd).st_mode
    except OSError:
        return None
    if not stat.S_ISLNK(mode):
        return None
    if folder:
        return InputError(f"the {what} {rel} is in a folder that is a symbolic link ({name}); {LINK_ADVICE}")
    return InputError(f"the {what} {rel} is a symbolic link; {LINK_ADVICE}")


def open_in_inbox(inbox: Path, rel: str, what: str) -> int:
    """A read-only descriptor of the regular file INBOX/`rel` (a POSIX path below INBOX), opened without
    following any link below INBOX. Raises InputError (one line naming `what` and `rel`); FileNotFoundError
    when it is simply gone."""
    pure = PurePosixPath(rel)
    parts = pure.parts
    if not parts or pure.is_absolute() or any(p in ("", ".", "..") for p in parts):
        raise InputError(f"the {what} {rel!r} is not a path inside INBOX")
    if os.open not in os.supports_dir_fd:  # no openat(): check each component, then open by path
        return _open_by_path(inbox, parts, rel, what)
    dir_fd = os.open(inbox, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                fd = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=dir_fd)
            except OSError as exc:
                refusal = _refusal(rel, what, part, dir_fd, folder=True)
                if refusal is not None:
                    raise refusal from None
                if exc.errno == errno.ENOENT:
                    raise FileNotFoundError(errno.ENOENT, "gone", rel) from None
                raise InputError(f"cannot open the {what} {rel}: {exc.strerror or exc}") from None
            os.close(dir_fd)
            dir_fd = fd
        try:
            fd = os.open(parts[-1], os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC, dir_fd=dir_fd)
        except OSError as exc:
            refusal = _refusal(rel, what, parts[-1], dir_fd, folder=False)
            if refusal is not None:
                raise refusal from None
            if exc.errno == errno.ENOENT:
                raise FileNotFoundError(errno.ENOENT, "gone", rel) from None
            raise InputError(f"cannot open the {what} {rel}: {exc.strerror or exc}") from None
    finally:
        os.close(dir_fd)
    return _regular(fd, rel, what)


def _open_by_path(inbox: Path, parts: tuple[str, ...], rel: str, what: str) -> int:
    path = inbox
    for part in parts:
        path = path / part
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISLNK(os.lstat(path).st_mode):
                raise InputError(
                    f"the {what} {rel} is a symbolic link (or in a linked folder); {LINK_ADVICE}"
                )
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise InputError(f"cannot open the {what} {rel}: {exc.strerror or exc}") from None
    return _regular(fd, rel, what)


def _regular(fd: int, rel: str, what: str) -> int:
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise InputError(f"the {what} {rel} is {_kind(mode)}; expected a regular file")
    return fd


def read_sidecar(inbox: Path, rel: str) -> bytes | None:
    """The bytes of the sidecar INBOX/`rel`, None if there is none. Raises InputError for a link, a
    non-regular file or one over MAX_SIDECAR_BYTES."""
    try:
        fd = open_in_inbox(inbox, rel, "sidecar")
    except FileNotFoundError:
        return None
    try:
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(MAX_SIDECAR_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_SIDECAR_BYTES:
        raise InputError(
            f"the sidecar {rel} is over {MAX_SIDECAR_BYTES // 1024} KiB; a sidecar holds `flag = value` lines"
        )
    return data


@dataclass(frozen=True)
class OpenedClip:
    """A clip held open for its job. `job_path` is what the job is given as its input: the descriptor's
    `/proc/self/fd/N` where the system has it (the same inode whatever happens to the name), else the path."""

    fd: int
    job_path: str
    size: int
    mtime_ns: int

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def open_clip(inbox: Path, rel: str) -> OpenedClip:
    """Open the clip INBOX/`rel` for its job (see `open_in_inbox` for what is refused)."""
    fd = open_in_inbox(inbox, rel, "clip")
    st = os.fstat(fd)
    if os.path.isdir(_PROC_FD):
        job_path = f"{_PROC_FD}/{fd}"
    else:
        job_path = str(inbox.joinpath(*PurePosixPath(rel).parts))
    return OpenedClip(fd, job_path, st.st_size, st.st_mtime_ns)
