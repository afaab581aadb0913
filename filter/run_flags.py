"""The flags of `rerender run` as typed data (`RunFlag`), from which the run parser is built.

The flag declarations (in `run_options.py`, `io/args.py` and `renderers/diffusion_options.py`) are written
once, as calls to `add_argument`, each with a `Use` that says what the value is (`kind`: a plain value, the
job's input or an output location, a file or folder to read, an encoder option), whether a watch sidecar or
the preview page may set it, and where a value names a file. `FlagSchema` records each call as a frozen
`RunFlag` and `build_parser` makes the argparse parser from those records. The watch daemon's sidecar rules
and the preview page's allow-list are derived from the `Use`s (`watch.settings.sidecar_rule`,
`page_may_set`), so a file rule is a property of the schema: a flag whose kind is the input or an encoder
option is never set from a sidecar or the page, whatever its `Use` says; an output location only as a
container a sidecar picks from the daemon's list; a file to read only inside the preset's model folders (a
sidecar) or not at all (the page); and a new flag is refused by both until its declaration allows it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

from .errors import UsageError
from .value_paths import PathSyntax, names_no_file

# What a flag's value is: a plain value; the job's input or its output location; a file or folder to read
# (or a value that may contain one, like `--flow raft:WEIGHTS`); an option handed to the encoder.
FlagKind = Literal["value", "input", "output", "read_path", "encoder_option"]


class FlagShapeError(UsageError):
    """A value keyed by flag that has no flag, or the wrong shape for its flag (a list for a single value, a
    number for a switch); the message names where the value came from."""


class FlagValueError(UsageError):
    """A value its flag's own type or choices refuse: the run parser's sentence for it."""


_SWITCHES = frozenset({"store_true", "store_false", "store_const", "count"})


@dataclass(frozen=True)
class Use:
    """What a flag's value is and who besides the command line may set it."""

    kind: FlagKind = "value"
    sidecar: bool = False  # a watch sidecar may set it (the folder's preset may set any flag)
    page: bool = False  # the preview page may change it
    paths: PathSyntax | None = None  # read_path: where a value names its file (value_paths.SPLITS)
    checkpoint: bool = False  # names weights to load: not from a sidecar while the preset allows pickles

    def __post_init__(self) -> None:
        if (self.kind == "read_path") != (self.paths is not None):
            raise ValueError(
                f"a read_path flag needs its value syntax (paths=), and only it does; got {self}"
            )


VALUE = Use()  # a plain value only the command line (and a watch preset) sets
EVERYWHERE = Use(sidecar=True, page=True)  # a plain value a sidecar and the page may set too


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
    use: Use = VALUE

    @property
    def spellings(self) -> tuple[str, ...]:
        """Every option string that sets this flag (with the `--no-X` form of a negatable one)."""
        negations = tuple("--no-" + n[2:] for n in self.names if n.startswith("--")) if self.negatable else ()
        return self.names + negations

    @property
    def long_name(self) -> str:
        """The first long spelling (the first spelling when there is none)."""
        return next((n for n in self.names if n.startswith("--")), self.names[0])

    @property
    def keys(self) -> tuple[str, ...]:
        """The long spellings without dashes, `-` as `_`: the keys of a watch preset or sidecar."""
        return tuple(n[2:].replace("-", "_") for n in self.spellings if n.startswith("--"))

    @classmethod
    def declared(
        cls, names: tuple[str, ...], arguments: dict[str, Any], group: str | None, use: Use = VALUE
    ) -> RunFlag:
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
            kind=use.kind,
            takes_value=not switch and arguments.get("nargs") != 0,
            repeatable=action == "append",
            negatable=negatable,
            nargs=arguments.get("nargs"),
            choices=tuple(str(c) for c in choices) if choices else None,
            default=default,
            help=arguments.get("help") or "",
            group=group,
            arguments=tuple(arguments.items()),
            use=use,
        )


class FlagSchema:
    """Records `add_argument` / `add_argument_group` calls (the subset of argparse's parser interface the
    flag declarations use) as `RunFlag`s; `add_argument` takes a `use=Use(...)` besides argparse's
    arguments."""

    def __init__(
        self,
        flags: list[RunFlag] | None = None,
        group: str | None = None,
        uses: dict[str, Use] | None = None,
        default: Use = VALUE,
    ) -> None:
        self._flags = [] if flags is None else flags
        self._group = group
        self._uses = uses or {}
        self._default = default

    def add_argument_group(self, title: str) -> FlagSchema:
        return FlagSchema(self._flags, title, self._uses, self._default)

    def using(self, uses: dict[str, Use], default: Use = VALUE) -> FlagSchema:
        """This schema, giving the flags declared through it without a `use` these (by parsed name; the
        others `default`): for declarations that also serve plain argparse parsers (`io/args.py`)."""
        return FlagSchema(self._flags, self._group, uses, default)

    def add_argument(self, *names: str, use: Use | None = None, **arguments: Any) -> None:
        flag = RunFlag.declared(names, arguments, self._group)
        chosen = use if use is not None else self._uses.get(flag.dest, self._default)
        self._flags.append(replace(flag, use=chosen, kind=chosen.kind))

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


def page_may_set(flag: RunFlag, value: Any) -> bool:
    """Whether the preview page may give `flag` this `value`: its `Use` allows the page and its kind is a
    plain value, or a file to read with a value that names none (`dis:fast`, `canny`)."""
    use = flag.use
    if not use.page:
        return False
    if use.kind == "value":
        return True
    return use.kind == "read_path" and use.paths is not None and names_no_file(use.paths, value)
