"""DDIM (eta 0) schedule with the SDEdit truncation and the constraint windows (docs/method.md §1, §2).

Step index i counts the *full* schedule of S steps (t_i = 951 − 50 i for S = 20 with SD1.5's settings);
SDEdit with strength s runs only the last round(S·s) steps (docs/decisions.md 3), starting at `entry`.
Windows stay fractions of the full schedule, so a window before the entry step is simply never reached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...engines.runtime import ScheduleConfig

_EPS = 1e-9  # S·fraction products such as 20·0.1 are compared with a tolerance, not bit-exactly


@dataclass(frozen=True)
class DdimSchedule:
    """t_i and ᾱ for every step index i of a full S-step schedule."""

    steps: int
    timesteps: tuple[int, ...]
    alpha_bar: tuple[float, ...]  # ᾱ at t_i
    alpha_bar_prev: tuple[float, ...]  # ᾱ at t_{i+1}; ᾱ_0 (or 1) after the last step

    def entry(self, strength: float) -> int:
        """The first step index that runs with SDEdit strength s: S − round(S·s), at least one step runs."""
        runs = min(self.steps, max(1, math.floor(self.steps * strength + 0.5)))
        return self.steps - runs


def ddim_schedule(config: ScheduleConfig, steps: int) -> DdimSchedule:
    """The "leading" DDIM spacing with steps_offset (diffusers DDIMScheduler; official DDIMVSampler)."""
    n = config.num_train_timesteps
    if config.beta_schedule == "scaled_linear":
        betas = torch.linspace(config.beta_start**0.5, config.beta_end**0.5, n, dtype=torch.float32) ** 2
    elif config.beta_schedule == "linear":
        betas = torch.linspace(config.beta_start, config.beta_end, n, dtype=torch.float32)
    else:
        raise ValueError(
            f"beta schedule {config.beta_schedule!r} is not supported; use scaled_linear or linear"
        )
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    final = 1.0 if config.set_alpha_to_one else float(alphas_cumprod[0])
    ratio = n // steps
    timesteps = [int(round(i * ratio)) + config.steps_offset for i in reversed(range(steps))]
    alpha_bar = [float(alphas_cumprod[t]) for t in timesteps]
    alpha_prev = [float(alphas_cumprod[t - ratio]) if t - ratio >= 0 else final for t in timesteps]
    return DdimSchedule(steps, tuple(timesteps), tuple(alpha_bar), tuple(alpha_prev))


def in_window(step: int, steps: int, start: float, end: float, strict: bool = False) -> bool:
    """Step windows (method §2): inclusive S·a ≤ i ≤ S·b (cross-frame, shape fusion, AdaIN); strict
    S·a < i < S·b (pixel fusion)."""
    low, high = steps * start, steps * end
    if strict:
        return low + _EPS < step < high - _EPS
    return low - _EPS <= step <= high + _EPS


def window_steps(steps: int, start: float, end: float, strict: bool = False) -> tuple[int, ...]:
    return tuple(i for i in range(steps) if in_window(i, steps, start, end, strict))
