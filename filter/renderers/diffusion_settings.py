"""The diffusion renderer's settings (`DiffusionOptions`, defaults: docs/decisions.md, decision 7) and the
bounds of its numbers. The `rerender run` flags that set them are in `diffusion_options.py`.
Importing this module must stay cheap (no torch import).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ..errors import UsageError

ADDED_PROMPT = "best quality, extremely detailed"
NEGATIVE_PROMPT = (
    "longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, cropped, "
    "worst quality, low quality"
)
CONTROLNET_SCALE = 0.7  # conditioning scale of a --controlnet given without :SCALE (decision 7)
LORA_SCALE = 1.0
CONTROL_KINDS = ("canny", "hed", "depth", "video")
DIRECT_IMAGES = ("pass1", "branch-x0")  # filter/sampler/keyframe.py (not imported here: it imports torch)
# Bounds of the numeric flags (checked once here; the sampler trusts them).
MAX_STEPS = 500  # the schedule has 1000 training steps; DDIM gains nothing from hundreds of steps
MAX_CFG_SCALE = 30.0  # the authors' web UI slider ends at 30
MAX_SEED = 2**32 - 1
CONTROLNET_SCALE_RANGE = (0.0, 2.0)  # the authors' web UI range
LORA_SCALE_RANGE = (-10.0, 10.0)
FREEU_BACKBONE_RANGE = (0.0, 3.0)
FREEU_SKIP_RANGE = (0.0, 2.0)
MAX_FIDELITY_THRESHOLD = 2.0


@dataclass(frozen=True)
class Window:
    """A step window as fractions of the full schedule (docs/method.md §2)."""

    start: float
    end: float


@dataclass(frozen=True)
class DiffusionOptions:
    """The diffusion renderer (`--model`): the model and every setting of the sampler."""

    name: ClassVar[str] = "diffusion"
    model: str
    prompt: str = ""
    negative_prompt: str = NEGATIVE_PROMPT
    added_prompt: str = ADDED_PROMPT
    loras: tuple[tuple[str, float], ...] = ()
    controlnets: tuple[tuple[str, float], ...] = ()
    # One --control spec per ControlNet, or one spec for all of them (empty: canny for each).
    control: tuple[str, ...] = ()
    strength: float = 0.75
    steps: int = 20
    cfg_scale: float = 7.5
    seed: int = 0
    vary_noise: bool = False
    cross_frame: Literal["full", "loose", "off"] = "loose"
    shape_fusion: Window = field(default_factory=lambda: Window(0.0, 0.1))
    pixel_fusion: Window = field(default_factory=lambda: Window(0.5, 0.8))
    adain: Window = field(default_factory=lambda: Window(0.8, 1.0))
    mask_strength: float = 0.5
    inner_strength: float = 0.9
    fidelity_threshold: float = 0.25
    color_correct: bool = False
    freeu: tuple[float, float, float, float] | None = None
    device: str = "auto"
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    allow_pickle: bool = False
    # Added by the sampler: configs for single-file checkpoints of other layouts, the flow estimator the
    # propagation's --flow names, the pixel-fusion composite's direct image and the smooth boundary.
    model_config: str | None = None
    flow: str = "dis"
    direct_image: Literal["pass1", "branch-x0"] = "pass1"
    smooth_boundary: bool = True
    # Added by the export helper: the backend, chosen once at load time (engines/select.py), and
    # the export directory the onnxruntime/TensorRT backends serve (`rerender export --out DIR`).
    backend: Literal["auto", "torch", "onnxruntime", "tensorrt"] = "auto"
    engines: str | None = None
    vae: str | None = None  # --vae: replaces the model's VAE (a diffusers folder or a single file)

    def __post_init__(self) -> None:
        """Every value checked once, here, in sentences that name the flag (`from_args` only converts)."""
        if isinstance(self.control, str):  # one spec for every ControlNet, as the flag's single form
            object.__setattr__(self, "control", (self.control,))
        for path, scale in self.controlnets:
            in_range(f"--controlnet {path}: SCALE", scale, *CONTROLNET_SCALE_RANGE)
        if self.vae is not None and self.engines is not None:
            raise UsageError(
                "--vae is not part of the graphs in --engines (they hold the VAE they were exported with); "
                "drop --engines to render with --vae on torch"
            )
        for path, scale in self.loras:
            in_range(f"--lora {path}: SCALE", scale, *LORA_SCALE_RANGE)
        _check_controls(self.control, len(self.controlnets))
        in_range("--strength", self.strength, 0.0, 1.0, low_open=True)
        int_in_range("--steps", self.steps, 1, MAX_STEPS)
        in_range("--cfg-scale", self.cfg_scale, 0.0, MAX_CFG_SCALE)
        int_in_range("--seed", self.seed, 0, MAX_SEED)
        for flag, window in (
            ("--shape-fusion", self.shape_fusion),
            ("--pixel-fusion", self.pixel_fusion),
            ("--adain", self.adain),
        ):
            if not (0.0 <= window.start <= window.end <= 1.0):
                raise UsageError(
                    f"{flag} expects 0 <= START <= END <= 1; got '{window.start:g},{window.end:g}'"
                )
        in_range("--mask-strength", self.mask_strength, 0.0, 1.0)
        in_range("--inner-strength", self.inner_strength, 0.0, 1.0)
        in_range("--fidelity-threshold", self.fidelity_threshold, 0.0, MAX_FIDELITY_THRESHOLD)
        if self.freeu is not None:
            if len(self.freeu) != 4:
                raise UsageError(f"--freeu expects four numbers B1,B2,S1,S2; got {self.freeu}")
            for name, value in zip(("B1", "B2"), self.freeu[:2], strict=True):
                in_range(f"--freeu {name}", value, *FREEU_BACKBONE_RANGE)
            for name, value in zip(("S1", "S2"), self.freeu[2:], strict=True):
                in_range(f"--freeu {name}", value, *FREEU_SKIP_RANGE)
        if not re.fullmatch(r"auto|cpu|cuda(:\d{1,2})?", self.device):
            raise UsageError(f"--device expects auto, cpu, cuda or cuda:N; got {self.device!r}")

    def control_specs(self) -> tuple[str, ...]:
        """The hint spec of each ControlNet, in --controlnet order."""
        specs = self.control or ("canny",)
        return specs if len(specs) == len(self.controlnets) else specs[:1] * len(self.controlnets)

    def notes(self) -> tuple[str, ...]:
        """Sentences a user should see before the render starts (printed once when the model loads)."""
        if self.controlnets:
            return ()
        return (
            "no --controlnet: keyframes follow the text prompt only and will drift from the input's "
            "structure; add --controlnet PATH (an SD1.5 ControlNet, e.g. canny) to keep it",
        )


def in_range(flag: str, value: float, low: float, high: float, low_open: bool = False) -> float:
    if value != value or value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise UsageError(f"{flag} must be in {bracket}{low:g}, {high:g}]; got {value}")
    return value


def int_in_range(flag: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise UsageError(f"{flag} must be an integer from {low} to {high}; got {value}")
    return value


def _check_controls(specs: tuple[str, ...], controlnets: int) -> None:
    for spec in specs:
        if spec.partition(":")[0] not in CONTROL_KINDS:
            raise UsageError(
                f"--control expects canny, canny:LOW,HIGH, hed:WEIGHTS, depth:FOLDER or video:PATH; got {spec!r}"
            )
    if specs and controlnets == 0:
        raise UsageError(
            f"--control {specs[0]} needs a ControlNet to condition: add --controlnet PATH (the hint is "
            "what a ControlNet reads; without one it would be ignored)"
        )
    if len(specs) > 1 and len(specs) != controlnets:
        raise UsageError(
            f"--control was given {len(specs)} times for {controlnets} --controlnet; give one --control for "
            "all ControlNets or one per --controlnet, in the same order"
        )
