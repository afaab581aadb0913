"""Timestamps of the decoded frames and of packets: the decoder's pts kept, and frames lost found by them.

A frame leaves with the decoder's pts in the stream's time_base, never re-derived from a frame rate: that
is what keeps variable-frame-rate input intact. Only what an encoder cannot take is changed: a missing pts
is guessed one frame interval after the last, and a duplicate or backwards one moves one tick past it.
"""

from __future__ import annotations

import collections
from fractions import Fraction

import av


class FrameTimestamps:
    """The pts of each delivered frame, in order, and the steps between them (for `missing()`)."""

    def __init__(self, time_base: Fraction, average_rate: Fraction | None) -> None:
        self._time_base = time_base
        self._average_rate = average_rate
        self._last_pts: int | None = None
        self._last_raw_pts: int | None = None
        self._steps: collections.Counter[int] = collections.Counter()  # pts steps between shown frames

    def next(self, frame: av.VideoFrame) -> int:
        """The pts the next delivered frame carries: the decoder's, strictly increasing."""
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
        return pts

    def missing(self) -> int:
        """Frames missing between the delivered ones, judged by `missing_by_timestamps`."""
        return missing_by_timestamps(self._steps)

    def _guess_next_pts(self) -> int:
        if self._last_pts is None:
            return 0
        rate = self._average_rate or Fraction(25)
        return self._last_pts + max(1, round(1 / (rate * self._time_base)))


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


def packet_time(packet: av.Packet) -> float | None:
    """A packet's time in seconds (dts, else pts), or None when it has none."""
    ts = packet.dts if packet.dts is not None else packet.pts
    if ts is None or not packet.time_base:
        return None
    return float(ts * packet.time_base)
