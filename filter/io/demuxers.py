"""Open the input container under the hostile-input policy: what FFmpeg may open, and why it refused.

What may be opened: the input itself only. FFmpeg is given a protocol whitelist (`file` for a path, `pipe`
for standard input) and, unless `--input-format` names one, a demuxer whitelist without the demuxers
that open further files or URLs (HLS and DASH playlists, concat lists, ...) or that turn text into
pictures (`tty` and friends): FFmpeg still probes the format, and refuses a refused one before reading
anything it points at.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import av
import av.error

from ..errors import InputError, UsageError
from .messages import reason

# Demuxers used only when --input-format names them: they open further files or URLs (playlists, file
# lists, manifests, stream descriptions, filter graphs, scripts), or draw text as pictures.
OPENS_OTHER_FILES = frozenset(
    {"hls", "applehttp", "dash", "concat", "imf", "sdp", "rtsp", "rtp", "sap", "webm_dash_manifest",
     "dvdvideo", "lavfi", "avisynth", "vapoursynth"}
)  # fmt: skip
TEXT_AS_PICTURE = frozenset({"tty", "bin", "xbin", "adf", "idf"})
REFUSED_DEMUXERS = OPENS_OTHER_FILES | TEXT_AS_PICTURE


def input_name(path: str) -> str:
    """The input as messages name it: its path, or "standard input" for `-`."""
    return "standard input" if path == "-" else path


def open_input(path: str, format: str | None = None) -> av.container.InputContainer:
    """Open `path` (`-` is standard input) for demuxing; `format` forces the demuxer and lifts the policy.

    Raises UsageError for an unknown `format`, InputError with one sentence for anything that is not a
    readable video input (missing, a folder, a terminal, unreadable, or a refused demuxer).
    """
    is_pipe = path == "-"
    name = input_name(path)
    if format is not None and format not in av.formats_available:
        raise UsageError(
            f"unknown input format {format!r}; expected a demuxer name such as nut, matroska, mpegts"
        )
    if not is_pipe:
        p = Path(path)
        if not p.exists():
            raise InputError(f"{path}: no such file; expected a video file, or '-' for standard input")
        if p.is_dir():
            raise InputError(f"{path} is a folder; expected a video file")
    elif sys.stdin is not None and sys.stdin.isatty():
        raise InputError("standard input is a terminal; pipe a video into it (ffmpeg -i IN -f nut - | ...)")
    # The protocol of the input itself; a forced demuxer (hls, concat) may open local files too.
    # "file:" keeps a name such as "concat:x" or "subfile:..." a plain file name.
    target = "pipe:0" if is_pipe else "file:" + os.path.abspath(path)
    options = {"protocol_whitelist": "pipe" if is_pipe else "file"}
    if format is None:
        options["format_whitelist"] = allowed_demuxers()
    else:
        options["protocol_whitelist"] = "file,pipe"
    try:
        container = av.open(target, "r", format=format, container_options=options)
    except PermissionError:
        raise InputError(f"{name}: permission denied; make the file readable") from None
    except av.error.ArgumentError as exc:
        if format is None:
            # FFmpeg's answer when the demuxer it chose is not on the whitelist.
            raise InputError(_refused_message(path, None)) from None
        raise _unreadable(path, exc) from None
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise _unreadable(path, exc) from None
    chosen = set(container.format.name.split(","))
    if format is None and chosen & REFUSED_DEMUXERS:
        container.close()
        raise InputError(_refused_message(path, min(chosen & REFUSED_DEMUXERS)))
    return container


def allowed_demuxers() -> str:
    """FFmpeg's `format_whitelist` for a probed input: every demuxer but REFUSED_DEMUXERS."""
    return _allowed_demuxers()


@functools.cache
def _allowed_demuxers() -> str:
    names = []
    for name in sorted(av.formats_available):
        try:
            av.format.ContainerFormat(name, "r")
        except ValueError:
            continue  # a muxer only
        if not set(name.split(",")) & REFUSED_DEMUXERS:
            names.append(name)
    return ",".join(names)


def _unreadable(path: str, exc: BaseException) -> InputError:
    hint = " (use --input-format to name the format of a pipe)" if path == "-" else ""
    return InputError(
        f"{input_name(path)} is not a media file FFmpeg can read ({reason(exc)}); "
        f"expected a video such as MP4, MKV, MOV or NUT{hint}"
    )


def _refused_message(path: str, demuxer: str | None) -> str:
    kind = _refused_kind(demuxer, None if path == "-" else path)
    return (
        f"{input_name(path)} is {kind}, not a video; expected a video such as MP4, MKV, MOV or NUT "
        f"(only --input-format on the command line makes FFmpeg read it anyway)"
    )


def _refused_kind(demuxer: str | None, path: str | None) -> str:
    """What a refused input is, in words: by the demuxer FFmpeg chose, else by the file's first bytes."""
    if demuxer is None and path is not None:
        try:
            with open(path, "rb") as handle:
                head = handle.read(4096)
        except OSError:
            head = b""
        stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
        if stripped.startswith(b"#EXTM3U"):
            demuxer = "hls"
        elif stripped.startswith(b"ffconcat"):
            demuxer = "concat"
        elif b"<MPD" in head:
            demuxer = "dash"
        elif head and all(32 <= b < 127 or b in b"\t\r\n\x1b" for b in head):
            demuxer = "tty"
    if demuxer in ("hls", "applehttp"):
        return "an HLS playlist (FFmpeg's hls demuxer would open the files it lists)"
    if demuxer == "concat":
        return "an FFmpeg concat list (FFmpeg would open the files it lists)"
    if demuxer == "dash":
        return "a DASH manifest (FFmpeg would open the files it lists)"
    if demuxer in TEXT_AS_PICTURE:
        return f"text (FFmpeg's {demuxer} demuxer would draw it as a picture)"
    if demuxer is not None:
        return f"read by FFmpeg's {demuxer} demuxer, which opens other files or URLs"
    return "a playlist, a list of other files or text, formats that FFmpeg reads only when asked"
