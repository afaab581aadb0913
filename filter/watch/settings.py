"""Settings of a watch folder: a preset TOML for the folder and an optional sidecar `<clip>.toml` per clip
("Per-folder settings": AME presets, shannah's `handbrake.properties`).

Keys are the long flags of `rerender run` without the dashes (`cfg-scale = 7.5` or `cfg_scale = 7.5`;
`vary-noise = true`; repeatable flags take a list). They are turned back into an argv list and parsed by
`rerender run`'s own parser, so validation and messages are exactly the CLI's. The daemon decides input and
output, so no file may name them. What a sidecar may set is derived from each flag's schema
(`settings_rules.py`): the preset may set every flag plus `model-dirs`; a sidecar only the flags whose
declaration allows it, every path it names resolved (after following links) inside `model-dirs`, and the
result is parsed by the run parser before any job starts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import RerenderError, UsageError
from ..run_flags import RunFlag
from .inbox_files import read_sidecar
from .settings_rules import (
    MODEL_DIRS_KEY,
    SidecarRules,
    absolutize,
    items,
    key_of,
    model_dirs_of,
    model_path,
    names_a_file,
    parse_table,
    read_table,
)

if TYPE_CHECKING:
    from ..run_options import RunParser

# What the daemon passes for -i/-o when it checks settings (the parser does not open them).
_PROBE_IO = ["-i", "probe-input.mov", "-o", "probe-output.mov"]


class FlagTable:
    """The long flags of `rerender run` (its typed schema, `RunFlag`), to turn `key = value` pairs into argv."""

    def __init__(self, flags: Iterable[RunFlag]) -> None:
        self._by_key: dict[str, tuple[str, RunFlag]] = {}
        for flag in flags:
            for option in flag.spellings:
                if option.startswith("--"):
                    self._by_key[key_of(option)] = (option, flag)

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
        schema = build_parser().schema
        self._flags = FlagTable(schema)
        self.rules = SidecarRules.of(schema)
        self._preset_path = preset
        self._inbox = inbox
        self._preset: dict[str, Any] = {}
        self.model_dirs: tuple[str, ...] = ()
        if preset is not None:
            table = read_table(preset, "preset")
            values = dict(table.values)
            if MODEL_DIRS_KEY in values:
                label = f"the preset {preset}"
                self.model_dirs = model_dirs_of(values.pop(MODEL_DIRS_KEY), table.folder, label, inbox)
            self._preset = absolutize(values, table.folder, self.rules.path_splits)
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
            table = parse_table(raw, label, sidecar=self.rules)
            splits = self.rules.path_splits
            chosen = sorted(
                k for k in self.rules.checkpoints & set(table) if names_a_file(splits[k], table[k])
            )
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
        rule = self.rules.allowed[key]
        flag = key.replace("_", "-")
        if rule.choices is not None and (not isinstance(value, str) or value not in rule.choices):
            raise UsageError(
                f"{label} sets {flag!r} to {value!r}; expected one of: {', '.join(sorted(rule.choices))}"
            )
        if rule.split is None:
            return value
        resolved = [model_path(rule.split, item, flag, label, self.model_dirs) for item in items(value)]
        return resolved if isinstance(value, list) else resolved[0]

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
