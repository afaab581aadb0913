"""Loading Stable Diffusion 1.5 models offline into a `ModelBundle` (docs/decisions.md, decision 11).

Sources: a diffusers folder, a single-file checkpoint in the original (LDM) layout with the SD1.5 component
configs shipped in `engines/configs/sd15` (no hub fetch), or a hub id (needs a network). `--vae` replaces the
model's VAE (a diffusers folder or a single file). LoRA files are merged into the weights with their scale
(kohya `lora_unet_*`/`lora_te_*` and diffusers/peft `unet.*.lora_A`/`lora.down` layouts; no peft needed).
ControlNets come from a folder or a single file, each with its own scale.

Whether a weights file is safe to read is decided by its content, never by its name (`engines/checkpoint.py`,
`read_checkpoint`); LoRA merging is `engines/lora.py`. A model folder's weights are only ever read
tensor-only.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import (  # noqa: F401 - re-exported: callers read weights through engines.loading
    SAFETENSORS_DTYPES,
    SAFETENSORS_HEADER_MAX,
    NeedsCode,
    _first_line,
    folder_use_safetensors,
    pickle_refusal,
    read_checkpoint,
    safetensors_header,
)
from .errors import ModelFileError
from .lora import apply_lora  # noqa: F401 - re-exported
from .runtime import ScheduleConfig
from .tokenizer import MAX_LENGTH, clip_tokenizer, folder_tokenizer, has_tokenizer_files

CONFIGS = Path(__file__).parent / "configs"
SD15_CONFIGS = CONFIGS / "sd15"
CONTROLNET_CONFIGS = CONFIGS / "controlnet_sd15"
LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."


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


SUPPORTED_BETA_SCHEDULES = ("scaled_linear", "linear")


def _schedule(scheduler_config: Path, flag: str = "--model") -> ScheduleConfig:
    """The training schedule of a scheduler config; what our DDIM cannot follow exactly is refused in a
    sentence instead of being rendered wrong (the sampler is docs/method.md §1: epsilon prediction, the
    "leading" spacing with an offset, scaled_linear or linear betas)."""
    if not scheduler_config.is_file():
        return ScheduleConfig()
    try:
        raw = json.loads(scheduler_config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{flag}: {scheduler_config} is not valid JSON ({error})") from None
    return schedule_from_config(raw, f"{flag}: {scheduler_config}")


def schedule_from_config(raw: object, where: str) -> ScheduleConfig:
    """`_schedule` on a parsed config; `where` starts every error sentence."""
    if not isinstance(raw, dict):
        raise ModelFileError(f"{where} is not a scheduler config (not a JSON object)")
    prediction = raw.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise ModelFileError(
            f"{where} says prediction_type {prediction!r}; rerender renders epsilon-prediction SD1.5 models only "
            "(a v-prediction model would be rendered wrong)"
        )
    spacing = raw.get("timestep_spacing", "leading")
    if spacing != "leading":
        raise ModelFileError(
            f'{where} says timestep_spacing {spacing!r}; rerender samples with DDIM\'s "leading" spacing '
            '(t = 951, 901, ..., 1 at 20 steps) only: set "timestep_spacing": "leading" there to render '
            "the model that way"
        )
    if raw.get("rescale_betas_zero_snr"):
        raise ModelFileError(
            f"{where} says rescale_betas_zero_snr; rerender's DDIM uses the unrescaled schedule only"
        )
    defaults = ScheduleConfig()
    try:
        config = ScheduleConfig(
            num_train_timesteps=int(raw.get("num_train_timesteps", defaults.num_train_timesteps)),
            beta_start=float(raw.get("beta_start", defaults.beta_start)),
            beta_end=float(raw.get("beta_end", defaults.beta_end)),
            beta_schedule=str(raw.get("beta_schedule", defaults.beta_schedule)),
            steps_offset=int(raw.get("steps_offset", defaults.steps_offset)),
            set_alpha_to_one=bool(raw.get("set_alpha_to_one", defaults.set_alpha_to_one)),
        )
    except (TypeError, ValueError) as error:
        raise ModelFileError(f"{where} has a value of the wrong type ({error})") from None
    if config.beta_schedule not in SUPPORTED_BETA_SCHEDULES:
        raise ModelFileError(
            f"{where} says beta_schedule {config.beta_schedule!r}; rerender supports "
            f"{' or '.join(SUPPORTED_BETA_SCHEDULES)}"
        )
    if config.num_train_timesteps != 1000:
        raise ModelFileError(
            f"{where} says num_train_timesteps {config.num_train_timesteps}; SD1.5 models are trained with 1000"
        )
    if not 0.0 < config.beta_start < config.beta_end < 1.0:
        raise ModelFileError(
            f"{where} needs 0 < beta_start < beta_end < 1; got {config.beta_start} and {config.beta_end}"
        )
    if config.steps_offset not in (0, 1):
        raise ModelFileError(f"{where} says steps_offset {config.steps_offset}; rerender supports 0 or 1")
    return config


def _tokenizer(folder: Path | None, text_encoder, flag: str = "--model"):
    """The folder's own tokenizer (tokenizer/ in either standard form), else the built-in CLIP tokenizer."""
    own = folder is not None and (folder / "tokenizer").is_dir() and has_tokenizer_files(folder / "tokenizer")
    if own:
        return check_tokenizer(
            folder_tokenizer(folder / "tokenizer", flag), text_encoder, f"{flag} {folder}: its tokenizer/"
        )
    return check_tokenizer(
        clip_tokenizer(),
        text_encoder,
        f"{flag} {folder or ''}".rstrip() + ": the built-in SD1.5 CLIP tokenizer",
    )


def check_tokenizer(tokenizer, text_encoder, what: str):
    """Refuse a tokenizer whose ids could index past the text encoder's embeddings (an IndexError in the
    middle of the first keyframe otherwise), or a text encoder with fewer than 77 positions."""
    vocab = int(text_encoder.config.vocab_size)
    if len(tokenizer) > vocab:
        raise ModelFileError(
            f"{what} has {len(tokenizer)} tokens but the text encoder only {vocab} embeddings; "
            "give the model's own tokenizer (a tokenizer/ folder with tokenizer.json, or vocab.json and merges.txt)"
        )
    positions = int(getattr(text_encoder.config, "max_position_embeddings", MAX_LENGTH))
    if positions < MAX_LENGTH:
        raise ModelFileError(
            f"{what}: the text encoder has {positions} positions; SD1.5 prompts take {MAX_LENGTH}"
        )
    return tokenizer


def _load_folder(folder: Path, local_only: bool, with_vae: bool = True):
    """(unet, vae or None, text_encoder, schedule) of a diffusers folder, or of a hub id (`local_only` False).

    A folder's weights are only ever read tensor-only (`folder_use_safetensors`), whatever --allow-pickle says."""
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
        schedule = _schedule(folder / "scheduler" / "scheduler_config.json")
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
        ("first_stage_model.encoder.conv_in.weight", 0, vae["block_out_channels"][0], "VAE width"),
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


def _load_single_file(path: Path, allow_pickle: bool, config_dir: Path, with_vae: bool = True):
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
        _schedule(config_dir / "scheduler" / "scheduler_config.json"),
    )


# --- VAE ------------------------------------------------------------------------------------------------------


def _diffusers_vae_keys(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in state)


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


# --- ControlNet -----------------------------------------------------------------------------------------------


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
    if path.exists() or path.suffix or not re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
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


# --- entry point ----------------------------------------------------------------------------------------------


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
        unet, vae, text_encoder, schedule = _load_folder(path, True, with_vae)
        tokenizer = _tokenizer(path, text_encoder)
        vae_configs = path if (path / "vae" / "config.json").is_file() else config_dir
    elif path.exists() or path.suffix:
        unet, vae, text_encoder, schedule = _load_single_file(path, allow_pickle, config_dir, with_vae)
        tokenizer = _tokenizer(None, text_encoder)
        vae_configs = config_dir
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", model):
        unet, vae, text_encoder, schedule = _load_folder(Path(model), False, with_vae)
        from transformers import CLIPTokenizerFast

        try:
            tokenizer = CLIPTokenizerFast.from_pretrained(
                model, subfolder="tokenizer", model_max_length=MAX_LENGTH
            )
        except (OSError, ValueError) as error:
            raise ModelFileError(
                f"--model {model}: its tokenizer could not be loaded ({_first_line(error)})"
            ) from None
        check_tokenizer(tokenizer, text_encoder, f"--model {model}: its tokenizer")
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
