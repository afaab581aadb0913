"""Settings of a watch folder: a preset TOML for the folder and an optional sidecar `<clip>.toml` per clip
(ecosystem.md §5.2 "Per-folder settings": AME presets, shannah's `handbrake.properties`).

Keys are the long flags of `rerender run` without the dashes (`cfg-scale = 7.5` or `cfg_scale = 7.5`;
`vary-noise = true`; repeatable flags take a list). They are turned back into an argv list and parsed by
`rerender run`'s own parser, so validation and messages are exactly the CLI's. The daemon decides input and
output, so no file may name them; a sidecar (written by whoever can drop files in INBOX) may moreover not
switch on pickle loading nor name any file the job would write, so it can never write outside OUTBOX.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RerenderError, UsageError

# The daemon chooses these for every job.
DAEMON_KEYS = frozenset({"input", "output", "out", "o", "i"})
# A sidecar may not enable code execution at load time (ecosystem.md §5.2; issue 7 item 3).
SIDECAR_FORBIDDEN = frozenset({"allow_pickle"})
# Words in a flag's name that mean "the job writes a file there": refused in sidecars, so that a flag added
# to `rerender run` later cannot silently open a way out of OUTBOX.
WRITE_WORDS = ("output", "save", "dump", "write", "log", "report", "stats", "trace", "export")
# FFmpeg encoder options can name files (libx264 `stats=`, `passlogfile`, `x264-params`): preset only.
SIDECAR_FORBIDDEN_EXTRA = frozenset({"encoder_option"})
# Flags that choose a checkpoint to load. When the preset allows pickles, a sidecar may not set these, or it
# could pick which pickle gets unpickled.
CHECKPOINT_KEYS = frozenset({"model", "model_config", "lora", "controlnet", "flow"})
# Settings whose value is (or contains) a file or folder path.
PATH_KEYS = CHECKPOINT_KEYS | {"keyframes_dir"}
# What the daemon passes for -i/-o when it checks the preset at start (the parser does not open them).
_PROBE_IO = ["-i", "probe-input.mov", "-o", "probe-output.mov"]


def _key(name: str) -> str:
    return name.strip().lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class ParsedTable:
    values: dict[str, Any]
    folder: Path  # relative paths in values are relative to the file's folder


def read_table(path: Path, what: str, *, sidecar: bool) -> ParsedTable:
    """Read and check one TOML file. Raises UsageError with a one-line message naming the file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the {what} {path}: {exc.strerror or exc}; check the path") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"the {what} {path} is not valid TOML ({exc}); fix it and save it again") from None
    values: dict[str, Any] = {}
    for name, value in data.items():
        key = _key(name)
        if isinstance(value, dict):
            raise UsageError(
                f"the {what} {path} has a table [{name}]; expected only `flag = value` lines "
                "with the long flags of `rerender run`"
            )
        if key in DAEMON_KEYS:
            raise UsageError(
                f"the {what} {path} sets {name!r}; remove it: the watch daemon chooses every clip's input "
                "and its output in OUTBOX"
            )
        forbidden = key in SIDECAR_FORBIDDEN or key in SIDECAR_FORBIDDEN_EXTRA
        if sidecar and (forbidden or any(word in key for word in WRITE_WORDS)):
            raise UsageError(
                f"the {what} {path} sets {name!r}, which a sidecar may not set (it could load code or write "
                "outside OUTBOX); put it in the folder's --preset instead"
            )
        values[key] = value
    return ParsedTable(values, path.parent)


class FlagTable:
    """The long flags of `rerender run`'s parser, to turn `key = value` pairs into argv."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self._by_key: dict[str, tuple[str, argparse.Action]] = {}
        self._positional: set[str] = set()
        for action in parser._actions:  # argparse has no public accessor for its actions
            if not action.option_strings:
                self._positional.add(_key(action.dest))
                continue
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            longs = [s for s in action.option_strings if s.startswith("--")]
            for option in longs:
                self._by_key[_key(option)] = (option, action)

    def names(self) -> list[str]:
        return sorted(k.replace("_", "-") for k in self._by_key)

    def argv(self, values: dict[str, Any], where: Callable[[str], str]) -> list[str]:
        out: list[str] = []
        for key, value in values.items():
            if key in self._positional:
                raise UsageError(f"{where(key)} sets {key!r}, which is chosen by the watch daemon; remove it")
            if key not in self._by_key:
                raise UsageError(
                    f"{where(key)} sets {key.replace('_', '-')!r}, which is not a flag of `rerender run`; "
                    f"expected one of: {', '.join(self.names())}"
                )
            option, action = self._by_key[key]
            out += self._one(option, action, value, where(key))
        return out

    @staticmethod
    def _one(option: str, action: argparse.Action, value: Any, where: str) -> list[str]:
        if action.nargs == 0:  # store_true / store_false / store_const / count / BooleanOptionalAction
            if not isinstance(value, bool):
                raise UsageError(f"{where} sets {option[2:]!r} to {value!r}; expected true or false")
            if isinstance(action, argparse.BooleanOptionalAction):
                return [option] if value else ["--no-" + option[2:]]
            return [option] if value else []
        if isinstance(value, bool):
            raise UsageError(f"{where} sets {option[2:]!r} to {str(value).lower()}; expected a value")
        if isinstance(value, list):
            items = [_scalar(v, option, where) for v in value]
            if isinstance(action, argparse._AppendAction):
                return [part for item in items for part in (f"{option}={item}",)]
            if action.nargs in ("+", "*") or isinstance(action.nargs, int):
                return [option, *items]
            raise UsageError(f"{where} gives a list for {option[2:]!r}; expected one value")
        return [f"{option}={_scalar(value, option, where)}"]


def _scalar(value: Any, option: str, where: str) -> str:
    if isinstance(value, bool) or isinstance(value, dict | list):
        raise UsageError(f"{where} sets {option[2:]!r} to {value!r}; expected a number or a string")
    return str(value)


def _checkpoint_path(key: str, value: object) -> str | None:
    """The file a checkpoint flag's value names (None: the value names no file, e.g. `--flow dis`)."""
    if not isinstance(value, str):
        return None
    if key == "flow":
        name, _, weights = value.partition(":")
        return weights if name != "dis" and weights else None
    if key in ("lora", "controlnet"):
        path, sep, scale = value.rpartition(":")
        try:
            float(scale)
        except ValueError:
            return value
        return path if sep else value
    return value


def _absolutize(values: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Relative paths in path-valued settings that exist next to the TOML file are made absolute, so a preset
    can say `model = "models/sd15.safetensors"` whatever the daemon's working folder."""
    out = dict(values)
    for key in PATH_KEYS & set(values):
        value = values[key]
        items = value if isinstance(value, list) else [value]
        absolute = [_absolute(key, item, folder) for item in items]
        out[key] = absolute if isinstance(value, list) else absolute[0]
    return out


def _absolute(key: str, value: Any, folder: Path) -> Any:
    path = _checkpoint_path(key, value)
    if path is None or os.path.isabs(path) or not (folder / path).exists():
        return value
    return value.replace(path, str(folder / path), 1)


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
        build_parser: Callable[[], argparse.ArgumentParser],
        parse: Callable[[list[str]], Any],
    ) -> None:
        self._parse = parse
        self._flags = FlagTable(build_parser())
        self._preset_path = preset
        self._preset: dict[str, Any] = {}
        if preset is not None:
            table = read_table(preset, "preset", sidecar=False)
            self._preset = _absolutize(table.values, table.folder)
            # Validate now with the CLI's own parser, so a bad preset stops the daemon at start.
            argv = self._flags.argv(self._preset, lambda key: f"the preset {preset}")
            try:
                parse(_PROBE_IO + argv)
            except RerenderError as exc:
                raise UsageError(f"the preset {preset}: {exc}") from None

    def for_clip(self, source: Path) -> ClipSettings:
        sidecar = source.with_name(source.name + ".toml")
        values = dict(self._preset)
        sources = dict.fromkeys(values, f"the preset {self._preset_path}")
        if sidecar.exists():
            try:
                table = read_table(sidecar, "sidecar", sidecar=True)
            except UsageError as exc:
                raw = b""
                try:
                    raw = sidecar.read_bytes()
                except OSError:
                    pass
                bad = {"sidecar-error": hashlib.sha256(raw).hexdigest(), **values}
                return ClipSettings(values, sources, digest_of(bad), error=str(exc))
            for key, value in _absolutize(table.values, table.folder).items():
                values[key] = value
                sources[key] = f"the sidecar {sidecar}"
            chosen = sorted(CHECKPOINT_KEYS & set(table.values))
            if values.get("allow_pickle") and chosen:
                error = (
                    f"the sidecar {sidecar} sets {chosen[0]!r} while the preset allows pickle checkpoints; a "
                    "sidecar may not choose which checkpoint is loaded then (put it in a preset instead)"
                )
                return ClipSettings(values, sources, digest_of(values), error=error)
            for key in chosen:
                for item in values[key] if isinstance(values[key], list) else [values[key]]:
                    local = _checkpoint_path(key, item)
                    if local is not None and not Path(local).exists():
                        error = (
                            f"the sidecar {sidecar} sets {key.replace('_', '-')!r} to {item!r}, which is not a "
                            "local file; a sidecar may only pick checkpoints that exist on this machine (a hub "
                            "id would download into a cache outside OUTBOX)"
                        )
                        return ClipSettings(values, sources, digest_of(values), error=error)
        settings = ClipSettings(values, sources, digest_of(values))
        try:
            self._flags.argv(values, lambda key: sources[key])
        except UsageError as exc:
            return ClipSettings(values, sources, settings.digest, error=str(exc))
        return settings

    def options(self, settings: ClipSettings, argv_io: list[str]) -> Any:
        """`RunOptions` for one job: settings flags plus the daemon's input/output arguments. Raises the
        CLI's UsageError/InputError."""
        if settings.error is not None:
            raise UsageError(settings.error)
        argv = self._flags.argv(settings.values, lambda key: settings.sources[key])
        return self._parse(argv_io + argv)
