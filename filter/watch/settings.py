"""Settings of a watch folder: a preset TOML for the folder and an optional sidecar `<clip>.toml` per clip
("Per-folder settings": AME presets, shannah's `handbrake.properties`).

Keys are the long flags of `rerender run` without the dashes (`cfg-scale = 7.5` or `cfg_scale = 7.5`;
`vary-noise = true`; repeatable flags take a list). They are mapped onto the job's options as `rerender
run` maps its flags (`run_args.options_from_values`: each flag's own type, choices and checks; no argv),
so validation and messages are exactly the CLI's. The daemon decides input and
output, so no file may name them. What a sidecar may set is derived from each flag's schema
(`settings_rules.py`): the preset may set every flag plus `model-dirs`; a sidecar only the flags whose
declaration allows it, every path it names resolved (after following links) inside `model-dirs`, and the
result is parsed by the run parser before any job starts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import RerenderError, UsageError
from ..run_flags import FlagShapeError
from .inbox_files import read_sidecar
from .settings_rules import (
    MODEL_DIRS_KEY,
    SidecarRules,
    absolutize,
    items,
    model_dirs_of,
    model_path,
    names_a_file,
    parse_table,
    read_table,
)

if TYPE_CHECKING:
    from ..run_options import RunParser

# What the daemon passes for the input and output when it checks settings (nothing opens them).
_PROBE_IO = {"input": "probe-input.mov", "output": "probe-output.mov"}
# Maps values keyed by flag onto `RunOptions` (`run_args.options_from_values`), naming `where(key)` for a
# value of the wrong shape.
ValuesToOptions = Callable[[dict[str, Any], Callable[[str], str]], Any]


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
    """The folder's preset plus per-clip sidecars, mapped onto `RunOptions` by `to_options`
    (`run_args.options_from_values`: the flags' own types, choices and checks, no argv)."""

    def __init__(
        self,
        preset: Path | None,
        build_parser: Callable[[], RunParser],
        to_options: ValuesToOptions,
        inbox: Path | None = None,
    ) -> None:
        self._to_options = to_options
        self.rules = SidecarRules.of(build_parser().schema)
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
            # Validate now as `rerender run` would, so a bad preset stops the daemon at start.
            try:
                to_options({**self._preset, **_PROBE_IO}, lambda key: f"the preset {preset}")
            except FlagShapeError:
                raise  # the message names the preset
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
            self._to_options({**values, **_PROBE_IO}, lambda key: sources.get(key, "the daemon"))
        except FlagShapeError as exc:  # the message names the file that set the key
            return ClipSettings(values, sources, digest, error=str(exc))
        except RerenderError as exc:
            if label is None:  # the preset alone was checked at start
                return ClipSettings(values, sources, digest)
            return ClipSettings(values, sources, digest, error=f"{label}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a mapping bug must fail this clip, never the daemon
            reason = f"{label or 'the settings'}: {type(exc).__name__}: {exc}"
            return ClipSettings(values, sources, digest, error=" ".join(reason.split()))
        return ClipSettings(values, sources, digest)

    def job_values(self, settings: ClipSettings, input_path: str, output: str) -> dict[str, Any]:
        """The values of one job (the settings plus the daemon's input and output), checked as the worker
        will map them; raises the CLI's UsageError/InputError."""
        self.options(settings, input_path, output)
        return {**settings.values, "input": input_path, "output": output}

    def options(self, settings: ClipSettings, input_path: str, output: str) -> Any:
        """`RunOptions` for one job: the settings plus the daemon's input and output. Raises the CLI's
        UsageError/InputError."""
        if settings.error is not None:
            raise UsageError(settings.error)
        values = {**settings.values, "input": input_path, "output": output}
        return self._to_options(values, lambda key: settings.sources.get(key, "the daemon"))
