"""Plain DDIM (eta 0) with batched classifier-free guidance, and the hooks constraints plug into
(docs/method.md §1).

The loop knows nothing about the method's constraints: each `Constraint` carries its step window and up to
three hooks, and the loop calls the hooks of the constraints whose window holds the step, in list order:

- `before_unet(step, inputs) -> inputs`: may move the latent about to be denoised or set the cross-frame
  reference states of the UNet call (pixel-aware fusion, cross-frame attention; method §2.1, §2.3);
- `after_unet(step, own_states)`: sees the UNet's own self-attention inputs (recording them, method §2.1);
- `on_x0(step, x0) -> x0`: may replace x̂0 between the two DDIM lines, ε̂ kept (AdaIN, shape-aware fusion,
  recording the anchor's x̂0; method §1, §2.2, §2.6).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...engines.runtime import ControlResiduals, Networks, ReferenceStates
from .schedule import DdimSchedule, in_window


@dataclass(frozen=True)
class Window:
    """Steps as fractions of the full schedule (method §2): S·start ≤ i ≤ S·end, or S·start < i < S·end
    when `strict`."""

    start: float
    end: float
    strict: bool = False

    def contains(self, step: int, steps: int) -> bool:
        return in_window(step, steps, self.start, self.end, self.strict)


EVERY_STEP = Window(0.0, 1.0)


@dataclass(frozen=True)
class Step:
    """Step index i of the full S-step schedule, ᾱ at t_i and ᾱ after the step."""

    index: int
    steps: int
    alpha_bar: float
    alpha_bar_prev: float


@dataclass(frozen=True)
class UNetInputs:
    """What one step hands the UNet: the latent x (1, 4, h, w), the previous step's direction √(1 − ᾱ)·ε̂
    (read-only: x − direction = √ᾱ·x̂0) and the cross-frame reference states (plain self-attention unless a
    constraint sets them)."""

    x: torch.Tensor
    direction: torch.Tensor
    reference: ReferenceStates


class Constraint:
    """A constraint of the sampler: a step window and hooks, each a no-op unless a subclass overrides it."""

    window: Window = EVERY_STEP

    def before_unet(self, step: Step, inputs: UNetInputs) -> UNetInputs:
        return inputs

    def after_unet(self, step: Step, own_states: tuple[torch.Tensor, ...]) -> None:
        return None

    def on_x0(self, step: Step, x0: torch.Tensor) -> torch.Tensor:
        return x0


@dataclass(frozen=True)
class Conditioning:
    """Per-keyframe network inputs: text embeddings (2, 77, D) = [negative; positive]; one control image
    (1, 3, H, W) in [0, 1] per ControlNet; the VAE moments (1, 8, h, w) of the SDEdit source."""

    text_embeddings: torch.Tensor
    control_images: tuple[torch.Tensor, ...]
    moments: torch.Tensor


@dataclass(frozen=True)
class PassState:
    """A DDIM pass at the start of step `step`: the running latent x, the previous step's direction
    √(1 − ᾱ)·ε̂ (x − dir = √ᾱ·x̂0), the last x̂0, and the image-evaluations spent so far."""

    step: int
    x: torch.Tensor
    direction: torch.Tensor
    x0: torch.Tensor
    evaluations: int = 0


def draw_noise(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device in fp32, then moved to `like`'s device/dtype."""
    noise = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
    return noise.to(device=like.device, dtype=like.dtype)


def _control(networks: Networks, sample, timestep, text_embeddings, images) -> ControlResiduals | None:
    total = None
    for (controlnet, scale), image in zip(networks.controlnets, images, strict=True):
        scale_t = torch.tensor([scale], dtype=torch.float32, device=networks.device)
        residuals = controlnet(sample, timestep, text_embeddings, image, scale_t)
        total = residuals if total is None else total + residuals
    return total


def ddim_steps(
    networks: Networks,
    schedule: DdimSchedule,
    cond: Conditioning,
    begin: PassState,
    stop: int,
    constraints: Sequence[Constraint],
    cfg_scale: float,
) -> PassState:
    """DDIM steps `begin.step` … `stop` − 1 from `begin` (not modified), with the constraints' hooks."""
    x, direction, x0 = begin.x, begin.direction, begin.x0
    plain = ReferenceStates.disabled(networks.unet.layers, 2, *x.shape[-2:], networks.device, networks.dtype)
    controls = tuple(torch.cat([c, c]).to(networks.device, networks.dtype) for c in cond.control_images)
    evaluations = begin.evaluations
    for i in range(begin.step, stop):
        step = Step(i, schedule.steps, schedule.alpha_bar[i], schedule.alpha_bar_prev[i])
        active = [c for c in constraints if c.window.contains(i, schedule.steps)]
        inputs = UNetInputs(x, direction, plain)
        for constraint in active:
            inputs = constraint.before_unet(step, inputs)
        sample = torch.cat([inputs.x, inputs.x]).to(networks.dtype)  # batched CFG: [uncond; cond]
        timestep = torch.full((2,), schedule.timesteps[i], device=networks.device, dtype=torch.int64)
        control = _control(networks, sample, timestep, cond.text_embeddings, controls)
        eps_both, own = networks.unet(
            sample=sample,
            timestep=timestep,
            text_embeddings=cond.text_embeddings,
            control=control,
            reference=inputs.reference,
        )
        evaluations += sample.shape[0]
        for constraint in active:
            constraint.after_unet(step, own)
        eps_uncond, eps_cond = eps_both.float().chunk(2)
        eps = eps_uncond + cfg_scale * (eps_cond - eps_uncond)
        x = inputs.x.float()
        x0 = (x - math.sqrt(1.0 - step.alpha_bar) * eps) / math.sqrt(step.alpha_bar)
        for constraint in active:
            x0 = constraint.on_x0(step, x0)
        direction = math.sqrt(1.0 - step.alpha_bar_prev) * eps
        x = math.sqrt(step.alpha_bar_prev) * x0 + direction
    return PassState(max(begin.step, stop), x, direction, x0, evaluations)
