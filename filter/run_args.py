"""`rerender run`'s flags mapped onto the options tree: from the command line (`parse_run_options`, argv
parsed by the run parser) or from values keyed by flag (`options_from_values`: a watch folder's preset and
sidecar, TOML-typed, never turned into argv). Both go through the one `options_from_args`; a value is
converted by its flag's own argparse type and choices, so the messages are the CLI's.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..native.params import SynthParams
from .cluster.options import ray_options_from_args
from .errors import UsageError
from .flow_spec import FlowSpec
from .graph import FilterOptions
from .io import sink_options_from_args
from .option_ranges import MAX_FRAME_INDEX, check_whole
from .propagation import PropagationOptions
from .renderers import diffusion_options
from .renderers.classic import ClassicOptions
from .renderers.frames import FramesOptions
from .run_flags import FlagShapeError, FlagValueError, RunFlag, build_parser
from .run_options import (
    DEFAULT_SIZE,
    RendererOptions,
    RunOptions,
    RunParser,
    build_run_parser,
    run_flags,
)
from .schedule import ScheduleOptions

PROG = "rerender run"


def _cli(key: str) -> str:
    return "the settings"


def _renderer(args: argparse.Namespace) -> RendererOptions:
    """The renderer's options; flags of another renderer than the chosen one are refused (the tree has no
    place for them)."""
    name = args.renderer or ("diffusion" if args.model else "classic")
    if name != "diffusion" and args.model:
        raise UsageError(
            "--model is used by the diffusion renderer only; drop it or use --renderer diffusion"
        )
    if name != "frames" and args.keyframes_dir is not None:
        raise UsageError("--keyframes-dir is used by the frames renderer only; add --renderer frames")
    # The classic look's and the keyframe files' flags are refused out of range whichever renderer runs
    # (the page sends them always): each is checked once, by its dataclass, or here when it has none.
    classic = ClassicOptions(args.classic_style, args.classic_sigma_s, args.classic_sigma_r)
    if name == "frames":
        return FramesOptions(args.keyframes_dir, args.keyframes_first_index)
    check_whole("--keyframes-first-index", args.keyframes_first_index, 0, MAX_FRAME_INDEX)
    if name == "diffusion":
        return diffusion_options.from_args(args)
    return classic


def parse_run_options(argv: list[str]) -> RunOptions:
    """`rerender run`'s options from its command line (the CLI's one use of argv)."""
    return options_from_args(build_run_parser().parse_args(argv))


def options_from_values(values: dict[str, Any], where: Callable[[str], str] = _cli) -> RunOptions:
    """The options that `values` (flag keys without dashes, `-` as `_`, with TOML's types: a watch preset
    and sidecar merged, plus `input` and `output`) stand for, as `rerender run` would parse them. Raises
    UsageError naming `where(key)` for a key that is no flag or a value of the wrong shape, and the run
    parser's own sentence for a value it refuses."""
    return options_from_args(namespace_of(run_flags(), values, where))


def options_from_args(args: argparse.Namespace) -> RunOptions:
    """The one mapping of parsed flags onto the options tree (each dataclass checks its own values)."""
    try:
        renderer = _renderer(args)
        synth = SynthParams(
            patch_size=args.patch_size,
            pyramid_levels=args.pyramid_levels,
            search_vote_iters=args.search_vote_iters,
            patchmatch_iters=args.patchmatch_iters,
            threads=args.threads,
        )
        propagation = PropagationOptions(
            synth=synth,
            backend=args.synth_backend,
            # --device cuda:N (diffusion renderer) puts the CUDA synthesizer on the same GPU as the UNet.
            device=args.device if args.device.startswith("cuda") else None,
            poisson=args.poisson,
            blend_weights=args.blend_weights,
            keyframe_pull=args.keyframe_pull,
        )
        schedule = ScheduleOptions(
            args.keyframe_interval,
            args.keyframes,
            scene_cuts=not args.no_scene_cuts,
            scene_cut_threshold=args.scene_cut_threshold,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    filter_options = FilterOptions(
        schedule=schedule,
        size=DEFAULT_SIZE if args.size is None else args.size,
        fit=args.fit,
        propagate_at=args.propagate_at,
        flow=str(FlowSpec.parse(args.flow)),
        propagation=propagation,
        upscale=args.size is not None,  # an explicit --size is honoured even above the input's size
    )
    return RunOptions(
        input=args.input,
        output=args.output,
        input_format=args.input_format,
        sink=sink_options_from_args(args),
        strict=args.strict,
        filter=filter_options,
        renderer=renderer,
        progress="none" if args.quiet else args.progress,
        ray=ray_options_from_args(args),
    )


# -- values keyed by flag -> the parsed flags ------------------------------------------------------------------


def _argparse_error(flag: RunFlag, message: str) -> FlagValueError:
    """The sentence argparse (`cli_parser.OneLineParser`) gives for a bad value of `flag`."""
    return FlagValueError(f"argument {'/'.join(flag.names)}: {message}; see `{PROG} --help`")


def _default(flag: RunFlag) -> Any:
    return list(flag.default) if isinstance(flag.default, list) else flag.default


def namespace_of(
    flags: tuple[RunFlag, ...], values: dict[str, Any], where: Callable[[str], str]
) -> argparse.Namespace:
    """What the run parser would make of these flags given these values: each flag's default, and each
    value converted by its flag's argparse type and checked against its choices."""
    parsed = {flag.dest: _default(flag) for flag in flags}
    parsed.update(converted_values(flags, values, where))
    return argparse.Namespace(**parsed)


def converted_values(
    flags: tuple[RunFlag, ...], values: dict[str, Any], where: Callable[[str], str]
) -> dict[str, Any]:
    """Only the flags `values` gives, keyed by parsed name (dest), each value converted by its flag's
    argparse type and checked against its choices (the run parser's sentences); no defaults."""
    by_key = {key: flag for flag in flags for key in flag.keys}
    parsed: dict[str, Any] = {}
    for key, value in values.items():
        flag = by_key.get(key)
        name = key.replace("_", "-")
        if flag is None:
            known = ", ".join(sorted(k.replace("_", "-") for k in by_key))
            raise FlagShapeError(
                f"{where(key)} sets {name!r}, which is not a flag of `{PROG}`; expected one of: {known}"
            )
        parsed[flag.dest] = _value(flag, key, value, where(key))
    return parsed


def given_values(argv: list[str]) -> dict[str, Any]:
    """The flags a `rerender run` command line fragment gives (only those: no defaults, none required),
    keyed by parsed name (dest), as the run parser reads them: the same spellings, abbreviations, types,
    choices and one-line errors (UsageError naming `rerender run --help`)."""
    quiet = {"default": argparse.SUPPRESS, "required": False}
    flags = [replace(f, arguments=tuple({**dict(f.arguments), **quiet}.items())) for f in run_flags()]
    parser = build_parser(RunParser(prog=PROG), flags)
    return vars(parser.parse_args(argv))


def _value(flag: RunFlag, key: str, value: Any, where: str) -> Any:
    name = key.replace("_", "-")
    if not flag.takes_value:  # an on/off switch, or a --X/--no-X pair
        if not isinstance(value, bool):
            raise FlagShapeError(f"{where} sets {name!r} to {value!r}; expected true or false")
        negated = flag.negatable and key not in {n[2:].replace("-", "_") for n in flag.names}
        return value != negated if flag.negatable else (value or flag.default)
    if isinstance(value, bool):
        raise FlagShapeError(f"{where} sets {name!r} to {str(value).lower()}; expected a value")
    if isinstance(value, list):
        if not (flag.repeatable or flag.nargs in ("+", "*") or isinstance(flag.nargs, int)):
            raise FlagShapeError(f"{where} gives a list for {name!r}; expected one value")
        return [_convert(flag, item, name, where) for item in value]
    converted = _convert(flag, value, name, where)
    return [converted] if flag.repeatable else converted


def _convert(flag: RunFlag, item: Any, name: str, where: str) -> Any:
    if isinstance(item, bool | dict | list):
        raise FlagShapeError(f"{where} sets {name!r} to {item!r}; expected a number or a string")
    text = str(item)
    convert = dict(flag.arguments).get("type")
    if convert is not None:
        try:
            converted = convert(text)
        except argparse.ArgumentTypeError as exc:
            raise _argparse_error(flag, str(exc)) from None
        except (TypeError, ValueError):
            type_name = getattr(convert, "__name__", repr(convert))
            raise _argparse_error(flag, f"invalid {type_name} value: {text!r}") from None
    else:
        converted = text
    if flag.choices is not None and str(converted) not in flag.choices:
        choices = ", ".join(repr(c) for c in flag.choices)
        raise _argparse_error(flag, f"invalid choice: {converted!r} (choose from {choices})")
    return converted
