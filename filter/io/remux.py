"""The output's copies of the input's audio, subtitle and data streams, whose packets pass byte for byte.

A stream the output muxer cannot hold is dropped with a warning. AAC in ADTS framing going into MP4 or
Matroska gets its AudioSpecificConfig and loses its ADTS headers on the way (adts.py says why).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import av
import av.error

from . import adts
from .messages import codec_name, reason
from .source import Source


class StreamCopies:
    """The copies in `container` of `source`'s remuxed streams (without audio when `audio` is False)."""

    def __init__(
        self,
        container: av.container.OutputContainer,
        source: Source,
        audio: bool,
        warn: Callable[[str], None],
    ) -> None:
        self._source = source
        self._copies: dict[int, av.stream.Stream] = {}
        self._adts: set[int] = set()  # input streams whose ADTS headers are stripped
        muxer = container.format.name
        for stream in source.remux_streams:
            if stream.type == "audio" and not audio:
                continue
            try:
                copy = container.add_stream_from_template(stream)
            except (ValueError, av.error.FFmpegError) as exc:
                warn(
                    f"dropping {stream.type} stream #{stream.index} ({codec_name(stream)}): "
                    f"the {muxer} format cannot hold it ({reason(exc)})"
                )
                continue
            if (
                codec_name(stream) == "aac"
                and muxer in adts.ASC_MUXERS
                and not stream.codec_context.extradata
            ):
                problem = self._prepare_adts(stream, copy)
                if problem is not None:
                    warn(f"dropping audio stream #{stream.index} (aac): {problem}")
                    continue
            self._copies[stream.index] = copy

    def retarget(self, packets: Iterable[av.Packet]) -> Iterator[av.Packet]:
        """The input packets of copied streams, each ready to mux into its copy; others are skipped."""
        for packet in packets:
            index = packet.stream.index
            copy = self._copies.get(index)
            if copy is None:
                continue
            if index in self._adts:
                packet = _strip_adts(packet)
            packet.stream = copy
            yield packet

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


def _strip_adts(packet: av.Packet) -> av.Packet:
    data = bytes(packet)
    if not adts.is_adts(data):
        return packet
    raw = av.Packet(data[adts.header_length(data) :])
    raw.pts, raw.dts, raw.duration, raw.time_base = packet.pts, packet.dts, packet.duration, packet.time_base
    raw.is_keyframe = packet.is_keyframe
    return raw
