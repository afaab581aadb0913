"""The page's settings form and the `rerender run` argument list it stands for.

The page never validates anything itself: its fields are turned back into an argv list and handed to the
job's own `parse_run_options`, so a bad value gets exactly the message `rerender run` would print (issue 8,
item 4). The fields are read from the run parser, so every flag the page shows is one the CLI has.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass

from ..errors import UsageError

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
# Flags that decide which files are read or written or how progress is printed: fixed by the command line
# (the page may not point the server at other files, issue 8 item 4).
FIXED_FLAGS = ("-i", "--input", "-o", "--output", "-f", "--format", "--progress", "-q", "--quiet")


@dataclass(frozen=True)
class Field:
    """One form field: the run flag it sets, what the page shows, the CLI's default and its choices."""

    flag: str
    label: str
    help: str
    default: str
    choices: tuple[str, ...] | None


@dataclass(frozen=True)
class FastPreview:
    """Fast preview mode (issue 8 item 3): a smaller processing size and fewer sampler steps while tuning;
    the file is always rendered with the full settings."""

    size: int = 256
    steps: int = 8


def _action_for(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return parser._option_string_actions.get(flag)


def _main_flag(action: argparse.Action) -> str:
    longs = [s for s in action.option_strings if s.startswith("--")]
    return longs[0] if longs else action.option_strings[0]


def form_fields(parser: argparse.ArgumentParser) -> list[Field]:
    """The fields of the page's form: the run flags of SHOWN_FLAGS, the classic renderer's style flags
    and the diffusion flags, each only if the parser knows it and it takes a value."""
    names = list(SHOWN_FLAGS)
    for action in parser._actions:
        for option in action.option_strings:
            if ("style" in option or "classic" in option) and option.startswith("--"):
                names.append(option)
                break
    names += DIFFUSION_FLAGS
    fields: list[Field] = []
    seen: set[int] = set()
    for name in names:
        action = _action_for(parser, name)
        if action is None or id(action) in seen or action.nargs == 0:
            continue
        seen.add(id(action))
        default = action.default
        fields.append(
            Field(
                flag=name if name == "-K" else _main_flag(action),
                label=name.lstrip("-"),
                help=(action.help or "").replace("%(default)s", str(default)),
                default="" if default is None or default is argparse.SUPPRESS else str(default),
                choices=tuple(str(c) for c in action.choices) if action.choices else None,
            )
        )
    return fields


def _flag_of(token: str, fields: list[Field], parser: argparse.ArgumentParser) -> Field | None:
    action = _action_for(parser, token)
    if action is None:
        return None
    for field in fields:
        if _action_for(parser, field.flag) is action:
            return field
    return None


def split_run_argv(
    argv: list[str], fields: list[Field], parser: argparse.ArgumentParser
) -> tuple[dict[str, str], str]:
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


def page_argv(input_path: str, settings: PageSettings, fields: list[Field]) -> list[str]:
    """The `rerender run` argv the page's settings stand for (without an output)."""
    known = {f.flag for f in fields}
    argv = ["-i", input_path]
    for flag, value in settings.values.items():
        if flag not in known:
            raise UsageError(f"the page has no field {flag!r}; put other run flags into 'more flags'")
        if value.strip() != "":
            argv += [flag, value.strip()]
    try:
        extra = shlex.split(settings.extra)
    except ValueError as exc:
        raise UsageError(
            f"'more flags' could not be split like a shell line ({exc}); check the quotes"
        ) from None
    for token in extra:
        name = token.partition("=")[0]
        if name in FIXED_FLAGS:
            raise UsageError(
                f"{name} is fixed by the `rerender preview` command line; remove it from 'more flags'"
            )
    return argv + extra


def _last_value(argv: list[str], flags: tuple[str, ...]) -> str | None:
    value = None
    for i, token in enumerate(argv):
        name, eq, inline = token.partition("=")
        if name in flags:
            value = inline if eq else (argv[i + 1] if i + 1 < len(argv) else None)
    return value


def fast_argv(
    argv: list[str], fast: FastPreview, parser: argparse.ArgumentParser, *, diffusion: bool
) -> list[str]:
    """The preview's argv in fast mode: the processing size capped at `fast.size` and, for the diffusion
    renderer, the sampler steps at `fast.steps` (argparse keeps a flag's last value: the caps are appended)."""
    out = list(argv)
    size_action = _action_for(parser, "--size")
    if size_action is not None:
        size = _last_value(argv, tuple(size_action.option_strings))
        current = size if size is not None else size_action.default
        try:
            small_enough = current is not None and int(str(current)) <= fast.size
        except ValueError:
            small_enough = False  # e.g. WxH: the cap replaces it
        if not small_enough:
            out += ["--size", str(fast.size)]
    steps_action = _action_for(parser, "--steps")
    if diffusion and steps_action is not None:
        steps = _last_value(argv, tuple(steps_action.option_strings))
        current = steps if steps is not None else steps_action.default
        try:
            if current is None or int(str(current)) > fast.steps:
                out += ["--steps", str(fast.steps)]
        except ValueError:
            pass  # not a number: parse_run_options reports it with the CLI's message
    return out
