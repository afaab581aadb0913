"""torch modules with flat tensor signatures, one per exported network, matching its I/O spec.

Each module's `forward` takes the spec's inputs positionally and returns its outputs in spec order; the
exporter traces exactly that. They wrap the loaded diffusers/transformers modules without changing them.
The UNet needs no wrapper here: the torch backend's `CrossFrameUNet` (engines/torch_backend.py) already
has the flat signature of `engines.specs.unet_spec`, so the graph carries the very cross-frame processors
the torch backend runs.
"""

from __future__ import annotations

import torch


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
