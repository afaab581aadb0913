"""Ranges of `rerender run`'s numeric options, each checked once.

The ranges of options held by other layers' dataclasses (the synthesis parameters, the schedule, the
geometry) are argparse `type`s here: a value outside one (or not a number, or not finite) becomes one
sentence that names the flag and the range, exit status 2 (`cli_parser.OneLineParser`). Options whose
dataclass checks its own range (`ClassicOptions`, `FramesOptions`, `DiffusionOptions`) are only converted
here (`number`, `whole_number`). Every program maps flags through the same types (`run_args`), so no path
reaches the synthesizer or the decoder with an unchecked number.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable

from .errors import UsageError
from .geometry import MAX_SHORT_SIDE as MAX_SHORT_SIDE  # the --size range

MIN_SHORT_SIDE = 64
# Frames between keyframes: the frames of a gap (and their flow pairs) wait in memory until the keyframe
# after them is rendered, so memory grows with K (README, `Usage: rerender run`).
MAX_KEYFRAME_INTERVAL = 250
MAX_PATCH_SIZE = 15  # odd, from 3; the synthesizer's cost grows with the patch area
MAX_SEARCH_VOTE_ITERS = 100
MAX_PATCHMATCH_ITERS = 50
MAX_PYRAMID_LEVELS = 12  # 2048 / 2**11 is one patch: no more levels exist for the largest --size
MAX_FRAME_INDEX = 10_000_000
THREADS_PER_CORE = 4
MAX_THREADS = 256


def max_threads() -> int:
    """The most threads a synthesis chain may ask for: a few per core (OpenMP teams beyond that only
    contend), never more than MAX_THREADS."""
    return max(1, min(MAX_THREADS, THREADS_PER_CORE * (os.cpu_count() or 1)))


def int_range(low: int, high: int, *, odd: bool = False, multiple: int = 1) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high] (odd, or a multiple of `multiple`, when asked)."""
    what = "an odd whole number" if odd else "a whole number"
    if multiple > 1:
        what = f"a multiple of {multiple}"
    expected = f"expects {what} from {low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{expected}; got {text!r}") from None
        if not low <= value <= high or (odd and value % 2 == 0) or value % multiple:
            raise argparse.ArgumentTypeError(f"{expected}; got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in some messages
    return parse


def float_range(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high] (`low_open`: (low, high])."""
    bracket = "(" if low_open else "["
    expected = f"expects a number in {bracket}{low:g}, {high:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{expected}; got {text!r}") from None
        inside = (low < value if low_open else low <= value) and value <= high
        if not math.isfinite(value) or not inside:
            raise argparse.ArgumentTypeError(f"{expected}; got {text.strip()}")
        return value

    parse.__name__ = "float"
    return parse


def whole_number(text: str) -> int:
    """An argparse type that only converts: a whole number (its range is its dataclass's)."""
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a whole number; got {text!r}") from None


whole_number.__name__ = "int"


def number(text: str) -> float:
    """An argparse type that only converts: a number (its range, finiteness included, is its dataclass's)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a number; got {text!r}") from None


number.__name__ = "float"


def check_number(flag: str, value: float, low: float, high: float, *, low_open: bool = False) -> float:
    """`value` if it is a finite number in [low, high] (`low_open`: (low, high]); UsageError otherwise."""
    inside = (low < value if low_open else low <= value) and value <= high
    if not math.isfinite(value) or not inside:
        bracket = "(" if low_open else "["
        raise UsageError(f"{flag} expects a number in {bracket}{low:g}, {high:g}]; got {value}")
    return value


def check_whole(flag: str, value: int, low: int, high: int) -> int:
    """`value` if it is a whole number in [low, high]; UsageError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(f"{flag} expects a whole number from {low} to {high}; got {value}")
    return value
