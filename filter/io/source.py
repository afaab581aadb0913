"""Source of the graph: demux and decode one video stream with PyAV, keep the other streams' packets.

Frames leave as `Frame`s: RGB at the input's size, uint8 for 8-bit and uint16 (full 16-bit scale) for
10/12-bit pixel formats, with the decoder's pts and the stream's time_base untouched (we
keep frame.pts/time_base, never re-derive them from a frame rate; that is what keeps VFR intact). Audio,
subtitle and data packets met while demuxing wait in a queue until the Sink remuxes them.

Colour: the YUV->RGB conversion is told the frame's matrix and range explicitly (PyAV
#1430/#2149/#2230 are all wrong-colour bugs from implicit defaults); the Sink uses the same tags back.

What may be opened: the input itself only. FFmpeg is given a protocol whitelist (`file` for a path, `pipe`
for standard input) and, unless `--input-format` names one, a demuxer whitelist without the demuxers
that open further files or URLs (HLS and DASH playlists, concat lists, ...) or that turn text into
pictures (`tty` and friends): FFmpeg still probes the format, and refuses a refused one before reading
anything it points at.
"""

from __future__ import annotations

import collections
import functools
import os
import sys
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np

from ..errors import InputError, UsageError
from ..frames import Frame
from .formats import (
    SUPPORTED_BIT_DEPTHS,
    VideoInfo,
    component_bits,
    graph_bit_depth,
    is_float_format,
)

REMUXED_STREAM_TYPES = ("audio", "subtitle", "data")
# Codecs whose streams legitimately hold packets that decode to no frame (VP8 alt-ref frames are not shown),
# so for them only the packets the decoder rejects count as dropped.
INVISIBLE_FRAME_CODECS = frozenset({"vp8"})
# Demuxer errors in a row after which the rest of the input is treated as unreadable.
MAX_DEMUX_ERRORS = 32
# Demuxers used only when --input-format names them: they open further files or URLs (playlists, file
# lists, manifests, stream descriptions, filter graphs, scripts), or draw text as pictures.
OPENS_OTHER_FILES = frozenset(
    {"hls", "applehttp", "dash", "concat", "imf", "sdp", "rtsp", "rtp", "sap", "webm_dash_manifest",
     "dvdvideo", "lavfi", "avisynth", "vapoursynth"}
)  # fmt: skip
TEXT_AS_PICTURE = frozenset({"tty", "bin", "xbin", "adf", "idf"})
REFUSED_DEMUXERS = OPENS_OTHER_FILES | TEXT_AS_PICTURE
# AVFieldOrder (libavcodec/defs.h): 1 is progressive, 0 unknown.
FIELD_ORDER_NAMES = {
    2: "top field first",
    3: "bottom field first",
    4: "top field first",
    5: "bottom field first",
}
MOOV_AT_END_HINT = (
    "pass the file path with -i instead, remux it so the index comes first (ffmpeg -i IN -c copy -movflags "
    "+faststart OUT.mp4), or pipe NUT or Matroska (ffmpeg -i IN -c copy -f nut - | ...)"
)


def open_source(
    path: str | os.PathLike,
    format: str | None = None,
    *,
    keep_side_packets: bool = True,
    on_warning: Callable[[str], None] | None = None,
) -> Source:
    """Open a video file, or standard input for `-`; `format` forces the demuxer (nut, matroska, ...).

    `keep_side_packets=False` is for readers with no Sink (a preview): audio/subtitle packets are then
    skipped instead of queued, so memory does not grow with the length of the input, and streams the
    output will not have are not warned about. `on_warning` receives each warning (interlaced input,
    dropped streams); without it they go to stderr.
    """
    return Source(path, format=format, keep_side_packets=keep_side_packets, on_warning=on_warning)


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


class Source:
    """One pass over the input: `frames()` yields each decoded video frame once, in presentation order."""

    def __init__(
        self,
        path: str | os.PathLike,
        format: str | None = None,
        *,
        keep_side_packets: bool = True,
        on_warning: Callable[[str], None] | None = None,
    ) -> None:
        self.path = str(path)
        self._keep_side_packets = keep_side_packets
        self._on_warning = on_warning
        self.warnings: list[str] = []
        self.is_pipe = self.path == "-"
        self._name = "standard input" if self.is_pipe else self.path
        self._container = self._open(format)
        try:
            self._setup()
        except BaseException:
            self._container.close()
            raise

    # --- opening -------------------------------------------------------------------------------------

    def _open(self, format: str | None) -> av.container.InputContainer:
        if format is not None and format not in av.formats_available:
            raise UsageError(
                f"unknown input format {format!r}; expected a demuxer name such as nut, matroska, mpegts"
            )
        if not self.is_pipe:
            p = Path(self.path)
            if not p.exists():
                raise InputError(
                    f"{self.path}: no such file; expected a video file, or '-' for standard input"
                )
            if p.is_dir():
                raise InputError(f"{self.path} is a folder; expected a video file")
        elif sys.stdin is not None and sys.stdin.isatty():
            raise InputError(
                "standard input is a terminal; pipe a video into it (ffmpeg -i IN -f nut - | ...)"
            )
        # The protocol of the input itself; a forced demuxer (hls, concat) may open local files too.
        # "file:" keeps a name such as "concat:x" or "subfile:..." a plain file name.
        target = "pipe:0" if self.is_pipe else "file:" + os.path.abspath(self.path)
        options = {"protocol_whitelist": "pipe" if self.is_pipe else "file"}
        if format is None:
            options["format_whitelist"] = allowed_demuxers()
        else:
            options["protocol_whitelist"] = "file,pipe"
        try:
            container = av.open(target, "r", format=format, container_options=options)
        except PermissionError:
            raise InputError(f"{self._name}: permission denied; make the file readable") from None
        except av.error.ArgumentError as exc:
            if format is None:
                # FFmpeg's answer when the demuxer it chose is not on the whitelist.
                raise InputError(self._refused_message(None)) from None
            raise self._unreadable(exc) from None
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise self._unreadable(exc) from None
        chosen = set(container.format.name.split(","))
        if format is None and chosen & REFUSED_DEMUXERS:
            container.close()
            raise InputError(self._refused_message(min(chosen & REFUSED_DEMUXERS)))
        return container

    def _unreadable(self, exc: BaseException) -> InputError:
        hint = " (use --input-format to name the format of a pipe)" if self.is_pipe else ""
        return InputError(
            f"{self._name} is not a media file FFmpeg can read ({_reason(exc)}); "
            f"expected a video such as MP4, MKV, MOV or NUT{hint}"
        )

    def _refused_message(self, demuxer: str | None) -> str:
        kind = _refused_kind(demuxer, None if self.is_pipe else self.path)
        return (
            f"{self._name} is {kind}, not a video; expected a video such as MP4, MKV, MOV or NUT "
            f"(only --input-format on the command line makes FFmpeg read it anyway)"
        )

    def _setup(self) -> None:
        container = self._container
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
            raise InputError(f"{self._name} has no video stream (it has {kinds}); expected a video")
        self._video = _main_video_stream(container)
        self._remux_streams = [
            s for s in container.streams if s.type in REMUXED_STREAM_TYPES and self._keep_side_packets
        ]
        remux_index = {s.index for s in self._remux_streams}
        self._remux_index = remux_index
        self._side_packets: collections.deque[av.Packet] = collections.deque()
        self._demux = self._container.demux()
        self._demux_done = False
        self._video_ahead: collections.deque[av.Packet] = collections.deque()
        self._video_packets = 0
        self._decode_errors = 0
        self._delivered = 0
        self._exhausted = False
        self._last_pts: int | None = None
        self._last_raw_pts: int | None = None
        self._steps: collections.Counter[int] = collections.Counter()  # pts steps between shown frames
        self._decoded = self._decode()
        first = next(self._decoded, None)
        if first is None:
            if self.is_pipe and {"mov", "mp4"} & set(container.format.name.split(",")):
                raise InputError(
                    "standard input is an MP4/MOV whose index (moov) is at the end of the file, where a pipe "
                    f"cannot reach it; {MOOV_AT_END_HINT}"
                )
            raise InputError(f"{self._name} has a video stream with zero frames; expected at least one frame")
        self._first = first
        self.info = self._describe(first)
        if self._keep_side_packets:
            self._warn_about_streams(first)
        self._rgb_format = "rgb24" if self.info.bit_depth <= 8 else "rgb48le"
        # Convert the first frame now so that an unconvertible pixel format fails at open, not mid-run.
        self._first_image = self._to_rgb(first)

    def _describe(self, first: av.VideoFrame) -> VideoInfo:
        stream = self._video
        fmt = first.format
        name = fmt.name
        bits = component_bits(fmt)
        depth = graph_bit_depth(bits)
        if is_float_format(name) or depth not in SUPPORTED_BIT_DEPTHS:
            kind = "floating-point samples" if is_float_format(name) else f"{bits} bits per component"
            raise InputError(
                f"{self._name}: unsupported pixel format {name} ({kind}); expected 8, 10 or 12 bits per "
                f"component, convert it first (ffmpeg -i IN -pix_fmt yuv420p10le OUT.mkv)"
            )
        cc = stream.codec_context
        rotation = first.rotation or _metadata_rotation(stream.metadata)
        duration = None
        if stream.duration is not None and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif self._container.duration is not None:
            duration = self._container.duration / av.time_base
        return VideoInfo(
            width=first.width,
            height=first.height,
            frame_count=stream.frames or None,
            time_base=stream.time_base or first.time_base or Fraction(1, 1000),
            average_rate=stream.average_rate or stream.guessed_rate,
            bit_depth=depth,
            pix_fmt=name,
            color_range=int(first.color_range or cc.color_range or 0),
            colorspace=int(_specified(first.colorspace, cc.colorspace)),
            color_trc=int(_specified(first.color_trc, cc.color_trc)),
            color_primaries=int(_specified(first.color_primaries, cc.color_primaries)),
            rotation=int(rotation) % 360,
            sample_aspect_ratio=cc.sample_aspect_ratio or stream.sample_aspect_ratio or None,
            codec=cc.name,
            container_format=self._container.format.name,
            duration=duration,
        )

    def _warn_about_streams(self, first: av.VideoFrame) -> None:
        """Warn about what the output will not have: the field order, other video streams, cover art."""
        order = FIELD_ORDER_NAMES.get(int(self._video.codec_context.field_order or 0))
        if order is not None or first.interlaced_frame:
            described = f" ({order})" if order else ""
            self._warn(
                f"{self._name} is interlaced{described}; frames are processed whole and written progressive, "
                f"so any combing stays in the picture: deinterlace it first for a clean result "
                f"(ffmpeg -i IN -vf bwdif -c:a copy OUT.mkv)"
            )
        for stream in self._container.streams:
            if stream.index == self._video.index:
                continue
            if stream.type == "video" and stream.disposition & av.stream.Disposition.attached_pic:
                self._warn(f"dropping stream #{stream.index}, a cover picture: the output has no cover art")
            elif stream.type == "video":
                self._warn(
                    f"dropping video stream #{stream.index} ({_codec_name(stream)}): only video stream "
                    f"#{self._video.index} is re-rendered"
                )
            elif stream.type == "attachment":
                self._warn(f"dropping attachment stream #{stream.index} (files attached to the input)")

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        if self._on_warning is not None:
            self._on_warning(message)
        else:
            print(f"rerender: warning: {message}", file=sys.stderr)

    # --- public --------------------------------------------------------------------------------------

    @property
    def video_stream(self) -> av.video.stream.VideoStream:
        return self._video

    @property
    def remux_streams(self) -> list[av.stream.Stream]:
        """Audio, subtitle and data streams of the input, the templates of the Sink's copies."""
        return list(self._remux_streams)

    @property
    def delivered(self) -> int:
        """Frames handed out by `frames()` so far."""
        return self._delivered

    @property
    def exhausted(self) -> bool:
        return self._exhausted

    @property
    def dropped(self) -> int:
        """Video packets that produced no frame (corrupt data); final once `frames()` is exhausted.

        Counted as packets in minus frames out: FFmpeg's H.264 decoder often drops a damaged access unit
        without raising, so counting exceptions alone would miss them. Before the end only the packets the
        decoder rejected outright are known (others may still be in its reordering delay). Packets the
        container marks to be decoded but not shown (an MP4 edit list that starts after them) are not
        counted: their frames are meant to be missing. Frames whose packets the demuxer never returned (a
        damaged Matroska, NUT or MPEG-TS stretch that it skipped while resynchronising) are found as
        jumps in the timestamps of a constant-rate stream (`missing_by_timestamps`).
        """
        if self._exhausted and self.info.codec not in INVISIBLE_FRAME_CODECS:
            lost = missing_by_timestamps(self._steps)
            return max(0, self._video_packets - self._delivered, self._decode_errors, lost)
        return self._decode_errors

    def frames(self) -> Iterator[Frame]:
        """Yield every decodable frame once; a second call continues where the first stopped."""
        if self._first is not None:
            frame, image = self._first, self._first_image
            self._first = self._first_image = None
            yield self._frame(frame, image)
        for decoded in self._decoded:
            yield self._frame(decoded, self._to_rgb(decoded))

    def take_side_packets(self, until: float | None = None) -> list[av.Packet]:
        """Pop queued audio/subtitle/data packets whose time is at most `until` seconds (all when None)."""
        out = []
        while self._side_packets:
            packet = self._side_packets[0]
            if until is not None:
                t = _packet_time(packet)
                if t is not None and t > until:
                    break
            out.append(self._side_packets.popleft())
        return out

    def drain_side_packets(self) -> list[av.Packet]:
        """Read the rest of the input for its non-video packets (used when the Sink closes early)."""
        if not self._exhausted:
            for _ in self._decoded:
                pass
        return self.take_side_packets()

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- internals -----------------------------------------------------------------------------------

    def _frame(self, frame: av.VideoFrame, image: np.ndarray) -> Frame:
        if frame.pts is not None:
            if self._last_raw_pts is not None and frame.pts > self._last_raw_pts:
                self._steps[frame.pts - self._last_raw_pts] += 1
            self._last_raw_pts = frame.pts
        pts = frame.pts if frame.pts is not None else frame.dts
        if pts is None:
            pts = self._guess_next_pts()
        if self._last_pts is not None and pts <= self._last_pts:
            # Encoders need strictly increasing pts; a duplicate stamp moves by one tick (keeps the order).
            pts = self._last_pts + 1
        self._last_pts = pts
        out = Frame(index=self._delivered, pts=pts, time_base=self.info.time_base, image=image)
        self._delivered += 1
        return out

    def _guess_next_pts(self) -> int:
        if self._last_pts is None:
            return 0
        rate = self.info.average_rate or Fraction(25)
        return self._last_pts + max(1, round(1 / (rate * self.info.time_base)))

    def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        try:
            return frame.to_ndarray(
                format=self._rgb_format,
                src_colorspace=_sws_colorspace(frame.colorspace or self.info.colorspace),
                src_color_range=frame.color_range or self.info.color_range or None,
                dst_color_range=2,  # RGB is full range
            )
        except (ValueError, NotImplementedError, av.error.FFmpegError) as exc:
            raise InputError(
                f"{self._name}: unsupported pixel format {frame.format.name} ({_reason(exc)}); "
                f"convert it first (ffmpeg -i IN -pix_fmt yuv420p OUT.mkv)"
            ) from None

    def _decode(self) -> Iterator[av.VideoFrame]:
        while True:
            packet = self._video_ahead.popleft() if self._video_ahead else self._read_packet()
            if packet is None:
                break
            if packet.size and not packet.is_discard:
                self._video_packets += 1
            yield from self._decode_packet(packet)
        yield from self._decode_packet(None)
        self._exhausted = True

    def _read_packet(self) -> av.Packet | None:
        """The next video packet from the demuxer (None at the end); other streams' packets are queued."""
        errors_in_a_row = 0
        while not self._demux_done:
            try:
                packet = next(self._demux)
            except StopIteration:
                self._demux_done = True
                break
            except av.error.FFmpegError:
                # A damaged container block: skip it and resume demuxing after it.
                errors_in_a_row += 1
                if errors_in_a_row > MAX_DEMUX_ERRORS:
                    self._demux_done = True
                    break
                self._demux = self._container.demux()
                continue
            errors_in_a_row = 0
            index = packet.stream.index
            if index == self._video.index:
                return packet
            if index in self._remux_index and packet.size:
                self._side_packets.append(packet)
        return None

    def first_side_packet(self, stream_index: int, read_ahead: int = 4096) -> av.Packet | None:
        """The first queued packet of a non-video stream, demuxing ahead (video packets wait) if needed.

        The Sink needs one to build codec headers before it writes the output header (ADTS AAC).
        """
        for _ in range(read_ahead + 1):
            for packet in self._side_packets:
                if packet.stream.index == stream_index:
                    return packet
            if self._demux_done:
                return None
            packet = self._read_packet()
            if packet is not None:
                self._video_ahead.append(packet)
        return None

    def _decode_packet(self, packet: av.Packet | None) -> list[av.VideoFrame]:
        try:
            return self._video.decode(packet)
        except av.error.EOFError:
            return []
        except av.error.FFmpegError:
            self._decode_errors += 1
            return []


def _main_video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first video stream that is a moving picture (not cover art attached to an audio file)."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise InputError(
        f"{container.name} has only still pictures (cover art), no video stream; expected a video"
    )


def missing_by_timestamps(steps: collections.Counter[int]) -> int:
    """Frames missing inside a constant-rate stream, from the steps between consecutive frame timestamps.

    A stream counts as constant-rate when at least 90% of its steps are the most common step (within 2%,
    for rates such as 30000/1001 in a 1/1000 time base); a step of k such intervals then means k-1 frames
    are missing. Variable-rate streams (phones, VFR screen recordings, pulldown) are not judged: 0.
    """
    total = sum(steps.values())
    if total < 8:
        return 0
    step = steps.most_common(1)[0][0]
    tolerance = max(1, step // 50)
    regular = sum(n for size, n in steps.items() if abs(size - step) <= tolerance)
    if regular < 0.9 * total:
        return 0
    return sum((round(size / step) - 1) * n for size, n in steps.items() if size * 2 > step * 3)


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


def _codec_name(stream: av.stream.Stream) -> str:
    context = stream.codec_context
    return context.name if context is not None else "unknown codec"


def _specified(frame_value, stream_value) -> int:
    # 2 is "unspecified" for colorspace, transfer and primaries alike.
    value = int(frame_value or 2)
    return value if value != 2 else int(stream_value or 2)


def _sws_colorspace(colorspace: int) -> int | None:
    """swscale's coefficient table is indexed by AVColorSpace; 'unspecified' and RGB use its default."""
    return None if colorspace in (0, 2) else colorspace


def _metadata_rotation(metadata: dict[str, str]) -> int:
    try:
        return int(float(metadata.get("rotate", "0")))
    except ValueError:
        return 0


def _packet_time(packet: av.Packet) -> float | None:
    ts = packet.dts if packet.dts is not None else packet.pts
    if ts is None or not packet.time_base:
        return None
    return float(ts * packet.time_base)


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text).strip().rstrip(".").replace("\n", " ")
