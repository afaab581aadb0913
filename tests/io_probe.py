"""Read back what a video file holds with plain PyAV (not through rerender's Source), for the I/O tests."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import av


@dataclass
class Probe:
    frame_count: int
    pts: list[int]
    time_base: Fraction
    size: tuple[int, int]
    pix_fmt: str
    codec: str
    sample_aspect_ratio: Fraction | None
    rotation: int
    color: tuple[int, int, int, int]  # range, matrix, transfer, primaries of the first frame
    packets: dict[str, list[bytes]]  # non-video stream type -> payloads, in file order
    order: list[tuple[str, float]]  # (stream type, seconds) of every packet, in file order


def probe(path) -> Probe:
    packets: dict[str, list[bytes]] = {}
    order: list[tuple[str, float]] = []
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = []
        for packet in container.demux():
            kind = packet.stream.type
            if packet.size and packet.dts is not None and packet.time_base:
                order.append((kind, float(packet.dts * packet.time_base)))
            if packet.stream.index == video.index:
                frames += video.decode(packet)
            elif packet.size:
                packets.setdefault(kind, []).append(bytes(packet))
        first = frames[0]
        rotation = first.rotation or int(video.metadata.get("rotate", "0"))
        return Probe(
            frame_count=len(frames),
            pts=[f.pts for f in frames],
            time_base=video.time_base,
            size=(first.width, first.height),
            pix_fmt=first.format.name,
            codec=video.codec_context.name,
            sample_aspect_ratio=video.codec_context.sample_aspect_ratio or None,
            rotation=rotation % 360,
            color=(first.color_range, first.colorspace, first.color_trc, first.color_primaries),
            packets=packets,
            order=order,
        )


def max_interleave_lag(order: list[tuple[str, float]]) -> float:
    """Largest amount by which a packet comes after another stream's later-stamped packets (seconds)."""
    latest: dict[str, float] = {}
    lag = 0.0
    for kind, t in order:
        others = [v for k, v in latest.items() if k != kind]
        if others:
            lag = max(lag, max(others) - t)
        latest[kind] = max(latest.get(kind, t), t)
    return lag
