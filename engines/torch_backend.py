"""The torch backend of the runtime contract (runtime.py): diffusers/transformers modules as plain callables.

`CrossFrameUNet` is an `nn.Module` with a flat tensor signature (what ONNX export traces); `TorchUNet` adapts
it to the `UNet` protocol. Cross-frame attention is installed with `set_attn_processor` (attention.py); FreeU
with forward pre-hooks on the up-block resnets (freeu.py). The backend is chosen once, in `torch_networks`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from .attention import CrossFrameAttnProcessor, StateExchange
from .freeu import FreeUFactors, set_freeu
from .runtime import ControlResiduals, Networks, ReferenceStates, SelfAttentionLayer, up_self_attention_layers
from .tokenizer import make_tokenize

if TYPE_CHECKING:
    from .loading import ModelBundle


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from .errors import EngineUsageError

        raise EngineUsageError(
            f"--device {name} asks for CUDA but torch sees no CUDA device; use --device cpu"
        )
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


class TorchTextEncoder:
    def __init__(self, model):
        self.model = model

    @torch.no_grad()
    def __call__(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.model(token_ids.to(self.model.device))[0]


class TorchVaeEncoder:
    def __init__(self, vae):
        self.vae = vae

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(image.to(self.vae.dtype)).latent_dist.parameters


class TorchVaeDecoder:
    def __init__(self, vae):
        self.vae = vae

    @torch.no_grad()
    def __call__(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent_sample.to(self.vae.dtype)).sample


class TorchControlNet:
    def __init__(self, model):
        self.model = model

    @torch.no_grad()
    def __call__(
        self, sample, timestep, text_embeddings, control_image, conditioning_scale
    ) -> ControlResiduals:
        down, mid = self.model(
            sample,
            timestep,
            encoder_hidden_states=text_embeddings,
            controlnet_cond=control_image.to(sample.dtype),
            conditioning_scale=1.0,
            return_dict=False,
        )
        scale = torch.as_tensor(conditioning_scale, dtype=sample.dtype, device=sample.device)
        return ControlResiduals(tuple(d * scale for d in down), mid * scale)


class CrossFrameUNet(nn.Module):
    """UNet with cross-frame attention, callable two ways.

    `predict(sample, timestep, text_embeddings, control, reference) -> (noise, own_states)` is the runtime
    contract's UNet call (runtime.py), with named, structured inputs. `forward` is the same network with the
    flat tensor signature of `engines.specs.unet_spec`, which ONNX export traces: sample, timestep,
    text_embeddings, the ControlNet residuals (12 down and the mid one; a single empty tensor when there is
    no ControlNet), the L reference states, reference_mask -> (noise, *own_states (L)).
    """

    def __init__(self, unet, layers: Sequence[SelfAttentionLayer]):
        super().__init__()
        self.unet = unet
        self.layers = tuple(layers)
        self.exchange = StateExchange(own=[None] * len(self.layers))
        processors = dict(unet.attn_processors)
        for index, layer in enumerate(self.layers):
            if layer.name not in processors:
                raise ValueError(
                    f"the UNet has no attention layer {layer.name!r}; is it an SD1.5-style UNet?"
                )
            processors[layer.name] = CrossFrameAttnProcessor(index, self.exchange)
        unet.set_attn_processor(processors)

    def forward(self, sample, timestep, text_embeddings, *graph_inputs):
        control, reference = self.unflatten(graph_inputs)
        noise, own = self.predict(sample, timestep, text_embeddings, control=control, reference=reference)
        return (noise, *own)

    def unflatten(
        self, graph_inputs: Sequence[torch.Tensor]
    ) -> tuple[ControlResiduals | None, ReferenceStates]:
        """The flat inputs after text_embeddings, in spec order: residuals, then L states and the mask."""
        n_layers = len(self.layers)
        residuals = tuple(graph_inputs[: -n_layers - 1])
        states, mask = tuple(graph_inputs[-n_layers - 1 : -1]), graph_inputs[-1]
        if len(residuals) == 1 and residuals[0].numel() == 0:
            return None, ReferenceStates(states, mask)
        if len(residuals) < 2:
            raise ValueError(
                f"expected the ControlNet residuals (down ones and the mid one) or one empty tensor, then "
                f"{n_layers} reference states and the mask; got {len(graph_inputs)} tensors"
            )
        return ControlResiduals(residuals[:-1], residuals[-1]), ReferenceStates(states, mask)

    def predict(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        text_embeddings: torch.Tensor,
        control: ControlResiduals | None,
        reference: ReferenceStates,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        n_layers = len(self.layers)
        self.exchange.reference = tuple(reference.states)
        self.exchange.mask = reference.mask
        self.exchange.own = [None] * n_layers
        noise = self.unet(
            sample,
            timestep,
            encoder_hidden_states=text_embeddings,
            down_block_additional_residuals=None if control is None else list(control.down),
            mid_block_additional_residual=None if control is None else control.mid,
            return_dict=False,
        )[0]
        own = tuple(self.exchange.own)
        self.exchange.reference, self.exchange.mask, self.exchange.own = (), None, [None] * n_layers
        return noise, own


class TorchUNet:
    """The `UNet` protocol over `CrossFrameUNet.predict`."""

    def __init__(self, module: CrossFrameUNet):
        self.module = module
        self.layers = module.layers

    @torch.no_grad()
    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        text_embeddings: torch.Tensor,
        control: ControlResiduals | None,
        reference: ReferenceStates,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        if len(reference.states) != len(self.layers):
            raise ValueError(f"expected {len(self.layers)} reference states, got {len(reference.states)}")
        # Layers with mask 0 attend over their own tokens only (attention.py): same result, half the keys.
        self.module.exchange.plain = tuple(m == 0.0 for m in reference.mask.tolist())
        try:
            return self.module.predict(
                sample, timestep, text_embeddings, control=control, reference=reference
            )
        finally:
            self.module.exchange.plain = ()


def _place(module, device: torch.device, dtype: torch.dtype):
    # Cast only when needed: diffusers warns on a no-op dtype cast of modules with fp32-pinned layers.
    module = module.to(device)
    return (module if module.dtype == dtype else module.to(dtype)).eval()


def torch_networks(
    bundle: ModelBundle,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "auto",
    freeu: tuple[float, float, float, float] | None = None,
) -> Networks:
    """Put a loaded bundle on a device and wrap it in the runtime contract (the torch backend)."""
    device = resolve_device(device) if isinstance(device, str) else device
    dtype = resolve_dtype(dtype, device) if isinstance(dtype, str) else dtype
    unet = _place(bundle.unet, device, dtype)
    # FreeU (docs/method.md §2.7) keyed on the backbone channel count, as pre-hooks; replaces any FreeU a previous
    # call installed on this bundle's UNet, so the UNet does exactly what this call asks.
    set_freeu(unet, None if freeu is None else FreeUFactors.from_tuple(freeu))
    vae = _place(bundle.vae, device, dtype)
    text_encoder = _place(bundle.text_encoder, device, dtype)
    layers = up_self_attention_layers(unet.config)
    controlnets = tuple(
        (TorchControlNet(_place(model, device, dtype)), scale) for model, scale in bundle.controlnets
    )
    return Networks(
        text_encoder=TorchTextEncoder(text_encoder),
        tokenize=make_tokenize(bundle.tokenizer),
        vae_encoder=TorchVaeEncoder(vae),
        vae_decoder=TorchVaeDecoder(vae),
        unet=TorchUNet(CrossFrameUNet(unet, layers)),
        controlnets=controlnets,
        scaling_factor=float(vae.config.scaling_factor),
        schedule=bundle.schedule,
        device=device,
        dtype=dtype,
        storage_dtype=torch.float16 if device.type == "cuda" else torch.float32,
    )
