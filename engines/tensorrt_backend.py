"""The TensorRT backend: engines with an explicit lifecycle, I/O as torch CUDA tensors (issue 6 item 4).

Lifecycle (style.md practice 8, after NVIDIA's demo `engine.py`):
    engine = TensorRTEngine(spec, path)
    engine.load(runtime)                 # deserialize; a file TensorRT rejects raises, it is never used
    pool = SharedDeviceMemory.for_engines([...])
    engine.allocate(pool)                # execution context on the shared scratch memory
    outputs = engine.run(feed)           # enqueue on the given CUDA stream; no host synchronisation
    engine.unload()

Shared device memory: the networks of one keyframe run one after another on one stream, so their
execution contexts can use the same scratch (activation) memory; one buffer of the largest engine's size
is allocated and given to every context (`ExecutionContextAllocationStrategy.USER_MANAGED`). Output
tensors are fresh torch CUDA tensors from torch's caching allocator each call (the sampler keeps the
cross-frame states it gets back, so output buffers cannot be recycled behind its back).

Nothing imports tensorrt at module import time; `tensorrt_unavailable_reason()` says why it cannot serve.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .onnx_backend import BackendUnavailable, ExportManifest, assemble_networks, load_tokenize
from .runtime import Networks
from .specs import NetworkSpec, SizeRange


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT can serve here, else a sentence (architecture.md: backends say why)."""
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT: the tensorrt package is not installed (pip install -e '.[gpu]')"
    if not torch.cuda.is_available():
        return "TensorRT: no CUDA device (torch.cuda.is_available() is False)"
    return None


def gpu_identity(device: torch.device) -> tuple[str, tuple[int, int]]:
    props = torch.cuda.get_device_properties(device)
    return props.name, (props.major, props.minor)


def _torch_dtype(trt_dtype) -> torch.dtype:
    import tensorrt as trt

    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
        trt.DataType.BOOL: torch.bool,
        trt.DataType.BF16: torch.bfloat16,
    }
    return table[trt_dtype]


def _error_logger():
    """A TensorRT logger that keeps the errors so a failure can name them."""
    import tensorrt as trt

    class ErrorLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(str(msg))

    return ErrorLogger()


class SharedDeviceMemory:
    """One scratch buffer (torch-allocated, so it is accounted and freed by torch) for several contexts."""

    def __init__(self, size: int, device: torch.device) -> None:
        self.buffer = torch.empty(max(size, 1), dtype=torch.uint8, device=device)

    @property
    def size(self) -> int:
        return self.buffer.numel()

    def pointer(self) -> int:
        return self.buffer.data_ptr()


class TensorRTEngine:
    """One serialized engine for one network spec (in the engine's precision)."""

    def __init__(self, spec: NetworkSpec, path: Path, device: torch.device) -> None:
        self.spec = spec
        self.path = Path(path)
        self.device = device
        self.engine = None
        self.context = None
        self.stream: torch.cuda.Stream | None = None
        self._memory: SharedDeviceMemory | None = None

    # -- lifecycle ------------------------------------------------------------------------------------
    def load(self, runtime) -> None:
        data = self.path.read_bytes()
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise BackendUnavailable(
                f"TensorRT could not deserialize {self.path} (built by another TensorRT version or GPU, or "
                "damaged); delete it or re-run `rerender export`"
            )
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        expected = set(self.spec.input_names) | set(self.spec.output_names)
        if names != expected:
            raise BackendUnavailable(
                f"engine {self.path.name} has tensors {sorted(names)}; its spec expects {sorted(expected)}"
            )
        self.engine = engine

    def device_memory_size(self) -> int:
        engine = self._loaded()
        # TensorRT 10.1+ and 11 name it device_memory_size_v2 (the old property is removed in 11).
        size = getattr(engine, "device_memory_size_v2", None)
        return int(size if size is not None else engine.device_memory_size)

    def allocate(self, memory: SharedDeviceMemory, stream: torch.cuda.Stream | None = None) -> None:
        import tensorrt as trt

        engine = self._loaded()
        if memory.size < self.device_memory_size():
            raise ValueError(
                f"shared device memory of {memory.size} bytes is smaller than the {self.device_memory_size()} "
                f"bytes engine {self.path.name} needs"
            )
        context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:
            raise BackendUnavailable(f"TensorRT could not create an execution context for {self.path.name}")
        if hasattr(context, "set_device_memory"):
            context.set_device_memory(memory.pointer(), memory.size)
        else:  # TensorRT 10.0
            context.device_memory = memory.pointer()
        self.context, self._memory = context, memory
        self.stream = stream or torch.cuda.current_stream(self.device)
        self._dtypes = {n: _torch_dtype(engine.get_tensor_dtype(n)) for n in (*self.spec.input_names,)}
        self._out_dtypes = {n: _torch_dtype(engine.get_tensor_dtype(n)) for n in self.spec.output_names}

    def run(self, feed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Enqueue one inference on `self.stream`; the outputs are ready in stream order (no sync here)."""
        context = self.context
        if context is None:
            raise RuntimeError(f"engine {self.path.name} is not allocated; call load() and allocate() first")
        stream = self.stream
        caller = torch.cuda.current_stream(self.device)
        if stream != caller:
            # The inputs were produced on the caller's stream; order our stream after it (no host wait).
            stream.wait_stream(caller)
        keep = []
        for name in self.spec.input_names:
            tensor = feed[name].to(device=self.device, dtype=self._dtypes[name]).contiguous()
            keep.append(tensor)
            if not context.set_input_shape(name, tuple(tensor.shape)):
                raise ValueError(
                    f"{self.spec.name}: input {name} of shape {tuple(tensor.shape)} is outside the engine's "
                    f"profile; re-export with a --min-size/--max-size that covers it"
                )
            context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        with torch.cuda.stream(stream):
            for name in self.spec.output_names:
                shape = tuple(context.get_tensor_shape(name))
                out = torch.empty(shape, dtype=self._out_dtypes[name], device=self.device)
                context.set_tensor_address(name, out.data_ptr())
                outputs[name] = out
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to enqueue {self.spec.name}")
        # Tell torch's allocator that these tensors are in use on `stream` until it reaches this point.
        for tensor in (*keep, *outputs.values()):
            tensor.record_stream(stream)
        if stream != caller:
            caller.wait_stream(stream)
        return outputs

    def unload(self) -> None:
        self.context = None
        self.engine = None
        self._memory = None

    def _loaded(self):
        if self.engine is None:
            raise RuntimeError(f"engine {self.path.name} is not loaded; call load() first")
        return self.engine


@dataclass
class TensorRTSession:
    """The engines of one export directory, loaded and allocated together, unloaded together."""

    engines: dict[str, TensorRTEngine]
    memory: SharedDeviceMemory

    def unload(self) -> None:
        for engine in self.engines.values():
            engine.unload()
        self.memory = None  # type: ignore[assignment]


def engine_paths(directory: Path, manifest: ExportManifest) -> dict[str, Path]:
    """The engines recorded for this GPU and TensorRT version in `engines.json` (written by the build)."""
    import json

    import tensorrt as trt

    index_path = directory / "engines.json"
    if not index_path.is_file():
        raise BackendUnavailable(
            f"TensorRT: {directory} has ONNX graphs but no engines; run `rerender export` without --onnx-only "
            "on this GPU"
        )
    index = json.loads(index_path.read_text())
    name, capability = gpu_identity(torch.device("cuda"))
    entry = index.get(f"{trt.__version__}|{name}|{capability[0]}.{capability[1]}")
    if entry is None:
        raise BackendUnavailable(
            f"TensorRT: no engines in {directory} for {name} (sm {capability[0]}{capability[1]}) with TensorRT "
            f"{trt.__version__}; build them with `rerender export --out {directory}`"
        )
    from ..export.cache import EngineCache

    paths = {net: directory / file for net, file in entry.items()}
    cache = EngineCache(directory / "engines")
    # Size + sha256 against the sidecar: a truncated or damaged engine is never handed to TensorRT.
    broken = [net for net in manifest.graphs if net not in paths or not cache.valid(paths[net])]
    if broken:
        raise BackendUnavailable(
            f"TensorRT: engines for {broken} in {directory} are missing or damaged; re-run `rerender export` "
            "to rebuild them"
        )
    return paths


def load_tensorrt_networks(
    directory: str | Path,
    controlnet_scales: tuple[float, ...] | None = None,
    device: torch.device | str = "cuda",
    stream: torch.cuda.Stream | None = None,
) -> tuple[Networks, TensorRTSession]:
    """Load every engine of an export directory onto `device`; returns the contract and the session."""
    import tensorrt as trt

    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(reason)
    directory = Path(directory)
    device = torch.device(device)
    manifest = ExportManifest.load(directory)
    scales = controlnet_scales if controlnet_scales is not None else tuple(1.0 for _ in manifest.controlnets)
    paths = engine_paths(directory, manifest)
    runtime = trt.Runtime(_error_logger())
    engines = {name: TensorRTEngine(spec, paths[name], device) for name, spec in manifest.specs().items()}
    for engine in engines.values():
        engine.load(runtime)
    memory = SharedDeviceMemory(max(e.device_memory_size() for e in engines.values()), device)
    for engine in engines.values():
        engine.allocate(memory, stream)
    dtype = torch.float16 if manifest.precision == "fp16" else torch.float32
    networks = assemble_networks(manifest, engines, load_tokenize(directory), scales, device, dtype)
    return networks, TensorRTSession(engines, memory)


def profile_fits(manifest: ExportManifest, height: int, width: int) -> str | None:
    """None when an image size fits the exported profile, else the sentence that says why not."""
    sizes = SizeRange(manifest.min_size, manifest.opt_size, manifest.max_size)
    if sizes.contains(height, width):
        return None
    return (
        f"engine profile {sizes.min[0]}x{sizes.min[1]}..{sizes.max[0]}x{sizes.max[1]}, got {height}x{width}; "
        "re-export with --min-size/--max-size covering it"
    )
