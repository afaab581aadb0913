"""The keyframe renderer interface shared by the classic, frames and diffusion renderers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class RenderedKeyframe:
    """A keyframe already rendered: its input and its stylized output, both RGB uint8 at processing size."""

    index: int
    source: np.ndarray
    stylized: np.ndarray


@dataclass(frozen=True)
class KeyframeContext:
    """What a renderer may use besides the frame itself.

    `is_anchor` is True for the first keyframe of the stream and for the first frame after a scene cut:
    a renderer with cross-frame state (the diffusion sampler) resets it there. `anchor` and `previous` are
    None for an anchor; otherwise the anchor of the current scene and the keyframe rendered just before.
    """

    index: int
    is_anchor: bool
    anchor: RenderedKeyframe | None
    previous: RenderedKeyframe | None


class KeyframeRenderer(Protocol):
    """Renders one keyframe. `frame` is RGB uint8 at processing size (H, W multiples of 64 by default);
    the result has the same shape and dtype. Which frames are keyframes is not the renderer's to say: the
    Filter asks its `schedule.KeyframeSchedule`."""

    name: str

    def render(self, frame: np.ndarray, context: KeyframeContext) -> np.ndarray: ...
