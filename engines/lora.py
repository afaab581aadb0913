"""LoRA files merged into the UNet and text encoder weights with their scale (kohya `lora_unet_*`/`lora_te_*`
and diffusers/peft `unet.*.lora_A`/`lora.down` layouts; no peft needed)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .checkpoint import read_checkpoint
from .errors import ModelFileError


def _lora_targets(state: dict[str, torch.Tensor]) -> dict[tuple[str, str], dict[str, torch.Tensor]]:
    """Group a LoRA file's tensors by (network, module key): {'down', 'up', 'alpha'}."""
    groups: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = re.match(
            r"^(lora_unet_|lora_te_|lora_te1_)(.+?)\.(lora_down\.weight|lora_up\.weight|alpha)$", key
        )
        if match:
            net = "unet" if match.group(1) == "lora_unet_" else "text_encoder"
            part = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}[match.group(3)]
            groups.setdefault((net, match.group(2)), {})[part] = value
            continue
        match = re.match(
            r"^(unet|text_encoder)\.(.+?)\.(lora_A\.weight|lora_B\.weight|lora\.down\.weight|lora\.up\.weight|alpha)$",
            key,
        )
        if match:
            part = {
                "lora_A.weight": "down",
                "lora.down.weight": "down",
                "lora_B.weight": "up",
                "lora.up.weight": "up",
                "alpha": "alpha",
            }[match.group(3)]
            groups.setdefault((match.group(1), match.group(2)), {})[part] = value
    return groups


def _module_index(model: torch.nn.Module, underscored: bool) -> dict[str, torch.nn.Module]:
    index = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            index[name] = module
            if underscored:
                index[name.replace(".", "_")] = module
                if not name.startswith("text_model."):
                    index[("text_model." + name).replace(".", "_")] = module
            elif not name.startswith("text_model."):
                index["text_model." + name] = module
    return index


def apply_lora(unet, text_encoder, path: Path, scale: float, allow_pickle: bool = False) -> int:
    """Merge W += scale · (alpha / rank) · up @ down into the matching layers; returns how many were changed."""
    state = read_checkpoint(path, allow_pickle, "--lora")
    groups = _lora_targets(state)
    if not groups:
        raise ModelFileError(
            f"--lora {path} has no LoRA weights in a known layout (kohya lora_unet_* or diffusers)"
        )
    indexes = {
        ("unet", True): _module_index(unet, True),
        ("unet", False): _module_index(unet, False),
        ("text_encoder", True): _module_index(text_encoder, True),
        ("text_encoder", False): _module_index(text_encoder, False),
    }
    changed = 0
    for (net, name), parts in groups.items():
        if "down" not in parts or "up" not in parts:
            raise ModelFileError(f"--lora {path}: {name} has no down/up pair")
        module = indexes[(net, "." not in name)].get(name)
        if module is None:
            raise ModelFileError(f"--lora {path}: layer {name} is not in this model (is the LoRA for SD1.5?)")
        down, up = parts["down"].float(), parts["up"].float()
        rank = down.shape[0]
        alpha = float(parts["alpha"]) if "alpha" in parts else float(rank)
        if module.weight.ndim == 4:
            delta = (up.flatten(1) @ down.flatten(1)).reshape(module.weight.shape)
        else:
            delta = up @ down
        if delta.shape != module.weight.shape:
            raise ModelFileError(
                f"--lora {path}: {name} has shape {tuple(delta.shape)}, the model {tuple(module.weight.shape)}"
            )
        with torch.no_grad():
            module.weight += (scale * alpha / rank) * delta.to(module.weight.dtype)
        changed += 1
    return changed
