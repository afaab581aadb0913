"""torch modules with flat tensor signatures, one per exported network, matching its I/O spec.

Each module's `forward` takes the spec's inputs positionally and returns its outputs in spec order; the
exporter traces exactly that. They wrap the loaded diffusers/transformers modules without changing them,
except the UNet, whose up-block self-attention layers get the cross-frame processors
(engines/attention.py) through diffusers' `set_attn_processor` extension point for the duration of the
export (`cross_frame_processors`), after which the previous processors are restored.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..engines.attention import CrossFrameAttnProcessor, StateExchange


class TextEncoderGraph(torch.nn.Module):
    def __init__(self, text_encoder: torch.nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(token_ids, return_dict=False)[0]


class VaeEncoderGraph(torch.nn.Module):
    """image in [-1, 1] -> posterior moments (mean and log-variance, unscaled)."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(image).latent_dist.parameters


class VaeDecoderGraph(torch.nn.Module):
    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent_sample, return_dict=False)[0]


class ControlNetGraph(torch.nn.Module):
    """The scale is an input (NVIDIA's demo does the same): changing it needs no new graph or engine."""

    def __init__(self, controlnet: torch.nn.Module) -> None:
        super().__init__()
        self.controlnet = controlnet

    def forward(self, sample, timestep, text_embeddings, control_image, conditioning_scale):
        down, mid = self.controlnet(
            sample,
            timestep,
            encoder_hidden_states=text_embeddings,
            controlnet_cond=control_image,
            return_dict=False,
        )
        # Scaling here rather than through diffusers' float `conditioning_scale` keeps it a graph input.
        scale = conditioning_scale.to(mid.dtype)
        return (*(d * scale for d in down), mid * scale)


@contextmanager
def cross_frame_processors(unet: torch.nn.Module, layer_names: list[str]) -> Iterator[StateExchange]:
    """Install cross-frame processors on `layer_names` for the duration of the block, then restore."""
    previous = dict(unet.attn_processors)
    exchange = StateExchange(own=[None] * len(layer_names))
    processors = dict(previous)
    for index, name in enumerate(layer_names):
        if name not in processors:
            raise ValueError(
                f"the UNet has no attention processor {name!r}; its config does not match the spec"
            )
        processors[name] = CrossFrameAttnProcessor(index, exchange)
    unet.set_attn_processor(processors)
    try:
        yield exchange
    finally:
        unet.set_attn_processor(previous)


class UNetGraph(torch.nn.Module):
    """UNet with ControlNet residual inputs and cross-frame reference-state inputs / own-state outputs.

    Input order: sample, timestep, text_embeddings, down_residual_0..k, mid_residual,
    reference_state_0..L-1, reference_mask. Output order: noise, own_state_0..L-1 (engines/specs.unet_spec).
    """

    def __init__(self, unet: torch.nn.Module, exchange: StateExchange, n_down: int, n_layers: int) -> None:
        super().__init__()
        self.unet = unet
        self.exchange = exchange
        self.n_down = n_down
        self.n_layers = n_layers

    def forward(self, sample, timestep, text_embeddings, *rest):
        down = rest[: self.n_down]
        mid = rest[self.n_down]
        states = rest[self.n_down + 1 : self.n_down + 1 + self.n_layers]
        mask = rest[self.n_down + 1 + self.n_layers]
        self.exchange.reference = tuple(states)
        self.exchange.mask = mask
        self.exchange.own = [None] * self.n_layers
        noise = self.unet(
            sample,
            timestep,
            encoder_hidden_states=text_embeddings,
            down_block_additional_residuals=tuple(down),
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]
        own = list(self.exchange.own)
        if any(o is None for o in own):
            raise RuntimeError(
                "a cross-frame layer did not run during the UNet call; the spec does not match"
            )
        return (noise, *own)
