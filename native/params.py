"""Options and results of guided patch synthesis (EbSynth, Jamriška et al. 2019; the defaults are the
Rerender-A-Video pipeline's, Yang et al. 2023)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from numbers import Real
from typing import Literal

import numpy as np

MAX_STYLE_CHANNELS = 8
MAX_GUIDE_CHANNELS = 24
# The same bounds are checked again by the compiled module (native/csrc/binding.cpp): a caller that bypasses
# SynthParams still gets a ValueError, never a crash. Iterations: the random-stream ids hold 6 bits each.
MAX_PATCH_SIZE = 15
MAX_ITERATIONS = 64
MAX_PYRAMID_LEVELS = 16
MAX_THREADS = 256
MAX_SIDE = 8192
MAX_PIXELS = 1 << 25


def _check_uint8_image(name: str, a: object) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise ValueError(
            f"{name} must be a numpy array of uint8 (height, width, channels), got {type(a).__name__}."
        )
    if a.dtype != np.uint8:
        raise ValueError(f"{name} must have dtype uint8, got {a.dtype}; convert it with .astype(np.uint8).")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ValueError(f"{name} must have shape (height, width, channels), got shape {a.shape}.")
    if a.shape[0] < 1 or a.shape[1] < 1 or a.shape[2] < 1:
        raise ValueError(f"{name} must not be empty, got shape {a.shape}.")
    return a


@dataclass(frozen=True, eq=False)
class Guide:
    """One guide pair (synthesis.md §1): `source` has the style's size, `target` the output's; same channel count.
    `weight` is the guide's total weight, split equally over its channels (synthesis.md §4)."""

    source: np.ndarray
    target: np.ndarray
    weight: float = 1.0

    def __post_init__(self) -> None:
        source = _check_uint8_image("Guide.source", self.source)
        target = _check_uint8_image("Guide.target", self.target)
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "target", target)
        if source.shape[2] != target.shape[2]:
            raise ValueError(
                f"Guide.source and Guide.target must have the same number of channels, "
                f"got {source.shape[2]} and {target.shape[2]}."
            )
        if not (isinstance(self.weight, Real) and math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"Guide.weight must be a finite number >= 0, got {self.weight!r}.")


@dataclass(frozen=True)
class SynthParams:
    """Synthesis options. `pyramid_levels=None` uses the maximum the sizes allow (synthesis.md §2);
    `stop_threshold`: pixels whose estimate changed less than this since the last vote are not searched again
    (synthesis.md §8); `threads=None`: `default_threads()`, every core this process may use."""

    patch_size: int = 5
    pyramid_levels: int | None = None
    search_vote_iters: int = 12
    patchmatch_iters: int = 6
    uniformity: float = 3500.0
    stop_threshold: int = 5
    extra_pass_3x3: bool = False
    style_weight: float = 1.0
    vote: Literal["plain", "weighted"] = "plain"
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        def is_int(v: object) -> bool:
            return isinstance(v, int | np.integer) and not isinstance(v, bool)

        p = self.patch_size
        if not is_int(p) or not 3 <= p <= MAX_PATCH_SIZE or p % 2 == 0:
            raise ValueError(f"patch_size must be an odd integer from 3 to {MAX_PATCH_SIZE}, got {p!r}.")
        levels = self.pyramid_levels
        if levels is not None and (not is_int(levels) or not 1 <= levels <= MAX_PYRAMID_LEVELS):
            raise ValueError(
                f"pyramid_levels must be None or an integer from 1 to {MAX_PYRAMID_LEVELS}, got {levels!r}."
            )
        for name, top in (
            ("search_vote_iters", MAX_ITERATIONS),
            ("patchmatch_iters", MAX_ITERATIONS),
            ("stop_threshold", 255),
        ):
            v = getattr(self, name)
            if not is_int(v) or not 0 <= v <= top:
                raise ValueError(f"{name} must be an integer from 0 to {top}, got {v!r}.")
        for name in ("uniformity", "style_weight"):
            v = getattr(self, name)
            if not isinstance(v, Real) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}.")
        if self.vote not in ("plain", "weighted"):
            raise ValueError(f"vote must be 'plain' or 'weighted', got {self.vote!r}.")
        if not is_int(self.seed) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an integer in [0, 2**32), got {self.seed!r}.")
        if self.threads is not None and (not is_int(self.threads) or not 1 <= self.threads <= MAX_THREADS):
            raise ValueError(
                f"threads must be None or an integer from 1 to {MAX_THREADS}, got {self.threads!r}."
            )

    def schedule_kwargs(self, levels: int) -> dict:
        """The search-vote schedule's arguments of the compiled executors (CPU and CUDA take the same)."""
        return {
            "patch_size": self.patch_size,
            "levels": levels,
            "search_vote_iters": self.search_vote_iters,
            "patchmatch_iters": self.patchmatch_iters,
            "uniformity": float(self.uniformity),
            "stop_threshold": self.stop_threshold,
            "extra_pass_3x3": self.extra_pass_3x3,
            "weighted_vote": self.vote == "weighted",
            "seed": self.seed,
        }


@dataclass(frozen=True, eq=False)
class SynthResult:
    """`image` uint8 [Ht, Wt, C]; `error` float32 [Ht, Wt], the patch error E of each target pixel's match at
    the finest level (synthesis.md §4, without the uniformity term); `nnf` int32 [Ht, Wt, 2], (x, y) into the style."""

    image: np.ndarray
    error: np.ndarray
    nnf: np.ndarray
    backend: str = "cpu"
    stats: dict = field(
        default_factory=dict
    )  # CPU: wall seconds per phase and level, active pixels per iteration
    # Patch distances computed (search candidates and error recomputation, synthesis.md §9): the work done,
    # independent of the machine and its load. None where the backend does not count them (CUDA).
    patch_evaluations: int | None = None


def default_threads(concurrent: int = 1) -> int:
    """Threads per synthesis when `concurrent` syntheses run at once: the cores this process may use (its
    CPU affinity), split evenly, at least 1. `SynthParams(threads=None)` is `default_threads()`; the filter's
    two parallel propagation chains take `default_threads(2)` each. Idle threads of the synthesizer sleep
    (native/csrc/thread_pool.h), so the count is right on a busy machine as well."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, concurrent))


# The Rerender-A-Video pipeline's settings (Yang et al. 2023), and our preset for video propagation when each frame
# starts from the previous frame's NNF carried along the optical flow (`init_nnf`): two pyramid levels and 4 x 2
# iterations reach the paper settings' fidelity there (bench/propagation.py, README "Native synthesizer").
PRESETS: dict[str, SynthParams] = {
    "paper": SynthParams(),
    "fast": SynthParams(pyramid_levels=2, search_vote_iters=4, patchmatch_iters=2),
}
