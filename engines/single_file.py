"""The networks of an SD1.5 model from one checkpoint file in the original (LDM) layout, built offline.

The component configs come from a folder in the diffusers layout (`SD15_CONFIGS`, shipped in
`engines/configs/sd15`, or `--model-config DIR`), so no hub fetch is needed; a few weight shapes are compared
with them before anything is built. The file itself is read by content (`checkpoint.read_checkpoint`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .checkpoint import _first_line, read_checkpoint
from .errors import ModelFileError
from .scheduler_config import read_schedule

SD15_CONFIGS = Path(__file__).parent / "configs" / "sd15"
LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."


def load_single_file(path: Path, allow_pickle: bool, config_dir: Path, with_vae: bool = True):
    """(unet, vae or None, text_encoder, schedule) of a single-file checkpoint, built with `config_dir`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    state = read_checkpoint(path, allow_pickle)
    if not any(k.startswith(LDM_UNET_PREFIX) for k in state):
        raise ModelFileError(
            f"--model {path} is not a single-file SD1.5 checkpoint (no model.diffusion_model.* weights)"
        )
    if with_vae and not any(k.startswith(LDM_VAE_PREFIX) for k in state):
        raise ModelFileError(
            f"--model {path} has no VAE weights (first_stage_model.*); give the VAE with --vae PATH "
            "(a diffusers VAE folder or a VAE file such as vae-ft-mse-840000-ema-pruned.safetensors)"
        )
    _check_layout(path, state, config_dir)
    try:
        unet = UNet2DConditionModel.from_single_file(
            state, config=str(config_dir), subfolder="unet", local_files_only=True
        )
        vae = (
            AutoencoderKL.from_single_file(
                state, config=str(config_dir), subfolder="vae", local_files_only=True
            )
            if with_vae
            else None
        )
    except Exception as error:  # diffusers' conversion errors have no common base: one sentence each
        raise ModelFileError(
            f"--model {path} does not match the SD1.5 layout of {config_dir} ({_first_line(error)}); "
            "give the configs of its architecture with --model-config DIR"
        ) from None
    text_encoder = _text_encoder_from_ldm(state, config_dir)
    return (
        unet.eval(),
        None if vae is None else vae.eval(),
        text_encoder,
        read_schedule(config_dir / "scheduler" / "scheduler_config.json"),
    )


def _text_encoder_from_ldm(state: dict[str, torch.Tensor], config_dir: Path):
    from transformers import CLIPTextConfig, CLIPTextModel

    model = CLIPTextModel(CLIPTextConfig.from_pretrained(str(config_dir / "text_encoder")))
    wants_prefix = any(k.startswith("text_model.") for k in model.state_dict())
    prefix = "cond_stage_model.transformer."
    converted = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix) :]
        if not wants_prefix and key.startswith("text_model."):
            key = key[len("text_model.") :]
        converted[key] = value
    if not converted:
        raise ModelFileError("the checkpoint has no CLIP text encoder (cond_stage_model.transformer.*)")
    missing, unexpected = model.load_state_dict(converted, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing:
        raise ModelFileError(f"the checkpoint's text encoder lacks {len(missing)} weights, e.g. {missing[0]}")
    return model.eval()


def _check_layout(path: Path, state: dict[str, torch.Tensor], config_dir: Path) -> None:
    """Compare a few weight shapes with the configs before building (a full SD1.5 UNet takes seconds)."""
    for sub in ("unet", "vae", "text_encoder"):
        if not (config_dir / sub / "config.json").is_file():
            raise ModelFileError(
                f"--model-config {config_dir} has no {sub}/config.json; give a folder of diffusers-layout "
                "component configs (unet/, vae/, text_encoder/, scheduler/)"
            )
    unet = json.loads((config_dir / "unet" / "config.json").read_text())
    vae = json.loads((config_dir / "vae" / "config.json").read_text())
    checks = [
        (LDM_UNET_PREFIX + "input_blocks.0.0.weight", 0, unet["block_out_channels"][0], "UNet width"),
        (LDM_VAE_PREFIX + "encoder.conv_in.weight", 0, vae["block_out_channels"][0], "VAE width"),
    ]
    context = next(
        (k for k in state if k.startswith(LDM_UNET_PREFIX) and k.endswith("attn2.to_k.weight")), None
    )
    if context is not None:
        checks.append((context, 1, unet["cross_attention_dim"], "text-embedding width"))
    for key, axis, expected, what in checks:
        if key in state and state[key].shape[axis] != expected:
            raise ModelFileError(
                f"--model {path} does not match the SD1.5 layout of {config_dir}: its {what} is "
                f"{state[key].shape[axis]}, the configs say {expected}; give its configs with --model-config DIR"
            )
