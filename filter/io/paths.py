"""Where the I/O layer may read and write: output checks, temporary names, and stale temporaries.

An output is one of three kinds. `-` is standard output. An existing FIFO, character device or socket is
written straight, as a user piping into another program expects (a temporary file renamed over it would
replace the device node or the pipe with a regular file). Anything else (a regular file, or a name that
does not exist yet) is written under a hidden temporary name in the same folder and renamed into place
when complete, so a failed run never leaves a half-written output.

Temporary names carry the writer's process id and a tag of the host, so that the next run can remove
what a killed run (`kill -9`, a power cut) left behind without ever touching a live process's file:
`.NAME.PID.HOSTRAND.partial.EXT` in the output folder, `rerender-lavfi-PID-HOST-*` in the temp folder.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import Literal

from ..errors import UsageError
from .messages import reason

OutputKind = Literal["pipe", "stream", "file"]

PARTIAL_RE = re.compile(
    r"^\.(?P<stem>.*)\.(?P<pid>[1-9][0-9]{0,9})\.(?P<host>[0-9a-f]{6})[0-9a-f]{8}\.partial(?:\.[^./]*)?$",
    re.DOTALL,
)
LAVFI_PREFIX = "rerender-lavfi-"
LAVFI_RE = re.compile(r"^rerender-lavfi-(?P<pid>[1-9][0-9]{0,9})-(?P<host>[0-9a-f]{6})-")
DEFAULT_NAME_MAX = 255
# errno values of a write that failed for lack of room: disk full, file too large, quota.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def host_tag() -> str:
    """Six hex digits naming this machine: a process id only means something on the host that made it."""
    return hashlib.sha256(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:6]


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists here (a zombie counts as alive; so does another user's). Ids a
    process cannot have (0, negative, beyond the C int range: from a crafted name or lock file) are not."""
    if pid <= 0:
        return False  # os.kill would address a process group (0) or every process (-1)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    except OSError:
        return True  # cannot tell: keep it
    return True


def name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return DEFAULT_NAME_MAX


def check_output(
    path: str | os.PathLike, input_path: str | os.PathLike | None = None, *, folder_checks: bool = True
) -> OutputKind:
    """Check an output location before any work; raises UsageError with one sentence when it cannot work.

    Returns how the output will be written: "pipe" (`-`), "stream" (an existing FIFO, character device or
    socket, written straight) or "file" (temp-and-rename). `input_path` (a file) is compared by identity
    (device and inode, so `./a.mp4`, `$PWD/a.mp4`, a symlink and a hard link all match), never by string.
    `folder_checks=False` leaves out what depends on the moment (a writable folder, free space), for option
    parsing, where the output may be a stand-in; the Sink checks everything again when it opens.
    """
    text = os.fspath(path)
    if text == "-":
        return "pipe"
    final = Path(text)
    _check_name_length(final)
    try:
        st = os.stat(final)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise UsageError(f"-o {text}: cannot check the output ({reason(exc)}); choose another path") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise UsageError(f"-o {text} is a folder; expected a file name, e.g. {final / 'out.mp4'}")
        if stat.S_ISBLK(st.st_mode):
            raise UsageError(
                f"-o {text} is a block device (a disk); refusing to write video over it, choose a file"
            )
        if stat.S_ISCHR(st.st_mode) and _is_terminal(st):
            raise UsageError(f"-o {text} is a terminal; refusing to write video to it, choose a file or '-'")
        if input_path is not None and _same_file(st, input_path):
            raise UsageError(
                f"-o {text} is the input file {os.fspath(input_path)} (the same file on disk); the input "
                f"would be overwritten, choose another output name"
            )
        if not stat.S_ISREG(st.st_mode):
            return "stream"
        if os.path.realpath(final).startswith("/proc/"):
            return "stream"  # /dev/stdout or /proc/self/fd/N redirected to a file: the shell's file, as is
    folder = file_target(final).parent
    if not folder.is_dir():
        raise UsageError(f"output folder {folder} does not exist; create it or choose another path")
    if not folder_checks:
        return "file"
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot create files in {folder} (permission denied); choose another output folder")
    try:
        space = os.statvfs(folder)
    except OSError:
        space = None
    if space is not None and space.f_bavail == 0 and space.f_blocks > 0:
        raise UsageError(f"no space left on the file system of {folder}; free some space or write elsewhere")
    return "file"


def file_target(path: str | os.PathLike) -> Path:
    """Where a "file" output really goes: the target of a symlink (which stays a symlink), else the path."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


# Character-device majors of terminals (Linux devices.txt): virtual consoles and serial ports, /dev/tty and
# the console, and pseudo-terminal slaves.
TERMINAL_MAJORS = frozenset({4, 5, *range(136, 144)})


def _is_terminal(st: os.stat_result) -> bool:
    return os.major(st.st_rdev) in TERMINAL_MAJORS


def _check_name_length(final: Path) -> None:
    encoded = len(os.fsencode(final.name))
    folder = final.parent
    limit = name_max(folder) if folder.is_dir() else DEFAULT_NAME_MAX
    if encoded > limit:
        raise UsageError(
            f"-o {final}: the file name is {encoded} bytes, longer than the {limit} this file system allows; "
            f"choose a shorter name"
        )


def _same_file(st: os.stat_result, other: str | os.PathLike) -> bool:
    if os.fspath(other) == "-":
        return False
    try:
        return os.path.samestat(st, os.stat(other))
    except (OSError, ValueError):
        return False


def temp_name(final: Path, pid: int | None = None) -> Path:
    """The hidden temporary name for `final`, in its folder, short enough for the file system.

    The name is `.STEM.PID.HOSTRAND.partial.EXT`; a long STEM is cut (the final name is what the user
    asked for; the temporary only has to be unique and recognisable).
    """
    pid = os.getpid() if pid is None else pid
    folder = final.parent
    tail = f".{pid}.{host_tag()}{secrets.token_hex(4)}.partial"
    suffix = final.suffix if len(final.suffix) <= 16 else ""
    room = name_max(folder) - len(os.fsencode("." + tail + suffix))
    stem = os.fsencode(final.stem)[: max(0, room)]
    return folder / (os.fsdecode(b"." + stem) + tail + suffix)


def sweep_partials(folder: Path) -> list[Path]:
    """Remove this host's temporary outputs in `folder` whose writing process is gone; returns them."""
    return _sweep_dead(folder, "", PARTIAL_RE, stat.S_ISREG, os.unlink)


def lavfi_folder_prefix() -> str:
    """`prefix` for the temporary folder a lavfi source is written into (see `sweep_lavfi_folders`)."""
    return f"{LAVFI_PREFIX}{os.getpid()}-{host_tag()}-"


def sweep_lavfi_folders(parent: Path | None = None) -> list[Path]:
    """Remove this host's `rerender-lavfi-*` temporary folders whose process is gone; returns them."""
    parent = Path(tempfile.gettempdir()) if parent is None else parent
    return _sweep_dead(parent, LAVFI_PREFIX, LAVFI_RE, stat.S_ISDIR, shutil.rmtree)


def _sweep_dead(parent: Path, prefix: str, pattern: re.Pattern[str], is_kind, remove) -> list[Path]:
    """Remove the entries of `parent` named by `pattern` (with `prefix`) that this host and user made, whose
    process (the PID in the name) is gone and whose kind (`is_kind` of the mode, never a link) matches."""
    removed: list[Path] = []
    host, uid = host_tag(), os.getuid()
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(prefix)]
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or match["host"] != host or pid_alive(int(match["pid"])):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not is_kind(info.st_mode) or info.st_uid != uid:
                continue
            remove(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


def write_error(name: str, exc: BaseException) -> str:
    """One sentence for a failed write: disk full and file-size limits get their own advice."""
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC:
        return f"writing {name} failed: no space left on the device; free some space or write elsewhere"
    if code == errno.EFBIG:
        return (
            f"writing {name} failed: the file grew past the largest size allowed (the file system's limit "
            f"or this process's file size limit, ulimit -f); write elsewhere or raise the limit"
        )
    if code == errno.EDQUOT:
        return f"writing {name} failed: the disk quota is used up; free some space or write elsewhere"
    return f"writing {name} failed ({reason(exc)})"
