"""Settings of a watch folder: a preset TOML for the folder and an optional sidecar `<clip>.toml` per clip
("Per-folder settings": AME presets, shannah's `handbrake.properties`).

Keys are the long flags of `rerender run` without the dashes (`cfg-scale = 7.5` or `cfg_scale = 7.5`;
`vary-noise = true`; repeatable flags take a list). They are turned back into an argv list and parsed by
`rerender run`'s own parser, so validation and messages are exactly the CLI's. The daemon decides input and
output, so no file may name them.

The preset is the daemon owner's file: it may set every flag, plus `model-dirs`, the folders a sidecar may
take models from. A sidecar is written by whoever can drop files in INBOX, so it may set only the keys in
`SIDECAR_KEYS` (an allow-list: a flag added to `rerender run` later is refused in sidecars until it is
listed here), every path it names must resolve (after following links) inside `model-dirs`, and the result
is parsed by the run parser before any job starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import RerenderError, UsageError
from ..run_flags import RunFlag
from .inbox_files import read_sidecar
from .output import MUXER_SUFFIX

if TYPE_CHECKING:
    from ..run_options import RunParser

# The daemon chooses these for every job.
DAEMON_KEYS = frozenset({"input", "output", "out", "o", "i"})
# The preset's own key (not a flag of `rerender run`): folders a sidecar may name models in.
MODEL_DIRS_KEY = "model_dirs"
# What the daemon passes for -i/-o when it checks settings (the parser does not open them).
_PROBE_IO = ["-i", "probe-input.mov", "-o", "probe-output.mov"]


def _key(name: str) -> str:
    return name.strip().lstrip("-").replace("-", "_")


# -- what a sidecar may set -----------------------------------------------------------------------------------

# A path inside a value: (text before the path, the path, text after it), or None when the value names no
# file (`flow = "dis:fast"`, `control = "canny"`).
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
    """`dis[:PRESET]` names no file; any other estimator is `NAME:WEIGHTS`."""
    name, sep, rest = value.partition(":")
    return None if name == "dis" else (name + sep, rest, "")


def _control(value: str) -> tuple[str, str, str] | None:
    """`canny[:LOW,HIGH]` names no file; `hed:WEIGHTS`, `depth:WEIGHTS`, `video:PATH` do."""
    kind, sep, rest = value.partition(":")
    return None if kind == "canny" else (kind + sep, rest, "")


@dataclass(frozen=True)
class SidecarRule:
    """What a sidecar may put in one key: any value the run parser accepts, one of `choices`, or a value
    whose path (`split`) must lie inside the preset's model folders."""

    choices: frozenset[str] | None = None
    split: PathSplit | None = None


_VALUE = SidecarRule()
_MODEL = SidecarRule(split=_whole)
# Encoding quality is the clip's business (`codec`, `crf`, `pix-fmt`, and a container the daemon knows the
# file extension of); raw FFmpeg options (`encoder-option`) can name files, so they stay in the preset.
SIDECAR_KEYS: dict[str, SidecarRule] = {
    **dict.fromkeys(
        (
            "codec crf pix_fmt no_audio strict "
            "keyframe_interval keyframes no_scene_cuts renderer keyframes_first_index "
            "classic_style classic_sigma_s classic_sigma_r size fit propagate_at "
            "threads synth_backend patch_size search_vote_iters patchmatch_iters pyramid_levels poisson "
            "no_poisson direct_image "
            "blend_weights prompt negative_prompt added_prompt strength steps cfg_scale seed vary_noise "
            "cross_frame shape_fusion pixel_fusion adain mask_strength inner_strength fidelity_threshold "
            "color_correct freeu dtype first_pass_stop no_smooth_boundary backend"
        ).split(),
        _VALUE,
    ),
    "format": SidecarRule(choices=frozenset(MUXER_SUFFIX)),
    "model": _MODEL,
    "model_config": _MODEL,
    "vae": _MODEL,
    "keyframes_dir": _MODEL,
    "engines": _MODEL,
    "lora": SidecarRule(split=_path_scale),
    "controlnet": SidecarRule(split=_path_scale),
    "flow": SidecarRule(split=_flow),
    "control": SidecarRule(split=_control),
}
# Why some flags are the preset's alone (the message a sidecar setting them gets).
PRESET_ONLY_REASONS = {
    "allow_pickle": "it would let a dropped file run code when it is loaded",
    "input_format": "it would choose how the dropped file is read (a playlist could pull in other files)",
    "encoder_option": "FFmpeg encoder options can name files to write",
    "device": "the machine's devices are the daemon owner's to assign",
    "progress": "the daemon reports progress itself",
    "quiet": "the daemon reports progress itself",
    MODEL_DIRS_KEY: "it decides which folders sidecars may load models from",
}
# Settings whose value is (or contains) a file or folder path: relative ones in the preset are relative to it.
PATH_SPLITS: dict[str, PathSplit] = {k: rule.split for k, rule in SIDECAR_KEYS.items() if rule.split}
# Keys that choose a checkpoint to unpickle when the preset allows pickles: a sidecar may not set them then.
CHECKPOINT_KEYS = frozenset(
    {"model", "model_config", "vae", "lora", "controlnet", "flow", "control", "engines"}
)


@dataclass(frozen=True)
class ParsedTable:
    values: dict[str, Any]
    folder: Path  # relative paths in values are relative to the file's folder


def parse_table(
    raw: bytes, label: str, *, sidecar: bool, is_flag: Callable[[str], bool] = lambda key: True
) -> dict[str, Any]:
    """Check one TOML text (`label`: "the preset PATH" or "the sidecar PATH"). Raises UsageError."""
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{label} is not valid TOML ({exc}); fix it and save it again") from None
    values: dict[str, Any] = {}
    for name, value in data.items():
        key = _key(name)
        if isinstance(value, dict):
            raise UsageError(
                f"{label} has a table [{name}]; expected only `flag = value` lines "
                "with the long flags of `rerender run`"
            )
        if key in DAEMON_KEYS:
            raise UsageError(
                f"{label} sets {name!r}; remove it: the watch daemon chooses every clip's input "
                "and its output in OUTBOX"
            )
        if sidecar and key not in SIDECAR_KEYS:
            why = PRESET_ONLY_REASONS.get(key)
            if why is None:
                allowed = ", ".join(sorted(k.replace("_", "-") for k in SIDECAR_KEYS))
                what = "a sidecar may not set" if is_flag(key) else "is not a flag of `rerender run`"
                raise UsageError(
                    f"{label} sets {name!r}, which {what}; a sidecar may set: {allowed} "
                    "(anything else goes in the folder's --preset)"
                )
            raise UsageError(
                f"{label} sets {name!r}, which only the folder's --preset may set ({why}); remove it"
            )
        values[key] = value
    return values


def read_table(path: Path, what: str, *, sidecar: bool) -> ParsedTable:
    """Read and check one TOML file. Raises UsageError with a one-line message naming the file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the {what} {path}: {exc.strerror or exc}; check the path") from None
    return ParsedTable(parse_table(raw, f"the {what} {path}", sidecar=sidecar), path.parent)


class FlagTable:
    """The long flags of `rerender run` (its typed schema, `RunFlag`), to turn `key = value` pairs into argv."""

    def __init__(self, flags: Iterable[RunFlag]) -> None:
        self._by_key: dict[str, tuple[str, RunFlag]] = {}
        for flag in flags:
            for option in flag.spellings:
                if option.startswith("--"):
                    self._by_key[_key(option)] = (option, flag)

    def has(self, key: str) -> bool:
        return key in self._by_key

    def names(self) -> list[str]:
        return sorted(k.replace("_", "-") for k in self._by_key)

    def argv(self, values: dict[str, Any], where: Callable[[str], str]) -> list[str]:
        out: list[str] = []
        for key, value in values.items():
            if key not in self._by_key:
                raise UsageError(
                    f"{where(key)} sets {key.replace('_', '-')!r}, which is not a flag of `rerender run`; "
                    f"expected one of: {', '.join(self.names())}"
                )
            option, flag = self._by_key[key]
            out += self._one(option, flag, value, where(key))
        return out

    @staticmethod
    def _one(option: str, flag: RunFlag, value: Any, where: str) -> list[str]:
        if not flag.takes_value:  # an on/off switch, or a --X/--no-X pair
            if not isinstance(value, bool):
                raise UsageError(f"{where} sets {option[2:]!r} to {value!r}; expected true or false")
            if flag.negatable:
                positive = flag.long_name
                negative = "--no-" + positive[2:]
                if option == negative:  # `no-poisson = true` is `--no-poisson`, `= false` is `--poisson`
                    positive, negative = negative, positive
                return [positive] if value else [negative]
            return [option] if value else []
        if isinstance(value, bool):
            raise UsageError(f"{where} sets {option[2:]!r} to {str(value).lower()}; expected a value")
        if isinstance(value, list):
            items = [_scalar(v, option, where) for v in value]
            if flag.repeatable:
                return [f"{option}={item}" for item in items]
            if flag.nargs in ("+", "*") or isinstance(flag.nargs, int):
                return [option, *items]
            raise UsageError(f"{where} gives a list for {option[2:]!r}; expected one value")
        return [f"{option}={_scalar(value, option, where)}"]


def _scalar(value: Any, option: str, where: str) -> str:
    if isinstance(value, bool) or isinstance(value, dict | list):
        raise UsageError(f"{where} sets {option[2:]!r} to {value!r}; expected a number or a string")
    return str(value)


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _absolutize(values: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Relative paths in path-valued preset settings that exist next to the preset are made absolute, so a
    preset can say `model = "models/sd15.safetensors"` whatever the daemon's working folder."""
    out = dict(values)
    for key in PATH_SPLITS.keys() & values.keys():
        absolute = [_absolute(PATH_SPLITS[key], item, folder) for item in _items(values[key])]
        out[key] = absolute if isinstance(values[key], list) else absolute[0]
    return out


def _absolute(split: PathSplit, value: Any, folder: Path) -> Any:
    parts = split(value) if isinstance(value, str) else None
    if parts is None or not parts[1] or os.path.isabs(parts[1]) or not (folder / parts[1]).exists():
        return value
    return parts[0] + str(folder / parts[1]) + parts[2]


def _names_a_file(key: str, value: Any) -> bool:
    split = PATH_SPLITS[key]
    return any(not isinstance(item, str) or split(item) is not None for item in _items(value))


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def model_dirs_of(value: Any, folder: Path, label: str, inbox: Path | None) -> tuple[str, ...]:
    """The preset's `model-dirs`: existing folders, resolved (links followed), none holding INBOX."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise UsageError(f'{label} sets model-dirs to {value!r}; expected a list of folders, e.g. ["models"]')
    dirs = []
    for item in value:
        real = os.path.realpath(folder / item)
        if not os.path.isdir(real):
            raise UsageError(f"{label}: the model-dirs entry {item!r} is not a folder; give existing folders")
        if inbox is not None and _inside(os.path.realpath(inbox), real):
            raise UsageError(
                f"{label}: the model-dirs entry {item!r} holds INBOX, so any dropped file could be loaded as "
                "a model; list only the folders that hold your models"
            )
        dirs.append(real)
    return tuple(dirs)


def _in_model_dirs(path: str, dirs: tuple[str, ...]) -> str | None:
    """The real path of `path` if it exists inside one of `dirs` (relative paths are looked up in each, in
    order), else None."""
    candidates = [path] if os.path.isabs(path) else [os.path.join(d, path) for d in dirs]
    for candidate in candidates:
        real = os.path.realpath(candidate)
        if os.path.exists(real) and any(_inside(real, d) for d in dirs):
            return real
    return None


@dataclass(frozen=True)
class ClipSettings:
    """The merged settings of one clip. `error` is set instead of raising, so a bad sidecar fails its clip
    (recorded in the ledger and `failed/`) without stopping the daemon."""

    values: dict[str, Any]
    sources: dict[str, str]  # key -> the file that set it, for messages
    digest: str
    error: str | None = None


def digest_of(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


class SettingsSource:
    """The folder's preset plus per-clip sidecars, turned into `RunOptions` with `parse_run_options`."""

    def __init__(
        self,
        preset: Path | None,
        build_parser: Callable[[], RunParser],
        parse: Callable[[list[str]], Any],
        inbox: Path | None = None,
    ) -> None:
        self._parse = parse
        self._flags = FlagTable(build_parser().schema)
        self._preset_path = preset
        self._inbox = inbox
        self._preset: dict[str, Any] = {}
        self.model_dirs: tuple[str, ...] = ()
        if preset is not None:
            table = read_table(preset, "preset", sidecar=False)
            values = dict(table.values)
            if MODEL_DIRS_KEY in values:
                label = f"the preset {preset}"
                self.model_dirs = model_dirs_of(values.pop(MODEL_DIRS_KEY), table.folder, label, inbox)
            self._preset = _absolutize(values, table.folder)
            # Validate now with the CLI's own parser, so a bad preset stops the daemon at start.
            argv = self._flags.argv(self._preset, lambda key: f"the preset {preset}")
            try:
                parse(_PROBE_IO + argv)
            except RerenderError as exc:
                raise UsageError(f"the preset {preset}: {exc}") from None

    def _read_sidecar(self, sidecar: Path) -> bytes | None:
        if self._inbox is not None:
            try:
                rel = sidecar.relative_to(self._inbox).as_posix()
            except ValueError:
                rel = None
            if rel is not None:
                return read_sidecar(self._inbox, rel)
        return read_sidecar(sidecar.parent, sidecar.name)

    def for_clip(self, source: Path) -> ClipSettings:
        """The clip's settings, checked as a job would parse them; `error` says why a sidecar is refused."""
        sidecar = source.with_name(source.name + ".toml")
        values = dict(self._preset)
        sources = dict.fromkeys(values, f"the preset {self._preset_path}")
        label = f"the sidecar {sidecar}"
        raw: bytes | None = None
        try:
            raw = self._read_sidecar(sidecar)
            if raw is None:
                return self._checked(values, sources, None)
            table = parse_table(raw, label, sidecar=True, is_flag=self._flags.has)
            chosen = sorted(key for key in CHECKPOINT_KEYS & set(table) if _names_a_file(key, table[key]))
            if values.get("allow_pickle") and chosen:
                raise UsageError(
                    f"{label} sets {chosen[0].replace('_', '-')!r} while the preset allows pickle checkpoints; "
                    "a sidecar may not choose which checkpoint is loaded then (put it in a preset instead)"
                )
            for key, value in table.items():
                values[key] = self._sidecar_value(key, value, label)
                sources[key] = label
        except RerenderError as exc:
            bad = {"sidecar-error": hashlib.sha256(raw or b"").hexdigest(), **values}
            return ClipSettings(values, sources, digest_of(bad), error=str(exc))
        except Exception as exc:  # noqa: BLE001 - e.g. RecursionError from deeply nested TOML arrays
            bad = {"sidecar-error": hashlib.sha256(raw or b"").hexdigest(), **values}
            reason = f"{label} could not be read ({type(exc).__name__}); expected `flag = value` lines"
            return ClipSettings(values, sources, digest_of(bad), error=reason)
        return self._checked(values, sources, label)

    def _sidecar_value(self, key: str, value: Any, label: str) -> Any:
        rule = SIDECAR_KEYS[key]
        flag = key.replace("_", "-")
        if rule.choices is not None and (not isinstance(value, str) or value not in rule.choices):
            raise UsageError(
                f"{label} sets {flag!r} to {value!r}; expected one of: {', '.join(sorted(rule.choices))}"
            )
        if rule.split is None:
            return value
        resolved = [self._model_path(rule.split, item, flag, label) for item in _items(value)]
        return resolved if isinstance(value, list) else resolved[0]

    def _model_path(self, split: PathSplit, item: Any, flag: str, label: str) -> Any:
        if not isinstance(item, str):
            raise UsageError(f"{label} sets {flag!r} to {item!r}; expected a path in quotes")
        parts = split(item)
        if parts is None:
            return item  # a value that names no file
        head, path, tail = parts
        if not self.model_dirs:
            raise UsageError(
                f"{label} sets {flag!r} to {item!r}, but the preset lists no model-dirs; a sidecar may name "
                'models only inside folders the preset lists (add model-dirs = ["FOLDER"] to the preset)'
            )
        real = _in_model_dirs(path, self.model_dirs) if path else None
        if real is None:
            raise UsageError(
                f"{label} sets {flag!r} to {item!r}, which is not a file or folder inside the preset's "
                f"model-dirs ({', '.join(self.model_dirs)}); name one that is there"
            )
        return head + real + tail

    def _checked(self, values: dict[str, Any], sources: dict[str, str], label: str | None) -> ClipSettings:
        """The settings, refused (with the run parser's own sentence) if `rerender run` would refuse them."""
        digest = digest_of(values)
        try:
            argv = self._flags.argv(values, lambda key: sources[key])
        except RerenderError as exc:  # the message names the file that set the key
            return ClipSettings(values, sources, digest, error=str(exc))
        try:
            if label is not None:  # the preset alone was checked at start
                self._parse(_PROBE_IO + argv)
        except RerenderError as exc:
            return ClipSettings(values, sources, digest, error=f"{label}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a parser bug must fail this clip, never the daemon
            reason = f"{label or 'the settings'}: {type(exc).__name__}: {exc}"
            return ClipSettings(values, sources, digest, error=" ".join(reason.split()))
        return ClipSettings(values, sources, digest)

    def argv(self, settings: ClipSettings, argv_io: list[str]) -> list[str]:
        """The `rerender run` argv of one job (`argv_io`: the daemon's input/output arguments)."""
        if settings.error is not None:
            raise UsageError(settings.error)
        return argv_io + self._flags.argv(settings.values, lambda key: settings.sources[key])

    def options(self, settings: ClipSettings, argv_io: list[str]) -> Any:
        """`RunOptions` for one job: settings flags plus the daemon's input/output arguments. Raises the
        CLI's UsageError/InputError."""
        if settings.error is not None:
            raise UsageError(settings.error)
        argv = self._flags.argv(settings.values, lambda key: settings.sources[key])
        return self._parse(argv_io + argv)
