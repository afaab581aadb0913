"""The runtime contract: the networks the constrained sampler calls, whatever backend runs them.

Every backend (torch here; onnxruntime and TensorRT in `rerender.export`) provides the same callables, so the
sampler's loop never branches on the backend (README).
The contract is export-friendly: every input is a tensor of fixed rank, there is no Python control flow on
tensor values, and optional behaviour (cross-frame attention per layer, loose mode, the anchor pass) is a
*value* of an input (`ReferenceStates.mask`), never a different graph.

Shapes (B = 2 for the batched classifier-free guidance, uncond first then cond, docs/decisions.md 5;
H, W = image size, h = H/8, w = W/8 = latent size; L = number of up-block self-attention layers, 9 for SD1.5):

- text encoder:  token_ids int64 (B, 77)                                   -> embeddings (B, 77, 768)
- VAE encoder:   image (B, 3, H, W) in [-1, 1]                             -> moments (B, 8, h, w)
                 (posterior mean and log-variance, unscaled; `sample_posterior` draws from it with the
                 caller's generator, so the noise realisation is the sampler's, not the backend's)
- VAE decoder:   latent_sample (B, 4, h, w), *unscaled* (latents / scaling_factor) -> image (B, 3, H, W) in [-1, 1]
- ControlNet:    sample (B, 4, h, w), timestep (B,) int64 or float, text_embeddings (B, 77, 768),
                 control_image (B, 3, H, W) in [0, 1], conditioning_scale float32 (1,)
                 -> ControlResiduals: 12 down residuals + 1 mid residual, already multiplied by the scale
- UNet:          sample (B, 4, h, w), timestep (B,), text_embeddings (B, 77, 768),
                 control: ControlResiduals (sum over ControlNets; None without a ControlNet, which
                 an exported graph receives as zeros),
                 reference: ReferenceStates
                 -> (noise (B, 4, h, w), own_states: tuple of L tensors (B, N_l, C_l))

Cross-frame attention (docs/method.md §2.1): for up-block self-attention layer l with N_l tokens and C_l
channels, `reference.states[l]` is (B, 2·N_l, C_l): the stored self-attention *inputs* (after the block's
norm) of the anchor (tokens 0..N_l-1) and of the previous keyframe (tokens N_l..2N_l-1) at the same step, per
CFG branch. `reference.mask[l]` (float) selects the keys/values of that layer:
    kv_input = mask[l] · states[l] + (1 − mask[l]) · concat(own, own)
Attention over a key set in which every key appears twice equals attention over the set, so mask 0 is exactly
plain self-attention and mask 1 is the paper's cross-frame attention (queries from the current frame, keys and
values from [anchor; previous] only). `own_states[l]` is the layer's own input, which the sampler stores for
later keyframes (fp16 on GPU, fp32 on CPU).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

CrossFrameMode = Literal["full", "loose", "off"]
TEXT_TOKENS = 77
LATENT_CHANNELS = 4


@dataclass(frozen=True)
class SelfAttentionLayer:
    """One up-block self-attention layer that takes part in cross-frame attention.

    `name` is the diffusers attention-processor name; the layer sees `(h // stride) · (w // stride)` tokens of
    `channels` channels for a latent of size h × w.
    """

    name: str
    channels: int
    stride: int

    def tokens(self, latent_height: int, latent_width: int) -> int:
        return (latent_height // self.stride) * (latent_width // self.stride)


@dataclass(frozen=True)
class ControlResiduals:
    """ControlNet output: 12 down-block residuals (SD1.5 layout) and the mid-block residual, already scaled."""

    down: tuple[torch.Tensor, ...]
    mid: torch.Tensor

    def __add__(self, other: ControlResiduals) -> ControlResiduals:
        # Several ControlNets add their residuals (diffusers MultiControlNetModel does the same).
        return ControlResiduals(
            tuple(a + b for a, b in zip(self.down, other.down, strict=True)), self.mid + other.mid
        )


@dataclass(frozen=True)
class ReferenceStates:
    """Keys/values source for every up-block self-attention layer (see the module docstring).

    states[l]: (B, 2·N_l, C_l) = [anchor; previous] self-attention inputs of layer l at this step.
    mask: float tensor (L,); 1 uses `states[l]`, 0 makes layer l plain self-attention.
    """

    states: tuple[torch.Tensor, ...]
    mask: torch.Tensor

    @staticmethod
    def disabled(
        layers: Sequence[SelfAttentionLayer],
        batch: int,
        latent_height: int,
        latent_width: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> ReferenceStates:
        """Plain self-attention in every layer (the anchor pass, `--cross-frame off`)."""
        states = tuple(
            torch.zeros(
                batch,
                2 * layer.tokens(latent_height, latent_width),
                layer.channels,
                device=device,
                dtype=dtype,
            )
            for layer in layers
        )
        return ReferenceStates(states, torch.zeros(len(layers), device=device, dtype=torch.float32))


def cross_frame_mask(layers: Sequence[SelfAttentionLayer], mode: CrossFrameMode) -> torch.Tensor:
    """The per-layer mask for a cross-frame mode (docs/decisions.md 6).

    "loose" skips the layers with the most channels (the three 1280-channel layers of SD1.5, method §2.1), "off"
    skips all of them.
    """
    if mode == "off":
        return torch.zeros(len(layers))
    widest = max(layer.channels for layer in layers)
    return torch.tensor(
        [0.0 if mode == "loose" and layer.channels == widest else 1.0 for layer in layers],
        dtype=torch.float32,
    )


def up_self_attention_layers(unet_config: Mapping) -> tuple[SelfAttentionLayer, ...]:
    """The up-block self-attention layers of a diffusers `UNet2DConditionModel` config, in call order.

    For SD1.5 these are up_blocks 1–3 × 3 attentions: 1280 channels at stride 4 (16×16 tokens at 512²),
    640 at stride 2, 320 at stride 1.
    """
    channels = list(reversed(unet_config["block_out_channels"]))
    n_blocks = len(channels)
    per_block = unet_config["layers_per_block"]
    per_block = per_block if isinstance(per_block, int) else per_block[0]
    depth = unet_config.get("transformer_layers_per_block", 1)
    layers = []
    for b, block_type in enumerate(unet_config["up_block_types"]):
        if "CrossAttn" not in block_type:
            continue
        blocks_depth = depth if isinstance(depth, int) else list(reversed(depth))[b]
        for a in range(per_block + 1):
            for k in range(blocks_depth):
                layers.append(
                    SelfAttentionLayer(
                        name=f"up_blocks.{b}.attentions.{a}.transformer_blocks.{k}.attn1.processor",
                        channels=channels[b],
                        stride=2 ** (n_blocks - 1 - b),
                    )
                )
    return tuple(layers)


def sample_posterior(moments: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draw z = mean + std · n from the VAE posterior moments (B, 8, h, w), unscaled.

    Matches diffusers' `DiagonalGaussianDistribution.sample` (log-variance clamped to [-30, 20]) so that the
    same generator gives the same latent as a diffusers pipeline. The noise is drawn on the generator's
    device in fp32 and then moved, so a CPU generator gives the same realisation on every backend.
    """
    mean, logvar = torch.chunk(moments, 2, dim=1)
    std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
    device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(mean.shape, generator=generator, device=device, dtype=torch.float32)
    return mean + std * noise.to(device=mean.device, dtype=mean.dtype)


class TextEncoder(Protocol):
    def __call__(self, token_ids: torch.Tensor) -> torch.Tensor:
        """token_ids int64 (B, 77) -> last hidden state (B, 77, D) (D = 768 for SD1.5)."""
        ...


class VaeEncoder(Protocol):
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W) in [-1, 1] -> posterior moments (B, 8, H/8, W/8), unscaled."""
        ...


class VaeDecoder(Protocol):
    def __call__(self, latent_sample: torch.Tensor) -> torch.Tensor:
        """unscaled latent (B, 4, h, w) -> image (B, 3, 8h, 8w) in [-1, 1] (not clamped)."""
        ...


class ControlNet(Protocol):
    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        text_embeddings: torch.Tensor,
        control_image: torch.Tensor,
        conditioning_scale: torch.Tensor,
    ) -> ControlResiduals:
        """See the module docstring: (B,4,h,w), (B,), (B,77,D), (B,3,H,W) in [0,1], (1,) -> scaled residuals."""
        ...


class UNet(Protocol):
    layers: tuple[SelfAttentionLayer, ...]

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        text_embeddings: torch.Tensor,
        control: ControlResiduals | None,
        reference: ReferenceStates,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """-> (noise prediction (B, 4, h, w), own self-attention inputs: L tensors (B, N_l, C_l)).

        The sampler passes every argument by name, so an implementation keeps these parameter names."""
        ...


@dataclass(frozen=True)
class ScheduleConfig:
    """The training noise schedule (SD1.5: scaled_linear 0.00085..0.012, 1000 steps, method §1)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    steps_offset: int = 1
    set_alpha_to_one: bool = False


@dataclass(frozen=True)
class Networks:
    """Everything the constrained sampler calls, from one backend chosen once at load time.

    `controlnets` pairs each ControlNet with its conditioning scale; `storage_dtype` is the dtype in which the
    sampler keeps cross-frame states (fp16 on GPU, fp32 on CPU).
    """

    text_encoder: TextEncoder
    tokenize: Callable[[Sequence[str]], torch.Tensor]  # texts -> int64 token ids (B, 77)
    vae_encoder: VaeEncoder
    vae_decoder: VaeDecoder
    unet: UNet
    controlnets: tuple[tuple[ControlNet, float], ...]
    scaling_factor: float
    schedule: ScheduleConfig
    device: torch.device
    dtype: torch.dtype
    storage_dtype: torch.dtype
