"""The page's settings form and the run options it stands for.

The page never validates anything itself: each field's text is converted by its flag's own type and choices
(`run_args.converted_values`, what a watch preset's values go through) and the "more flags" box, a command
line the user types, is read by the run parser (`run_args.given_values`); merged with the `rerender preview`
command line's options they go through the job's one `options_from_args`, so a bad value gets exactly the
message `rerender run` would print. The fields are read from the run parser's typed schema (`RunFlag`), so
every flag the page shows is one the CLI has. Which options the page may change at all is the schema's too
(`page_options`, `run_flags.page_may_set`), checked on the merged values (`check_page_values`).
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..renderers.diffusion_options import DiffusionOptions
from ..run_args import converted_values, given_values
from ..run_flags import RunFlag, by_spelling, page_may_set

if TYPE_CHECKING:
    from ..run_options import RunOptions, RunParser

# The flags the page shows as their own fields, in this order, when the run parser has them; every other
# run flag stays in the free-text "more flags" field. `*style*`/`*classic*` flags (the classic renderer's
# look) are added after the first group.
SHOWN_FLAGS = ("--renderer", "-K", "--keyframes", "--size")
DIFFUSION_FLAGS = (
    "--prompt",
    "--negative-prompt",
    "--strength",
    "--steps",
    "--cfg-scale",
    "--seed",
    "--model",
)
# Why the page may not give a file-reading option some values (the value syntaxes of `run_flags.Use.paths`).
_NAMES_A_FILE = {
    "flow": "the page may choose dis, dis:fast or dis:ultrafast; an estimator with a weights file "
    "(raft:WEIGHTS) is given on the `rerender preview` command line",
    "control": "the page may choose canny or canny:LOW,HIGH; a control that reads a file (hed:, depth:, "
    "video:) is given on the `rerender preview` command line",
}


def page_options(flags: Iterable[RunFlag]) -> frozenset[str]:
    """The run options (parsed names) the page may change: those whose declaration allows the page
    (`Use.page`) and whose kind is a plain value or a file to read (then only values that name no file,
    `page_may_set`). Every other option (the input and output, the container, the input demuxer, encoder
    options, --model, --lora, --keyframes-dir, --allow-pickle, and any option added to `rerender run`
    later until its declaration says otherwise) keeps the value the `rerender preview` command line gave
    it, or its default: the page cannot point the server at other files or let it run code from them."""
    return frozenset(f.dest for f in flags if f.use.page and f.kind in ("value", "read_path"))


def _flag_name(dest: str) -> str:
    return "-i/--input" if dest == "input" else "--" + dest.replace("_", "-")


def check_page_values(
    flags: Iterable[RunFlag], chosen: dict[str, Any], fixed: dict[str, Any], defaults: dict[str, Any]
) -> None:
    """Refuse page settings that steer the server off its input and its own files.

    `chosen` is every option (by parsed name) of the run the page asks for: the command line's options
    merged with the page's fields and "more flags" (`page_choice`). Options the schema does not let the page
    set (`page_may_set`) must keep the command line's value (`fixed`) or drop back to their default
    (`defaults`, e.g. the page clears --model to use the classic renderer); UsageError otherwise."""
    by_dest = {flag.dest: flag for flag in flags}
    for dest, value in chosen.items():
        if value == fixed.get(dest):
            continue
        flag = by_dest.get(dest)
        if flag is not None and dest in page_options([flag]):
            if not page_may_set(flag, value):
                shown = " ".join(map(str, value)) if isinstance(value, list) else value
                why = _NAMES_A_FILE.get(
                    flag.use.paths or "", "the page may not choose a value that names a file"
                )
                raise UsageError(f"{_flag_name(dest)} {shown}: {why}")
            continue
        if dest not in ("input", "output") and value == defaults.get(dest):
            continue
        raise UsageError(
            f"{_flag_name(dest)} cannot be set from the page (it names files or decides what the server "
            "reads and writes); give it on the `rerender preview` command line"
        )


def command_line_fixed(parser: argparse.ArgumentParser, input_path: str, run_argv: list[str]) -> str | None:
    """The first of -o, -f, --progress and -q (in any spelling) that the `rerender preview` command line's
    run options set, or None: the page shows the progress, and a file is written only on "Render to file"."""
    base = ["-i", input_path, "-o", "-"]  # stand-ins the command line's own options override
    given = vars(parser.parse_args([*base, *run_argv]))
    defaults = vars(parser.parse_args(base))
    for dest in ("output", "format", "progress", "quiet"):
        if given[dest] != defaults[dest]:
            return _flag_name(dest)
    return None


@dataclass(frozen=True)
class Field:
    """One form field: the run flag it sets, what the page shows, the CLI's default and its choices."""

    flag: str
    label: str
    help: str
    default: str
    choices: tuple[str, ...] | None
    fixed: bool = False  # not in `page_options`: the page may keep the command line's value or clear it


@dataclass(frozen=True)
class FastPreview:
    """Fast preview mode: a smaller processing size and fewer sampler steps while tuning;
    the file is always rendered with the full settings."""

    size: int = 256
    steps: int = 8


def form_fields(parser: RunParser) -> list[Field]:
    """The fields of the page's form: the run flags of SHOWN_FLAGS, the classic renderer's style flags
    and the diffusion flags, each only if the run parser's schema has it and it takes a value."""
    flags = parser.schema
    names = list(SHOWN_FLAGS)
    for flag in flags:
        for option in flag.names:
            if ("style" in option or "classic" in option) and option.startswith("--"):
                names.append(option)
                break
    names += DIFFUSION_FLAGS
    by_name = by_spelling(flags)
    allowed = page_options(flags)
    fields: list[Field] = []
    seen: set[str] = set()
    for name in names:
        flag = by_name.get(name)
        if flag is None or flag.dest in seen or not flag.takes_value:
            continue
        seen.add(flag.dest)
        default = flag.default
        fields.append(
            Field(
                flag=name if name == "-K" else flag.long_name,
                label=name.lstrip("-"),
                help=flag.help.replace("%(default)s", str(default)),
                default="" if default is None or default is argparse.SUPPRESS else str(default),
                choices=flag.choices,
                fixed=flag.dest not in allowed,
            )
        )
    return fields


def _flag_of(token: str, fields: list[Field], parser: RunParser) -> Field | None:
    by_name = by_spelling(parser.schema)
    flag = by_name.get(token)
    if flag is None:
        return None
    for field in fields:
        other = by_name.get(field.flag)
        if other is not None and other.dest == flag.dest:
            return field
    return None


def split_run_argv(argv: list[str], fields: list[Field], parser: RunParser) -> tuple[dict[str, str], str]:
    """Split the command line's run options into field values and the rest ("more flags"), so the page
    starts from exactly what the user typed. `-i` is left out: the input is fixed."""
    values: dict[str, str] = {}
    rest: list[str] = []
    tokens = list(argv)
    while tokens:
        token = tokens.pop(0)
        name, eq, inline = token.partition("=")
        if name in ("-i", "--input"):
            if not eq and tokens:
                tokens.pop(0)
            continue
        field = _flag_of(name, fields, parser) if name.startswith("-") else None
        if field is None:
            rest.append(token)
        elif eq:
            values[field.flag] = inline
        elif tokens:
            values[field.flag] = tokens.pop(0)
        else:
            rest.append(token)  # a flag without its value: parse_run_options reports it
    return values, shlex.join(rest)


@dataclass(frozen=True)
class PageSettings:
    """What the page sent: field values (strings, as typed) and the free-text flags."""

    values: dict[str, str]
    extra: str

    @classmethod
    def from_json(cls, body: object) -> PageSettings:
        if not isinstance(body, dict):
            raise UsageError("the page must send a JSON object with 'values' and 'extra'")
        values = body.get("values", {})
        extra = body.get("extra", "")
        if not isinstance(values, dict) or not all(
            isinstance(k, str) and isinstance(v, str | int | float) for k, v in values.items()
        ):
            raise UsageError('\'values\' must map run flags to strings, e.g. {"-K": "10"}')
        if not isinstance(extra, str):
            raise UsageError("'extra' must be a string of run flags, e.g. \"--flow dis\"")
        return cls({k: str(v) for k, v in values.items()}, extra)


@dataclass(frozen=True)
class PageChoice:
    """What the page's settings stand for: every option of the run by parsed name (for `options_from_args`)
    and the `rerender run` command line shown on the page (without -o)."""

    chosen: dict[str, Any]
    shown: list[str]


def field_values(
    settings: PageSettings, fields: list[Field], flags: tuple[RunFlag, ...], defaults: dict[str, Any]
) -> dict[str, Any]:
    """The form's fields as option values keyed by parsed name: each typed string converted by its flag's
    own type and choices (`converted_values`, so a bad value gets the sentence `rerender run` prints for
    it); an empty field is its flag's default (the page cleared it)."""
    known = {f.flag for f in fields}
    by_name = by_spelling(flags)
    chosen: dict[str, Any] = {}
    for name, text in settings.values.items():
        if name not in known:
            raise UsageError(f"the page has no field {name!r}; put other run flags into 'more flags'")
        flag = by_name[name]
        if text.strip() == "":
            chosen[flag.dest] = defaults[flag.dest]
        else:
            chosen.update(converted_values(flags, {flag.keys[0]: text.strip()}, _the_field(name)))
    return chosen


def _the_field(name: str) -> Callable[[str], str]:
    return lambda key: f"the page's field {name}"


def more_flags_values(extra: str) -> tuple[dict[str, Any], list[str]]:
    """The "more flags" box: a `rerender run` command line fragment the user typed, split like a shell line
    and read by the run parser (`given_values`: only the flags it gives, by parsed name); and its words."""
    try:
        words = shlex.split(extra)
    except ValueError as exc:
        raise UsageError(
            f"'more flags' could not be split like a shell line ({exc}); check the quotes"
        ) from None
    return given_values(words), words


def page_choice(
    settings: PageSettings,
    fields: list[Field],
    flags: tuple[RunFlag, ...],
    fixed: dict[str, Any],
    defaults: dict[str, Any],
) -> PageChoice:
    """The run the page's settings ask for. Options the page may change (`page_options`) are what its
    fields and "more flags" say, else their default (the form starts from the command line's values); every
    other option keeps the `rerender preview` command line's value (`fixed`) unless the page clears it.
    "More flags" wins over a field for the same option. Checked by `check_page_values`."""
    allowed = page_options(flags)
    from_fields = field_values(settings, fields, flags, defaults)
    from_extra, words = more_flags_values(settings.extra)
    stated = {**from_fields, **from_extra}
    chosen = {dest: defaults[dest] if dest in allowed else value for dest, value in fixed.items()}
    chosen.update(stated)
    check_page_values(flags, chosen, fixed, defaults)
    by_dest = {flag.dest: flag for flag in flags}
    shown = ["-i", str(chosen["input"])]
    for dest, value in chosen.items():  # the command line's own options the page did not state
        if dest not in stated and dest not in ("input", "output") and value != defaults.get(dest):
            shown += shown_words(by_dest[dest].long_name, by_dest[dest], value)
    by_name = by_spelling(flags)
    for field in fields:
        dest = by_name[field.flag].dest
        if dest in from_fields and dest not in from_extra and from_fields[dest] != defaults.get(dest):
            shown += shown_words(field.flag, by_dest[dest], from_fields[dest])
    return PageChoice(chosen, shown + words)


def shown_words(name: str, flag: RunFlag, value: Any) -> list[str]:
    """How the command line shown on the page writes `value` of `flag` (spelled `name`)."""
    if not flag.takes_value:
        if flag.negatable and not value:
            return ["--no-" + name.lstrip("-")]
        return [name] if value else []
    items = value if isinstance(value, list) else [value]
    if flag.repeatable:
        return [word for item in items for word in (name, str(item))]
    return [name, *map(str, items)]


def fast_options(options: RunOptions, fast: FastPreview) -> RunOptions:
    """The preview's options in fast mode: the processing size capped at `fast.size` (never raised, and an
    input smaller than that keeps its own size: the cap does not ask for upscaling) and, for the diffusion
    renderer, the sampler steps capped at `fast.steps`."""
    filter_options = replace(options.filter, size=min(options.filter.size, fast.size))
    renderer = options.renderer
    if isinstance(renderer, DiffusionOptions):
        renderer = replace(renderer, steps=min(renderer.steps, fast.steps))
    return replace(options, filter=filter_options, renderer=renderer)


def fast_note(options: RunOptions, fast: FastPreview) -> str:
    """What fast mode changed, for the page's command line (empty when nothing was capped)."""
    capped = []
    if options.filter.size > fast.size:
        capped.append(f"processing size capped at {fast.size}")
    if options.diffusion is not None and options.diffusion.steps > fast.steps:
        capped.append(f"steps capped at {fast.steps}")
    return "fast preview: " + ", ".join(capped) if capped else ""
