"""The constrained keyframe sampler: DDIM (eta 0) with SDEdit start, batched CFG and the hierarchical
cross-frame constraints (docs/method.md §1, §2; docs/decisions.md 3–7).

A plain function of the networks it is given (engines/runtime.py contract): `render_anchor` and
`render_keyframe` take the `Networks`, the per-keyframe inputs and the per-anchor `AnchorState`, and
return the image plus the number of UNet+ControlNet image-evaluations they spent.

Keyframe = two passes (method §2.5). Pass 1 supplies the *direct* image of the pixel-fusion
composite; pass 2 renders the keyframe with pixel-aware fusion. Both take identical steps (same seed, same
constraints, same stored states) until the first pixel-fusion step, so that shared prefix runs once and both
passes continue from a copy of its state (docs/decisions.md 13): pass 1 from the branch gives the authors'
pass-1 result exactly, with (branch − entry) fewer steps. `direct_image="branch-x0"` instead takes the x̂0
predicted at the last shared step as the direct image and does not finish pass 1. When the composite cannot
show the direct image at all (one warp sees every pixel), no pass 1 is needed and none runs.

Every pass is plain DDIM (ddim.py) plus a list of constraint objects (constraints.py): `anchor_constraints`
and `keyframe_constraints` say which constraints a pass carries; callers may append their own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch

from ...engines.runtime import CrossFrameMode, Networks, sample_posterior
from . import fusion
from .constraints import (
    AdaIN,
    AnchorState,
    CrossFrameAttention,
    CrossFrameLayers,
    PixelFusion,
    PixelGuide,
    RecordAnchorX0,
    RecordAttention,
    RecordColourStats,
    ShapeFusion,
    ShapeGuide,
)
from .ddim import Conditioning, Constraint, PassState, Window, ddim_steps, draw_noise
from .schedule import DdimSchedule, ddim_schedule

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
class KeyframeResult:
    image: torch.Tensor  # (1, 3, H, W) in [-1, 1]
    evaluations: int  # UNet+ControlNet image-evaluations (a CFG batch of 2 counts 2)
    passes: int  # 2 when a direct image was made (pass 1 finished or its branch-point x̂0), else 1
    direct: torch.Tensor | None = (
        None  # the composite's direct image (1, 3, H, W) in [-1, 1], if one was made
    )


# The anchor's pass records; pass 1 ("first") and pass 2 ("second") of a later keyframe carry the same
# constraints and differ only by the pixel guide and the state update they are given (method §2.5).
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
    noise = draw_noise(x0_source.shape, generator, x0_source)
    alpha = schedule.alpha_bar[entry]
    x = fusion.q_sample(x0_source, alpha, noise)
    direction = math.sqrt(1.0 - alpha) * noise  # x − dir = √ᾱ·x0 at the entry step, as after a DDIM step
    return PassState(entry, x, direction, x0_source)


def anchor_constraints(networks: Networks, settings: SamplerSettings, state: AnchorState) -> list[Constraint]:
    """The anchor's pass records what later keyframes read (method §2): attention inputs, x̂0, x̂0 statistics."""
    layers = CrossFrameLayers.of(networks, settings.cross_frame)
    return [
        *([RecordAttention(state, layers)] if layers is not None else []),
        RecordAnchorX0(state, Window(*settings.shape_fusion), networks.storage_dtype),
        RecordColourStats(state, Window(*settings.adain)),
    ]


def keyframe_constraints(
    networks: Networks,
    settings: SamplerSettings,
    state: AnchorState,
    generator: torch.Generator,
    *,
    shape: ShapeGuide | None = None,
    pixel: PixelGuide | None = None,
    update_previous: bool = False,
) -> list[Constraint]:
    """A later keyframe's constraints (method §2), in hook order: cross-frame attention (writing the
    previous-keyframe states when `update_previous`), pixel-aware fusion with a `pixel` guide (pass 2, drawing
    from `generator`), AdaIN, then shape-aware fusion with a `shape` guide (AdaIN acts first, method §2.6)."""
    layers = CrossFrameLayers.of(networks, settings.cross_frame)
    constraints: list[Constraint] = []
    if layers is not None:
        constraints.append(CrossFrameAttention(state, layers, update_previous))
    if pixel is not None:
        pixel_window = Window(*settings.pixel_fusion, strict=True)
        constraints.append(PixelFusion(pixel, pixel_window, settings.inner_strength, generator))
    constraints.append(AdaIN(state, Window(*settings.adain)))
    if shape is not None:
        constraints.append(ShapeFusion(state, shape, Window(*settings.shape_fusion)))
    return constraints


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
    extra: Sequence[Constraint] = (),
) -> PassState:
    """DDIM steps `begin.step` … `stop` − 1 from `begin` (not modified) with the method's constraints of the
    role (the anchor's recorders, or a later keyframe's constraints), then the `extra` ones. The generator
    draws one q_sample noise per pixel-fusion step."""
    if role == "anchor":
        constraints = anchor_constraints(networks, settings, state)
    else:
        constraints = keyframe_constraints(
            networks, settings, state, generator, shape=shape, pixel=pixel, update_previous=update_previous
        )
    return ddim_steps(networks, schedule, cond, begin, stop, [*constraints, *extra], settings.cfg_scale)


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
    extra: Sequence[Constraint] = (),
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One whole DDIM pass from the SDEdit entry step to the end.

    Returns (x after the last step, x̂0 of the last step, image-evaluations). The generator draws, in order:
    the posterior sample of the source, the SDEdit noise, then one q_sample noise per pixel-fusion step.
    """
    begin = start_pass(networks, schedule, settings, cond, generator)
    end = run_steps(
        networks, schedule, settings, cond, state, generator, role, begin, schedule.steps,
        shape=shape, pixel=pixel, update_previous=update_previous, extra=extra,
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
    pixel_window = Window(*settings.pixel_fusion, strict=True)
    pixel_steps = [i for i in range(entry, steps) if pixel_window.contains(i, steps)]
    generator = _generator(seed)

    def run(begin: PassState, stop: int, rng: torch.Generator, pixel: PixelGuide | None, update: bool):
        constraints = keyframe_constraints(
            networks, settings, state, rng, shape=shape, pixel=pixel, update_previous=update
        )
        return ddim_steps(networks, schedule, cond, begin, stop, constraints, settings.cfg_scale)

    begin = start_pass(networks, schedule, settings, cond, generator)
    if not pixel_steps:
        # No pixel-aware fusion step is reached: one constrained pass is the keyframe (the webUI's behaviour).
        end = run(begin, steps, generator, None, update_previous)
        return KeyframeResult(decode(networks, end.x), end.evaluations, 1)
    if not composite_uses_direct(guide):
        direct = torch.zeros_like(guide.anchor_output)  # multiplied by 0 everywhere in the composite
        end = run(begin, steps, generator, pixel_guide(networks, settings, guide, direct), update_previous)
        return KeyframeResult(decode(networks, end.x), end.evaluations, 1)
    shared = run(begin, pixel_steps[0], generator, None, update_previous)
    if settings.direct_image == "pass1":
        first = run(shared, steps, _branch(generator), None, False)
        direct = decode(networks, first.x)
        spent = first.evaluations  # includes the shared prefix
    else:
        direct = decode(networks, shared.x0)
        spent = shared.evaluations
    pixel = pixel_guide(networks, settings, guide, direct)
    second = run(replace(shared, evaluations=0), steps, generator, pixel, update_previous)
    return KeyframeResult(decode(networks, second.x), spent + second.evaluations, 2, direct)
