"""Cross-frame attention as a diffusers attention processor (docs/method.md §2.1, runtime.py docstring).

The processor is installed with `UNet2DConditionModel.set_attn_processor` on the up-block self-attention
(`attn1`) layers only; no module's `forward` is replaced. It exchanges tensors with the
backend through a `StateExchange` owned by that backend: before a UNet call the backend puts the reference
states and the per-layer mask there, and after the call it collects each layer's own input.

Per layer l the keys/values are computed from
    kv_input = mask[l] · reference[l] + (1 − mask[l]) · concat(own, own)
where `reference[l]` is [anchor; previous] (B, 2N, C). With mask 0 every key appears twice, and attention over
a duplicated key set equals attention over the set: plain self-attention, with no branch on tensor values
(so the same graph exports to ONNX/TensorRT).

An eager caller that knows the mask in Python (the torch backend's `TorchUNet`) may list the layers whose
mask is 0 in `StateExchange.plain`; those attend over their own N tokens instead of the doubled 2N, which is
the same attention at half the key/value work (the anchor's pass and the layers "loose" mode skips). Traced
graphs never see it: `plain` is empty unless a caller sets it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class StateExchange:
    """Tensors passed to and from the cross-frame processors during one UNet call (one per backend UNet)."""

    reference: tuple[torch.Tensor, ...] = ()
    mask: torch.Tensor | None = None
    own: list[torch.Tensor | None] = field(default_factory=list)
    plain: tuple[bool, ...] = ()  # per layer: mask known to be 0, attend over own tokens only (eager only)


class CrossFrameAttnProcessor:
    """Self-attention whose keys/values come from stored [anchor; previous] inputs when the layer's mask is 1."""

    def __init__(self, index: int, exchange: StateExchange):
        self.index = index
        self.exchange = exchange

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or hidden_states.ndim != 3:
            raise ValueError(
                "CrossFrameAttnProcessor serves only self-attention layers (attn1) of transformer blocks; "
                "install it on up_blocks.*.attentions.*.transformer_blocks.*.attn1 only"
            )
        exchange = self.exchange
        # method §2.1: what is stored is the attention's input after the block's LayerNorm, not K/V.
        exchange.own[self.index] = hidden_states
        batch, tokens, _ = hidden_states.shape
        if exchange.plain and exchange.plain[self.index]:
            kv_input = hidden_states
        else:
            mask = exchange.mask[self.index].to(hidden_states.dtype)
            reference = exchange.reference[self.index].to(hidden_states.dtype)
            doubled = torch.cat([hidden_states, hidden_states], dim=1)
            kv_input = mask * reference + (1.0 - mask) * doubled

        query = attn.to_q(hidden_states)
        key = attn.to_k(kv_input)
        value = attn.to_v(kv_input)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, tokens, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor
