"""The engine cache of `rerender export`: load an engine by its key, else refit one, else build it.

The export folder's format (engine file names, keys, sidecars, atomic writes) is engines/export_format.py's;
this module decides what to do with it when building. A StreamDiffusion-style cache keyed by model name
only would reuse a stale engine after a resolution or LoRA change; the key here holds everything that
changes an engine (`EngineKey`).

Refittable engines (LoRA changes): an engine's *structure* does not depend on the weights, so such an
engine can be found by `EngineKey.structure_digest` and refitted instead of rebuilt; the refitted engine is
then stored under its full key. An engine whose bytes do not match its sidecar is deleted and rebuilt,
never loaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# The hashing names are also imported from here by tests/test_backends_tensorrt.py.
from ..engines.export_format import (
    EngineKey,
    _sha256_of_version,  # noqa: F401
    engine_intact,
    file_sha256,  # noqa: F401
    file_sha256_cached,  # noqa: F401
    sidecar_path,
    write_engine,
)


@dataclass(frozen=True)
class CachedEngine:
    path: Path
    key: EngineKey
    built: bool  # False when loaded from the cache
    refitted_from: Path | None = None


class EngineCache:
    """Engines under one directory (an export folder's engines/), named by `EngineKey.file_name`."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    def path_for(self, key: EngineKey) -> Path:
        return self.directory / key.file_name()

    @staticmethod
    def valid(path: Path) -> bool:
        """True when the file exists and matches its sidecar's size and sha256."""
        return engine_intact(path)

    def lookup(self, key: EngineKey) -> Path | None:
        """The engine for `key` if present and intact; an invalid file is removed (it will be rebuilt)."""
        path = self.path_for(key)
        if self.valid(path):
            return path
        self.discard(path)
        return None

    def refit_donor(self, key: EngineKey) -> Path | None:
        """An intact refittable engine with the same structure but other weights or LoRA set."""
        if not key.refittable:
            return None
        for path in sorted(self.directory.glob(key.structure_pattern())):
            if path != self.path_for(key) and self.valid(path):
                return path
        return None

    def discard(self, path: Path) -> None:
        for p in (path, sidecar_path(path)):
            p.unlink(missing_ok=True)

    def store(self, key: EngineKey, data: bytes) -> Path:
        return write_engine(self.path_for(key), key, data)

    def get_or_build(
        self,
        key: EngineKey,
        build: Callable[[], bytes],
        refit: Callable[[Path], bytes] | None = None,
    ) -> CachedEngine:
        """Load `key` from the cache, else refit a donor engine (when `refit` is given), else build."""
        path = self.lookup(key)
        if path is not None:
            return CachedEngine(path, key, built=False)
        donor = self.refit_donor(key) if refit is not None else None
        if donor is not None and refit is not None:
            return CachedEngine(self.store(key, refit(donor)), key, built=True, refitted_from=donor)
        return CachedEngine(self.store(key, build()), key, built=True)
