"""Sink of the graph: encode the output frames with PyAV and remux the input's other streams untouched.

What the output keeps from the input (README, *Video I/O*): frame count, every pts (VFR included) and the
time_base, size, sample aspect ratio, rotation (display matrix; stream metadata in NUT, which has no
display matrix), colour range/matrix/transfer/primaries. Audio, subtitle and data packets are copied
byte for byte (no re-encode) and interleaved by time with the video packets.

A file output is written under a temporary name in the same folder and renamed when complete; on an
exception, or when fewer frames arrive than the Source delivered, the temporary file is removed, so a
failed run never leaves a half-written output behind. An existing FIFO or character device is written
straight instead (paths.py says why), and the output location is checked when the Sink opens, before any
frame is rendered.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np

from ..errors import RerenderError, UsageError
from ..frames import Frame
from . import adts, paths, x264
from .formats import (
    DEFAULT_PIPE_FORMAT,
    DISPLAY_MATRIX_MUXERS,
    FRAGMENTABLE_MP4_MUXERS,
    FRAGMENTED_MP4_FLAGS,
    MOV_MUXERS,
    default_codec,
    default_pix_fmt,
)
from .formats import sws_colorspace as _sws_colorspace
from .messages import reason as _reason
from .options import check_encoder_settings
from .source import Source
from .timestamps import packet_time as _packet_time


@dataclass(frozen=True)
class SinkOptions:
    """Output settings (`-f`, `--codec`, `--crf`, `--pix-fmt`, `--encoder-option`, `--no-audio`)."""

    format: str | None = None  # muxer; None = from the file extension, `nut` for `-`
    codec: str | None = None  # None = libx264 (libvpx-vp9 for webm, rawvideo for y4m)
    crf: float | None = 18  # applied when the encoder has a `crf` option
    pix_fmt: str | None = None  # None = yuv420p, yuv420p10le for 10/12-bit input (4:4:4 for odd sizes)
    encoder_options: tuple[tuple[str, str], ...] = ()
    audio: bool = True  # False drops the audio streams (subtitles and data are still copied)


def open_sink(
    path: str | os.PathLike,
    source: Source,
    options: SinkOptions | None = None,
    *,
    on_warning: Callable[[str], None] | None = None,
) -> Sink:
    """Open the output for `source`'s video; `-` is standard output.

    `on_warning` receives each warning (a dropped stream); without it they go to stderr.
    """
    return Sink(path, source, options or SinkOptions(), on_warning=on_warning)


class Sink:
    def __init__(
        self,
        path: str | os.PathLike,
        source: Source,
        options: SinkOptions,
        *,
        on_warning: Callable[[str], None] | None = None,
    ) -> None:
        self.path = str(path)
        self.is_pipe = self.path == "-"
        self.options = options
        self._source = source
        self._info = source.info
        self._on_warning = on_warning
        self.written = 0
        self.warnings: list[str] = []
        # "pipe", "stream" (an existing FIFO or device, written straight) or "file" (temp-and-rename).
        self.kind = paths.check_output(self.path, None if source.is_pipe else source.path)
        self._closed = False
        self._temp: Path | None = None
        self._final: Path | None = None  # where the temporary file is renamed to (a symlink's target)
        self._last_video_time: float | None = None
        self._adts: set[int] = set()  # input streams whose ADTS headers are stripped (adts.py)
        self._container = self._open_container()
        try:
            self._video = self._add_video_stream()
            self._copies = self._add_remux_streams()
        except BaseException:
            self._discard()
            raise

    # --- opening -------------------------------------------------------------------------------------

    def _open_container(self) -> av.container.OutputContainer:
        fmt = self.options.format
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
        tb = self._info.time_base
        if fmt in MOV_MUXERS and tb.numerator == 1:
            # The MOV muxer otherwise doubles a coarse time base until it reaches 10000 (1/25 -> 1/12800);
            # the times would survive but not the input's time_base and pts ticks.
            container_options["video_track_timescale"] = str(tb.denominator)
        # Muxers that open further files (segment, hls, tee) may then only use local files and pipes.
        container_options["protocol_whitelist"] = "file,pipe"
        try:
            return av.open(target, "w", format=fmt, container_options=container_options)
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            self._remove_temp()
            raise UsageError(f"cannot write {self._name()} as {fmt} ({_reason(exc)})") from None

    def _add_video_stream(self) -> av.video.stream.VideoStream:
        info, opts = self._info, self.options
        muxer = self._container.format.name
        codec_name = opts.codec or default_codec(muxer)
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
        pix_fmt = opts.pix_fmt or default_pix_fmt(supported, info.bit_depth, info.width, info.height)
        if supported is not None and pix_fmt not in supported:
            raise UsageError(f"{codec_name} cannot encode {pix_fmt}; expected one of {', '.join(supported)}")
        encoder_options = dict(opts.encoder_options)
        check_encoder_settings(codec_name, encoder_options, opts.crf, crf_given=False)
        if opts.crf is not None and "crf" not in encoder_options and _has_private_option(codec_name, "crf"):
            encoder_options["crf"] = f"{opts.crf:g}"
        if "bf" not in encoder_options and not _keeps_negative_timestamps(self._container.format):
            # B-frames make the first dts negative; this muxer would then shift every timestamp by the
            # encoder delay (FFmpeg's avoid_negative_ts), and the output would no longer carry the input's
            # pts. Without B-frames dts == pts, so nothing shifts.
            encoder_options["bf"] = "0"
        if codec_name == "libx264":
            # Byte-identical output run to run on AVX-512 CPUs (x264.py says what was measured).
            encoder_options = x264.with_reproducible_asm(encoder_options, x264.cpu_flags())
        try:
            stream = self._container.add_stream(codec_name, options=encoder_options)
        except ValueError as exc:
            raise UsageError(f"the {muxer} format cannot hold {codec_name} video ({_reason(exc)})") from None
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
        self._pix_fmt = pix_fmt
        self._codec_name = codec_name
        return stream

    def _add_remux_streams(self) -> dict[int, av.stream.Stream]:
        copies: dict[int, av.stream.Stream] = {}
        muxer = self._container.format.name
        for stream in self._source.remux_streams:
            if stream.type == "audio" and not self.options.audio:
                continue
            try:
                copy = self._container.add_stream_from_template(stream)
            except (ValueError, av.error.FFmpegError) as exc:
                self._warn(
                    f"dropping {stream.type} stream #{stream.index} ({_codec_name(stream)}): "
                    f"the {muxer} format cannot hold it ({_reason(exc)})"
                )
                continue
            if (
                _codec_name(stream) == "aac"
                and muxer in adts.ASC_MUXERS
                and not stream.codec_context.extradata
            ):
                problem = self._prepare_adts(stream, copy)
                if problem is not None:
                    self._warn(f"dropping audio stream #{stream.index} (aac): {problem}")
                    continue
            copies[stream.index] = copy
        return copies

    def _prepare_adts(self, stream: av.stream.Stream, copy: av.stream.Stream) -> str | None:
        """Give `copy` the AudioSpecificConfig of ADTS input; a reason when that is impossible."""
        first = self._source.first_side_packet(stream.index)
        if first is None:
            return "it has no packets to copy"
        data = bytes(first)
        if not adts.is_adts(data):
            return "it is raw AAC without its AudioSpecificConfig"
        if adts.raw_blocks(data) != 1:
            return "its ADTS frames hold several AAC blocks each, which MP4/Matroska cannot take as is"
        copy.codec_context.extradata = adts.audio_specific_config(data)
        self._adts.add(stream.index)
        return None

    # --- writing -------------------------------------------------------------------------------------

    def write(self, frame: Frame) -> None:
        """Encode one output frame; its pts/time_base are the input frame's."""
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
            dst_colorspace=_sws_colorspace(info.colorspace),
            dst_color_range=info.color_range or None,
        )
        out.color_range, out.colorspace = info.color_range, info.colorspace
        out.color_trc, out.color_primaries = info.color_trc, info.color_primaries
        pts = frame.pts if frame.pts is not None else frame.index
        if frame.time_base != info.time_base and frame.pts is not None:
            pts = round(frame.pts * Fraction(frame.time_base) / info.time_base)
        out.pts, out.time_base = pts, info.time_base
        self._mux_video(self._encode(out))
        self.written += 1

    def _encode(self, frame: av.VideoFrame | None) -> list[av.Packet]:
        try:
            return self._video.encode(frame)
        except av.error.FFmpegError as exc:
            if isinstance(exc, OSError) and getattr(exc, "errno", None) in paths.WRITE_ERRNOS:
                raise RerenderError(paths.write_error(self._name(), exc)) from None
            raise UsageError(
                f"the {self._codec_name} encoder failed ({_reason(exc)}); check --codec, --pix-fmt and "
                f"--encoder-option"
            ) from None

    def _mux_video(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            t = _packet_time(packet)
            if t is not None:
                # Side packets up to this video packet's time go first: the output stays interleaved.
                self._mux_side(self._source.take_side_packets(until=t))
                self._last_video_time = t
            self._mux(packet)

    def _mux_side(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            index = packet.stream.index
            copy = self._copies.get(index)
            if copy is None:
                continue
            if index in self._adts:
                packet = _strip_adts(packet)
            packet.stream = copy
            self._mux(packet)

    def _mux(self, packet: av.Packet) -> None:
        try:
            self._container.mux(packet)
        except BrokenPipeError:
            raise RerenderError(
                "the reader of standard output closed the pipe; nothing more can be written"
            ) from None
        except (av.error.FFmpegError, OSError) as exc:
            if getattr(exc, "errno", None) == 32:  # EPIPE
                raise RerenderError(f"the reader of {self._name()} closed the pipe") from None
            raise RerenderError(paths.write_error(self._name(), exc)) from None

    # --- closing -------------------------------------------------------------------------------------

    def close(self) -> None:
        """Flush the encoder, copy the remaining side packets, finish the file and move it into place."""
        if self._closed:
            return
        try:
            expected = self._source.delivered
            if self.written < expected or self.written == 0:
                raise RerenderError(
                    f"only {self.written} of {expected} frames reached the output; "
                    f"{'nothing was written' if self._temp is not None else 'the stream is incomplete'}"
                )
            self._mux_video(self._encode(None))
            if self._source.exhausted:
                self._mux_side(self._source.take_side_packets())
            elif self._last_video_time is not None:
                # The caller stopped early: keep the other streams up to the last video frame only.
                self._mux_side(self._source.take_side_packets(until=self._last_video_time))
            try:
                self._container.close()
            except (av.error.FFmpegError, OSError) as exc:
                raise RerenderError(paths.write_error(self._name(), exc)) from None
            if self._temp is not None:
                try:
                    os.replace(self._temp, self._final)
                except OSError as exc:
                    raise RerenderError(paths.write_error(self._name(), exc)) from None
                self._temp = None
        except BaseException:
            self._discard()
            raise
        self._closed = True

    def abort(self) -> None:
        """Give up: close the container and remove the temporary file (a pipe just stops)."""
        self._discard()

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _discard(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - the output is being thrown away; its close errors do not matter
            pass
        self._remove_temp()

    def _remove_temp(self) -> None:
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)
            self._temp = None

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        if self._on_warning is not None:
            self._on_warning(message)
        else:
            print(f"rerender: warning: {message}", file=sys.stderr)

    def _name(self) -> str:
        return "standard output" if self.is_pipe else self.path


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


def _has_private_option(codec_name: str, option: str) -> bool:
    try:
        context = av.codec.CodecContext.create(codec_name, "w")
    except (av.error.FFmpegError, ValueError):
        return False
    return any(o.name == option for o in context.supported_options.private)


def _codec_name(stream: av.stream.Stream) -> str:
    context = stream.codec_context
    return context.name if context is not None else "unknown codec"


def _strip_adts(packet: av.Packet) -> av.Packet:
    data = bytes(packet)
    if not adts.is_adts(data):
        return packet
    raw = av.Packet(data[adts.header_length(data) :])
    raw.pts, raw.dts, raw.duration, raw.time_base = packet.pts, packet.dts, packet.duration, packet.time_base
    raw.is_keyframe = packet.is_keyframe
    return raw


AVFMT_TS_NEGATIVE = 0x40000  # libavformat/avformat.h: the muxer accepts negative timestamps


def _keeps_negative_timestamps(fmt: av.format.ContainerFormat) -> bool:
    """Muxers that store a negative first dts (MP4/MOV edit lists) or only store pts (Matroska)."""
    return bool(fmt.flags & AVFMT_TS_NEGATIVE) or fmt.name in ("matroska", "webm")
