"""Loading Stable Diffusion 1.5 models offline into a `ModelBundle` (Part 1 decision 11).

Sources: a diffusers folder, a single-file `.safetensors` checkpoint in the original (LDM) layout with the
SD1.5 component configs shipped in `engines/configs/sd15` (no hub fetch), or a hub id (needs a network).
LoRA `.safetensors` files are merged into the weights with their scale (kohya `lora_unet_*`/`lora_te_*` and
diffusers/peft `unet.*.lora_A`/`lora.down` layouts; no peft needed). ControlNets come from a folder or a
single file, each with its own scale. Pickle checkpoints (.ckpt/.pt/.pth/.bin) are refused unless
`allow_pickle`, because unpickling runs arbitrary code.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..filter.errors import InputError
from .runtime import ScheduleConfig
from .tokenizer import clip_tokenizer

CONFIGS = Path(__file__).parent / "configs"
SD15_CONFIGS = CONFIGS / "sd15"
CONTROLNET_CONFIGS = CONFIGS / "controlnet_sd15"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
LDM_UNET_PREFIX = "model.diffusion_model."


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


def _refuse_pickle(path: Path, allow_pickle: bool, flag_owner: str) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise InputError(
            f"{flag_owner} {path} is a pickle checkpoint ({path.suffix}), and loading it runs arbitrary code; "
            "convert it to .safetensors or pass --allow-pickle if you trust the file"
        )


def read_checkpoint(path: Path, allow_pickle: bool, flag_owner: str = "--model") -> dict[str, torch.Tensor]:
    _refuse_pickle(path, allow_pickle, flag_owner)
    if not path.is_file():
        raise InputError(
            f"{flag_owner} {path} does not exist; give a .safetensors file or a diffusers folder"
        )
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as error:  # a corrupt or foreign file: one sentence, no traceback
        raise InputError(f"{flag_owner} {path} could not be read as a checkpoint ({error})") from None
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _schedule(scheduler_config: Path) -> ScheduleConfig:
    if not scheduler_config.is_file():
        return ScheduleConfig()
    raw = json.loads(scheduler_config.read_text())
    defaults = ScheduleConfig()
    return ScheduleConfig(
        num_train_timesteps=int(raw.get("num_train_timesteps", defaults.num_train_timesteps)),
        beta_start=float(raw.get("beta_start", defaults.beta_start)),
        beta_end=float(raw.get("beta_end", defaults.beta_end)),
        beta_schedule=str(raw.get("beta_schedule", defaults.beta_schedule)),
        steps_offset=int(raw.get("steps_offset", defaults.steps_offset)),
        set_alpha_to_one=bool(raw.get("set_alpha_to_one", defaults.set_alpha_to_one)),
    )


def _tokenizer(folder: Path | None):
    if folder is not None and (folder / "tokenizer" / "vocab.json").is_file():
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
    return clip_tokenizer()


def _load_folder(folder: Path, allow_pickle: bool, local_only: bool):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    for sub in ("unet", "vae", "text_encoder"):
        if not local_only:
            break
        if not (folder / sub).is_dir():
            raise InputError(f"--model {folder} is not a diffusers SD1.5 folder: it has no {sub}/ folder")
        weights = list((folder / sub).glob("*.safetensors"))
        if not weights and not allow_pickle:
            raise InputError(
                f"--model {folder}/{sub} has no .safetensors weights, only pickle files; "
                "convert them or pass --allow-pickle if you trust them"
            )
    kwargs = {"local_files_only": local_only, "use_safetensors": None if allow_pickle else True}
    try:
        unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet", **kwargs)
        vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae", **kwargs)
        text_encoder = CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder", **kwargs)
    except (OSError, ValueError) as error:
        raise InputError(
            f"--model {folder} could not be loaded as a diffusers SD1.5 model ({error})"
        ) from None
    schedule = _schedule(folder / "scheduler" / "scheduler_config.json") if local_only else ScheduleConfig()
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
        raise InputError("the checkpoint has no CLIP text encoder (cond_stage_model.transformer.*)")
    missing, unexpected = model.load_state_dict(converted, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing:
        raise InputError(f"the checkpoint's text encoder lacks {len(missing)} weights, e.g. {missing[0]}")
    return model.eval()


def _check_layout(path: Path, state: dict[str, torch.Tensor], config_dir: Path) -> None:
    """Compare a few weight shapes with the configs before building (a full SD1.5 UNet takes seconds)."""
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
            raise InputError(
                f"--model {path} does not match the SD1.5 layout of {config_dir}: its {what} is "
                f"{state[key].shape[axis]}, the configs say {expected}; give its configs with --model-config DIR"
            )


def _load_single_file(path: Path, allow_pickle: bool, config_dir: Path):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    state = read_checkpoint(path, allow_pickle)
    if not any(k.startswith(LDM_UNET_PREFIX) for k in state):
        raise InputError(
            f"--model {path} is not a single-file SD1.5 checkpoint (no model.diffusion_model.* weights)"
        )
    _check_layout(path, state, config_dir)
    try:
        unet = UNet2DConditionModel.from_single_file(
            state, config=str(config_dir), subfolder="unet", local_files_only=True
        )
        vae = AutoencoderKL.from_single_file(
            state, config=str(config_dir), subfolder="vae", local_files_only=True
        )
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise InputError(
            f"--model {path} does not match the SD1.5 layout of {config_dir} ({error}); "
            "give the configs of its architecture with --model-config DIR"
        ) from None
    text_encoder = _text_encoder_from_ldm(state, config_dir)
    return (
        unet.eval(),
        vae.eval(),
        text_encoder,
        _schedule(config_dir / "scheduler" / "scheduler_config.json"),
    )


# --- LoRA -----------------------------------------------------------------------------------------------------


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


def apply_lora(unet, text_encoder, path: Path, scale: float) -> int:
    """Merge W += scale · (alpha / rank) · up @ down into the matching layers; returns how many were changed."""
    _refuse_pickle(path, False, "--lora")
    state = read_checkpoint(path, allow_pickle=False, flag_owner="--lora")
    groups = _lora_targets(state)
    if not groups:
        raise InputError(
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
            raise InputError(f"--lora {path}: {name} has no down/up pair")
        module = indexes[(net, "." not in name)].get(name)
        if module is None:
            raise InputError(f"--lora {path}: layer {name} is not in this model (is the LoRA for SD1.5?)")
        down, up = parts["down"].float(), parts["up"].float()
        rank = down.shape[0]
        alpha = float(parts["alpha"]) if "alpha" in parts else float(rank)
        if module.weight.ndim == 4:
            delta = (up.flatten(1) @ down.flatten(1)).reshape(module.weight.shape)
        else:
            delta = up @ down
        if delta.shape != module.weight.shape:
            raise InputError(
                f"--lora {path}: {name} has shape {tuple(delta.shape)}, the model {tuple(module.weight.shape)}"
            )
        with torch.no_grad():
            module.weight += (scale * alpha / rank) * delta.to(module.weight.dtype)
        changed += 1
    return changed


# --- ControlNet -----------------------------------------------------------------------------------------------


def load_controlnet(spec: str, allow_pickle: bool):
    from diffusers import ControlNetModel

    path = Path(spec)
    if path.is_dir():
        if not list(path.glob("*.safetensors")) and not allow_pickle:
            raise InputError(
                f"--controlnet {path} has no .safetensors weights; convert them or pass --allow-pickle"
            )
        try:
            return ControlNetModel.from_pretrained(
                str(path), local_files_only=True, use_safetensors=None if allow_pickle else True
            ).eval()
        except (OSError, ValueError) as error:
            raise InputError(
                f"--controlnet {path} could not be loaded as a diffusers ControlNet ({error})"
            ) from None
    if path.suffix:
        state = read_checkpoint(path, allow_pickle, "--controlnet")
        try:
            return ControlNetModel.from_single_file(
                state, config=str(CONTROLNET_CONFIGS), local_files_only=True
            ).eval()
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            raise InputError(f"--controlnet {path} is not an SD1.5 ControlNet checkpoint ({error})") from None
    try:  # a hub id (needs a network)
        return ControlNetModel.from_pretrained(spec).eval()
    except (OSError, ValueError) as error:
        raise InputError(
            f"--controlnet {spec} is neither a local path nor a reachable hub id ({error})"
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
) -> ModelBundle:
    """Load an SD1.5 model (+ LoRAs merged, + ControlNets) on the CPU in fp32."""
    with quiet_libraries():
        return _load_bundle(model, loras, controlnets, allow_pickle, config_dir)


def _load_bundle(model, loras, controlnets, allow_pickle, config_dir) -> ModelBundle:
    path = Path(model)
    config_dir = Path(config_dir) if config_dir else SD15_CONFIGS
    if path.is_dir():
        unet, vae, text_encoder, schedule = _load_folder(path, allow_pickle, local_only=True)
        tokenizer = _tokenizer(path)
    elif path.suffix or path.exists():
        unet, vae, text_encoder, schedule = _load_single_file(path, allow_pickle, config_dir)
        tokenizer = clip_tokenizer()
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", model):
        unet, vae, text_encoder, schedule = _load_folder(Path(model), allow_pickle, local_only=False)
        from transformers import CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    else:
        raise InputError(
            f"--model {model} does not exist; give a diffusers folder, a .safetensors file or a hub id"
        )
    for lora_path, scale in loras:
        apply_lora(unet, text_encoder, Path(lora_path), scale)
    nets = tuple((load_controlnet(spec, allow_pickle), scale) for spec, scale in controlnets)
    return ModelBundle(tokenizer, text_encoder.eval(), unet.eval(), vae.eval(), schedule, nets, source=model)
