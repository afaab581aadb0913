"""The output's encoder settings: `SinkOptions`, checked against what the chosen encoder really takes.

FFmpeg ignores an option no part of the encoder knows (`--encoder-option nonsense=1` would run as if it
were not given) and libx264 clamps a CRF above 51 to 51 without a word, so both are checked here against
the encoder's own AVOptions (its private options and the generic encoding options of AVCodecContext),
which PyAV lists.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass

import av
import av.error

from ..errors import UsageError

AV_OPT_FLAG_ENCODING_PARAM = 1  # libavutil/opt.h
# The CRF ranges the encoders document, where their AVOption range is wider than what they take
# (x264 and x265 accept any float and clamp it to 51).
CRF_RANGES = {"libx264": (0.0, 51.0), "libx264rgb": (0.0, 51.0), "libx265": (0.0, 51.0)}
DEFAULT_CRF = 18.0


@dataclass(frozen=True)
class SinkOptions:
    """Output settings (`-f`, `--codec`, `--crf`, `--pix-fmt`, `--encoder-option`, `--no-audio`)."""

    format: str | None = None  # muxer; None = from the file extension, `nut` for `-`
    codec: str | None = None  # None = libx264 (libvpx-vp9 for webm, rawvideo for y4m)
    crf: float | None = 18  # applied when the encoder has a `crf` option
    pix_fmt: str | None = None  # None = yuv420p, yuv420p10le for 10/12-bit input (4:4:4 for odd sizes)
    encoder_options: tuple[tuple[str, str], ...] = ()
    audio: bool = True  # False drops the audio streams (subtitles and data are still copied)


def _context(codec_name: str):
    try:
        return av.codec.CodecContext.create(codec_name, "w")
    except (av.error.FFmpegError, ValueError):
        return None


def encoder_option_names(codec_name: str) -> frozenset[str]:
    """Names `--encoder-option` may set for this encoder (empty when PyAV cannot open it)."""
    context = _context(codec_name)
    if context is None:
        return frozenset()
    names = {o.name for o in context.supported_options.private if o.type.name != "CONST"}
    names |= {
        o.name
        for o in context.supported_options.generic
        if o.type.name != "CONST" and int(o.flags) & AV_OPT_FLAG_ENCODING_PARAM
    }
    return frozenset(names)


def crf_range(codec_name: str) -> tuple[float, float, bool] | None:
    """(lowest, highest, whole numbers only) for the encoder's `crf`, or None when it has no `crf`."""
    context = _context(codec_name)
    if context is None:
        return None
    option = next((o for o in context.supported_options.private if o.name == "crf"), None)
    if option is None:
        return None
    integer = option.type.name in ("INT", "INT64")
    if codec_name in CRF_RANGES:
        low, high = CRF_RANGES[codec_name]
        return low, high, integer
    # -1 means "not set" in FFmpeg's wrappers; it is not a quality a user can ask for.
    low = max(0.0, float(option.min))
    high = float(option.max)
    return low, high, integer


def check_encoder_settings(
    codec_name: str, encoder_options: Mapping[str, str], crf: float | None, *, crf_given: bool = True
) -> None:
    """Refuse an encoder option the encoder does not have and a CRF outside the encoder's range.

    `crf_given` says the user asked for the CRF (rather than the default): only then is an encoder
    without a CRF an error (a default CRF is simply not applied there).
    """
    known = encoder_option_names(codec_name)
    if known:
        for key in encoder_options:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise UsageError(
                    f"--encoder-option {key}=...: {codec_name} has no option {key!r}{hint}; see "
                    f"`ffmpeg -h encoder={codec_name}` for the options it takes"
                )
    if crf is None or "crf" in encoder_options:
        return
    if not math.isfinite(crf):
        raise UsageError(f"--crf {crf}: expected a number such as {DEFAULT_CRF:g}")
    bounds = crf_range(codec_name)
    if bounds is None:
        if crf_given and known:
            raise UsageError(
                f"--crf {crf:g}: {codec_name} has no constant rate factor; drop --crf or set its own rate "
                f"control with --encoder-option (e.g. b=4M)"
            )
        return
    low, high, integer = bounds
    if not low <= crf <= high or (integer and crf != int(crf)):
        kind = "a whole number" if integer else "a number"
        raise UsageError(
            f"--crf {crf:g} is outside what {codec_name} takes; expected {kind} from {low:g} to {high:g} "
            f"(lower is better quality, {DEFAULT_CRF:g} is the default)"
        )
