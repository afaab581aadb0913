"""The flags of `rerender run` as typed data (`RunFlag`), from which the run parser is built.

The flag declarations (here, in `io/args.py` and in `renderers/diffusion_options.py`) are written once, as
calls to `add_argument`; `FlagSchema` records each call as a frozen `RunFlag` and `build_parser` makes the
argparse parser from those records. The watch daemon (TOML keys → argv) and the preview page (its form
fields) read the `RunFlag`s, never argparse's objects; each flag's `kind` says what its value is, so rules
about files (a sidecar may not choose where output goes or which encoder options run) can key on it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

# What a flag's value is: a plain value; the job's input or its output location; a file or folder to read
# (or a value that may contain one, like `--flow raft:WEIGHTS`); an option handed to the encoder.
FlagKind = Literal["value", "input", "output", "read_path", "encoder_option"]

# The kind of every flag whose value is not a plain value, by its parsed name.
FLAG_KINDS: dict[str, FlagKind] = {
    "input": "input",
    "output": "output",
    "format": "output",
    "encoder_option": "encoder_option",
    "keyframes_dir": "read_path",
    "flow": "read_path",
    "model": "read_path",
    "model_config": "read_path",
    "vae": "read_path",
    "lora": "read_path",
    "controlnet": "read_path",
    "control": "read_path",
    "engines": "read_path",
}
_SWITCHES = frozenset({"store_true", "store_false", "store_const", "count"})


@dataclass(frozen=True)
class RunFlag:
    """One flag of `rerender run`: its spellings, parsed name, kind, and how argparse reads it."""

    names: tuple[str, ...]  # as declared, e.g. ("-K", "--keyframe-interval")
    dest: str  # the parsed name, e.g. "keyframe_interval"
    kind: FlagKind
    takes_value: bool  # False for on/off switches
    repeatable: bool  # given once per value (`--lora A --lora B`)
    negatable: bool  # `--X` / `--no-X` pairs
    nargs: int | str | None
    choices: tuple[str, ...] | None
    default: Any
    help: str
    group: str | None  # the --help section; None for the parser's own
    arguments: tuple[tuple[str, Any], ...]  # the keyword arguments of the `add_argument` call

    @property
    def spellings(self) -> tuple[str, ...]:
        """Every option string that sets this flag (with the `--no-X` form of a negatable one)."""
        negations = tuple("--no-" + n[2:] for n in self.names if n.startswith("--")) if self.negatable else ()
        return self.names + negations

    @property
    def long_name(self) -> str:
        """The first long spelling (the first spelling when there is none)."""
        return next((n for n in self.names if n.startswith("--")), self.names[0])

    @classmethod
    def declared(cls, names: tuple[str, ...], arguments: dict[str, Any], group: str | None) -> RunFlag:
        action = arguments.get("action", "store")
        dest = arguments.get("dest") or next((n for n in names if n.startswith("--")), names[0]).lstrip(
            "-"
        ).replace("-", "_")
        negatable = action is argparse.BooleanOptionalAction
        switch = negatable or action in _SWITCHES
        default = arguments.get("default", True if action == "store_false" else False if switch else None)
        choices = arguments.get("choices")
        return cls(
            names=names,
            dest=dest,
            kind=FLAG_KINDS.get(dest, "value"),
            takes_value=not switch and arguments.get("nargs") != 0,
            repeatable=action == "append",
            negatable=negatable,
            nargs=arguments.get("nargs"),
            choices=tuple(str(c) for c in choices) if choices else None,
            default=default,
            help=arguments.get("help") or "",
            group=group,
            arguments=tuple(arguments.items()),
        )


class FlagSchema:
    """Records `add_argument` / `add_argument_group` calls (the subset of argparse's parser interface the
    flag declarations use) as `RunFlag`s."""

    def __init__(self, flags: list[RunFlag] | None = None, group: str | None = None) -> None:
        self._flags = [] if flags is None else flags
        self._group = group

    def add_argument_group(self, title: str) -> FlagSchema:
        return FlagSchema(self._flags, title)

    def add_argument(self, *names: str, **arguments: Any) -> None:
        self._flags.append(RunFlag.declared(names, arguments, self._group))

    @property
    def flags(self) -> tuple[RunFlag, ...]:
        return tuple(self._flags)


def record(*declare: Callable[[FlagSchema], None]) -> tuple[RunFlag, ...]:
    """The flags the `declare` functions add, in order."""
    schema = FlagSchema()
    for one in declare:
        one(schema)
    return schema.flags


def build_parser(parser: argparse.ArgumentParser, flags: Iterable[RunFlag]) -> argparse.ArgumentParser:
    """Add `flags` to `parser`, each group's in the order given; returns `parser`."""
    groups: dict[str, Any] = {}
    for flag in flags:
        target: Any = parser
        if flag.group is not None:
            if flag.group not in groups:
                groups[flag.group] = parser.add_argument_group(flag.group)
            target = groups[flag.group]
        target.add_argument(*flag.names, **dict(flag.arguments))
    return parser


def by_spelling(flags: Iterable[RunFlag]) -> dict[str, RunFlag]:
    """Each option string (as written, no abbreviations) → its flag."""
    return {name: flag for flag in flags for name in flag.spellings}
