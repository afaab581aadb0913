"""The rules of a watch folder's settings files: reading a TOML table, what a sidecar may set (derived
from each flag's `run_flags.Use`), and the preset's `model-dirs`, inside which every path a sidecar names
must resolve.

Keys are the long flags of `rerender run` without the dashes (`cfg-scale = 7.5` or `cfg_scale = 7.5`). The
preset is the daemon owner's file: it may set every flag, plus `model-dirs`. A sidecar is written by
whoever can drop files in INBOX, so it may set only the flags whose declaration allows it
(`Use.sidecar`: an allow-list in the schema, so a flag added to `rerender run` later is refused in sidecars
until its declaration says otherwise), and what it may put there follows the flag's kind: never the input
or encoder options; an output location only as a container the daemon knows the file extension of; a
file to read only inside `model-dirs`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..run_flags import RunFlag
from ..value_paths import SPLITS, PathSplit
from .output import MUXER_SUFFIX

# The daemon chooses these for every job.
DAEMON_KEYS = frozenset({"input", "output", "out", "o", "i"})
# The preset's own key (not a flag of `rerender run`): folders a sidecar may name models in.
MODEL_DIRS_KEY = "model_dirs"
# Kinds of value no sidecar may set, whatever a flag's `Use` says: the daemon decides the input, and
# FFmpeg encoder options can name files to write.
NEVER_IN_SIDECARS = frozenset({"input", "encoder_option"})


def key_of(name: str) -> str:
    return name.strip().lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class SidecarRule:
    """What a sidecar may put in one key: any value the run parser accepts, one of `choices`, or a value
    whose path (`split`) must lie inside the preset's model folders."""

    choices: frozenset[str] | None = None
    split: PathSplit | None = None


def sidecar_rule(flag: RunFlag) -> SidecarRule | None:
    """What a sidecar may set `flag` to, from the flag's schema (`Use`); None: nothing."""
    use = flag.use
    if not use.sidecar or use.kind in NEVER_IN_SIDECARS:
        return None
    if use.kind == "output":  # where the output goes is the daemon's; only the container is the clip's
        return SidecarRule(choices=frozenset(MUXER_SUFFIX))
    if use.kind == "read_path":
        return SidecarRule(split=SPLITS[use.paths]) if use.paths is not None else None
    return SidecarRule()


@dataclass(frozen=True)
class SidecarRules:
    """The rules of every key of `rerender run`'s flags, derived from their schema."""

    allowed: dict[str, SidecarRule]  # key -> what a sidecar may set it to
    path_splits: dict[str, PathSplit]  # keys whose value names a file (relative to the preset in one)
    checkpoints: frozenset[str]  # keys that choose weights to load (no sidecar may, when pickles are allowed)
    flags: frozenset[str]  # every key of a flag

    @classmethod
    def of(cls, flags: Iterable[RunFlag]) -> SidecarRules:
        allowed: dict[str, SidecarRule] = {}
        splits: dict[str, PathSplit] = {}
        checkpoints: set[str] = set()
        keys: set[str] = set()
        for flag in flags:
            rule = sidecar_rule(flag)
            for key in flag.keys:
                keys.add(key)
                if rule is not None:
                    allowed[key] = rule
                if flag.use.paths is not None:
                    splits[key] = SPLITS[flag.use.paths]
                if flag.use.checkpoint:
                    checkpoints.add(key)
        return cls(allowed, splits, frozenset(checkpoints), frozenset(keys))


# Why some keys are the preset's alone (the message a sidecar setting them gets).
PRESET_ONLY_REASONS = {
    "allow_pickle": "it would let a dropped file run code when it is loaded",
    "input_format": "it would choose how the dropped file is read (a playlist could pull in other files)",
    "encoder_option": "FFmpeg encoder options can name files to write",
    "device": "the machine's devices are the daemon owner's to assign",
    "progress": "the daemon reports progress itself",
    "quiet": "the daemon reports progress itself",
    MODEL_DIRS_KEY: "it decides which folders sidecars may load models from",
}


@dataclass(frozen=True)
class ParsedTable:
    values: dict[str, Any]
    folder: Path  # relative paths in values are relative to the file's folder


def parse_table(raw: bytes, label: str, *, sidecar: SidecarRules | None) -> dict[str, Any]:
    """Check one TOML text (`label`: "the preset PATH" or "the sidecar PATH"; `sidecar`: the rules when it
    is a sidecar). Raises UsageError."""
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{label} is not valid TOML ({exc}); fix it and save it again") from None
    values: dict[str, Any] = {}
    for name, value in data.items():
        key = key_of(name)
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
        if sidecar is not None and key not in sidecar.allowed:
            why = PRESET_ONLY_REASONS.get(key)
            if why is None:
                allowed = ", ".join(sorted(k.replace("_", "-") for k in sidecar.allowed))
                what = "a sidecar may not set" if key in sidecar.flags else "is not a flag of `rerender run`"
                raise UsageError(
                    f"{label} sets {name!r}, which {what}; a sidecar may set: {allowed} "
                    "(anything else goes in the folder's --preset)"
                )
            raise UsageError(
                f"{label} sets {name!r}, which only the folder's --preset may set ({why}); remove it"
            )
        values[key] = value
    return values


def read_table(path: Path, what: str) -> ParsedTable:
    """Read and check one preset TOML file. Raises UsageError with a one-line message naming the file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the {what} {path}: {exc.strerror or exc}; check the path") from None
    return ParsedTable(parse_table(raw, f"the {what} {path}", sidecar=None), path.parent)


def items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def absolutize(values: dict[str, Any], folder: Path, splits: dict[str, PathSplit]) -> dict[str, Any]:
    """Relative paths in path-valued preset settings that exist next to the preset are made absolute, so a
    preset can say `model = "models/sd15.safetensors"` whatever the daemon's working folder."""
    out = dict(values)
    for key in splits.keys() & values.keys():
        absolute = [_absolute(splits[key], item, folder) for item in items(values[key])]
        out[key] = absolute if isinstance(values[key], list) else absolute[0]
    return out


def _absolute(split: PathSplit, value: Any, folder: Path) -> Any:
    parts = split(value) if isinstance(value, str) else None
    if parts is None or not parts[1] or os.path.isabs(parts[1]) or not (folder / parts[1]).exists():
        return value
    return parts[0] + str(folder / parts[1]) + parts[2]


def names_a_file(split: PathSplit, value: Any) -> bool:
    return any(not isinstance(item, str) or split(item) is not None for item in items(value))


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


def in_model_dirs(path: str, dirs: tuple[str, ...]) -> str | None:
    """The real path of `path` if it exists inside one of `dirs` (relative paths are looked up in each, in
    order), else None."""
    candidates = [path] if os.path.isabs(path) else [os.path.join(d, path) for d in dirs]
    for candidate in candidates:
        real = os.path.realpath(candidate)
        if os.path.exists(real) and any(_inside(real, d) for d in dirs):
            return real
    return None


def model_path(split: PathSplit, item: Any, flag: str, label: str, dirs: tuple[str, ...]) -> Any:
    """A sidecar's value for a file-reading flag, its path resolved inside `dirs`; UsageError otherwise."""
    if not isinstance(item, str):
        raise UsageError(f"{label} sets {flag!r} to {item!r}; expected a path in quotes")
    parts = split(item)
    if parts is None:
        return item  # a value that names no file
    head, path, tail = parts
    if not dirs:
        raise UsageError(
            f"{label} sets {flag!r} to {item!r}, but the preset lists no model-dirs; a sidecar may name "
            'models only inside folders the preset lists (add model-dirs = ["FOLDER"] to the preset)'
        )
    real = in_model_dirs(path, dirs) if path else None
    if real is None:
        raise UsageError(
            f"{label} sets {flag!r} to {item!r}, which is not a file or folder inside the preset's "
            f"model-dirs ({', '.join(dirs)}); name one that is there"
        )
    return head + real + tail
