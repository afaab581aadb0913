"""Command-line flags of the video I/O layer, shared by every command that reads and writes video."""

from __future__ import annotations

import argparse

from ..errors import InputError, UsageError
from .sink import SinkOptions
from .source import Source


def add_io_arguments(parser: argparse.ArgumentParser) -> None:
    """Add -f, --input-format, --codec, --crf, --pix-fmt, --encoder-option, --no-audio and --strict."""
    group = parser.add_argument_group("video input/output")
    group.add_argument(
        "-f",
        "--format",
        metavar="FMT",
        help="output container (muxer) name; default: from the file extension, nut for '-' (mp4/mov to a "
        "pipe are written fragmented)",
    )
    group.add_argument(
        "--input-format",
        metavar="FMT",
        help="force the input demuxer (nut, matroska, mpegts, yuv4mpegpipe, ...); default: probe it",
    )
    group.add_argument("--codec", metavar="NAME", help="video encoder; default libx264")
    group.add_argument(
        "--crf", type=float, default=18.0, help="constant rate factor for encoders that have one (default 18)"
    )
    group.add_argument(
        "--pix-fmt",
        metavar="FMT",
        help="output pixel format; default yuv420p, yuv420p10le for 10/12-bit input (4:4:4 for odd sizes)",
    )
    group.add_argument(
        "--encoder-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an encoder option passed to FFmpeg, e.g. preset=slow (repeatable)",
    )
    group.add_argument(
        "--no-audio", action="store_true", help="drop the audio streams instead of copying them"
    )
    group.add_argument(
        "--strict",
        action="store_true",
        help="fail (exit 2) when corrupt packets made frames drop, instead of warning",
    )


def sink_options_from_args(args: argparse.Namespace) -> SinkOptions:
    pairs = []
    for item in args.encoder_option or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(
                f"--encoder-option {item!r} is not KEY=VALUE; for example --encoder-option preset=slow"
            )
        pairs.append((key.strip(), value))
    if args.crf is not None and not 0 <= args.crf <= 63:
        raise UsageError(
            f"--crf {args.crf:g} is out of range; expected 0..63 (libx264: 0..51, 18 is the default)"
        )
    return SinkOptions(
        format=args.format,
        codec=args.codec,
        crf=args.crf,
        pix_fmt=args.pix_fmt,
        encoder_options=tuple(pairs),
        audio=not args.no_audio,
    )


def check_dropped(source: Source, strict: bool) -> str | None:
    """After the last frame: the warning to print about frames lost to corrupt packets, or None.

    With `strict` the loss is an InputError instead (issue 2: exit 0 with a warning unless --strict).
    """
    dropped = source.dropped
    if not dropped:
        return None
    message = (
        f"{dropped} frame{'s' if dropped != 1 else ''} of {source.path if not source.is_pipe else 'standard input'} "
        f"could not be decoded (corrupt packets) and {'are' if dropped != 1 else 'is'} missing from the output"
    )
    if strict:
        raise InputError(f"{message}; rerun without --strict to accept that")
    return message
