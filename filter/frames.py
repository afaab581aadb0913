"""The unit that flows through the graph: one decoded video frame with its position and timestamp."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np


@dataclass(frozen=True)
class Frame:
    """A decoded frame at the input's size.

    `image` is RGB, HxWx3, uint8 for 8-bit sources and uint16 (full 16-bit scale) for 10/12-bit sources.
    `index` counts frames from 0 in decode order of presentation; `pts` is in `time_base` units (None when
    the container carries no timestamp).
    """

    index: int
    pts: int | None
    time_base: Fraction
    image: np.ndarray

    @property
    def time(self) -> float | None:
        return None if self.pts is None else float(self.pts * self.time_base)
