"""Where the Sink writes: the output's kind and muxer, its container opened, and the file moved into place.

A file output is written under a temporary name in the same folder and renamed when complete (`commit`);
`discard` removes the temporary file, so a failed run never leaves a half-written output behind. An
existing FIFO or character device is written straight instead, and standard output is a pipe (paths.py
says why); both are not seekable, so MP4/MOV go there fragmented. The location is checked when the target
is made, before any frame is rendered.
"""

from __future__ import annotations

import os
import sys
from fractions import Fraction
from pathlib import Path

import av
import av.error

from ..errors import RerenderError, UsageError
from . import paths
from .formats import DEFAULT_PIPE_FORMAT, FRAGMENTABLE_MP4_MUXERS, FRAGMENTED_MP4_FLAGS, MOV_MUXERS
from .messages import reason

_MUXER_BY_EXTENSION = {
    "mp4": "mp4",
    "m4v": "mp4",
    "mov": "mov",
    "mkv": "matroska",
    "webm": "webm",
    "nut": "nut",
    "ts": "mpegts",
    "m2ts": "mpegts",
    "y4m": "yuv4mpegpipe",
    "avi": "avi",
}


class OutputTarget:
    """One output location (`-` is standard output); raises UsageError when it cannot be written."""

    def __init__(self, path: str, input_path: str | None) -> None:
        self.path = path
        self.is_pipe = path == "-"
        self.name = "standard output" if self.is_pipe else path
        # "pipe", "stream" (an existing FIFO or device, written straight) or "file" (temp-and-rename).
        self.kind = paths.check_output(path, input_path)
        self._temp: Path | None = None
        self._final: Path | None = None  # where the temporary file is renamed to (a symlink's target)

    @property
    def temporary(self) -> bool:
        """Whether the output is being written under a temporary name, not yet in place."""
        return self._temp is not None

    def open(self, format: str | None, time_base: Fraction) -> av.container.OutputContainer:
        """The output container for muxer `format` (None: output_muxer's choice), keeping `time_base`."""
        fmt = format
        if fmt is not None and fmt not in av.formats_available:
            raise UsageError(
                f"unknown output format {fmt!r}; expected a muxer name such as nut, matroska, mp4"
            )
        container_options: dict[str, str] = {}
        if self.is_pipe:
            fmt = fmt or DEFAULT_PIPE_FORMAT
            if sys.stdout is not None and sys.stdout.isatty():
                raise UsageError(
                    "refusing to write video to a terminal; redirect standard output or give a file"
                )
            if fmt in FRAGMENTABLE_MP4_MUXERS:
                # MP4/MOV need a seekable output for their index unless fragmented.
                container_options["movflags"] = FRAGMENTED_MP4_FLAGS
            if sys.stdout is not None:
                sys.stdout.flush()
            target = "pipe:1"
        elif self.kind == "stream":
            # A FIFO or a device: written in place and, like a pipe, not seekable.
            fmt = fmt or output_muxer(self.path, self.kind)
            if fmt in FRAGMENTABLE_MP4_MUXERS:
                container_options["movflags"] = FRAGMENTED_MP4_FLAGS
            target = "file:" + os.path.abspath(self.path)
        else:
            final = paths.file_target(self.path)
            if fmt is None:
                fmt = guess_muxer(Path(self.path))
            self._final = final
            paths.sweep_partials(final.parent)  # what killed runs left here (their process is gone)
            # Same folder (so the final rename is atomic); a random hidden name rather than mkstemp:
            # FFmpeg creates the file, so it gets the usual umask permissions instead of mkstemp's 0600.
            self._temp = paths.temp_name(final)
            target = "file:" + str(self._temp.absolute())
        if fmt in MOV_MUXERS and time_base.numerator == 1:
            # The MOV muxer otherwise doubles a coarse time base until it reaches 10000 (1/25 -> 1/12800);
            # the times would survive but not the input's time_base and pts ticks.
            container_options["video_track_timescale"] = str(time_base.denominator)
        # Muxers that open further files (segment, hls, tee) may then only use local files and pipes.
        container_options["protocol_whitelist"] = "file,pipe"
        try:
            return av.open(target, "w", format=fmt, container_options=container_options)
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            self.discard()
            raise UsageError(f"cannot write {self.name} as {fmt} ({reason(exc)})") from None

    def commit(self) -> None:
        """Move a complete temporary file into place (nothing to do for a pipe, FIFO or device)."""
        if self._temp is not None:
            try:
                os.replace(self._temp, self._final)
            except OSError as exc:
                raise RerenderError(paths.write_error(self.name, exc)) from None
            self._temp = None

    def discard(self) -> None:
        """Remove the temporary file, if one is still there."""
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)
            self._temp = None


def output_muxer(path: str, kind: paths.OutputKind) -> str:
    """The muxer when -f does not name one: NUT for standard output and for a FIFO or device without an
    extension (`-o /dev/null`), else from the file extension."""
    if kind == "pipe" or (kind == "stream" and not Path(path).suffix):
        return DEFAULT_PIPE_FORMAT
    return guess_muxer(Path(path))


def guess_muxer(path: Path) -> str:
    """The muxer FFmpeg picks for this file name; a sentence when the extension is unknown."""
    suffix = path.suffix.lower().lstrip(".")
    if not suffix:
        raise UsageError(f"cannot tell the container of {path} (no extension); add one like .mp4 or give -f")
    return _MUXER_BY_EXTENSION.get(suffix) or _muxer_from_ffmpeg(path)


def _muxer_from_ffmpeg(path: Path) -> str:
    for name in sorted(av.formats_available):
        try:
            fmt = av.format.ContainerFormat(name, "w")
        except ValueError:
            continue
        if path.suffix.lower().lstrip(".") in (fmt.extensions or ()):
            return name
    raise UsageError(
        f"cannot tell the container of {path} from its extension; use .mp4, .mkv, .mov or give -f"
    )
