"""Stylized keyframes on disk, one PNG per frame index: what a resumed run and the preview's later stages
(all keyframes, then full propagation) reuse instead of rendering again."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np


class KeyframeCache:
    """`folder/keyframe_NNNNNN.png`, RGB uint8 at processing size; the folder is created if missing."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, index: int) -> Path:
        return self.folder / f"keyframe_{index:06d}.png"

    def load(self, index: int, canvas: tuple[int, int]) -> np.ndarray | None:
        """The cached keyframe, or None when there is none, it does not decode, or it is not `canvas`
        (height, width) in size (another processing size: render again)."""
        path = self.path(index)
        if not path.is_file():
            return None
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None or image.shape[:2] != canvas:
            return None
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def store(self, index: int, stylized: np.ndarray) -> None:
        path = self.path(index)
        # Write then rename, so that an interrupted run never leaves a truncated keyframe to resume from.
        fd, tmp = tempfile.mkstemp(suffix=".png", dir=self.folder)
        os.close(fd)
        try:
            if not cv2.imwrite(tmp, cv2.cvtColor(stylized, cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not write keyframe cache file {tmp}")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
