"""Loading Stable Diffusion 1.5 models offline into a `ModelBundle` (docs/decisions.md, decision 11).

Sources: a diffusers folder or a hub id (model_folder.py), or a single-file checkpoint in the original (LDM)
layout with the SD1.5 component configs shipped in `engines/configs/sd15` (single_file.py). `--vae`
replaces the model's VAE and ControlNets come each with its own scale (extra_networks.py); LoRA files are
merged into the weights with their scale (lora.py); the tokenizer is checked against the text encoder
(model_tokenizer.py) and the scheduler config against our DDIM (scheduler_config.py).

Whether a weights file is safe to read is decided by its content, never by its name (`engines/checkpoint.py`,
`read_checkpoint`). This module assembles the bundle and keeps the names callers import from it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import (  # noqa: F401 - re-exported: callers read weights through engines.loading
    folder_use_safetensors,
    read_checkpoint,
    safetensors_header,
)
from .errors import ModelFileError
from .extra_networks import CONTROLNET_CONFIGS, load_controlnet, load_vae  # noqa: F401 - re-exported
from .lora import apply_lora
from .model_folder import is_hub_id, load_folder
from .model_tokenizer import hub_tokenizer, model_tokenizer
from .runtime import ScheduleConfig
from .scheduler_config import schedule_from_config  # noqa: F401 - re-exported
from .single_file import SD15_CONFIGS, load_single_file


@dataclass(frozen=True)
class ModelBundle:
    """The networks of one SD1.5 model plus its ControlNets, on the CPU in fp32 until a backend takes them."""

    tokenizer: object
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    vae: torch.nn.Module
    schedule: ScheduleConfig
    controlnets: tuple[tuple[torch.nn.Module, float], ...]
    source: str


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence diffusers/transformers load-time advice and progress bars (our errors are sentences of our own);
    the previous verbosity is restored afterwards."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])
        transformers_logging.enable_progress_bar()


def load_bundle(
    model: str,
    *,
    loras: tuple[tuple[str, float], ...] = (),
    controlnets: tuple[tuple[str, float], ...] = (),
    allow_pickle: bool = False,
    config_dir: str | Path | None = None,
    vae: str | None = None,
) -> ModelBundle:
    """Load an SD1.5 model (+ its VAE replaced by `vae`, + LoRAs merged, + ControlNets) on the CPU in fp32."""
    with quiet_libraries():
        return _load_bundle(model, loras, controlnets, allow_pickle, config_dir, vae)


def _load_bundle(model, loras, controlnets, allow_pickle, config_dir, vae_spec) -> ModelBundle:
    path = Path(model)
    config_dir = Path(config_dir) if config_dir else SD15_CONFIGS
    with_vae = vae_spec is None
    if path.is_dir():
        unet, vae, text_encoder, schedule = load_folder(path, True, with_vae)
        tokenizer = model_tokenizer(path, text_encoder)
        vae_configs = path if (path / "vae" / "config.json").is_file() else config_dir
    elif path.exists() or path.suffix:
        unet, vae, text_encoder, schedule = load_single_file(path, allow_pickle, config_dir, with_vae)
        tokenizer = model_tokenizer(None, text_encoder)
        vae_configs = config_dir
    elif is_hub_id(model):
        unet, vae, text_encoder, schedule = load_folder(Path(model), False, with_vae)
        tokenizer = hub_tokenizer(model, text_encoder)
        vae_configs = config_dir
    else:
        raise ModelFileError(
            f"--model {model} does not exist; give a diffusers folder, a .safetensors file or a hub id"
        )
    if vae_spec is not None:
        vae = load_vae(vae_spec, vae_configs, allow_pickle)
    if vae.config.latent_channels != unet.config.in_channels:
        raise ModelFileError(
            f"the VAE makes {vae.config.latent_channels}-channel latents but the UNet takes "
            f"{unet.config.in_channels}; give the VAE of an SD1.5 model"
        )
    for lora_path, scale in loras:
        apply_lora(unet, text_encoder, Path(lora_path), scale, allow_pickle)
    nets = tuple((load_controlnet(spec, allow_pickle), scale) for spec, scale in controlnets)
    return ModelBundle(tokenizer, text_encoder.eval(), unet.eval(), vae.eval(), schedule, nets, source=model)
