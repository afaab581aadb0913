"""Optical flow for propagation: a pluggable estimator, forward-backward occlusion, warping.

docs/decisions.md 8: OpenCV DIS by default (no weights, CPU); other estimators (RAFT
with user weights) plug in through the `FlowEstimator` protocol from their own module, registered in
`ESTIMATOR_MODULES` and created by `make_flow_estimator("name[:arg]")`.

Convention used everywhere in rerender: `estimate(image, reference)` returns, for every pixel p of
`image`, the offset f(p) = (dx, dy) such that image(p) ~ reference(p + f(p)). This is the "backward flow"
of docs/method.md §3 when `image` is the current frame: it warps the reference (or anything aligned with it) into
the current frame by sampling it at p + f(p).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, Protocol

import cv2
import numpy as np

from .errors import EngineUsageError

# docs/method.md §3: the forward-backward check of UnFlow with the authors' constants.
OCCLUSION_ALPHA = 0.01
OCCLUSION_BETA = 0.5


class FlowEstimator(Protocol):
    """Dense optical flow between two RGB uint8 images of the same size."""

    name: str

    def estimate(self, image: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """HxWx2 float32 flow of `image`'s pixels into `reference` (see the module doc)."""
        ...


DisPreset = Literal["ultrafast", "fast", "medium"]
_DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


class DISFlow:
    """OpenCV's Dense Inverse Search flow on the luma channel.

    One OpenCV object per estimator: it is not safe to share across threads, so each thread that
    estimates flow builds its own estimator.
    """

    def __init__(
        self,
        preset: DisPreset = "medium",
        refinement_iterations: int | None = None,
        smoothness: float | None = None,
    ):
        """`refinement_iterations` and `smoothness` override the preset's variational refinement (its
        iteration count, 0 to 100, and the smoothness weight alpha, 0 to 1000)."""
        if preset not in _DIS_PRESETS:
            raise ValueError(f"DIS preset must be one of {', '.join(_DIS_PRESETS)}; got {preset!r}")
        self.name = f"dis:{preset}"
        self._dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[preset])
        if refinement_iterations is not None:
            if not 0 <= refinement_iterations <= 100:
                raise ValueError(f"DIS refinement iterations must be 0..100; got {refinement_iterations}")
            self._dis.setVariationalRefinementIterations(int(refinement_iterations))
            self.name += f",refine={refinement_iterations}"
        if smoothness is not None:
            if not 0 < smoothness <= 1000:
                raise ValueError(f"DIS smoothness must be in (0, 1000]; got {smoothness}")
            self._dis.setVariationalRefinementAlpha(float(smoothness))
            self.name += f",alpha={smoothness:g}"

    def estimate(self, image: np.ndarray, reference: np.ndarray) -> np.ndarray:
        if image.shape != reference.shape:
            raise ValueError(f"flow needs two images of one size; got {image.shape} and {reference.shape}")
        a = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        b = cv2.cvtColor(reference, cv2.COLOR_RGB2GRAY)
        # calc(prev, next) returns f with prev(p) ~ next(p + f(p)): our convention with prev = image.
        return self._dis.calc(a, b, None)


# Other estimators live in their own modules; each module has `make_estimator(arg: str | None)`.
ESTIMATOR_MODULES: dict[str, str] = {"raft": "rerender.engines.flow_raft"}


def make_flow_estimator(spec: str) -> FlowEstimator:
    """`dis`, `dis:fast`, `dis:ultrafast`, or `<name>[:arg]` of a module in ESTIMATOR_MODULES."""
    name, _, arg = spec.partition(":")
    if name == "dis":
        preset = arg or "medium"
        if preset not in _DIS_PRESETS:
            raise EngineUsageError(
                f"--flow dis:PRESET expects a preset among {', '.join(_DIS_PRESETS)}; got {preset!r}"
            )
        return DISFlow(preset)  # type: ignore[arg-type]
    if name in ESTIMATOR_MODULES:
        try:
            module = importlib.import_module(ESTIMATOR_MODULES[name])
        except ImportError as exc:
            raise EngineUsageError(
                f"the {name} flow estimator is not available in this build ({exc})"
            ) from None
        return module.make_estimator(arg or None)
    known = ", ".join(["dis", "dis:fast", "dis:ultrafast", *ESTIMATOR_MODULES])
    raise EngineUsageError(f"--flow expects one of {known}; got {spec!r}")


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return xs, ys


def warp(image: np.ndarray, flow: np.ndarray, nearest: bool = False) -> np.ndarray:
    """Sample `image` at p + flow(p) for every p of the flow's grid (backward warping).

    Samples that fall outside are clamped to the border; such pixels are flagged by the occlusion check
    anyway (their forward-backward flows disagree) or by `outside(flow)`.
    """
    h, w = flow.shape[:2]
    xs, ys = _grid(h, w)
    map_x = xs + flow[..., 0]
    map_y = ys + flow[..., 1]
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    if image.dtype == np.bool_:
        warped = cv2.remap(
            image.astype(np.uint8), map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE
        )
        return warped.astype(bool)
    return cv2.remap(image, map_x, map_y, interpolation, borderMode=cv2.BORDER_REPLICATE)


def outside(flow: np.ndarray) -> np.ndarray:
    """Pixels whose flow points outside the frame (no match there: treated as occluded)."""
    h, w = flow.shape[:2]
    xs, ys = _grid(h, w)
    x = xs + flow[..., 0]
    y = ys + flow[..., 1]
    return (x < -0.5) | (x > w - 0.5) | (y < -0.5) | (y > h - 0.5)


@dataclass(frozen=True)
class OcclusionRule:
    """When a pixel counts as having no match in the other frame.

    `photometric=None` is the forward-backward check alone (the authors' rule, docs/method.md §3). A number
    adds a photometric test: a pixel that fails the forward-backward check is still *kept* (not occluded)
    when the other frame, warped to it, agrees within that many 8-bit levels (mean over RGB) at the pixel
    and at its 4-neighbours. DIS on grey levels fails the check in smooth regions whose colours still
    warp correctly; the propagation then inpaints guides there for no reason. Pixels whose flow leaves the
    frame stay occluded either way.
    """

    alpha: float = OCCLUSION_ALPHA
    beta: float = OCCLUSION_BETA
    photometric: float | None = None

    def __post_init__(self) -> None:
        for name, value, low, high in (("alpha", self.alpha, 0.0, 1.0), ("beta", self.beta, 0.0, 100.0)):
            if not (low <= value <= high):
                raise ValueError(f"occlusion {name} must be in {low}..{high}; got {value}")
        if self.photometric is not None and not (0.0 <= self.photometric <= 255.0):
            raise ValueError(
                f"the photometric occlusion threshold must be 0..255 levels; got {self.photometric}"
            )


FB_ONLY = OcclusionRule()


def occlusion(
    flow: np.ndarray,
    reverse: np.ndarray,
    rule: OcclusionRule = FB_ONLY,
    image: np.ndarray | None = None,
    other: np.ndarray | None = None,
) -> np.ndarray:
    """Pixels of the first frame with no valid match in the second (bool HxW).

    `flow` maps the first frame into the second and `reverse` the second into the first (docs/method.md
    §3): p fails the forward-backward check when |flow(p) + reverse(p + flow(p))| > alpha (|flow(p)| +
    |reverse(p)|) + beta, with the magnitudes taken at p without warping; pixels that leave the frame are
    occluded too. With `rule.photometric`, `image` (the first frame) and `other` (the second) are needed:
    see `OcclusionRule`.
    """
    back = warp(reverse, flow)
    diff = _norm(flow + back)
    magnitude = _norm(flow) + _norm(reverse)
    failed = diff > rule.alpha * magnitude + rule.beta
    if rule.photometric is not None:
        if image is None or other is None:
            raise ValueError("a photometric occlusion rule needs both frames")
        failed &= ~photometric_agreement(image, other, flow, rule.photometric)
    return failed | outside(flow)


def photometric_agreement(
    image: np.ndarray, other: np.ndarray, flow: np.ndarray, levels: float
) -> np.ndarray:
    """Pixels of `image` where `other` warped by `flow` agrees within `levels` (mean |difference| over the
    channels), at the pixel and at its 4-neighbours (so a single matching pixel on an edge does not pass)."""
    warped = warp(other, flow)
    difference = cv2.absdiff(np.ascontiguousarray(image), warped)
    mean = difference.reshape(*difference.shape[:2], -1).mean(axis=2, dtype=np.float32)
    # The largest difference in the 4-neighbourhood (a 3x3 cross), so agreement must hold around p.
    worst = cv2.dilate(mean, cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3)))
    return worst <= levels


def _norm(flow: np.ndarray) -> np.ndarray:
    """Per-pixel length of a float32 HxWx2 flow (OpenCV's magnitude: one pass, unlike np.linalg.norm)."""
    flow = np.ascontiguousarray(flow, dtype=np.float32)
    return cv2.magnitude(flow[..., 0], flow[..., 1])


@dataclass(frozen=True)
class FlowPair:
    """Flows between two consecutive frames `earlier` and `later`, both directions, with occlusions.

    `later_to_earlier` warps anything aligned with the earlier frame into the later one (the forward
    propagation chain); `earlier_to_later` does the converse (the backward chain).
    """

    later_to_earlier: np.ndarray
    earlier_to_later: np.ndarray
    occluded_later: np.ndarray  # pixels of the later frame with no match in the earlier one
    occluded_earlier: np.ndarray

    # Cached: the keyframe schedule reads both when the pair is made, the motion-weighted blend again when
    # its gap is blended (computing them again is idempotent, so threads racing here is harmless).
    @cached_property
    def occluded_fraction(self) -> float:
        return float(self.occluded_later.mean())

    @cached_property
    def mean_motion(self) -> float:
        return float(_norm(self.later_to_earlier).mean())


def estimate_pair(
    estimator: FlowEstimator, earlier: np.ndarray, later: np.ndarray, rule: OcclusionRule = FB_ONLY
) -> FlowPair:
    """Two flow estimations per consecutive pair serve both chains and both occlusion masks."""
    backward = estimator.estimate(later, earlier)
    forward = estimator.estimate(earlier, later)
    return FlowPair(
        backward,
        forward,
        occlusion(backward, forward, rule, later, earlier),
        occlusion(forward, backward, rule, earlier, later),
    )
