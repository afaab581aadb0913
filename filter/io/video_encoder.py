"""The output's video stream: an encoder set up to keep the input's properties, and frames encoded by it.

What it keeps (README, *Video I/O*): every pts (VFR included) and the time_base, size, sample aspect
ratio, rotation (display matrix; stream metadata in NUT, which has no display matrix), colour
range/matrix/transfer/primaries. RGB frames are converted to the encoder's pixel format with the input's
colour tags, the conversion the Source made, reversed.
"""

from __future__ import annotations

from fractions import Fraction

import av
import av.error
import numpy as np

from ..errors import RerenderError, UsageError
from ..frames import Frame
from . import paths, x264
from .formats import DISPLAY_MATRIX_MUXERS, VideoInfo, default_codec, default_pix_fmt, sws_colorspace
from .messages import reason
from .options import SinkOptions, check_encoder_settings, crf_range

AVFMT_TS_NEGATIVE = 0x40000  # libavformat/avformat.h: the muxer accepts negative timestamps


class VideoEncoder:
    """The video stream of `container`, encoding frames of `info`'s size into packets for the muxer.

    `output_name` names the output in write errors. Raises UsageError for an encoder, pixel format or
    option the encoder or the muxer cannot take.
    """

    def __init__(
        self,
        container: av.container.OutputContainer,
        info: VideoInfo,
        options: SinkOptions,
        output_name: str,
    ) -> None:
        self._info = info
        self._name = output_name
        muxer = container.format.name
        codec_name = options.codec or default_codec(muxer)
        try:
            codec = av.codec.Codec(codec_name, "w")
        except (av.error.FFmpegError, ValueError):
            raise UsageError(
                f"unknown video encoder {codec_name!r}; expected one such as libx264, libx265, ffv1"
            ) from None
        if codec.type != "video":
            raise UsageError(
                f"{codec_name} is a {codec.type} encoder; expected a video encoder such as libx264"
            )
        supported = [f.name for f in codec.video_formats] if codec.video_formats else None
        pix_fmt = options.pix_fmt or default_pix_fmt(supported, info.bit_depth, info.width, info.height)
        if supported is not None and pix_fmt not in supported:
            raise UsageError(f"{codec_name} cannot encode {pix_fmt}; expected one of {', '.join(supported)}")
        encoder_options = dict(options.encoder_options)
        check_encoder_settings(codec_name, encoder_options, options.crf, crf_given=False)
        if options.crf is not None and "crf" not in encoder_options and crf_range(codec_name) is not None:
            encoder_options["crf"] = f"{options.crf:g}"
        if "bf" not in encoder_options and not _keeps_negative_timestamps(container.format):
            # B-frames make the first dts negative; this muxer would then shift every timestamp by the
            # encoder delay (FFmpeg's avoid_negative_ts), and the output would no longer carry the input's
            # pts. Without B-frames dts == pts, so nothing shifts.
            encoder_options["bf"] = "0"
        if codec_name == "libx264":
            # Byte-identical output run to run on AVX-512 CPUs (x264.py says why).
            encoder_options = x264.with_reproducible_asm(encoder_options, x264.cpu_flags())
        try:
            stream = container.add_stream(codec_name, options=encoder_options)
        except ValueError as exc:
            raise UsageError(f"the {muxer} format cannot hold {codec_name} video ({reason(exc)})") from None
        cc = stream.codec_context
        stream.width, stream.height, stream.pix_fmt = info.width, info.height, pix_fmt
        # The encoder gets the input's own time base and pts, so VFR timestamps pass through unchanged
        # (set both stream.time_base and codec_context.time_base).
        stream.time_base = info.time_base
        cc.time_base = info.time_base
        if info.average_rate:
            cc.framerate = info.average_rate
        if info.sample_aspect_ratio:
            cc.sample_aspect_ratio = info.sample_aspect_ratio
        cc.color_range, cc.colorspace = info.color_range, info.colorspace
        cc.color_trc, cc.color_primaries = info.color_trc, info.color_primaries
        if info.rotation:
            stream.set_display_rotation(info.rotation)
            if muxer not in DISPLAY_MATRIX_MUXERS:
                stream.metadata["rotate"] = str(info.rotation)
        self.stream = stream
        self._pix_fmt = pix_fmt
        self._codec_name = codec_name

    def encode(self, frame: Frame) -> list[av.Packet]:
        """Encode one output frame (RGB at the input's size); its pts/time_base are the input frame's."""
        info = self._info
        image = frame.image
        if image.ndim != 3 or image.shape != (info.height, info.width, 3):
            raise RerenderError(
                f"frame {frame.index} is {image.shape}, expected ({info.height}, {info.width}, 3) RGB"
            )
        if image.dtype == np.uint8:
            rgb_format = "rgb24"
        elif image.dtype == np.uint16:
            rgb_format = "rgb48le"
        else:
            raise RerenderError(f"frame {frame.index} has dtype {image.dtype}, expected uint8 or uint16")
        out = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=rgb_format)
        out = out.reformat(
            format=self._pix_fmt,
            src_color_range=2,
            dst_colorspace=sws_colorspace(info.colorspace),
            dst_color_range=info.color_range or None,
        )
        out.color_range, out.colorspace = info.color_range, info.colorspace
        out.color_trc, out.color_primaries = info.color_trc, info.color_primaries
        pts = frame.pts if frame.pts is not None else frame.index
        if frame.time_base != info.time_base and frame.pts is not None:
            pts = round(frame.pts * Fraction(frame.time_base) / info.time_base)
        out.pts, out.time_base = pts, info.time_base
        return self._encode(out)

    def flush(self) -> list[av.Packet]:
        """The packets the encoder still holds (its reordering delay), at the end."""
        return self._encode(None)

    def _encode(self, frame: av.VideoFrame | None) -> list[av.Packet]:
        try:
            return self.stream.encode(frame)
        except av.error.FFmpegError as exc:
            if isinstance(exc, OSError) and getattr(exc, "errno", None) in paths.WRITE_ERRNOS:
                raise RerenderError(paths.write_error(self._name, exc)) from None
            raise UsageError(
                f"the {self._codec_name} encoder failed ({reason(exc)}); check --codec, --pix-fmt and "
                f"--encoder-option"
            ) from None


def _keeps_negative_timestamps(fmt: av.format.ContainerFormat) -> bool:
    """Muxers that store a negative first dts (MP4/MOV edit lists) or only store pts (Matroska)."""
    return bool(fmt.flags & AVFMT_TS_NEGATIVE) or fmt.name in ("matroska", "webm")
