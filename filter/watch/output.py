"""Where results go, and how they get there atomically ("Atomic writes", "Output naming",
"Originals").

OUTBOX/.rerender/            hidden: the ledger and `staging/<row id>/` (partial output + keyframe checkpoints)
OUTBOX/<sub>/<clip>_rerender.<ext>   the result, mirrored from INBOX/<sub>/<clip>.<ext>, renamed in when complete
OUTBOX/failed/<sub>/<clip>.error.txt the one-line reason and the log of a clip that failed
INBOX/done/<sub>/<clip>      originals after success with `--done-action move` (INBOX/failed/ after failure)

Staging is inside OUTBOX so the final rename never crosses file systems (a rename is atomic only within
one); a file watcher on OUTBOX (an NLE's media pool, a sync client) therefore only ever sees complete files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# File extension for a muxer named by the `format` setting, so the output's name matches its container.
MUXER_SUFFIX = {
    "matroska": ".mkv",
    "webm": ".webm",
    "mp4": ".mp4",
    "mov": ".mov",
    "ipod": ".m4v",
    "nut": ".nut",
    "avi": ".avi",
    "mxf": ".mxf",
    "mpegts": ".ts",
    "yuv4mpegpipe": ".y4m",
}
HIDDEN_FOLDER = ".rerender"
OUTPUT_SUFFIX = "_rerender"
STAGED_NAME = "output"
KEYFRAME_FOLDER = "keyframes"


def fsync_path(path: Path) -> None:
    """Flush a file or folder to the disk (a folder: its entries, i.e. a rename done in it)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some network file systems refuse fsync on folders; the rename is still atomic
    finally:
        os.close(fd)


def _link_no_clobber(src: Path, dst: Path) -> None:
    """Put `src` at `dst`, failing with FileExistsError if `dst` exists. A hard link does that atomically;
    on file systems without hard links (SMB, exFAT) fall back to an exists check plus rename."""
    try:
        os.link(src, dst, follow_symlinks=False)  # a dropped link is moved as the link, never its target
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "exists", str(dst)) from None
        os.rename(src, dst)
        return
    os.unlink(src)


def numbered(path: Path, n: int) -> Path:
    return path if n == 1 else path.with_name(f"{path.stem}-{n}{path.suffix}")


@dataclass(frozen=True)
class Layout:
    inbox: Path
    outbox: Path

    @property
    def hidden(self) -> Path:
        return self.outbox / HIDDEN_FOLDER

    @property
    def ledger_path(self) -> Path:
        return self.hidden / "ledger.sqlite"

    def staging_dir(self, row_id: int) -> Path:
        return self.hidden / "staging" / str(row_id)

    def staged_output(self, row_id: int, rel: str, muxer: str | None = None) -> Path:
        """The job's output path. The container follows the clip's extension (or the `format` setting)."""
        suffix = MUXER_SUFFIX.get(muxer or "", PurePosixPath(rel).suffix.lower())
        return self.staging_dir(row_id) / (STAGED_NAME + suffix)

    def keyframe_cache(self, row_id: int) -> Path:
        return self.staging_dir(row_id) / KEYFRAME_FOLDER

    def source(self, rel: str) -> Path:
        return self.inbox.joinpath(*PurePosixPath(rel).parts)

    def final_output(self, rel: str, suffix: str | None = None) -> Path:
        """The first choice of output name (with the staged file's `suffix`); `numbered()` gives the
        alternatives when it exists."""
        pure = PurePosixPath(rel)
        name = f"{pure.stem}{OUTPUT_SUFFIX}{suffix or pure.suffix}"
        return self.outbox.joinpath(*pure.parent.parts, name)

    def error_report(self, rel: str) -> Path:
        return self.outbox.joinpath("failed", *PurePosixPath(rel).parts).with_name(
            PurePosixPath(rel).name + ".error.txt"
        )

    def relative_output(self, path: Path) -> str:
        return path.relative_to(self.outbox).as_posix()

    # -- staging -------------------------------------------------------------------------------------------

    def clear_staged_output(self, row_id: int) -> None:
        """Remove the partial output of an interrupted job; its keyframe checkpoints stay for the resume."""
        folder = self.staging_dir(row_id)
        if not folder.is_dir():
            return
        for entry in folder.iterdir():
            if entry.name == KEYFRAME_FOLDER:
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()

    def remove_staging(self, row_id: int) -> None:
        shutil.rmtree(self.staging_dir(row_id), ignore_errors=True)

    def commit(self, staged: Path, target: Path, *, overwrite: bool) -> Path:
        """Rename the complete staged file to `target` (or `target-2`, `-3`... if it exists and not
        `overwrite`). Returns the final path."""
        target.parent.mkdir(parents=True, exist_ok=True)
        if overwrite:
            os.replace(staged, target)
            fsync_path(target.parent)
            return target
        for n in range(1, 10_000):
            candidate = numbered(target, n)
            try:
                _link_no_clobber(staged, candidate)
            except FileExistsError:
                continue
            fsync_path(candidate.parent)
            return candidate
        raise OSError(f"no free output name next to {target}")

    def write_report(self, rel: str, row_id: int, text: str) -> Path:
        """Write `.error.txt` atomically (staged in the hidden folder, renamed into `failed/`)."""
        report = self.error_report(rel)
        report.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.hidden / "staging" / f"{row_id}.error.txt"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, report)
        return report

    def move_original(self, rel: str, folder: str) -> Path | None:
        """Move the original (and its sidecar) to INBOX/<folder>/<rel>, numbered if that exists."""
        src = self.source(rel)
        target = self.inbox.joinpath(folder, *PurePosixPath(rel).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        for n in range(1, 10_000):
            candidate = numbered(target, n)
            try:
                _link_no_clobber(src, candidate)
            except FileExistsError:
                continue
            except FileNotFoundError:
                return None
            sidecar = src.with_name(src.name + ".toml")
            if os.path.lexists(sidecar):
                with contextlib.suppress(OSError):
                    os.replace(sidecar, candidate.with_name(candidate.name + ".toml"))
            return candidate
        return None
