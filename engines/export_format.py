"""The export folder's format: its layout, manifest, engine keys and engine index, and how files are written.

`rerender export` (export/) writes an export folder and the runtime (engines/onnx_backend.py,
engines/tensorrt_backend.py, engines/select.py) and `rerender info --engines` read it; both sides use only
this module for its names and formats:

    manifest.json          `ExportManifest`: model, LoRA set, ControlNet set, sizes, precision, configs and
                           the graph file of every network; written last, so a half-done export has none
    tokenizer/             the CLIP tokenizer, so the folder serves without the source model
    <network>.onnx         one graph per network (+ .onnx.data), named in the manifest
    engines/               TensorRT engines `{network}.{structure digest}.{full digest}.plan` (`EngineKey`),
                           each with a sidecar `.json` (size, sha256, key); build logs; timing caches
    engines.json           for each engine target "TensorRT version|GPU name|compute capability"
                           (`EngineTarget`): network -> engine file, relative to the folder

The engine key holds everything that changes an engine: profile shapes, precision, TensorRT version, GPU
name and compute capability, the ONNX checksum (graph structure and weights separately) and the LoRA set.
An engine's *structure* does not depend on the weights, so a refittable engine can be found by
`EngineKey.structure_digest` (everything but the weights checksum and the LoRA set) and refitted instead of
rebuilt (export/cache.py).

Every file is written to a temporary name in its directory and renamed into place (`atomic_write`), so a
crash mid-write never leaves a file that looks complete. An engine whose bytes do not match its sidecar
(truncated, corrupt, or no sidecar) is not intact (`engine_intact`) and is never handed to TensorRT.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import BackendUnavailable
from .specs import NetworkSpec, Precision, network_precision

MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
ENGINE_DIR = "engines"
ENGINE_INDEX = "engines.json"
CACHE_FORMAT = 1


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


# --- manifest.json -------------------------------------------------------------------------------------


def source_identity(path: str) -> str:
    """An absolute path for local files (so relative and absolute spellings match), else the hub id."""
    p = Path(path)
    return str(p.resolve()) if p.exists() else path


@dataclass(frozen=True)
class ExportManifest:
    """What `rerender export` wrote into a directory (manifest.json), enough to serve without torch models.

    `model`, `loras` (merged into the graphs, with scales) and `controlnets` (paths; their scales are
    runtime inputs) identify the source; a run whose options differ is refused rather than served stale.
    """

    model: str
    loras: tuple[tuple[str, float], ...]
    controlnets: tuple[str, ...]
    precision: Precision
    min_size: tuple[int, int]
    opt_size: tuple[int, int]
    max_size: tuple[int, int]
    unet_config: dict
    hidden_size: int
    scaling_factor: float
    schedule: dict
    graphs: dict  # network name -> file name

    def save(self, directory: Path) -> Path:
        path = directory / MANIFEST
        atomic_write(path, json.dumps(asdict(self), indent=1).encode())
        return path

    @staticmethod
    def load(directory: Path) -> ExportManifest:
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise BackendUnavailable(
                f"{directory} has no {MANIFEST}; create it with `rerender export --onnx-only --out {directory}`"
            )
        data = json.loads(path.read_text())
        return ExportManifest(
            model=data["model"],
            loras=tuple((p, float(s)) for p, s in data["loras"]),
            controlnets=tuple(data["controlnets"]),
            precision=data["precision"],
            min_size=tuple(data["min_size"]),
            opt_size=tuple(data["opt_size"]),
            max_size=tuple(data["max_size"]),
            unet_config=data["unet_config"],
            hidden_size=int(data["hidden_size"]),
            scaling_factor=float(data["scaling_factor"]),
            schedule=data["schedule"],
            graphs=data["graphs"],
        )

    def specs(self) -> dict[str, NetworkSpec]:
        from .runtime import up_self_attention_layers
        from .specs import controlnet_spec, text_encoder_spec, unet_spec, vae_decoder_spec, vae_encoder_spec

        latent = self.unet_config.get("in_channels", 4)
        specs = {
            "text_encoder": text_encoder_spec(self.hidden_size),
            "vae_encoder": vae_encoder_spec(latent),
            "vae_decoder": vae_decoder_spec(latent),
            "unet": unet_spec(self.unet_config, up_self_attention_layers(self.unet_config), self.hidden_size),
        }
        for i in range(len(self.controlnets)):
            specs[f"controlnet_{i}"] = controlnet_spec(f"controlnet_{i}", self.unet_config, self.hidden_size)
        return {
            name: spec.with_dtype(network_precision(name, self.precision)) for name, spec in specs.items()
        }

    def check_matches(
        self, model: str, loras: tuple[tuple[str, float], ...], controlnets: tuple[str, ...]
    ) -> None:
        """Refuse graphs exported from another model, LoRA set or ControlNet set (never serve them stale)."""
        want = (str(model), tuple((str(p), float(s)) for p, s in loras), tuple(str(c) for c in controlnets))
        have = (self.model, self.loras, self.controlnets)
        labels = ("model", "LoRA set", "ControlNet set")
        for label, w, h in zip(labels, want, have, strict=True):
            if w != h:
                raise BackendUnavailable(
                    f"the exported graphs were made for {label} {h!r}, not {w!r}; re-run `rerender export` "
                    "with the same --model/--lora/--controlnet"
                )


# --- engines/: one file per engine key, with a sidecar ---------------------------------------------------


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

    def file_name(self) -> str:
        return f"{self.network}.{self.structure_digest[:16]}.{self.digest[:16]}.plan"

    def structure_pattern(self) -> str:
        """A glob for the engines of this network and structure, whatever their weights."""
        return f"{self.network}.{self.structure_digest[:16]}.*.plan"


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


def sidecar_path(engine: Path) -> Path:
    return engine.with_suffix(".json")


def engine_intact(engine: Path) -> bool:
    """True when the engine file exists and matches its sidecar's size and sha256 (a truncated or damaged
    engine is never handed to TensorRT)."""
    sidecar = sidecar_path(engine)
    if not engine.is_file() or not sidecar.is_file():
        return False
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("size") != engine.stat().st_size:
        return False
    return meta.get("sha256") == file_sha256_cached(engine)


def write_engine(path: Path, key: EngineKey, data: bytes) -> Path:
    """The engine, then its sidecar: an engine without a sidecar is not intact, so a crash in between means a
    rebuild, never a damaged engine served."""
    meta = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "key": key.describe()}
    atomic_write(path, data)
    atomic_write(sidecar_path(path), json.dumps(meta, indent=1).encode())
    return path


# --- engines.json: which engines serve which TensorRT version and GPU ----------------------------------


@dataclass(frozen=True)
class EngineTarget:
    """What an engine set was built for: a TensorRT version on a GPU model of one compute capability."""

    trt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]

    @property
    def key(self) -> str:
        major, minor = self.compute_capability
        return f"{self.trt_version}|{self.gpu_name}|{major}.{minor}"

    @property
    def sm(self) -> str:
        return "{}{}".format(*self.compute_capability)

    @staticmethod
    def parse(key: str) -> EngineTarget:
        """The target of an `engines.json` key; ValueError for a key this format never writes."""
        parts = key.split("|")
        if len(parts) != 3:
            raise ValueError(f"{key!r} is not 'TensorRT version|GPU name|compute capability'")
        version, gpu_name, capability = parts
        major, dot, minor = capability.partition(".")
        if not (dot and major.isdigit() and minor.isdigit()):
            raise ValueError(f"{key!r} has no compute capability MAJOR.MINOR")
        return EngineTarget(version, gpu_name, (int(major), int(minor)))


def read_engine_index(directory: Path) -> dict[EngineTarget, dict[str, str]] | None:
    """The engine sets recorded in `engines.json` (None when the folder has none): network -> file.
    BackendUnavailable for an index this format does not write."""
    path = Path(directory) / ENGINE_INDEX
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        index = {}
        for key, entry in data.items():
            if not isinstance(entry, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in entry.items()
            ):
                raise ValueError(f"the entry of {key!r} is not a network -> file object")
            index[EngineTarget.parse(key)] = dict(entry)
    except (OSError, ValueError) as error:
        raise BackendUnavailable(
            f"TensorRT: {path} cannot be read ({error}); re-run `rerender export --out {directory}`"
        ) from None
    return index


def record_engines(directory: Path, target: EngineTarget, engines: dict[str, Path]) -> None:
    """Add (or replace) `target`'s engine set in `engines.json`; the other targets' sets stay."""
    path = Path(directory) / ENGINE_INDEX
    index = json.loads(path.read_text()) if path.is_file() else {}
    index[target.key] = {name: str(Path(p).relative_to(directory)) for name, p in engines.items()}
    atomic_write(path, json.dumps(index, indent=1).encode())


def recorded_engines(directory: Path, manifest: ExportManifest, target: EngineTarget) -> dict[str, Path]:
    """The intact engine of every network of the manifest for `target`, or BackendUnavailable saying why:
    on a machine with two kinds of GPU, each device gets the engines built for it."""
    directory = Path(directory)
    index = read_engine_index(directory)
    if index is None:
        raise BackendUnavailable(
            f"TensorRT: {directory} has ONNX graphs but no engines; run `rerender export` without --onnx-only "
            "on this GPU"
        )
    entry = index.get(target)
    if entry is None:
        raise BackendUnavailable(
            f"TensorRT: no engines in {directory} for {target.gpu_name} (sm {target.sm}) with TensorRT "
            f"{target.trt_version}; build them with `rerender export --out {directory}`"
        )
    paths = {net: indexed_engine(directory, file) for net, file in entry.items()}
    broken = [net for net in manifest.graphs if paths.get(net) is None or not engine_intact(paths[net])]
    if broken:
        raise BackendUnavailable(
            f"TensorRT: engines for {broken} in {directory} are missing or damaged; re-run `rerender export` "
            "to rebuild them"
        )
    return {net: path for net, path in paths.items() if path is not None}


def indexed_engine(directory: Path, file: str) -> Path | None:
    """The engine file an `engines.json` entry names, or None when it is not a file name inside the folder's
    engines/ (an absolute path, `..`, a symbolic link out): such an entry counts as a missing engine."""
    path = Path(directory) / file
    return path if path.resolve().parent == (Path(directory) / ENGINE_DIR).resolve() else None
