"""The constrained keyframe sampler: DDIM (eta 0) with SDEdit start, batched CFG and the hierarchical
cross-frame constraints (docs/method.md §1, §2; docs/decisions.md 3–7).

A plain function of the networks it is given (runtime.py contract; style.md practice 1): `render_anchor`
and `render_keyframe` take the `Networks`, the per-keyframe inputs and the per-anchor `AnchorState`, and
return the image plus the number of UNet+ControlNet image-evaluations they spent.

Keyframe = two passes (method §2.5). Pass 1 supplies the *direct* image of the pixel-fusion
composite; pass 2 renders the keyframe with pixel-aware fusion. Both take identical steps (same seed, same
constraints, same stored states) until the first pixel-fusion step, so that shared prefix runs once and both
passes continue from a copy of its state (docs/decisions.md 13): pass 1 from the branch gives the authors'
pass-1 result exactly, with (branch − entry) fewer steps. `direct_image="branch-x0"` instead takes the x̂0
predicted at the last shared step as the direct image and does not finish pass 1. When the composite cannot
show the direct image at all (one warp sees every pixel), no pass 1 is needed and none runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from ...engines.runtime import (
    ControlResiduals,
    CrossFrameMode,
    Networks,
    ReferenceStates,
    cross_frame_mask,
    sample_posterior,
)
from . import fusion
from .schedule import DdimSchedule, ddim_schedule, in_window

DirectImage = Literal["pass1", "branch-x0"]
DIRECT_IMAGES: tuple[str, ...] = ("pass1", "branch-x0")


@dataclass(frozen=True)
class SamplerSettings:
    """Sampler parameters; defaults = docs/decisions.md 7 (windows are fractions of the full schedule)."""

    steps: int = 20
    strength: float = 0.75
    cfg_scale: float = 7.5
    cross_frame: CrossFrameMode = "loose"
    shape_fusion: tuple[float, float] = (0.0, 0.1)
    pixel_fusion: tuple[float, float] = (0.5, 0.8)
    adain: tuple[float, float] = (0.8, 1.0)
    mask_strength: float = 0.5
    inner_strength: float = 0.9
    smooth_boundary: bool = True
    fidelity_threshold: float = 0.25
    # The pixel-fusion composite's direct image: "pass1" finishes pass 1 from the branch point (the
    # authors' result); "branch-x0" decodes the x̂0 of the last step pass 1 and pass 2 share.
    direct_image: DirectImage = "pass1"

    def __post_init__(self) -> None:
        if self.direct_image not in DIRECT_IMAGES:
            raise ValueError(
                f"direct_image must be one of {', '.join(DIRECT_IMAGES)}; got {self.direct_image!r}"
            )


@dataclass
class AnchorState:
    """Everything recorded from one anchor and updated by later keyframes; a new one at every scene cut.

    first[i] / previous[i]: per step index, the stored self-attention inputs of the cross-frame layers
    (tuple over layers, each (2, N_l, C_l), per CFG branch); anchor_x0[i]: the anchor's x̂0 in the shape-fusion
    window (method §2.2); adain[i]: the anchor's x̂0 channel mean/std in the AdaIN window (method §2.6).
    """

    first: dict[int, tuple[torch.Tensor, ...]] = field(default_factory=dict)
    previous: dict[int, tuple[torch.Tensor, ...]] = field(default_factory=dict)
    anchor_x0: dict[int, torch.Tensor] = field(default_factory=dict)
    adain: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


@dataclass(frozen=True)
class Conditioning:
    """Per-keyframe network inputs: text embeddings (2, 77, D) = [negative; positive]; one control image
    (1, 3, H, W) in [0, 1] per ControlNet; the VAE moments (1, 8, h, w) of the SDEdit source."""

    text_embeddings: torch.Tensor
    control_images: tuple[torch.Tensor, ...]
    moments: torch.Tensor


@dataclass(frozen=True)
class FlowGuide:
    """Flow data of a non-anchor keyframe (backward flows (1, 2, H, W) in pixels, occlusions (1, 1, H, W)),
    and the stylised anchor and previous keyframe (1, 3, H, W) in [-1, 1]."""

    flow_to_anchor: torch.Tensor
    occluded_anchor: torch.Tensor
    flow_to_previous: torch.Tensor
    occluded_previous: torch.Tensor
    anchor_output: torch.Tensor
    previous_output: torch.Tensor


@dataclass(frozen=True)
class ShapeGuide:
    flow_lat: torch.Tensor
    mask: torch.Tensor


@dataclass(frozen=True)
class PixelGuide:
    target: torch.Tensor  # x_trg · Mp (1, 4, h, w)
    weight: torch.Tensor  # Mp · mask_strength
    rescale: torch.Tensor | None


@dataclass(frozen=True)
class KeyframeResult:
    image: torch.Tensor  # (1, 3, H, W) in [-1, 1]
    evaluations: int  # UNet+ControlNet image-evaluations (a CFG batch of 2 counts 2)
    passes: int  # 2 when a direct image was made (pass 1 finished or its branch-point x̂0), else 1
    direct: torch.Tensor | None = (
        None  # the composite's direct image (1, 3, H, W) in [-1, 1], if one was made
    )


Role = Literal["anchor", "first", "second"]


def encode_text(networks: Networks, prompt: str, negative_prompt: str) -> torch.Tensor:
    """(2, 77, D): [negative; positive], the batched-CFG order (docs/decisions.md 5)."""
    ids = networks.tokenize([negative_prompt, prompt]).to(networks.device)
    return networks.text_encoder(ids).to(networks.dtype)


def encode_image(networks: Networks, image: torch.Tensor) -> torch.Tensor:
    return networks.vae_encoder(image.to(device=networks.device, dtype=networks.dtype))


def encode_mean(networks: Networks, image: torch.Tensor) -> torch.Tensor:
    """Scaled posterior mean (the deterministic encoding used by the fidelity-oriented encoding)."""
    return encode_image(networks, image)[:, :4] * networks.scaling_factor


def decode(networks: Networks, latent: torch.Tensor) -> torch.Tensor:
    return networks.vae_decoder(latent / networks.scaling_factor).float()


def _randn(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    noise = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
    return noise.to(device=like.device, dtype=like.dtype)


def _control(networks: Networks, sample, timestep, text_embeddings, images) -> ControlResiduals | None:
    total = None
    for (controlnet, scale), image in zip(networks.controlnets, images, strict=True):
        scale_t = torch.tensor([scale], dtype=torch.float32, device=networks.device)
        residuals = controlnet(sample, timestep, text_embeddings, image, scale_t)
        total = residuals if total is None else total + residuals
    return total


class _References:
    """Builds each step's ReferenceStates from the AnchorState (zeros for layers that do not take part)."""

    def __init__(
        self, networks: Networks, state: AnchorState, mode: CrossFrameMode, latent_hw: tuple[int, int]
    ):
        self.layers = networks.unet.layers
        self.mask = cross_frame_mask(self.layers, mode).to(networks.device)
        self.active = [bool(m) for m in self.mask.tolist()]
        self.state = state
        h, w = latent_hw
        self.zeros = tuple(
            torch.zeros(
                2, 2 * layer.tokens(h, w), layer.channels, device=networks.device, dtype=networks.dtype
            )
            for layer in self.layers
        )
        self.disabled = ReferenceStates(self.zeros, torch.zeros_like(self.mask))
        self.storage_dtype = networks.storage_dtype

    def at(self, step: int, role: Role) -> ReferenceStates:
        if role == "anchor" or not any(self.active) or step not in self.state.first:
            return self.disabled
        first, previous = self.state.first[step], self.state.previous[step]
        states = []
        slot = 0
        for index, active in enumerate(self.active):
            if active:
                states.append(torch.cat([first[slot], previous[slot]], dim=1).to(self.zeros[index].dtype))
                slot += 1
            else:
                states.append(self.zeros[index])
        return ReferenceStates(tuple(states), self.mask)

    def keep(self, own: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(s.to(self.storage_dtype) for s, active in zip(own, self.active, strict=True) if active)


@dataclass(frozen=True)
class PassState:
    """A DDIM pass at the start of step `step`: the running latent x, the previous step's direction
    √(1 − ᾱ)·ε̂ (x − dir = √ᾱ·x̂0), the last x̂0, and the image-evaluations spent so far."""

    step: int
    x: torch.Tensor
    direction: torch.Tensor
    x0: torch.Tensor
    evaluations: int = 0


def start_pass(
    networks: Networks,
    schedule: DdimSchedule,
    settings: SamplerSettings,
    cond: Conditioning,
    generator: torch.Generator,
) -> PassState:
    """The SDEdit start: the noised source latent at the entry step. Draws the posterior sample of the
    source, then the SDEdit noise."""
    entry = schedule.entry(settings.strength)
    x0_source = sample_posterior(cond.moments, generator) * networks.scaling_factor
    noise = _randn(x0_source.shape, generator, x0_source)
    alpha = schedule.alpha_bar[entry]
    x = fusion.q_sample(x0_source, alpha, noise)
    direction = math.sqrt(1.0 - alpha) * noise  # x − dir = √ᾱ·x0 at the entry step, as after a DDIM step
    return PassState(entry, x, direction, x0_source)


def run_steps(
    networks: Networks,
    schedule: DdimSchedule,
    settings: SamplerSettings,
    cond: Conditioning,
    state: AnchorState,
    generator: torch.Generator,
    role: Role,
    begin: PassState,
    stop: int,
    *,
    shape: ShapeGuide | None = None,
    pixel: PixelGuide | None = None,
    update_previous: bool = False,
) -> PassState:
    """DDIM steps `begin.step` … `stop` − 1 from `begin` (not modified). The generator draws one q_sample
    noise per pixel-fusion step."""
    steps = schedule.steps
    x, direction, x0 = begin.x, begin.direction, begin.x0
    references = _References(networks, state, settings.cross_frame, tuple(x.shape[-2:]))
    controls = tuple(
        torch.cat([image, image]).to(networks.device, networks.dtype) for image in cond.control_images
    )
    evaluations = begin.evaluations
    for i in range(begin.step, stop):
        alpha, alpha_prev = schedule.alpha_bar[i], schedule.alpha_bar_prev[i]
        if pixel is not None and in_window(i, steps, *settings.pixel_fusion, strict=True):
            # method §2.3: pull the running latent toward the fused, fidelity-encoded target before the UNet call.
            x_ref = fusion.q_sample(pixel.target, alpha, _randn(x.shape, generator, x))
            x = fusion.pixel_fusion_step(
                x, direction, x_ref, pixel.weight, settings.inner_strength, pixel.rescale
            )
        sample = torch.cat([x, x]).to(networks.dtype)
        timestep = torch.full((2,), schedule.timesteps[i], device=networks.device, dtype=torch.int64)
        control = _control(networks, sample, timestep, cond.text_embeddings, controls)
        eps_both, own = networks.unet(sample, timestep, cond.text_embeddings, control, references.at(i, role))
        evaluations += sample.shape[0]
        eps_uncond, eps_cond = eps_both.float().chunk(2)
        eps = eps_uncond + settings.cfg_scale * (eps_cond - eps_uncond)
        if role == "anchor":
            kept = references.keep(own)
            if kept:
                state.first[i] = kept
                state.previous[i] = kept  # method §2.1: before the first update, previous is the anchor
        elif update_previous:
            kept = references.keep(own)
            if kept:
                state.previous[i] = kept
        x = x.float()
        x0 = (x - math.sqrt(1.0 - alpha) * eps) / math.sqrt(alpha)
        if role == "anchor":
            if in_window(i, steps, *settings.shape_fusion):
                state.anchor_x0[i] = x0.to(networks.storage_dtype)
            if in_window(i, steps, *settings.adain):
                state.adain[i] = fusion.channel_stats(x0)
        else:
            if i in state.adain and in_window(i, steps, *settings.adain):
                x0 = fusion.adain(x0, *state.adain[i])
            if shape is not None and i in state.anchor_x0 and in_window(i, steps, *settings.shape_fusion):
                x0 = fusion.shape_fusion(x0, state.anchor_x0[i].float(), shape.flow_lat, shape.mask)
        direction = math.sqrt(1.0 - alpha_prev) * eps
        x = math.sqrt(alpha_prev) * x0 + direction
    return PassState(max(begin.step, stop), x, direction, x0, evaluations)


def run_pass(
    networks: Networks,
    schedule: DdimSchedule,
    settings: SamplerSettings,
    cond: Conditioning,
    state: AnchorState,
    generator: torch.Generator,
    role: Role,
    *,
    shape: ShapeGuide | None = None,
    pixel: PixelGuide | None = None,
    update_previous: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One whole DDIM pass from the SDEdit entry step to the end.

    Returns (x after the last step, x̂0 of the last step, image-evaluations). The generator draws, in order:
    the posterior sample of the source, the SDEdit noise, then one q_sample noise per pixel-fusion step.
    """
    begin = start_pass(networks, schedule, settings, cond, generator)
    end = run_steps(
        networks, schedule, settings, cond, state, generator, role, begin, schedule.steps,
        shape=shape, pixel=pixel, update_previous=update_previous,
    )  # fmt: skip
    return end.x, end.x0, end.evaluations


def _branch(generator: torch.Generator) -> torch.Generator:
    """A generator that draws what `generator` would draw next, without advancing it."""
    return torch.Generator(device=generator.device).set_state(generator.get_state())


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def render_anchor(
    networks: Networks, settings: SamplerSettings, cond: Conditioning, state: AnchorState, seed: int
) -> KeyframeResult:
    """The anchor: one unconstrained pass that records the states, x̂0 and AdaIN statistics (method §2)."""
    schedule = ddim_schedule(networks.schedule, settings.steps)
    x, _, evaluations = run_pass(networks, schedule, settings, cond, state, _generator(seed), "anchor")
    return KeyframeResult(decode(networks, x), evaluations, 1)


def fidelity_encode(networks: Networks, image: torch.Tensor, threshold: float) -> torch.Tensor:
    """method §2.4: z = E(B); z_rec = E(D(z)); z′ = z + (z − z_rec); x_trg = z + (1 − Mε)(z − z_rec)."""
    z = encode_mean(networks, image)
    z_rec = encode_mean(networks, decode(networks, z))
    corrected = decode(networks, z + (z - z_rec))
    return fusion.fidelity_target(z.float(), z_rec.float(), image.float(), corrected, threshold)


def pixel_guide(
    networks: Networks, settings: SamplerSettings, guide: FlowGuide, direct: torch.Tensor
) -> PixelGuide:
    """method §2.3 steps 1–7: composite, fidelity encoding, eroded mask Mp, smooth-boundary map R."""
    warped_anchor = fusion.warp(guide.anchor_output, guide.flow_to_anchor)
    warped_previous = fusion.warp(guide.previous_output, guide.flow_to_previous)
    soft_anchor = fusion.soft_mask(guide.occluded_anchor)
    soft_previous = fusion.soft_mask(guide.occluded_previous)
    blended = fusion.composite(direct, warped_previous, soft_previous, warped_anchor, soft_anchor)
    mask = fusion.pixel_fusion_mask(guide.occluded_previous, guide.occluded_anchor)
    target = fidelity_encode(networks, blended, settings.fidelity_threshold) * mask
    rescale = fusion.noise_rescale(mask) if settings.smooth_boundary else None
    return PixelGuide(target, mask * settings.mask_strength, rescale)


def composite_uses_direct(guide: FlowGuide) -> bool:
    """Whether the pixel-fusion composite shows the direct image anywhere (method §2.3 step 3).

    The direct image enters with weight bm_0 · bm_pre; where one of the two warps sees every pixel that weight
    is 0 everywhere, the composite (and so pass 2) does not depend on pass 1, and no pass 1 runs."""
    direct_weight = fusion.soft_mask(guide.occluded_anchor) * fusion.soft_mask(guide.occluded_previous)
    return bool((direct_weight > 0).any())


def render_keyframe(
    networks: Networks,
    settings: SamplerSettings,
    cond: Conditioning,
    state: AnchorState,
    guide: FlowGuide,
    seed: int,
    update_previous: bool = True,
) -> KeyframeResult:
    """A keyframe after the anchor: pass 1 and pass 2 with pixel-aware fusion (method §2.5), sharing their prefix.

    The shared prefix runs with pass 2's state update (`update_previous`): it writes the previous-keyframe
    states of the prefix's steps only, which pass 1 never reads again after the branch."""
    schedule = ddim_schedule(networks.schedule, settings.steps)
    steps, entry = schedule.steps, schedule.entry(settings.strength)
    shape = ShapeGuide(
        fusion.latent_flow(guide.flow_to_anchor), fusion.shape_fusion_mask(guide.occluded_anchor)
    )
    pixel_steps = [i for i in range(entry, steps) if in_window(i, steps, *settings.pixel_fusion, strict=True)]
    generator = _generator(seed)
    begin = start_pass(networks, schedule, settings, cond, generator)

    def finish(role: Role, start: PassState, rng: torch.Generator, pixel: PixelGuide | None) -> PassState:
        return run_steps(
            networks, schedule, settings, cond, state, rng, role, start, steps,
            shape=shape, pixel=pixel, update_previous=update_previous and role == "second",
        )  # fmt: skip

    if not pixel_steps:
        # No pixel-aware fusion step is reached: one constrained pass is the keyframe (the webUI's behaviour).
        end = finish("second", begin, generator, None)
        return KeyframeResult(decode(networks, end.x), end.evaluations, 1)
    if not composite_uses_direct(guide):
        direct = torch.zeros_like(guide.anchor_output)  # multiplied by 0 everywhere in the composite
        end = finish("second", begin, generator, pixel_guide(networks, settings, guide, direct))
        return KeyframeResult(decode(networks, end.x), end.evaluations, 1)
    branch = pixel_steps[0]
    shared = run_steps(
        networks, schedule, settings, cond, state, generator, "second", begin, branch,
        shape=shape, update_previous=update_previous,
    )  # fmt: skip
    if settings.direct_image == "pass1":
        first = finish("first", shared, _branch(generator), None)
        direct = decode(networks, first.x)
        spent = first.evaluations  # includes the shared prefix
    else:
        direct = decode(networks, shared.x0)
        spent = shared.evaluations
    second = finish(
        "second", replace(shared, evaluations=0), generator, pixel_guide(networks, settings, guide, direct)
    )
    return KeyframeResult(decode(networks, second.x), spent + second.evaluations, 2, direct)
