"""`--flow`: which optical-flow estimator a job uses, parsed and checked in one place (`FlowSpec.parse`).

`dis`, `dis:fast` and `dis:ultrafast` are OpenCV's DIS presets and name no file; any other estimator of
`engines.flow.ESTIMATOR_MODULES` is `NAME:WEIGHTS`, whose weights file `weights` gives (the watch daemon
confines it to the preset's model folders, the preview page may not choose one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from ..engines.flow import ESTIMATOR_MODULES, DisPreset
from .errors import UsageError

DIS_PRESETS: tuple[str, ...] = get_args(DisPreset)


@dataclass(frozen=True)
class FlowSpec:
    estimator: str  # "dis" or a name in ESTIMATOR_MODULES
    arg: str | None = None  # dis: its preset (None: medium); another estimator: its weights

    def __post_init__(self) -> None:
        if self.estimator == "dis":
            if self.arg is not None and self.arg not in DIS_PRESETS:
                raise UsageError(
                    f"--flow dis:PRESET expects a preset among {', '.join(DIS_PRESETS)}; got {self.arg!r}"
                )
        elif self.estimator not in ESTIMATOR_MODULES:
            raise UsageError(
                f"--flow expects dis, dis:fast, dis:ultrafast or {', '.join(ESTIMATOR_MODULES)}:ARG; "
                f"got {str(self)!r}"
            )

    @classmethod
    def parse(cls, text: str) -> FlowSpec:
        name, sep, arg = text.partition(":")
        return cls(name, arg if sep and arg else None)

    @property
    def weights(self) -> str | None:
        """The file this spec makes the estimator read (None for DIS, which reads none)."""
        split = weights_split(str(self))
        return None if split is None else split[1] or None

    def with_weights(self, path: str) -> FlowSpec:
        return FlowSpec(self.estimator, path)

    def __str__(self) -> str:
        return self.estimator if self.arg is None else f"{self.estimator}:{self.arg}"


def weights_split(text: str) -> tuple[str, str, str] | None:
    """`--flow` text as (`NAME:`, weights, "") when it names a weights file, None for DIS (no file); the
    text is not checked (`FlowSpec.parse` does that)."""
    name, sep, rest = text.partition(":")
    return None if name == "dis" else (name + sep, rest, "")
