"""The `frames` keyframe renderer: the user's own stylized keyframes from a folder (EbSynth's workflow).

File names carry the frame index: the last run of digits in the name (`0000.png`, `key_0042.jpg`,
`frame-17.png`), counted from `first_index` (0 by default; 1 for ffmpeg's `%04d` numbering). The keyframe
schedule that follows the files present is not the renderer's: the job builds a `schedule.FixedSchedule`
from `scan_keyframe_files` of the same folder. Keyframe files are expected at the input's size (any size
with the input's aspect ratio works); they go through the same processing geometry as the video.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np

from ..errors import UsageError
from ..geometry import Fit, ProcessingGeometry, to_uint8
from ..option_ranges import MAX_FRAME_INDEX, check_whole
from .base import KeyframeContext


@dataclass(frozen=True)
class FramesOptions:
    """The frames renderer (`--renderer frames`): the user's stylized keyframes in `keyframes_dir`, file
    numbers counted from `first_index`. Only this renderer has a keyframes folder."""

    name: ClassVar[str] = "frames"
    keyframes_dir: Path
    first_index: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.keyframes_dir, Path):
            raise UsageError("--renderer frames needs --keyframes-dir DIR, a folder of stylized keyframes")
        check_whole("--keyframes-first-index", self.first_index, 0, MAX_FRAME_INDEX)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
_DIGITS = re.compile(r"(\d+)(?!.*\d)")


def scan_keyframe_files(folder: Path, first_index: int = 0) -> dict[int, Path]:
    """Frame index -> file; one-sentence UsageErrors for a missing folder, no images or duplicates."""
    if not folder.is_dir():
        raise UsageError(
            f"--keyframes-dir expects a folder of stylized keyframes; {str(folder)!r} is not a folder"
        )
    files: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        match = _DIGITS.search(path.stem)
        if match is None:
            continue
        index = int(match.group(1)) - first_index
        if index < 0:
            raise UsageError(
                f"keyframe file {path.name} names frame {int(match.group(1))}, before --keyframes-first-index "
                f"{first_index}; rename it or lower --keyframes-first-index"
            )
        if index in files:
            raise UsageError(
                f"two keyframe files name frame {index}: {files[index].name} and {path.name}; keep only one"
            )
        files[index] = path
    if not files:
        raise UsageError(
            f"--keyframes-dir {str(folder)!r} holds no image whose name carries a frame index "
            f"(expected e.g. 0000.png, 0010.png, ... with suffix {', '.join(IMAGE_SUFFIXES)})"
        )
    return files


class FramesRenderer:
    """Returns the user's keyframe for the frame's index, in processing geometry."""

    name = "frames"

    def __init__(self, folder: Path, first_index: int = 0, size: int = 512, fit: Fit = "pad"):
        self.folder = Path(folder)
        self.files = scan_keyframe_files(self.folder, first_index)
        self.size = size
        self.fit = fit

    def render(self, frame: np.ndarray, context: KeyframeContext) -> np.ndarray:
        path = self.files.get(context.index)
        if path is None:
            raise UsageError(f"no keyframe file for frame {context.index} in {str(self.folder)!r}")
        image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
        if image is None:
            raise UsageError(
                f"keyframe file {str(path)!r} could not be read as an image; re-export it as PNG"
            )
        image = to_uint8(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        h, w = image.shape[:2]
        if (h, w) == frame.shape[:2]:
            return image
        geometry = ProcessingGeometry.for_input(h, w, self.size, self.fit)
        if geometry.canvas != frame.shape[:2]:
            raise UsageError(
                f"keyframe file {path.name} is {w}x{h}, which does not match the video's aspect ratio "
                f"(processing size {frame.shape[1]}x{frame.shape[0]}); export keyframes at the video's size"
            )
        return geometry.to_processing(image)
