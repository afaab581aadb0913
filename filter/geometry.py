"""Processing geometry: the size keyframes are rendered (and, by default, propagated) at.

docs/decisions.md, decision 10: the output has the input's size; keyframes are rendered at a processing
size whose sides are multiples of 64 (the SD1.5 latent grid is 1/8 of the image and the UNet halves it
three times). The aspect ratio is kept by padding or by cropping, never by stretching: the official code
rounds each side to the nearest multiple of 64, which changes the aspect a little; we do not.

The short side is `short_side` (`--size`). With `upscale=False` (what `rerender run` uses unless --size is
given) an input whose short side is smaller keeps its own pixels: it is only padded or cropped to the
multiples of 64, never scaled up, so a small input costs what its own size costs.

- `fit="pad"` (default): the scaled frame sits in the middle of the canvas, the margins mirror its edges
  (mirrored content keeps flow and guides natural there); the margins are cut away on the way back.
- `fit="crop"`: the long side is cut down to a multiple of 64 (less than 64 processing pixels in all); on
  the way back the cut margins are filled by repeating the nearest processed column/row, so the output
  still has every input pixel's position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from .errors import UsageError

Fit = Literal["pad", "crop"]
# The largest processing short side (`--size`): 2048 is 7.5 megapixels at 16:9, 28 times the area of the
# 512x512 SD1.5 is made for; every buffer of the synthesizer and the sampler grows with the area.
MAX_SHORT_SIDE = 2048


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    # INTER_AREA when shrinking, Lanczos4 when enlarging (as the official code resizes).
    interpolation = cv2.INTER_AREA if width * height < w * h else cv2.INTER_LANCZOS4
    return cv2.resize(image, (width, height), interpolation=interpolation)


@dataclass(frozen=True)
class ProcessingGeometry:
    """Maps frames between the input size and the processing canvas.

    `scaled` is the input scaled with its aspect kept; `canvas` is the processing size; `offset` is where
    the scaled frame's top-left corner lies on the canvas (negative when cropping).
    """

    input_size: tuple[int, int]  # (height, width)
    scaled: tuple[int, int]
    canvas: tuple[int, int]
    offset: tuple[int, int]

    @classmethod
    def for_input(
        cls,
        height: int,
        width: int,
        short_side: int = 512,
        fit: Fit = "pad",
        multiple: int = 64,
        upscale: bool = True,
    ) -> ProcessingGeometry:
        """The geometry that scales the input's short side to `short_side` (aspect kept), then pads or crops
        the sides to multiples of `multiple`. `upscale=False` never scales up: an input whose short side is
        below `short_side` keeps its own size (only padded or cropped to the multiples)."""
        if height < 1 or width < 1:
            raise UsageError(f"a frame must have a positive size; got {width}x{height}")
        if not 1 <= short_side <= MAX_SHORT_SIDE:
            raise UsageError(
                f"the processing size (--size) must be between 64 and {MAX_SHORT_SIDE}; got {short_side}"
            )
        if not upscale:
            short_side = min(short_side, min(height, width))
        scale = short_side / min(height, width)
        sh = max(1, round(height * scale))
        sw = max(1, round(width * scale))
        if fit == "pad":
            ch = -(-sh // multiple) * multiple
            cw = -(-sw // multiple) * multiple
        elif fit == "crop":
            ch = max(multiple, sh // multiple * multiple)
            cw = max(multiple, sw // multiple * multiple)
        else:
            raise UsageError(f"--fit must be pad or crop; got {fit!r}")
        return cls((height, width), (sh, sw), (ch, cw), ((ch - sh) // 2, (cw - sw) // 2))

    @classmethod
    def identity(cls, height: int, width: int) -> ProcessingGeometry:
        """Propagation at the output size (`--propagate-at output`)."""
        return cls((height, width), (height, width), (height, width), (0, 0))

    @property
    def short_side(self) -> int:
        """The short side of the scaled input (what `for_input` was given, after `upscale=False` capped it)."""
        return min(self.scaled)

    @property
    def is_identity(self) -> bool:
        return self.canvas == self.input_size and self.scaled == self.input_size

    def _margins(self) -> tuple[int, int, int, int]:
        top, left = self.offset
        bottom = self.canvas[0] - self.scaled[0] - top
        right = self.canvas[1] - self.scaled[1] - left
        return top, bottom, left, right

    def to_processing(self, image: np.ndarray) -> np.ndarray:
        """Input-size image -> processing canvas (same dtype and channel count)."""
        if image.shape[:2] != self.input_size:
            raise UsageError(
                f"expected a {self.input_size[1]}x{self.input_size[0]} frame; got "
                f"{image.shape[1]}x{image.shape[0]} (the frame size may not change within a video)"
            )
        if self.is_identity:
            return image
        scaled = _resize(image, self.scaled[1], self.scaled[0])
        top, bottom, left, right = self._margins()
        if min(top, bottom, left, right) >= 0:
            if top or bottom or left or right:
                # Mirror padding: mirrored content has plausible flow and guides (see module doc).
                return cv2.copyMakeBorder(scaled, top, bottom, left, right, cv2.BORDER_REFLECT_101)
            return scaled
        # Crop: margins are negative on the long side only.
        y0, x0 = max(0, -top), max(0, -left)
        return np.ascontiguousarray(scaled[y0 : y0 + self.canvas[0], x0 : x0 + self.canvas[1]])

    def to_output(self, image: np.ndarray) -> np.ndarray:
        """Processing canvas -> input size (undoing the padding or crop, then resizing)."""
        if image.shape[:2] != self.canvas:
            raise ValueError(
                f"expected a {self.canvas[1]}x{self.canvas[0]} processed image; got {image.shape[1]}x{image.shape[0]}"
            )
        if self.is_identity:
            return image
        top, bottom, left, right = self._margins()
        if min(top, bottom, left, right) >= 0:
            content = image[top : top + self.scaled[0], left : left + self.scaled[1]]
        else:
            content = cv2.copyMakeBorder(
                image, max(0, -top), max(0, -bottom), max(0, -left), max(0, -right), cv2.BORDER_REPLICATE
            )
        return _resize(np.ascontiguousarray(content), self.input_size[1], self.input_size[0])

    def resize_canvas_to(self, image: np.ndarray, other: ProcessingGeometry) -> np.ndarray:
        """A processing-canvas image of this geometry expressed on `other`'s canvas (same input size)."""
        if other == self:
            return image
        return other.to_processing(self.to_output(image))


def to_uint8(image: np.ndarray) -> np.ndarray:
    """8-bit working copy of a frame: 10/12/16-bit frames arrive as full-scale uint16 (frames.py)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    raise ValueError(f"expected a uint8 or uint16 frame; got {image.dtype}")


def to_depth(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Back to the input's depth (uint8 -> full-scale uint16 when the input was high bit depth)."""
    if np.dtype(dtype) == np.uint8:
        return image
    if np.dtype(dtype) == np.uint16:
        return image.astype(np.uint16) * 257
    raise ValueError(f"expected uint8 or uint16 as the output depth; got {dtype}")
