"""The diffusion renderer's settings (`DiffusionOptions`, defaults: docs/decisions.md, decision 7) and the
bounds of its numbers. The `rerender run` flags that set them are in `diffusion_options.py`.
Importing this module must stay cheap (no torch import).
"""

from __future__ import annotations

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
        if isinstance(self.control, str):  # one spec for every ControlNet, as the flag's single form
            object.__setattr__(self, "control", (self.control,))
        if len(self.control) > 1 and len(self.control) != len(self.controlnets):
            raise UsageError(
                f"--control was given {len(self.control)} times for {len(self.controlnets)} --controlnet; "
                "give one --control for all ControlNets or one per --controlnet, in the same order"
            )

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
