"""Sink of the graph: mux the encoded output frames and the input's other streams, interleaved by time.

What the output keeps from the input (README, *Video I/O*): frame count, every pts (VFR included) and the
time_base, size, sample aspect ratio, rotation, colour tags (video_encoder.py); audio, subtitle and data
packets are copied byte for byte, no re-encode (remux.py), and interleaved by time with the video packets.

The output is written under a temporary name and moved into place only when complete (target.py): on an
exception, or when fewer frames arrive than the Source delivered, nothing is left behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import av
import av.error

from ..errors import RerenderError
from ..frames import Frame
from . import paths
from .messages import Warnings
from .options import SinkOptions
from .remux import StreamCopies
from .source import Source
from .target import OutputTarget
from .timestamps import packet_time
from .video_encoder import VideoEncoder

__all__ = ["Sink", "SinkOptions", "open_sink"]


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
        self._warn = Warnings(on_warning)
        self.warnings = self._warn.messages
        self.written = 0
        self._target = OutputTarget(self.path, None if source.is_pipe else source.path)
        self.kind = self._target.kind  # "pipe", "stream" or "file" (target.py)
        self._name = self._target.name
        self._closed = False
        self._last_video_time: float | None = None
        self._container = self._target.open(options.format, source.info.time_base)
        try:
            self._encoder = VideoEncoder(self._container, source.info, options, self._name)
            self._copies = StreamCopies(self._container, source, options.audio, self._warn)
        except BaseException:
            self._discard()
            raise

    # --- writing -------------------------------------------------------------------------------------

    def write(self, frame: Frame) -> None:
        """Encode one output frame; its pts/time_base are the input frame's."""
        self._mux_video(self._encoder.encode(frame))
        self.written += 1

    def _mux_video(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            t = packet_time(packet)
            if t is not None:
                # Side packets up to this video packet's time go first: the output stays interleaved.
                self._mux_side(self._source.take_side_packets(until=t))
                self._last_video_time = t
            self._mux(packet)

    def _mux_side(self, packets: list[av.Packet]) -> None:
        for packet in self._copies.retarget(packets):
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
                raise RerenderError(f"the reader of {self._name} closed the pipe") from None
            raise RerenderError(paths.write_error(self._name, exc)) from None

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
                    f"{'nothing was written' if self._target.temporary else 'the stream is incomplete'}"
                )
            self._mux_video(self._encoder.flush())
            if self._source.exhausted:
                self._mux_side(self._source.take_side_packets())
            elif self._last_video_time is not None:
                # The caller stopped early: keep the other streams up to the last video frame only.
                self._mux_side(self._source.take_side_packets(until=self._last_video_time))
            try:
                self._container.close()
            except (av.error.FFmpegError, OSError) as exc:
                raise RerenderError(paths.write_error(self._name, exc)) from None
            self._target.commit()
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
        self._target.discard()
