"""Where a flag's value names a file: one splitter per value syntax (`run_flags.Use.paths`).

A splitter returns (text before the path, the path, text after it), or None when the value names no file
(`dis:fast`, `canny:50,100`). The watch daemon resolves the path inside the preset's model folders and the
preview page refuses values that name one, so both read the same syntax from the flag's schema.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from .flow_spec import weights_split

PathSyntax = Literal["whole", "path_scale", "flow", "control"]
PathSplit = Callable[[str], "tuple[str, str, str] | None"]


def _whole(value: str) -> tuple[str, str, str]:
    return "", value, ""


def _path_scale(value: str) -> tuple[str, str, str]:
    """`PATH[:SCALE]` (--lora, --controlnet)."""
    path, sep, scale = value.rpartition(":")
    try:
        float(scale)
    except ValueError:
        return "", value, ""
    return ("", path, sep + scale) if sep else ("", value, "")


def _flow(value: str) -> tuple[str, str, str] | None:
    """`dis[:PRESET]` names no file; any other estimator is `NAME:WEIGHTS` (`flow_spec.weights_split`)."""
    return weights_split(value)


def _control(value: str) -> tuple[str, str, str] | None:
    """`canny[:LOW,HIGH]` names no file; `hed:WEIGHTS`, `depth:WEIGHTS`, `video:PATH` do."""
    kind, sep, rest = value.partition(":")
    return None if kind == "canny" else (kind + sep, rest, "")


SPLITS: dict[str, PathSplit] = {
    "whole": _whole,
    "path_scale": _path_scale,
    "flow": _flow,
    "control": _control,
}


def names_no_file(syntax: PathSyntax, value: object) -> bool:
    """True when `value` (one value, or the list of a repeatable flag) names no file in `syntax`."""
    items = value if isinstance(value, list | tuple) else [value]
    return all(isinstance(item, str) and SPLITS[syntax](item) is None for item in items)
