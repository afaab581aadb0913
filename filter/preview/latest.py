"""The latest image of each preview stream, encoded to JPEG only when a viewer asks for it.

The job thread only swaps an array reference (it never waits for a viewer); stream handlers wait for a
newer sequence number and encode it once (cached), so a slow browser drops frames instead of slowing the
render.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

STREAMS = ("input", "output", "keyframe", "sheet")
# Side of the longest edge sent to the page: enough for a side-by-side view, cheap to encode.
MAX_SIDE = 640
JPEG_QUALITY = 85


def placeholder(text: str, width: int = 320, height: int = 180) -> np.ndarray:
    image = np.full((height, width, 3), 40, np.uint8)
    cv2.putText(
        image, text, (12, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (200, 200, 200), 1, cv2.LINE_AA
    )
    return image


def to_jpeg(rgb: np.ndarray) -> bytes:
    """RGB uint8/uint16 HxWx3 → JPEG bytes, shrunk so that the longest side is at most MAX_SIDE."""
    image = rgb
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)  # 16-bit scale (frames.py) → 8-bit for display
    elif image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    height, width = image.shape[:2]
    scale = MAX_SIDE / max(height, width)
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    )
    if not ok:
        raise RuntimeError("OpenCV could not encode a preview JPEG")
    return data.tobytes()


class LatestImages:
    """Per stream: the newest image, its sequence number and (lazily) its JPEG."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._images: dict[str, np.ndarray] = {}
        self._seq: dict[str, int] = dict.fromkeys(STREAMS, 0)
        self._jpeg: dict[str, tuple[int, bytes]] = {}
        self._closed = False
        self._images["input"] = placeholder("input: press a run button")
        self._images["output"] = placeholder("output: nothing rendered yet")

    def put(self, stream: str, image: np.ndarray) -> None:
        with self._cond:
            self._images[stream] = image
            self._seq[stream] += 1
            self._cond.notify_all()

    def seq(self, stream: str) -> int:
        with self._cond:
            return self._seq[stream]

    def has(self, stream: str) -> bool:
        with self._cond:
            return stream in self._images

    def jpeg(self, stream: str) -> tuple[int, bytes] | None:
        """The newest image as (seq, JPEG), or None if the stream has none yet."""
        with self._cond:
            if stream not in self._images:
                return None
            seq, image = self._seq[stream], self._images[stream]
            cached = self._jpeg.get(stream)
        if cached is not None and cached[0] == seq:
            return cached
        data = (seq, to_jpeg(image))
        with self._cond:
            if self._seq[stream] == seq:
                self._jpeg[stream] = data
        return data

    def wait_newer(self, stream: str, seq: int, timeout: float) -> bool:
        """Wait until the stream has an image newer than `seq`; False on timeout or when closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._seq[stream] > seq, timeout)
            return not self._closed and self._seq[stream] > seq

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
