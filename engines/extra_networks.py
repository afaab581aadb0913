"""The networks given beside --model: a replacement VAE (`--vae`) and ControlNets (`--controlnet`).

Each comes from a diffusers folder (read tensor-only, `checkpoint.folder_use_safetensors`), a single file
(read by content, `checkpoint.read_checkpoint`, and converted with the SD1.5 configs shipped in
`engines/configs`), or, for a ControlNet, a hub id (needs a network).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .checkpoint import _first_line, folder_use_safetensors, read_checkpoint
from .errors import ModelFileError
from .model_folder import is_hub_id

CONTROLNET_CONFIGS = Path(__file__).parent / "configs" / "controlnet_sd15"


def load_vae(spec: str, config_dir: Path, allow_pickle: bool):
    """`--vae`: a diffusers VAE folder (or a model folder with vae/), or a single file in the original
    layout (bare `encoder.*`/`decoder.*` keys as in the ft-MSE VAE files, or a whole checkpoint's
    `first_stage_model.*`) or the diffusers layout, built with the VAE config of `config_dir`."""
    from diffusers import AutoencoderKL

    path = Path(spec)
    if path.is_dir():
        sub = "" if (path / "config.json").is_file() else "vae"
        if not (path / sub / "config.json").is_file():
            raise ModelFileError(
                f"--vae {path} is not a diffusers VAE folder (no config.json, no vae/config.json)"
            )
        use_safetensors = folder_use_safetensors(path / sub, "--vae")
        try:
            return AutoencoderKL.from_pretrained(
                str(path), subfolder=sub or None, local_files_only=True, use_safetensors=use_safetensors
            ).eval()
        except (OSError, ValueError, pickle.UnpicklingError) as error:
            raise ModelFileError(
                f"--vae {path} could not be loaded as a diffusers VAE ({_first_line(error)})"
            ) from None
    if not path.exists():
        raise ModelFileError(
            f"--vae {path} does not exist; give a diffusers VAE folder or a VAE .safetensors file"
        )
    state = read_checkpoint(path, allow_pickle, "--vae")
    try:
        if _diffusers_vae_keys(state):
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(config_dir), subfolder="vae"))
            missing, unexpected = vae.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(f"{len(missing)} weights missing, {len(unexpected)} unexpected")
        else:
            vae = AutoencoderKL.from_single_file(
                state, config=str(config_dir), subfolder="vae", local_files_only=True
            )
    except Exception as error:  # conversion errors of every kind: one sentence
        raise ModelFileError(
            f"--vae {path} is not a VAE of the layout in {config_dir / 'vae'} ({_first_line(error)})"
        ) from None
    return vae.eval()


def load_controlnet(spec: str, allow_pickle: bool):
    """`--controlnet`: a diffusers ControlNet folder, a single file (lllyasviel's `control_*.pth` or
    `.safetensors`, read by content), or a hub id (needs a network)."""
    from diffusers import ControlNetModel

    path = Path(spec)
    if path.is_dir():
        use_safetensors = folder_use_safetensors(path, "--controlnet")
        try:
            return ControlNetModel.from_pretrained(
                str(path), local_files_only=True, use_safetensors=use_safetensors
            ).eval()
        except (OSError, ValueError, pickle.UnpicklingError) as error:
            raise ModelFileError(
                f"--controlnet {path} could not be loaded as a diffusers ControlNet ({_first_line(error)})"
            ) from None
    if path.exists() or path.suffix or not is_hub_id(spec):
        state = read_checkpoint(path, allow_pickle, "--controlnet")
        try:
            return ControlNetModel.from_single_file(
                state, config=str(CONTROLNET_CONFIGS), local_files_only=True
            ).eval()
        except Exception as error:  # diffusers' conversion errors have no common base: one sentence each
            raise ModelFileError(
                f"--controlnet {path} is not an SD1.5 ControlNet checkpoint ({_first_line(error)})"
            ) from None
    try:  # a hub id (needs a network)
        return ControlNetModel.from_pretrained(spec).eval()
    except (OSError, ValueError) as error:
        raise ModelFileError(
            f"--controlnet {spec} is neither a local path nor a reachable hub id ({_first_line(error)})"
        ) from None


def _diffusers_vae_keys(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in state)
