"""ControlNet hint images: canny, HED or depth with the user's weights, or a precomputed control video.

Every preprocessor maps an RGB uint8 frame (H, W, 3) at processing size to an RGB uint8 hint of the same
size, and is chosen once from the `--control` spec:
- `canny` / `canny:LOW,HIGH`: OpenCV Canny on the RGB frame, thresholds 50/100 by default (all example
  configs of the paper's code);
- `hed:WEIGHTS`: the HED edge network of ControlNet's annotators (the Apache-2 re-implementation layout:
  five VGG-style blocks with side projections; `ControlNetHED.pth` / `.safetensors`), hint =
  sigmoid(mean of the 5 side outputs) × 255, no thresholding;
- `depth:FOLDER`: a transformers depth-estimation model folder (DPT / Depth Anything), min-max normalised;
- `video:PATH`: a precomputed control video, frame i for keyframe i, resized to the processing size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import EngineUsageError, ModelFileError

CANNY_LOW, CANNY_HIGH = 50, 100


class ControlPreprocessor(Protocol):
    name: str

    def __call__(self, frame: np.ndarray, index: int) -> np.ndarray: ...


class Canny:
    def __init__(self, low: int = CANNY_LOW, high: int = CANNY_HIGH):
        self.low, self.high = low, high
        self.name = f"canny:{low},{high}"

    def __call__(self, frame: np.ndarray, index: int) -> np.ndarray:
        edges = cv2.Canny(np.ascontiguousarray(frame), self.low, self.high)
        return np.repeat(edges[..., None], 3, axis=2)


class _DoubleConv(nn.Module):
    """A VGG stage of HED: `layers` 3×3 convs + ReLU, then a 1×1 side projection to one edge map."""

    def __init__(self, cin: int, cout: int, layers: int):
        super().__init__()
        self.convs = nn.ModuleList(
            [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1) for i in range(layers)]
        )
        self.projection = nn.Conv2d(cout, 1, 1)

    def forward(self, x: torch.Tensor, down: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if down:
            x = F.max_pool2d(x, 2, 2)
        for conv in self.convs:
            x = F.relu(conv(x))
        return x, self.projection(x)


class HEDNetwork(nn.Module):
    """HED (Xie & Tu 2015) in the layout of ControlNet's Apache-2 annotator weights (`norm`, block1..5)."""

    def __init__(self):
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.block1 = _DoubleConv(3, 64, 2)
        self.block2 = _DoubleConv(64, 128, 2)
        self.block3 = _DoubleConv(128, 256, 3)
        self.block4 = _DoubleConv(256, 512, 3)
        self.block5 = _DoubleConv(512, 512, 3)

    def forward(self, image_255: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) RGB in 0..255 -> (1, 1, H, W) edge probability."""
        h = image_255 - self.norm
        sides = []
        for i, block in enumerate([self.block1, self.block2, self.block3, self.block4, self.block5]):
            h, side = block(h, down=i > 0)
            sides.append(F.interpolate(side, size=image_255.shape[-2:], mode="bilinear", align_corners=False))
        return torch.sigmoid(torch.stack(sides).mean(dim=0))


def _read_weights(path: Path, allow_pickle: bool, flag: str) -> dict[str, torch.Tensor]:
    from .loading import read_checkpoint

    return read_checkpoint(path, allow_pickle, flag)


class HED:
    def __init__(self, weights: Path, allow_pickle: bool = False, device: torch.device | str = "cpu"):
        self.name = f"hed:{weights}"
        self.device = torch.device(device)
        self.net = HEDNetwork()
        try:
            self.net.load_state_dict(_read_weights(weights, allow_pickle, "--control hed:"))
        except RuntimeError as error:
            raise ModelFileError(
                f"--control hed:{weights} is not a ControlNet HED checkpoint ({error})"
            ) from None
        self.net.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, frame: np.ndarray, index: int) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float().to(self.device)
        edges = (self.net(x)[0, 0].clamp(0, 1) * 255.0).round().byte().cpu().numpy()
        return np.repeat(edges[..., None], 3, axis=2)


class Depth:
    """A transformers depth-estimation model from a local folder (config.json + safetensors weights)."""

    def __init__(self, folder: Path, device: torch.device | str = "cpu"):
        from transformers import AutoModelForDepthEstimation

        if not (folder / "config.json").is_file():
            raise ModelFileError(
                f"--control depth:{folder} is not a transformers depth-model folder (no config.json)"
            )
        self.name = f"depth:{folder}"
        self.device = torch.device(device)
        from .loading import folder_use_safetensors

        use_safetensors = folder_use_safetensors(folder, "--control depth:")
        try:
            self.model = AutoModelForDepthEstimation.from_pretrained(
                str(folder), local_files_only=True, use_safetensors=use_safetensors
            )
        except (OSError, ValueError) as error:
            raise ModelFileError(f"--control depth:{folder} could not be loaded ({error})") from None
        self.model.to(self.device).eval()
        pre = folder / "preprocessor_config.json"
        config = json.loads(pre.read_text()) if pre.is_file() else {}
        self.mean = torch.tensor(config.get("image_mean", [0.5, 0.5, 0.5])).view(1, 3, 1, 1)
        self.std = torch.tensor(config.get("image_std", [0.5, 0.5, 0.5])).view(1, 3, 1, 1)
        size = config.get("size", {})
        self.side = int(size.get("height", 384)) if isinstance(size, dict) else int(size)
        patch = getattr(self.model.config, "patch_size", None) or 14
        self.multiple = int(config.get("ensure_multiple_of", patch))
        # A plain-ViT DPT reshapes its tokens to a square grid (its processor resizes to side×side);
        # backbone-based models (Depth Anything) keep the aspect ratio.
        self.square = getattr(self.model.config, "backbone_config", None) is None

    @torch.no_grad()
    def __call__(self, frame: np.ndarray, index: int) -> np.ndarray:
        h, w = frame.shape[:2]
        scale = self.side / min(h, w)
        nh = max(self.multiple, round(h * scale / self.multiple) * self.multiple)
        nw = max(self.multiple, round(w * scale / self.multiple) * self.multiple)
        if self.square:
            nh = nw = max(self.multiple, round(self.side / self.multiple) * self.multiple)
        x = torch.from_numpy(cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_CUBIC)).permute(2, 0, 1)[
            None
        ]
        x = ((x.float() / 255.0 - self.mean) / self.std).to(self.device)
        depth = self.model(pixel_values=x).predicted_depth
        depth = F.interpolate(depth[:, None].float(), size=(h, w), mode="bicubic", align_corners=False)[0, 0]
        depth = (depth - depth.min()) / (depth.max() - depth.min()).clamp_min(1e-6)
        image = (depth * 255.0).round().byte().cpu().numpy()
        return np.repeat(image[..., None], 3, axis=2)


class ControlVideo:
    """Frame i of a precomputed control video for keyframe i (keyframes arrive in increasing order)."""

    def __init__(self, path: Path):
        import av

        if not path.is_file():
            raise ModelFileError(f"--control video:{path} does not exist; give a video of control images")
        self.name = f"video:{path}"
        try:
            self._container = av.open(str(path))
        except av.error.FFmpegError as error:
            raise ModelFileError(f"--control video:{path} could not be opened ({error})") from None
        self._frames = self._container.decode(video=0)
        self._index = -1
        self._current: np.ndarray | None = None

    def __call__(self, frame: np.ndarray, index: int) -> np.ndarray:
        if index < self._index:
            raise ModelFileError(
                f"control video frames are read forward only; keyframe {index} came after {self._index}"
            )
        while self._index < index:
            try:
                self._current = next(self._frames).to_ndarray(format="rgb24")
            except StopIteration:
                raise ModelFileError(
                    f"{self.name} has only {self._index + 1} frames; keyframe {index} needs frame {index}"
                ) from None
            self._index += 1
        h, w = frame.shape[:2]
        return cv2.resize(self._current, (w, h), interpolation=cv2.INTER_AREA)


def make_control(
    spec: str, allow_pickle: bool = False, device: torch.device | str = "cpu"
) -> ControlPreprocessor:
    """Parse `--control`: canny | canny:LOW,HIGH | hed:WEIGHTS | depth:FOLDER | video:PATH."""
    kind, _, arg = spec.partition(":")
    if kind == "canny":
        if not arg:
            return Canny()
        try:
            low, high = (int(v) for v in arg.split(","))
        except ValueError:
            raise EngineUsageError(
                f"--control canny:LOW,HIGH expects two integers, e.g. canny:50,100; got {spec!r}"
            ) from None
        if not 0 <= low <= high <= 255:
            raise EngineUsageError(
                f"--control canny thresholds must satisfy 0 <= LOW <= HIGH <= 255; got {spec!r}"
            )
        return Canny(low, high)
    if kind in ("hed", "depth", "video") and not arg:
        raise EngineUsageError(f"--control {kind}: needs a path, e.g. --control {kind}:/path/to/file")
    if kind == "hed":
        return HED(Path(arg), allow_pickle, device)
    if kind == "depth":
        return Depth(Path(arg), device)
    if kind == "video":
        return ControlVideo(Path(arg))
    raise EngineUsageError(
        f"--control expects canny, canny:LOW,HIGH, hed:WEIGHTS, depth:FOLDER or video:PATH; got {spec!r}"
    )
