"""The TensorRT backend: engines with an explicit lifecycle, I/O as torch CUDA tensors.

Lifecycle (after NVIDIA's demo `engine.py`):
    engine = TensorRTEngine(spec, path)
    engine.load(runtime)                 # deserialize; a file TensorRT rejects raises, it is never used
    pool = SharedDeviceMemory.for_engines([...])
    engine.allocate(pool, stream)        # execution context on the shared scratch memory, its own stream
    outputs = engine.run(feed)           # ordered after the caller's stream and before it; no host sync
    engine.unload()

Shared device memory: the networks of one keyframe run one after another on one stream (a dedicated
non-default stream of the requested device), so their execution contexts can use the same scratch
(activation) memory; one buffer of the largest engine's size is allocated and given to every context
(`ExecutionContextAllocationStrategy.USER_MANAGED`). I/O buffers are allocated once per input shape and
reused; the cross-frame states the sampler keeps (`own_state_*`) are fresh tensors every call.

Nothing imports tensorrt at module import time; `tensorrt_unavailable_reason()` says why it cannot serve.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import BackendUnavailable
from .export_format import EngineTarget, ExportManifest, recorded_engines
from .onnx_backend import assemble_networks, load_tokenize
from .runtime import Networks
from .specs import NetworkSpec


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT can serve here, else a sentence."""
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


class CudaStreams:
    """How an engine orders its work against the caller's stream: torch CUDA streams and events. (Tests run the
    same engine code with a CPU stand-in of this class that records the order of operations.)"""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def current(self):
        return torch.cuda.current_stream(self.device)

    def new_stream(self):
        return torch.cuda.Stream(self.device)

    def after(self, waiter, producer) -> None:
        """`waiter` runs what is queued on it next only after everything queued on `producer` so far."""
        event = torch.cuda.Event()
        event.record(producer)
        waiter.wait_event(event)

    def on(self, stream):
        return torch.cuda.stream(stream)

    def handle(self, stream) -> int:
        return stream.cuda_stream

    def record(self, tensor: torch.Tensor, stream) -> None:
        tensor.record_stream(stream)

    def new_graph(self):
        return torch.cuda.CUDAGraph()

    def capture(self, graph, stream):
        return torch.cuda.graph(graph, stream=stream)


def keeps_output(name: str) -> bool:
    """Outputs the caller keeps past the next call (the UNet's cross-frame states): fresh tensors every call.
    Every other output lives in a buffer reused by the next call with the same shapes."""
    return name.startswith("own_state_")


@dataclass
class _ShapeBuffers:
    """The I/O of one set of input shapes: converted-input and output buffers, and the CUDA graph if captured."""

    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    runs: int = 0
    graph: object | None = None


class TensorRTEngine:
    """One serialized engine for one network spec (in the engine's precision).

    `run` orders its work as NVIDIA's diffusion demo and vs-mlrt do: inputs are converted on the caller's
    stream, the engine's own (non-default) stream waits for them with an event, the engine is enqueued, and the
    caller's stream waits for the engine with an event before it reads the outputs; tensors that cross between
    the two streams are `record_stream`-ed so torch's allocator never reuses them early. Input and output
    buffers are allocated once per set of input shapes (at most `SHAPES_KEPT` sets) and reused; outputs other
    than the kept states are valid until this engine's next run (copy them to keep them). With `cuda_graph`
    the enqueue is captured once per shape (after one eager run) and replayed."""

    SHAPES_KEPT = 2

    def __init__(self, spec: NetworkSpec, path: Path, device: torch.device, cuda_graph: bool = False) -> None:
        self.spec = spec
        self.path = Path(path)
        self.device = device
        self.cuda_graph = cuda_graph
        self.engine = None
        self.context = None
        self.stream = None
        self.streams = None
        self._memory: SharedDeviceMemory | None = None
        self._shapes: dict[tuple, _ShapeBuffers] = {}

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

    def allocate(self, memory: SharedDeviceMemory, stream=None) -> None:
        """Execution context on the shared scratch memory; `stream`: the engine's stream (None: a new one)."""
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
        self._memory = memory
        dtypes = {n: _torch_dtype(engine.get_tensor_dtype(n)) for n in self.spec.input_names}
        out_dtypes = {n: _torch_dtype(engine.get_tensor_dtype(n)) for n in self.spec.output_names}
        self.attach(context, dtypes, out_dtypes, CudaStreams(self.device), stream)

    def attach(self, context, dtypes, out_dtypes, streams, stream=None) -> None:
        """Use `context` (a TensorRT execution context) with these tensor dtypes, ordered by `streams`."""
        self.context = context
        self._dtypes, self._out_dtypes = dict(dtypes), dict(out_dtypes)
        self.streams = streams
        # A dedicated stream, never the legacy default stream (which would serialise with everything else).
        self.stream = stream if stream is not None else streams.new_stream()
        self._shapes = {}

    def _buffers(self, feed: Mapping[str, torch.Tensor]) -> _ShapeBuffers:
        key = tuple(tuple(feed[n].shape) for n in self.spec.input_names)
        io = self._shapes.get(key)
        if io is not None:
            return io
        context = self.context
        inputs = {}
        for name in self.spec.input_names:
            shape = tuple(feed[name].shape)
            if not context.set_input_shape(name, shape):
                raise ValueError(
                    f"{self.spec.name}: input {name} of shape {shape} is outside the engine's "
                    f"profile; re-export with a --min-size/--max-size that covers it"
                )
            inputs[name] = torch.empty(shape, dtype=self._dtypes[name], device=self.device)
        with self.streams.on(self.stream):  # outputs belong to the engine's stream
            outputs = {
                name: torch.empty(
                    tuple(context.get_tensor_shape(name)), dtype=self._out_dtypes[name], device=self.device
                )
                for name in self.spec.output_names
            }
        while len(self._shapes) >= self.SHAPES_KEPT:
            self._shapes.pop(next(iter(self._shapes)))
        io = self._shapes[key] = _ShapeBuffers(inputs, outputs)
        return io

    def run(self, feed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Enqueue one inference; the outputs are ready in the caller's stream order (no host sync here)."""
        context = self.context
        if context is None:
            raise RuntimeError(f"engine {self.path.name} is not allocated; call load() and allocate() first")
        streams, stream = self.streams, self.stream
        caller = streams.current()
        io = self._buffers(feed)
        graph_mode = self.cuda_graph and io.runs >= 1
        # 1. Inputs converted on the caller's stream, where they were produced. A feed already in the engine's
        #    dtype, device and layout is used as is (graphs need fixed addresses, so they always copy).
        used_inputs = {}
        for name in self.spec.input_names:
            tensor = feed[name]
            buffer = io.inputs[name]
            direct = (
                not graph_mode
                and tensor.dtype == buffer.dtype
                and tensor.device == buffer.device
                and tensor.is_contiguous()
            )
            if not direct:
                buffer.copy_(tensor)
                tensor = buffer
            used_inputs[name] = tensor
        # 2. The engine's stream waits for everything the caller queued so far, conversions included.
        separate = stream is not caller
        if separate:
            streams.after(stream, caller)
        # 3. Enqueue on the engine's stream.
        for name, tensor in used_inputs.items():
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        with streams.on(stream):
            for name in self.spec.output_names:
                out = io.outputs[name]
                if keeps_output(name) and not self.cuda_graph:
                    out = torch.empty(out.shape, dtype=out.dtype, device=self.device)
                context.set_tensor_address(name, out.data_ptr())
                outputs[name] = out
            if graph_mode and io.graph is None:
                io.graph = streams.new_graph()
                with streams.capture(io.graph, stream):
                    self._enqueue(context, streams.handle(stream))
            if io.graph is not None:
                io.graph.replay()
            else:
                self._enqueue(context, streams.handle(stream))
        io.runs += 1
        # 4. The caller's stream waits for the engine before it reads the outputs.
        if separate:
            streams.after(caller, stream)
            # Tell torch's allocator which tensors are in use on the other stream until it gets there.
            for tensor in used_inputs.values():
                streams.record(tensor, stream)
            for tensor in outputs.values():
                streams.record(tensor, caller)
        if self.cuda_graph:
            # Replays write into fixed buffers: the states the caller keeps are copied out, in caller order.
            outputs = {n: (t.clone() if keeps_output(n) else t) for n, t in outputs.items()}
        return outputs

    def _enqueue(self, context, handle: int) -> None:
        if not context.execute_async_v3(handle):
            raise RuntimeError(f"TensorRT failed to enqueue {self.spec.name}")

    def unload(self) -> None:
        self._shapes = {}
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


def engine_paths(
    directory: Path, manifest: ExportManifest, device: torch.device | str = "cuda"
) -> dict[str, Path]:
    """The engines recorded for `device`'s GPU and this TensorRT version in the export folder's engine index
    (engines/export_format.py): on a machine with two kinds of GPU, each device gets the engines built for
    it."""
    import tensorrt as trt

    name, capability = gpu_identity(torch.device(device))
    return recorded_engines(directory, manifest, EngineTarget(trt.__version__, name, capability))


def load_tensorrt_networks(
    directory: str | Path,
    controlnet_scales: tuple[float, ...] | None = None,
    device: torch.device | str = "cuda",
    stream: torch.cuda.Stream | None = None,
    cuda_graph: bool = False,
) -> tuple[Networks, TensorRTSession]:
    """Load every engine of an export directory onto `device`; returns the contract and the session.

    The engines of a session run one after another on one stream (`stream`, or a new non-default stream of
    `device`), which is what lets them share one scratch memory. `cuda_graph` captures each engine's enqueue
    per input shape and replays it (off by default: not yet measured on a GPU)."""
    import tensorrt as trt

    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(reason)
    directory = Path(directory)
    device = torch.device(device)
    manifest = ExportManifest.load(directory)
    scales = controlnet_scales if controlnet_scales is not None else tuple(1.0 for _ in manifest.controlnets)
    if device.type != "cuda":
        raise BackendUnavailable(f"TensorRT: engines run on a CUDA device, got {device}")
    paths = engine_paths(directory, manifest, device)
    runtime = trt.Runtime(_error_logger())
    engines = {
        name: TensorRTEngine(spec, paths[name], device, cuda_graph=cuda_graph)
        for name, spec in manifest.specs().items()
    }
    for engine in engines.values():
        engine.load(runtime)
    memory = SharedDeviceMemory(max(e.device_memory_size() for e in engines.values()), device)
    stream = stream if stream is not None else torch.cuda.Stream(device)
    for engine in engines.values():
        engine.allocate(memory, stream)
    dtype = torch.float16 if manifest.precision == "fp16" else torch.float32
    networks = assemble_networks(manifest, engines, load_tokenize(directory), scales, device, dtype)
    return networks, TensorRTSession(engines, memory)
