"""The `classic` keyframe renderer: OpenCV non-photorealistic rendering, no weights needed.

The embedded default when no model is given: the whole filter then runs on a fresh machine. Looks:
- `stylization`: cv2.stylization (edge-preserving smoothing with darkened edges, a watercolour look);
- `pencil` / `pencil-color`: cv2.pencilSketch (grey or coloured pencil);
- `cartoon`: edge-preserving smoothing, colour quantisation and dark adaptive-threshold outlines;
- `detail`: cv2.detailEnhance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import cv2
import numpy as np

from ..errors import UsageError
from ..option_ranges import check_number, check_whole
from .base import KeyframeContext

ClassicStyle = Literal["stylization", "pencil", "pencil-color", "cartoon", "detail"]
CLASSIC_STYLES: tuple[str, ...] = ("stylization", "pencil", "pencil-color", "cartoon", "detail")


@dataclass(frozen=True)
class ClassicOptions:
    """The classic renderer and its look (`--renderer classic`, the default without --model)."""

    name: ClassVar[str] = "classic"
    style: ClassicStyle = "stylization"
    sigma_s: float = 60.0  # spatial extent of the edge-preserving filter, 0..200 (OpenCV's default)
    sigma_r: float = 0.45  # range (colour) extent, 0..1 (OpenCV's default)
    levels: int = 8  # cartoon: colour levels per channel

    def __post_init__(self) -> None:
        if self.style not in CLASSIC_STYLES:
            raise UsageError(
                f"--classic-style expects one of {', '.join(CLASSIC_STYLES)}; got {self.style!r}"
            )
        check_number("--classic-sigma-s", self.sigma_s, 0, 200, low_open=True)
        check_number("--classic-sigma-r", self.sigma_r, 0, 1, low_open=True)
        check_whole("cartoon levels", self.levels, 2, 64)


class ClassicRenderer:
    """Stateless: every keyframe is rendered from its own frame (the context is not needed)."""

    name = "classic"

    def __init__(self, options: ClassicOptions = ClassicOptions()):
        self.options = options

    def render(self, frame: np.ndarray, context: KeyframeContext) -> np.ndarray:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"the classic renderer expects RGB uint8 HxWx3; got {frame.dtype} {frame.shape}")
        o = self.options
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        if o.style == "stylization":
            out = cv2.stylization(bgr, sigma_s=o.sigma_s, sigma_r=o.sigma_r)
        elif o.style in ("pencil", "pencil-color"):
            grey, colour = cv2.pencilSketch(
                bgr, sigma_s=o.sigma_s, sigma_r=min(o.sigma_r, 0.2), shade_factor=0.05
            )
            out = colour if o.style == "pencil-color" else cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
        elif o.style == "cartoon":
            out = _cartoon(bgr, o)
        else:
            out = cv2.detailEnhance(bgr, sigma_s=o.sigma_s, sigma_r=o.sigma_r)
        return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def _cartoon(bgr: np.ndarray, o: ClassicOptions) -> np.ndarray:
    smooth = cv2.edgePreservingFilter(bgr, flags=cv2.RECURS_FILTER, sigma_s=o.sigma_s, sigma_r=o.sigma_r)
    step = 256 // o.levels
    flat = (smooth // step * step + step // 2).astype(np.uint8)
    grey = cv2.medianBlur(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), 5)
    block = max(3, (min(bgr.shape[:2]) // 64) * 2 + 7)
    outline = cv2.adaptiveThreshold(grey, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, block, 5)
    return cv2.bitwise_and(flat, flat, mask=outline)
