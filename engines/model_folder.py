"""The networks of an SD1.5 model in the diffusers layout: a local folder, or a hub id (needs a network).

A folder's weights are only ever read tensor-only (`checkpoint.folder_use_safetensors`), whatever
--allow-pickle says.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

from .checkpoint import _first_line, folder_use_safetensors
from .errors import ModelFileError
from .runtime import ScheduleConfig
from .scheduler_config import read_schedule, schedule_from_config

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def is_hub_id(spec: str) -> bool:
    """Whether `spec` has the form of a hub id ("owner/name"); a path that does not exist may too."""
    return HUB_ID.fullmatch(spec) is not None


def load_folder(folder: Path, local_only: bool, with_vae: bool = True):
    """(unet, vae or None, text_encoder, schedule) of a diffusers folder, or of a hub id (`local_only` False)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    subs = ("unet", "vae", "text_encoder") if with_vae else ("unet", "text_encoder")
    use = dict.fromkeys(subs, True)
    if local_only:
        for sub in subs:
            if not (folder / sub).is_dir():
                raise ModelFileError(
                    f"--model {folder} is not a diffusers SD1.5 folder: it has no {sub}/ folder"
                )
            use[sub] = folder_use_safetensors(folder / sub, "--model")
    try:
        common = {"local_files_only": local_only}
        unet = UNet2DConditionModel.from_pretrained(
            str(folder), subfolder="unet", use_safetensors=use["unet"], **common
        )
        vae = (
            AutoencoderKL.from_pretrained(str(folder), subfolder="vae", use_safetensors=use["vae"], **common)
            if with_vae
            else None
        )
        text_encoder = CLIPTextModel.from_pretrained(
            str(folder), subfolder="text_encoder", use_safetensors=use["text_encoder"], **common
        )
    except (OSError, ValueError, pickle.UnpicklingError) as error:
        raise ModelFileError(
            f"--model {folder} could not be loaded as a diffusers SD1.5 model ({_first_line(error)})"
        ) from None
    if local_only:
        schedule = read_schedule(folder / "scheduler" / "scheduler_config.json")
    else:
        from diffusers import DDIMScheduler

        try:
            raw = DDIMScheduler.load_config(str(folder), subfolder="scheduler")
        except (OSError, ValueError):
            raw = None  # a hub model without a scheduler/ folder: SD1.5's schedule
        schedule = (
            ScheduleConfig() if raw is None else schedule_from_config(raw, f"--model {folder} (scheduler)")
        )
    return unet, vae, text_encoder, schedule
