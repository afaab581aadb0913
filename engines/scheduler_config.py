"""A model's training noise schedule, read from its scheduler config and checked against what our DDIM does.

What the sampler cannot follow exactly is refused in a sentence instead of being rendered wrong (the sampler
is docs/method.md §1: epsilon prediction, the "leading" spacing with an offset, scaled_linear or linear betas).
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ModelFileError
from .runtime import ScheduleConfig

SUPPORTED_BETA_SCHEDULES = ("scaled_linear", "linear")


def read_schedule(scheduler_config: Path, flag: str = "--model") -> ScheduleConfig:
    """The schedule of a `scheduler_config.json` file; SD1.5's when there is none."""
    if not scheduler_config.is_file():
        return ScheduleConfig()
    try:
        raw = json.loads(scheduler_config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{flag}: {scheduler_config} is not valid JSON ({error})") from None
    return schedule_from_config(raw, f"{flag}: {scheduler_config}")


def schedule_from_config(raw: object, where: str) -> ScheduleConfig:
    """`read_schedule` on a parsed config; `where` starts every error sentence."""
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
