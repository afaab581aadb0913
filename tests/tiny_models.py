"""Tiny random-weight Stable Diffusion 1.5-shaped components, and writers for the file layouts users have.

The components keep SD1.5's *structure* (4 UNet levels, 2 layers per block, so 9 up-block self-attention
layers with a widest level that loose mode skips; a VAE and a ControlNet hint encoder that both downsample
by 8; a CLIP text encoder with the full 49408-token vocabulary) at a few thousand times fewer weights, so a
keyframe at 64×64 pixels takes well under a second on a CPU (as diffusers' own tests do).

Writers:
- `write_diffusers_folder(dir)`: model_index.json + unet/ vae/ text_encoder/ scheduler/ (safetensors);
- `write_controlnet_folder(dir)`: a diffusers ControlNet folder;
- `write_single_file(path)`: one civitai-style SD1.5 checkpoint in the original LDM key layout
  (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.text_model.*`);
- `write_config_folder(dir)`: the component configs only, for loading that single file offline;
- `write_lora(path, ...)`: a kohya-style LoRA `.safetensors` (lora_unet_* / lora_te_* with alpha);
- `write_vae_file(path, vae, layout)`: a single-file VAE in the LDM (bare or prefixed) or diffusers layout.

Used by the tests and by the export helper (`rerender.export` tests); keep the public names stable.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch

# The CLIP tokenizer is built from the BPE table inside open-clip-torch (engines/tokenizer.py).
TOKENIZER_MISSING = (
    None
    if importlib.util.find_spec("open_clip") is not None
    else "open-clip-torch (the CLIP BPE table) is not installed: pip install --no-deps open-clip-torch"
)

SEED = 0

UNET_CONFIG = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [16, 16, 32, 32],
    "layers_per_block": 2,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 32,
    "attention_head_dim": 2,
    "norm_num_groups": 8,
}

CONTROLNET_CONFIG = {
    "in_channels": 4,
    "block_out_channels": [16, 16, 32, 32],
    "layers_per_block": 2,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "cross_attention_dim": 32,
    "attention_head_dim": 2,
    "norm_num_groups": 8,
    "conditioning_embedding_out_channels": [8, 8, 8, 8],
}

VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [8, 8, 16, 16],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}

TEXT_ENCODER_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
}

# SD1.5's scheduler settings (docs/method.md §1); a DDIMScheduler built from them gives t = 951 - 50 i for S = 20.
SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


@dataclass
class TinyComponents:
    unet: object
    vae: object
    text_encoder: object
    controlnet: object


def build_components(seed: int = SEED) -> TinyComponents:
    """Random-weight UNet, VAE, CLIP text encoder and ControlNet, deterministic for a seed."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**VAE_CONFIG).eval()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG)).eval()
    torch.manual_seed(seed + 3)
    controlnet = ControlNetModel(**CONTROLNET_CONFIG).eval()
    # Random init leaves the ControlNet's zero convolutions at zero; give them weights so control matters.
    with torch.no_grad():
        for block in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            block.weight.normal_(0.0, 0.05)
    return TinyComponents(unet, vae, text_encoder, controlnet)


def write_config_folder(directory: str | Path) -> Path:
    """Component configs in the diffusers layout (what a single-file checkpoint needs to be loaded offline)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    directory = Path(directory)
    (directory / "scheduler").mkdir(parents=True, exist_ok=True)
    UNet2DConditionModel(**UNET_CONFIG).save_config(directory / "unet")
    AutoencoderKL(**VAE_CONFIG).save_config(directory / "vae")
    CLIPTextConfig(**TEXT_ENCODER_CONFIG).save_pretrained(directory / "text_encoder")
    (directory / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=1))
    return directory


def write_diffusers_folder(directory: str | Path, components: TinyComponents | None = None) -> Path:
    """A diffusers SD1.5-style folder (no tokenizer/: the loader builds the CLIP tokenizer itself)."""
    components = components or build_components()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    components.unet.save_pretrained(directory / "unet")
    components.vae.save_pretrained(directory / "vae")
    components.text_encoder.save_pretrained(directory / "text_encoder")
    (directory / "scheduler").mkdir(exist_ok=True)
    (directory / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=1))
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    (directory / "model_index.json").write_text(json.dumps(index, indent=1))
    return directory


def write_controlnet_folder(directory: str | Path, components: TinyComponents | None = None) -> Path:
    components = components or build_components()
    components.controlnet.save_pretrained(Path(directory))
    return Path(directory)


# --- the original (LDM / CompVis) key layout of single-file SD1.5 checkpoints -------------------------------

_RESNET_UNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _rename(key: str, prefix_from: str, prefix_to: str, table: dict[str, str] | None = None) -> str:
    rest = key[len(prefix_from) :]
    if table:
        head, _, tail = rest.partition(".")
        rest = f"{table.get(head, head)}.{tail}"
    return prefix_to + rest


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel keys -> `model.diffusion_model.*` keys of an LDM checkpoint."""
    n_blocks = len(config["block_out_channels"])
    per = config["layers_per_block"]
    fixed = {
        "conv_in.": "input_blocks.0.0.",
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
        "mid_block.resnets.0.": "middle_block.0.",
        "mid_block.attentions.0.": "middle_block.1.",
        "mid_block.resnets.1.": "middle_block.2.",
    }
    for b in range(n_blocks):
        for j in range(per):
            index = 1 + b * (per + 1) + j
            fixed[f"down_blocks.{b}.resnets.{j}."] = f"input_blocks.{index}.0."
            fixed[f"down_blocks.{b}.attentions.{j}."] = f"input_blocks.{index}.1."
        if b < n_blocks - 1:
            fixed[f"down_blocks.{b}.downsamplers.0.conv."] = f"input_blocks.{1 + b * (per + 1) + per}.0.op."
        has_attention = "CrossAttn" in config["up_block_types"][b]
        for j in range(per + 1):
            index = b * (per + 1) + j
            fixed[f"up_blocks.{b}.resnets.{j}."] = f"output_blocks.{index}.0."
            fixed[f"up_blocks.{b}.attentions.{j}."] = f"output_blocks.{index}.1."
        if b < n_blocks - 1:
            last = b * (per + 1) + per
            fixed[f"up_blocks.{b}.upsamplers.0.conv."] = (
                f"output_blocks.{last}.{2 if has_attention else 1}.conv."
            )
    out = {}
    for key, value in state.items():
        prefix = next(p for p in sorted(fixed, key=len, reverse=True) if key.startswith(p))
        is_resnet = ".resnets." in prefix or prefix.startswith("mid_block.resnets")
        out[
            "model.diffusion_model."
            + _rename(key, prefix, fixed[prefix], _RESNET_UNET if is_resnet else None)
        ] = value
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL keys -> `first_stage_model.*` keys (attention projections as 1×1 convs)."""
    n_blocks = len(config["block_out_channels"])
    fixed = {
        "quant_conv.": "quant_conv.",
        "post_quant_conv.": "post_quant_conv.",
    }
    for side in ("encoder", "decoder"):
        fixed[f"{side}.conv_in."] = f"{side}.conv_in."
        fixed[f"{side}.conv_out."] = f"{side}.conv_out."
        fixed[f"{side}.conv_norm_out."] = f"{side}.norm_out."
        fixed[f"{side}.mid_block.resnets.0."] = f"{side}.mid.block_1."
        fixed[f"{side}.mid_block.resnets.1."] = f"{side}.mid.block_2."
        fixed[f"{side}.mid_block.attentions.0."] = f"{side}.mid.attn_1."
    for b in range(n_blocks):
        for j in range(config["layers_per_block"] + 1):
            fixed[f"encoder.down_blocks.{b}.resnets.{j}."] = f"encoder.down.{b}.block.{j}."
            # The LDM decoder numbers its levels from the lowest resolution up (reversed).
            fixed[f"decoder.up_blocks.{b}.resnets.{j}."] = f"decoder.up.{n_blocks - 1 - b}.block.{j}."
        fixed[f"encoder.down_blocks.{b}.downsamplers.0.conv."] = f"encoder.down.{b}.downsample.conv."
        fixed[f"decoder.up_blocks.{b}.upsamplers.0.conv."] = f"decoder.up.{n_blocks - 1 - b}.upsample.conv."
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
    out = {}
    for key, value in state.items():
        prefix = next(p for p in sorted(fixed, key=len, reverse=True) if key.startswith(p))
        rest = key[len(prefix) :]
        if prefix.endswith("attn_1.") or "attentions" in prefix:
            head, _, tail = rest.partition(".")
            if head == "to_out":
                tail = tail.partition(".")[2]  # to_out.0.weight -> proj_out.weight
            rest = f"{attention[head]}.{tail}"
            if value.ndim == 2:
                value = value[:, :, None, None]
        elif "nin_shortcut" not in rest:
            rest = rest.replace("conv_shortcut", "nin_shortcut")
        out["first_stage_model." + fixed[prefix] + rest] = value
    return out


def text_encoder_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        key = key if key.startswith("text_model.") else "text_model." + key
        out["cond_stage_model.transformer." + key] = value
    return out


def write_single_file(
    path: str | Path, components: TinyComponents | None = None, with_vae: bool = True
) -> Path:
    """One `.safetensors` with UNet, VAE and text encoder in the original SD1.5 (LDM) key layout
    (`with_vae=False`: without the `first_stage_model.*` weights, as checkpoints pruned of their VAE are)."""
    from safetensors.torch import save_file

    components = components or build_components()
    state = {}
    state.update(unet_to_ldm(components.unet.state_dict(), UNET_CONFIG))
    if with_vae:
        state.update(vae_to_ldm(components.vae.state_dict(), VAE_CONFIG))
    state.update(text_encoder_to_ldm(components.text_encoder.state_dict()))
    path = Path(path)
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path))
    return path


def write_lora(
    path: str | Path, components: TinyComponents | None = None, rank: int = 2, seed: int = 7
) -> Path:
    """A kohya-style LoRA: down/up pairs (+ alpha) on the UNet attention projections and the text encoder's
    q_proj, in the `lora_unet_<module path with _>` / `lora_te_<module path with _>` naming."""
    from safetensors.torch import save_file

    components = components or build_components()
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def add(prefix: str, module_name: str, weight: torch.Tensor) -> None:
        key = prefix + module_name.replace(".", "_")
        state[f"{key}.lora_down.weight"] = torch.randn(rank, weight.shape[1], generator=generator) * 0.3
        state[f"{key}.lora_up.weight"] = torch.randn(weight.shape[0], rank, generator=generator) * 0.3
        state[f"{key}.alpha"] = torch.tensor(float(rank) / 2)

    for name, module in components.unet.named_modules():
        if name.endswith(("attn1.to_q", "attn1.to_k", "attn2.to_v", "attn1.to_out.0")):
            add("lora_unet_", name, module.weight)
    for name, module in components.text_encoder.named_modules():
        if name.endswith("self_attn.q_proj"):
            name = name if name.startswith("text_model.") else "text_model." + name
            add("lora_te_", name, module.weight)
    path = Path(path)
    save_file(state, str(path))
    return path


def write_vae_file(path: str | Path, vae, layout: str = "ldm") -> Path:
    """A single-file VAE: "ldm" bare `encoder.*`/`decoder.*` keys (as the ft-MSE VAE files), "ldm-prefixed"
    (`first_stage_model.*`) or "diffusers" (the AutoencoderKL state dict itself)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in vae.state_dict().items()}
    if layout != "diffusers":
        state = vae_to_ldm(state, VAE_CONFIG)
        if layout == "ldm":
            state = {k[len("first_stage_model.") :]: v for k, v in state.items()}
    path = Path(path)
    save_file(state, str(path))
    return path
