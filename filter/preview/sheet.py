"""A contact sheet of the keyframes of the current run, the "all keyframes" rung of the ladder at a glance.

The official web UI shows the keyframes as a video; side by side thumbnails show at once
whether the style holds across the clip, which is what the user tunes K, strength and the prompt for.
"""

from __future__ import annotations

import cv2
import numpy as np

THUMB_HEIGHT = 72
GAP = 4
SHEET_WIDTH = 640
# The newest keyframes are kept: the sheet stays a fixed, small size for clips of any length.
MAX_THUMBS = 24


class KeyframeSheet:
    def __init__(self) -> None:
        self._thumbs: list[tuple[int, np.ndarray]] = []

    def clear(self) -> None:
        self._thumbs.clear()

    def add(self, index: int, stylized: np.ndarray) -> np.ndarray:
        """Add a keyframe (RGB uint8) and return the sheet as it is now."""
        height, width = stylized.shape[:2]
        thumb_width = max(1, round(width * THUMB_HEIGHT / height))
        thumb = cv2.resize(stylized, (thumb_width, THUMB_HEIGHT), interpolation=cv2.INTER_AREA)
        cv2.putText(thumb, str(index), (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(
            thumb, str(index), (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA
        )
        self._thumbs = [*self._thumbs, (index, thumb)][-MAX_THUMBS:]
        return self.render()

    def render(self) -> np.ndarray:
        tw = max(t.shape[1] for _, t in self._thumbs)
        columns = max(1, min(len(self._thumbs), (SHEET_WIDTH + GAP) // (tw + GAP)))
        rows = -(-len(self._thumbs) // columns)
        sheet = np.full((rows * (THUMB_HEIGHT + GAP) - GAP, columns * (tw + GAP) - GAP, 3), 24, np.uint8)
        for n, (_, thumb) in enumerate(self._thumbs):
            y, x = (n // columns) * (THUMB_HEIGHT + GAP), (n % columns) * (tw + GAP)
            sheet[y : y + THUMB_HEIGHT, x : x + thumb.shape[1]] = thumb
        return sheet
