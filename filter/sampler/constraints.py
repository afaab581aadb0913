"""The paper's hierarchical cross-frame constraints as `Constraint` objects of the DDIM loop (docs/method.md §2).

The anchor's pass carries the recorders (its attention inputs, its x̂0 and its x̂0 colour statistics, each in
the window of the constraint that reads it); a later keyframe's pass carries the constraints that read those
records. All per-anchor records live on one `AnchorState`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ...engines.runtime import CrossFrameMode, Networks, ReferenceStates, cross_frame_mask
from . import fusion
from .ddim import EVERY_STEP, Constraint, Step, UNetInputs, Window, draw_noise


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
class ShapeGuide:
    flow_lat: torch.Tensor
    mask: torch.Tensor


@dataclass(frozen=True)
class PixelGuide:
    target: torch.Tensor  # x_trg · Mp (1, 4, h, w)
    weight: torch.Tensor  # Mp · mask_strength
    rescale: torch.Tensor | None


@dataclass(frozen=True)
class CrossFrameLayers:
    """Which up-block self-attention layers take part in cross-frame attention (docs/decisions.md 6), and the
    dtype their stored states are kept in."""

    mask: torch.Tensor  # (L,) float, on the networks' device
    active: tuple[bool, ...]
    storage_dtype: torch.dtype

    @staticmethod
    def of(networks: Networks, mode: CrossFrameMode) -> CrossFrameLayers | None:
        """None when no layer takes part (mode "off"): nothing to record, nothing to read."""
        mask = cross_frame_mask(networks.unet.layers, mode).to(networks.device)
        active = tuple(bool(m) for m in mask.tolist())
        return CrossFrameLayers(mask, active, networks.storage_dtype) if any(active) else None

    def keep(self, own: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The states worth storing: those of the layers that take part, in the storage dtype."""
        return tuple(s.to(self.storage_dtype) for s, active in zip(own, self.active, strict=True) if active)


# --- recording the anchor ----------------------------------------------------------------------------------------


class RecordAttention(Constraint):
    """method §2.1: the anchor's own self-attention inputs at every step are the first-frame states, and the
    previous-keyframe states until a later keyframe replaces them."""

    window = EVERY_STEP

    def __init__(self, state: AnchorState, layers: CrossFrameLayers):
        self.state, self.layers = state, layers

    def after_unet(self, step: Step, own_states: tuple[torch.Tensor, ...]) -> None:
        kept = self.layers.keep(own_states)
        self.state.first[step.index] = kept
        self.state.previous[step.index] = kept


class RecordAnchorX0(Constraint):
    """method §2.2: the anchor's x̂0 in the shape-fusion window, for `ShapeFusion`."""

    def __init__(self, state: AnchorState, window: Window, storage_dtype: torch.dtype):
        self.state, self.window, self.storage_dtype = state, window, storage_dtype

    def on_x0(self, step: Step, x0: torch.Tensor) -> torch.Tensor:
        self.state.anchor_x0[step.index] = x0.to(self.storage_dtype)
        return x0


class RecordColourStats(Constraint):
    """method §2.6: the per-channel mean/std of the anchor's x̂0 in the AdaIN window, for `AdaIN`."""

    def __init__(self, state: AnchorState, window: Window):
        self.state, self.window = state, window

    def on_x0(self, step: Step, x0: torch.Tensor) -> torch.Tensor:
        self.state.adain[step.index] = fusion.channel_stats(x0)
        return x0


# --- the constraints of a later keyframe ---------------------------------------------------------------------------


class CrossFrameAttention(Constraint):
    """method §2.1: the taking-part layers attend over [anchor; previous keyframe] states of the same step.

    With `update_previous` (pass 2) the frame's own states replace the previous keyframe's after the call.
    Steps the anchor did not record keep plain self-attention.
    """

    window = EVERY_STEP

    def __init__(self, state: AnchorState, layers: CrossFrameLayers, update_previous: bool):
        self.state, self.layers, self.update_previous = state, layers, update_previous

    def before_unet(self, step: Step, inputs: UNetInputs) -> UNetInputs:
        if step.index not in self.state.first:
            return inputs
        stored = iter(zip(self.state.first[step.index], self.state.previous[step.index], strict=True))
        states = tuple(
            torch.cat(next(stored), dim=1).to(default.dtype) if active else default
            for active, default in zip(self.layers.active, inputs.reference.states, strict=True)
        )
        return replace(inputs, reference=ReferenceStates(states, self.layers.mask))

    def after_unet(self, step: Step, own_states: tuple[torch.Tensor, ...]) -> None:
        if self.update_previous:
            self.state.previous[step.index] = self.layers.keep(own_states)


class PixelFusion(Constraint):
    """method §2.3 step 6: before the UNet call, pull the latent toward the noised fused target x_trg.

    Draws one q_sample noise per step of its window from the pass's generator."""

    def __init__(self, guide: PixelGuide, window: Window, inner_strength: float, generator: torch.Generator):
        self.guide, self.window = guide, window
        self.inner_strength, self.generator = inner_strength, generator

    def before_unet(self, step: Step, inputs: UNetInputs) -> UNetInputs:
        x = inputs.x
        x_ref = fusion.q_sample(self.guide.target, step.alpha_bar, draw_noise(x.shape, self.generator, x))
        fused = fusion.pixel_fusion_step(
            x, inputs.direction, x_ref, self.guide.weight, self.inner_strength, self.guide.rescale
        )
        return replace(inputs, x=fused)


class AdaIN(Constraint):
    """method §2.6: x̂0 takes the anchor's per-channel statistics of the same step (before shape fusion)."""

    def __init__(self, state: AnchorState, window: Window):
        self.state, self.window = state, window

    def on_x0(self, step: Step, x0: torch.Tensor) -> torch.Tensor:
        stats = self.state.adain.get(step.index)
        return x0 if stats is None else fusion.adain(x0, *stats)


class ShapeFusion(Constraint):
    """method §2.2: x̂0 ← M · warp(anchor x̂0) + (1 − M) · x̂0 where the anchor recorded this step."""

    def __init__(self, state: AnchorState, guide: ShapeGuide, window: Window):
        self.state, self.guide, self.window = state, guide, window

    def on_x0(self, step: Step, x0: torch.Tensor) -> torch.Tensor:
        anchor_x0 = self.state.anchor_x0.get(step.index)
        if anchor_x0 is None:
            return x0
        return fusion.shape_fusion(x0, anchor_x0.float(), self.guide.flow_lat, self.guide.mask)
