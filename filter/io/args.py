"""Command-line flags of the video I/O layer, shared by every command that reads and writes video."""

from __future__ import annotations

import argparse
import os

from ..errors import InputError, UsageError
from .formats import default_codec
from .options import DEFAULT_CRF, SinkOptions, check_encoder_settings
from .paths import check_output
from .source import Source
from .target import output_muxer


def add_io_arguments(parser: argparse.ArgumentParser) -> None:
    """Add -f, --input-format, --codec, --crf, --pix-fmt, --encoder-option, --no-audio and --strict."""
    group = parser.add_argument_group("video input/output")
    group.add_argument(
        "-f",
        "--format",
        metavar="FMT",
        help="output container (muxer) name; default: from the file extension, nut for '-' and for a FIFO "
        "or device without one (mp4/mov to a pipe, FIFO or device are written fragmented)",
    )
    group.add_argument(
        "--input-format",
        metavar="FMT",
        help="force the input demuxer (nut, matroska, mpegts, yuv4mpegpipe, ...); default: probe it, "
        "refusing playlists, file lists and text (hls, concat, tty, ...), which only this flag allows",
    )
    group.add_argument(
        "--codec",
        metavar="NAME",
        help="video encoder; default: libx264 (libvpx-vp9 for webm, rawvideo for y4m)",
    )
    group.add_argument(
        "--crf",
        type=float,
        default=None,
        help=f"constant rate factor, lower is better quality (libx264/libx265: 0-51, libvpx: 0-63); "
        f"default: {DEFAULT_CRF:g} where the encoder has one",
    )
    group.add_argument(
        "--pix-fmt",
        metavar="FMT",
        help="output pixel format; default: yuv420p, yuv420p10le for 10/12-bit input (4:4:4 for odd sizes)",
    )
    group.add_argument(
        "--encoder-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the encoder, e.g. preset=slow or x264-params=... (repeatable); checked against "
        "the encoder's own options; default: none",
    )
    group.add_argument(
        "--no-audio",
        action="store_true",
        help="drop the audio streams instead of copying them; default: audio is copied unchanged",
    )
    group.add_argument(
        "--strict",
        action="store_true",
        help="fail (exit 2) when corrupt packets made frames drop; default: warn and keep the frames that "
        "decoded",
    )


def sink_options_from_args(args: argparse.Namespace) -> SinkOptions:
    """SinkOptions from the flags; with `args.output` (and `args.input`) the output location and the
    encoder settings are checked here, before any work (paths.check_output, options.check_encoder_settings).
    """
    pairs = []
    for item in args.encoder_option or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(
                f"--encoder-option {item!r} is not KEY=VALUE; for example --encoder-option preset=slow"
            )
        pairs.append((key.strip(), value))
    options = SinkOptions(
        format=args.format,
        codec=args.codec,
        crf=DEFAULT_CRF if args.crf is None else args.crf,
        pix_fmt=args.pix_fmt,
        encoder_options=tuple(pairs),
        audio=not args.no_audio,
    )
    output = getattr(args, "output", None)
    if output is not None:
        # Found now, before any frame is decoded or rendered (the Sink checks again when it opens).
        source = getattr(args, "input", None)
        kind = check_output(
            output, source if source and os.path.exists(source) else None, folder_checks=False
        )
        codec = options.codec or default_codec(options.format or output_muxer(output, kind))
        check_encoder_settings(codec, dict(pairs), options.crf, crf_given=args.crf is not None)
    elif args.crf is not None and not 0 <= args.crf <= 63:
        raise UsageError(
            f"--crf {args.crf:g} is out of range; expected 0 to 63 ({DEFAULT_CRF:g} is the default)"
        )
    return options


def check_dropped(source: Source, strict: bool) -> str | None:
    """After the last frame: the warning to print about frames lost to corrupt packets, or None.

    With `strict` the loss is an InputError instead (exit 0 with a warning unless --strict).
    """
    dropped = source.dropped
    if not dropped:
        return None
    name = source.path if not source.is_pipe else "standard input"
    message = (
        f"{dropped} frame{'s' if dropped != 1 else ''} of {name} could not be decoded (corrupt or lost "
        f"packets) and {'are' if dropped != 1 else 'is'} missing from the output"
    )
    if strict:
        raise InputError(f"{message}; rerun without --strict to accept that")
    return message
