"""Source of the graph: demux and decode one video stream with PyAV, keep the other streams' packets.

Frames leave as `Frame`s: RGB at the input's size, uint8 for 8-bit and uint16 (full 16-bit scale) for
10/12-bit pixel formats, with the decoder's pts and the stream's time_base untouched (timestamps.py).
Audio, subtitle and data packets met while demuxing wait in a queue until the Sink remuxes them.

Colour: the YUV->RGB conversion is told the frame's matrix and range explicitly (PyAV's implicit
defaults give wrong colours); the Sink uses the same tags back.

The container is opened under demuxers.py's policy; stream_info.py describes the video stream.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterator

import av
import av.error
import numpy as np

from ..errors import InputError
from ..frames import Frame
from .demuxers import input_name, open_input
from .formats import sws_colorspace
from .messages import Warnings, reason
from .stream_info import describe, dropped_stream_warnings, main_video_stream
from .timestamps import FrameTimestamps, packet_time

REMUXED_STREAM_TYPES = ("audio", "subtitle", "data")
# Codecs whose streams legitimately hold packets that decode to no frame (VP8 alt-ref frames are not shown),
# so for them only the packets the decoder rejects count as dropped.
INVISIBLE_FRAME_CODECS = frozenset({"vp8"})
# Demuxer errors in a row after which the rest of the input is treated as unreadable.
MAX_DEMUX_ERRORS = 32
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
        self._warn = Warnings(on_warning)
        self.warnings = self._warn.messages
        self.is_pipe = self.path == "-"
        self._name = input_name(self.path)
        self._container = open_input(self.path, format)
        try:
            self._setup()
        except BaseException:
            self._container.close()
            raise

    def _setup(self) -> None:
        container = self._container
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
            raise InputError(f"{self._name} has no video stream (it has {kinds}); expected a video")
        self._video = main_video_stream(container)
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
        self.info = describe(container, self._video, first, self._name)
        self._times = FrameTimestamps(self.info.time_base, self.info.average_rate)
        if self._keep_side_packets:
            for message in dropped_stream_warnings(container, self._video, first, self._name):
                self._warn(message)
        self._rgb_format = "rgb24" if self.info.bit_depth <= 8 else "rgb48le"
        # Convert the first frame now so that an unconvertible pixel format fails at open, not mid-run.
        self._first_image = self._to_rgb(first)

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
        jumps in the timestamps of a constant-rate stream (timestamps.py).
        """
        if self._exhausted and self.info.codec not in INVISIBLE_FRAME_CODECS:
            lost = self._times.missing()
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
                t = packet_time(packet)
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
        pts = self._times.next(frame)
        out = Frame(index=self._delivered, pts=pts, time_base=self.info.time_base, image=image)
        self._delivered += 1
        return out

    def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        try:
            return frame.to_ndarray(
                format=self._rgb_format,
                src_colorspace=sws_colorspace(frame.colorspace or self.info.colorspace),
                src_color_range=frame.color_range or self.info.color_range or None,
                dst_color_range=2,  # RGB is full range
            )
        except (ValueError, NotImplementedError, av.error.FFmpegError) as exc:
            raise InputError(
                f"{self._name}: unsupported pixel format {frame.format.name} ({reason(exc)}); "
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
