"""TensorRT engine build from an exported ONNX graph.

- One optimisation profile per engine, from the network's I/O spec and the size range it was exported for
  (`NetworkSpec.profile`): dynamic height/width within [min, max], batch 1..2 (CFG batch 2).
- Precision. TensorRT 10 builds fp16 engines from an fp32 graph with the weak-typing flag
  `BuilderFlag.FP16`. TensorRT 11 removed that flag: its networks are strongly typed,
  so the precision must already be in the ONNX graph. We therefore always build from the graph of the
  requested precision (`rerender export --precision fp16` writes fp16 graphs) and on TensorRT >= 11 mark
  the network strongly typed; on TensorRT 10 an fp16 graph is also built strongly typed, so both versions
  produce the same engine for the same graph.
- A timing cache file per GPU in the engine directory, loaded before and saved after each build (NVIDIA's
  README warns that timing caches do not transfer between GPU targets, so its name holds the GPU).
- Refittable engines (`BuilderFlag.REFIT`) for the networks that carry LoRA weights (UNet): a LoRA change
  re-exports the merged ONNX and refits the engine from it (`refit_from_onnx`) instead of rebuilding.
- Every build logs to a file next to the engine; a failure raises `EngineBuildError` naming that file.

Nothing here imports tensorrt at module import time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..engines.export_format import atomic_write
from ..engines.specs import NetworkSpec, Precision, SizeRange


class EngineBuildError(RuntimeError):
    """A TensorRT build or refit failed; the message names the log file."""


def trt_version() -> tuple[int, ...]:
    import tensorrt as trt

    return tuple(int(p) for p in trt.__version__.split(".")[:3] if p.isdigit())


def _file_logger(path: Path):
    """A `trt.ILogger` that appends every message to `path` and keeps the errors for the exception."""
    import tensorrt as trt

    class FileLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

        def log(self, severity, msg) -> None:  # called by TensorRT, possibly from its threads
            self._file.write(f"[{severity.name}] {msg}\n")
            self._file.flush()
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(str(msg))

        def close(self) -> None:
            self._file.close()

    return FileLogger()


@dataclass(frozen=True)
class BuildOptions:
    precision: Precision = "fp16"
    refittable: bool = False
    workspace_gib: float | None = None  # None: TensorRT's default (all free device memory)
    optimization_level: int = 3


@dataclass(frozen=True)
class BuildResult:
    engine: bytes
    seconds: float
    log_path: Path


def timing_cache_path(directory: Path, gpu_name: str) -> Path:
    safe = "".join(c if c.isalnum() else "_" for c in gpu_name)
    return directory / f"timing-{safe}.cache"


def build_engine(
    onnx_path: Path,
    spec: NetworkSpec,
    sizes: SizeRange,
    options: BuildOptions,
    log_path: Path,
    timing_cache: Path | None = None,
) -> BuildResult:
    """Parse `onnx_path`, build a serialized engine with one profile from `spec`/`sizes`."""
    import tensorrt as trt

    start = time.perf_counter()
    logger = _file_logger(log_path)
    try:
        version = trt_version()
        logger.log(
            trt.ILogger.Severity.INFO, f"rerender: building {onnx_path} with TensorRT {trt.__version__}"
        )
        builder = trt.Builder(logger)
        strongly_typed = version >= (11,) or options.precision == "fp16"
        flags = 0
        if strongly_typed and version < (11,):
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        # parse_from_file resolves external-data files (graphs over 2 GB) relative to the graph.
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineBuildError(
                f"TensorRT could not parse {onnx_path}: {errors}; the full log is {log_path}"
            )
        config = builder.create_builder_config()
        config.builder_optimization_level = options.optimization_level
        if options.workspace_gib is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
        if options.refittable:
            config.set_flag(trt.BuilderFlag.REFIT)
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in spec.profile(sizes).items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        cache = None
        if timing_cache is not None:
            blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
            cache = config.create_timing_cache(blob)
            config.set_timing_cache(cache, ignore_mismatch=False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            detail = "; ".join(logger.errors[-3:]) or "no error message"
            raise EngineBuildError(
                f"TensorRT failed to build {spec.name} ({detail}); the full log is {log_path}"
            )
        if cache is not None and timing_cache is not None:
            atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
        return BuildResult(bytes(serialized), time.perf_counter() - start, log_path)
    except EngineBuildError:
        raise
    except Exception as exc:  # TensorRT raises plain RuntimeErrors/TypeErrors from its bindings
        raise EngineBuildError(
            f"TensorRT build of {spec.name} failed: {exc}; the full log is {log_path}"
        ) from exc
    finally:
        logger.close()


def refit_from_onnx(engine_bytes: bytes, onnx_path: Path, log_path: Path) -> bytes:
    """Refit a refittable engine with every weight of `onnx_path` (same graph, other weights).

    All weights are replaced, never only the LoRA deltas: refitting A, then B, then A again must give A
    (NVIDIA/TensorRT#3628), so the graph always holds base + the current LoRA set.
    """
    import tensorrt as trt

    logger = _file_logger(log_path)
    try:
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(engine_bytes)
        if engine is None:
            raise EngineBuildError(f"the engine to refit could not be deserialized; the log is {log_path}")
        refitter = trt.Refitter(engine, logger)
        parser_refitter = trt.OnnxParserRefitter(refitter, logger)
        if not parser_refitter.refit_from_file(str(onnx_path)):
            errors = "; ".join(str(parser_refitter.get_error(i)) for i in range(parser_refitter.num_errors))
            raise EngineBuildError(f"refit from {onnx_path} failed: {errors}; the log is {log_path}")
        if not refitter.refit_cuda_engine():
            raise EngineBuildError(f"TensorRT refused the refit from {onnx_path}; the log is {log_path}")
        return bytes(engine.serialize())
    finally:
        logger.close()
