"""The engine cache: a key that holds everything that changes an engine, and validated atomic files.

Prior art (ecosystem.md §1.1, §2.5, §3.1): StreamDiffusion keys engines by model name only and reuses any
existing file, so a resolution or LoRA change silently loads a stale engine; NVIDIA's demo puts only the
TensorRT version in the name; vs-mlrt's `get_engine_path` holds shapes, precision, TRT version, GPU and
an ONNX checksum. Our key holds all of: profile shapes, precision, TensorRT version, GPU name and compute
capability, the ONNX checksum (graph structure and weights separately) and the LoRA set.

Refittable engines (LoRA changes): an engine's *structure* does not depend on the weights, so such an
engine can be found by `EngineKey.structure_digest` (everything but the weights checksum and the LoRA set)
and refitted instead of rebuilt; the refitted engine is then stored under its full key.

Files are written to a temporary name in the same directory and renamed into place, so a crash mid-write
never leaves a file that looks like an engine; each engine has a sidecar `.json` with its size and
sha256, and an engine whose bytes do not match it (truncated, corrupt, or missing sidecar) is deleted and
rebuilt, never loaded.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

CACHE_FORMAT = 1


@dataclass(frozen=True)
class EngineKey:
    network: str
    profile: tuple[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...]
    precision: str
    trt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    onnx_structure_sha256: str
    onnx_weights_sha256: str
    loras: tuple[tuple[str, float], ...] = ()
    refittable: bool = False

    def _digest(self, fields: dict) -> str:
        text = json.dumps({"format": CACHE_FORMAT, **fields}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def digest(self) -> str:
        return self._digest(asdict(self))

    @property
    def structure_digest(self) -> str:
        """The key of an engine that could be refitted to this one: all but weights and LoRA set."""
        fields = asdict(self)
        del fields["onnx_weights_sha256"], fields["loras"]
        return self._digest(fields)

    def describe(self) -> dict:
        return asdict(self)


def profile_tuple(profile: dict[str, tuple[tuple[int, ...], ...]]) -> tuple:
    """A hashable, ordered form of `NetworkSpec.profile(...)` for the key."""
    return tuple((name, *shapes) for name, shapes in sorted(profile.items()))


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=256)
def _sha256_of_version(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    del size, mtime_ns, ctime_ns, inode  # the cache key: one version of the file
    return file_sha256(path)


def file_sha256_cached(path: str | os.PathLike) -> str:
    """sha256 of a file, hashed once per process per version of it (size, mtime, ctime and inode): loading
    the same engines again (a second keyframe session, the preview's reloads) does not re-read gigabytes.
    Any write changes the ctime, which no caller can set back, so a modified file is always hashed again."""
    st = os.stat(path)
    return _sha256_of_version(
        str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino
    )


@dataclass(frozen=True)
class CachedEngine:
    path: Path
    key: EngineKey
    built: bool  # False when loaded from the cache
    refitted_from: Path | None = None


class EngineCache:
    """Engines under one directory, named `{network}.{structure digest}.{full digest}.plan`."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    def path_for(self, key: EngineKey) -> Path:
        return self.directory / f"{key.network}.{key.structure_digest[:16]}.{key.digest[:16]}.plan"

    @staticmethod
    def _meta_path(path: Path) -> Path:
        return path.with_suffix(".json")

    def valid(self, path: Path) -> bool:
        """True when the file exists and matches its sidecar's size and sha256."""
        meta_path = self._meta_path(path)
        if not path.is_file() or not meta_path.is_file():
            return False
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return False
        if meta.get("size") != path.stat().st_size:
            return False
        return meta.get("sha256") == file_sha256_cached(path)

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
        for path in sorted(self.directory.glob(f"{key.network}.{key.structure_digest[:16]}.*.plan")):
            if path != self.path_for(key) and self.valid(path):
                return path
        return None

    def discard(self, path: Path) -> None:
        for p in (path, self._meta_path(path)):
            p.unlink(missing_ok=True)

    def store(self, key: EngineKey, data: bytes) -> Path:
        path = self.path_for(key)
        meta = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "key": key.describe()}
        atomic_write(path, data)
        # The sidecar goes last: an engine without it is invalid, so a crash in between means a rebuild.
        atomic_write(self._meta_path(path), json.dumps(meta, indent=1).encode())
        return path

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


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
