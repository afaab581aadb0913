"""What the input's streams are: the video stream to render, its `VideoInfo`, and what the output drops.

Colour tags, rotation and sample aspect ratio are read from the first decoded frame, falling back to the
stream's codec parameters where the frame leaves them unspecified; the Sink writes the same tags back.
"""

from __future__ import annotations

from fractions import Fraction

import av

from ..errors import InputError
from .formats import SUPPORTED_BIT_DEPTHS, VideoInfo, component_bits, graph_bit_depth, is_float_format
from .messages import codec_name

# AVFieldOrder (libavcodec/defs.h): 1 is progressive, 0 unknown.
FIELD_ORDER_NAMES = {
    2: "top field first",
    3: "bottom field first",
    4: "top field first",
    5: "bottom field first",
}


def main_video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first video stream that is a moving picture (not cover art attached to an audio file)."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise InputError(
        f"{container.name} has only still pictures (cover art), no video stream; expected a video"
    )


def describe(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    first: av.VideoFrame,
    name: str,
) -> VideoInfo:
    """The `VideoInfo` of `stream`, whose first decoded frame is `first`; InputError for a pixel format
    the graph cannot work in (floating point, or a bit depth outside SUPPORTED_BIT_DEPTHS)."""
    fmt = first.format
    pix_fmt = fmt.name
    bits = component_bits(fmt)
    depth = graph_bit_depth(bits)
    if is_float_format(pix_fmt) or depth not in SUPPORTED_BIT_DEPTHS:
        kind = "floating-point samples" if is_float_format(pix_fmt) else f"{bits} bits per component"
        raise InputError(
            f"{name}: unsupported pixel format {pix_fmt} ({kind}); expected 8, 10 or 12 bits per "
            f"component, convert it first (ffmpeg -i IN -pix_fmt yuv420p10le OUT.mkv)"
        )
    cc = stream.codec_context
    rotation = first.rotation or _metadata_rotation(stream.metadata)
    duration = None
    if stream.duration is not None and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    return VideoInfo(
        width=first.width,
        height=first.height,
        frame_count=stream.frames or None,
        time_base=stream.time_base or first.time_base or Fraction(1, 1000),
        average_rate=stream.average_rate or stream.guessed_rate,
        bit_depth=depth,
        pix_fmt=pix_fmt,
        color_range=int(first.color_range or cc.color_range or 0),
        colorspace=int(_specified(first.colorspace, cc.colorspace)),
        color_trc=int(_specified(first.color_trc, cc.color_trc)),
        color_primaries=int(_specified(first.color_primaries, cc.color_primaries)),
        rotation=int(rotation) % 360,
        sample_aspect_ratio=cc.sample_aspect_ratio or stream.sample_aspect_ratio or None,
        codec=cc.name,
        container_format=container.format.name,
        duration=duration,
    )


def dropped_stream_warnings(
    container: av.container.InputContainer,
    video: av.video.stream.VideoStream,
    first: av.VideoFrame,
    name: str,
) -> list[str]:
    """Warnings about what the output will not have: the field order, other video streams, cover art."""
    warnings = []
    order = FIELD_ORDER_NAMES.get(int(video.codec_context.field_order or 0))
    if order is not None or first.interlaced_frame:
        described = f" ({order})" if order else ""
        warnings.append(
            f"{name} is interlaced{described}; frames are processed whole and written progressive, "
            f"so any combing stays in the picture: deinterlace it first for a clean result "
            f"(ffmpeg -i IN -vf bwdif -c:a copy OUT.mkv)"
        )
    for stream in container.streams:
        if stream.index == video.index:
            continue
        if stream.type == "video" and stream.disposition & av.stream.Disposition.attached_pic:
            warnings.append(f"dropping stream #{stream.index}, a cover picture: the output has no cover art")
        elif stream.type == "video":
            warnings.append(
                f"dropping video stream #{stream.index} ({codec_name(stream)}): only video stream "
                f"#{video.index} is re-rendered"
            )
        elif stream.type == "attachment":
            warnings.append(f"dropping attachment stream #{stream.index} (files attached to the input)")
    return warnings


def _specified(frame_value, stream_value) -> int:
    # 2 is "unspecified" for colorspace, transfer and primaries alike.
    value = int(frame_value or 2)
    return value if value != 2 else int(stream_value or 2)


def _metadata_rotation(metadata: dict[str, str]) -> int:
    try:
        return int(float(metadata.get("rotate", "0")))
    except ValueError:
        return 0
