"""The onnxruntime backend: the runtime contract (engines/runtime.py) served by exported ONNX graphs.

Two layers, so that the TensorRT backend reuses the second:
- a *graph runner* runs one network by tensor names (`run(feed) -> outputs`): `OrtGraph` here (CPU
  provider, or CUDA with I/O bound to torch CUDA tensors so no host round trip happens per step),
  `TensorRTEngine` in engines/tensorrt_backend.py;
- *graph networks* (`GraphTextEncoder`, `GraphVaeEncoder`, `GraphVaeDecoder`, `GraphControlNet`,
  `GraphUNet`) adapt a runner to the contract's callables: they flatten ControlResiduals and
  ReferenceStates into the named inputs of the network's I/O spec and rebuild the outputs.

The sampler gets a `Networks` whose members are these callables and runs unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .errors import BackendUnavailable
from .export_format import TOKENIZER_DIR, ExportManifest
from .runtime import ControlResiduals, Networks, ReferenceStates, ScheduleConfig, SelfAttentionLayer
from .specs import NetworkSpec

TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}


class GraphRunner(Protocol):
    spec: NetworkSpec  # in the graph's precision

    def run(self, feed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


def ort_providers(device: torch.device) -> list[str]:
    """CUDA provider for a CUDA device (when onnxruntime has it), else CPU."""
    import onnxruntime as ort

    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailable(
                "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu) for device "
                f"{device}; available: {', '.join(ort.get_available_providers())}"
            )
        return ["CUDAExecutionProvider"]
    return ["CPUExecutionProvider"]


class OrtGraph:
    """One onnxruntime session for one exported network."""

    def __init__(self, path: Path, spec: NetworkSpec, device: torch.device, threads: int = 0) -> None:
        import onnxruntime as ort

        if not path.is_file():
            raise BackendUnavailable(
                f"ONNX graph {path} is missing; run `rerender export --onnx-only --out DIR`"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.spec = spec
        self.device = device
        providers = ort_providers(device)
        if device.type == "cuda":
            # Run on torch's current stream, so graph inputs produced by torch are ordered before the
            # graph without a host synchronisation (onnxruntime CUDA provider option).
            stream = torch.cuda.current_stream(device).cuda_stream
            options_cuda = {"device_id": device.index or 0, "has_user_compute_stream": "1"}
            options_cuda["user_compute_stream"] = str(stream)
            providers = [("CUDAExecutionProvider", options_cuda)]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        # The graph's own element types (not the spec's): an fp16 graph may keep some outputs in fp32
        # (transformers' CLIP upcasts), and I/O binding must match the graph exactly.
        self._dtypes = {
            value.name: _ORT_TYPES[value.type]
            for value in (*self.session.get_inputs(), *self.session.get_outputs())
        }

    def _input(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device=self.device, dtype=self._dtypes[name]).contiguous()

    def run(self, feed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs = {name: self._input(name, feed[name]) for name in self.spec.input_names}
        if self.device.type != "cuda":
            results = self.session.run(self.spec.output_names, {k: v.numpy() for k, v in inputs.items()})
            return {
                name: torch.from_numpy(r) for name, r in zip(self.spec.output_names, results, strict=True)
            }
        return self._run_bound(inputs)

    def _run_bound(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # I/O binding to torch CUDA memory: onnxruntime reads the inputs and writes the outputs in place,
        # with output tensors allocated by torch from the spec's shapes (no host round trip per step).
        binding = self.session.io_binding()
        index = self.device.index or 0
        for name, t in inputs.items():
            binding.bind_input(name, "cuda", index, _NUMPY_NAMES[t.dtype], tuple(t.shape), t.data_ptr())
        dims = self.spec.infer_dims({name: tuple(t.shape) for name, t in inputs.items()})
        outputs = {}
        for name, shape in self.spec.output_shapes(*dims).items():
            out = torch.empty(shape, dtype=self._dtypes[name], device=self.device)
            binding.bind_output(name, "cuda", index, _NUMPY_NAMES[out.dtype], shape, out.data_ptr())
            outputs[name] = out
        self.session.run_with_iobinding(binding)
        return outputs


_ORT_TYPES = {
    "tensor(float)": torch.float32,
    "tensor(float16)": torch.float16,
    "tensor(int64)": torch.int64,
    "tensor(int32)": torch.int32,
    "tensor(bool)": torch.bool,
}

_NUMPY_NAMES = {
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.int64: np.int64,
    torch.int32: np.int32,
    torch.bool: np.bool_,
}


def _as_batch(timestep: torch.Tensor, batch: int) -> torch.Tensor:
    timestep = torch.as_tensor(timestep)
    return timestep.reshape(1).expand(batch) if timestep.ndim == 0 else timestep


class GraphTextEncoder:
    def __init__(self, runner: GraphRunner, dtype: torch.dtype) -> None:
        self.runner, self.dtype = runner, dtype

    def __call__(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.runner.run({"token_ids": token_ids})["embeddings"].to(self.dtype)


class GraphVaeEncoder:
    def __init__(self, runner: GraphRunner, dtype: torch.dtype) -> None:
        self.runner, self.dtype = runner, dtype

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.runner.run({"image": image})["moments"].to(self.dtype)


class GraphVaeDecoder:
    def __init__(self, runner: GraphRunner, dtype: torch.dtype) -> None:
        self.runner, self.dtype = runner, dtype

    def __call__(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return self.runner.run({"latent_sample": latent_sample})["image"].to(self.dtype)


class GraphControlNet:
    def __init__(self, runner: GraphRunner, dtype: torch.dtype) -> None:
        self.runner, self.dtype = runner, dtype
        self.down_names = [n for n in runner.spec.output_names if n.startswith("down_residual_")]

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        text_embeddings: torch.Tensor,
        control_image: torch.Tensor,
        conditioning_scale: torch.Tensor,
    ) -> ControlResiduals:
        out = self.runner.run(
            {
                "sample": sample,
                "timestep": _as_batch(timestep, sample.shape[0]),
                "text_embeddings": text_embeddings,
                "control_image": control_image,
                "conditioning_scale": torch.as_tensor(conditioning_scale, dtype=torch.float32).reshape(1),
            }
        )
        return ControlResiduals(
            tuple(out[n].to(self.dtype) for n in self.down_names), out["mid_residual"].to(self.dtype)
        )


class GraphUNet:
    """The UNet with ControlNet residual inputs and cross-frame state inputs/outputs (runtime.UNet)."""

    def __init__(
        self, runner: GraphRunner, layers: tuple[SelfAttentionLayer, ...], dtype: torch.dtype
    ) -> None:
        self.runner, self.layers, self.dtype = runner, layers, dtype
        spec = runner.spec
        self.down_names = [n for n in spec.input_names if n.startswith("down_residual_")]
        self.state_names = [f"reference_state_{i}" for i in range(len(layers))]
        self.own_names = [f"own_state_{i}" for i in range(len(layers))]
        self._zeros: dict[tuple, ControlResiduals] = {}

    def _no_control(self, sample: torch.Tensor) -> ControlResiduals:
        # "zeros when there is none" (runtime.py): one cached set per size, so no allocation per step.
        b, _, h, w = sample.shape
        key = (b, h, w, sample.device, sample.dtype)
        if key not in self._zeros:
            shapes = self.runner.spec.input_shapes(b, 8 * h, 8 * w)
            down = tuple(
                torch.zeros(shapes[n], device=sample.device, dtype=sample.dtype) for n in self.down_names
            )
            mid = torch.zeros(shapes["mid_residual"], device=sample.device, dtype=sample.dtype)
            self._zeros = {key: ControlResiduals(down, mid)}
        return self._zeros[key]

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        text_embeddings: torch.Tensor,
        control: ControlResiduals | None,
        reference: ReferenceStates,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        control = control if control is not None else self._no_control(sample)
        feed = {
            "sample": sample,
            "timestep": _as_batch(timestep, sample.shape[0]),
            "text_embeddings": text_embeddings,
            "mid_residual": control.mid,
            "reference_mask": reference.mask,
        }
        feed.update(zip(self.down_names, control.down, strict=True))
        feed.update(zip(self.state_names, reference.states, strict=True))
        out = self.runner.run(feed)
        return out["noise"].to(self.dtype), tuple(out[n] for n in self.own_names)


def assemble_networks(
    manifest: ExportManifest,
    runners: Mapping[str, GraphRunner],
    tokenize,
    controlnet_scales: tuple[float, ...],
    device: torch.device,
    dtype: torch.dtype,
) -> Networks:
    """The contract's `Networks` from one runner per network (shared by onnxruntime and TensorRT)."""
    from .runtime import up_self_attention_layers

    layers = up_self_attention_layers(manifest.unet_config)
    controlnets = tuple(
        (GraphControlNet(runners[f"controlnet_{i}"], dtype), float(scale))
        for i, scale in enumerate(controlnet_scales)
    )
    fields = set(ScheduleConfig.__dataclass_fields__)
    return Networks(
        text_encoder=GraphTextEncoder(runners["text_encoder"], dtype),
        tokenize=tokenize,
        vae_encoder=GraphVaeEncoder(runners["vae_encoder"], dtype),
        vae_decoder=GraphVaeDecoder(runners["vae_decoder"], dtype),
        unet=GraphUNet(runners["unet"], layers, dtype),
        controlnets=controlnets,
        scaling_factor=manifest.scaling_factor,
        schedule=ScheduleConfig(**{k: v for k, v in manifest.schedule.items() if k in fields}),
        device=device,
        dtype=dtype,
        storage_dtype=torch.float16 if device.type == "cuda" else torch.float32,
    )


def load_tokenize(directory: Path):
    from transformers import CLIPTokenizer

    from .tokenizer import make_tokenize

    return make_tokenize(CLIPTokenizer.from_pretrained(str(Path(directory) / TOKENIZER_DIR)))


def load_onnx_networks(
    directory: str | Path,
    controlnet_scales: tuple[float, ...] | None = None,
    device: torch.device | str = "cpu",
    threads: int = 0,
) -> Networks:
    """Serve the graphs of an export directory with onnxruntime (CPU, or CUDA where present)."""
    directory = Path(directory)
    device = torch.device(device)
    manifest = ExportManifest.load(directory)
    scales = controlnet_scales if controlnet_scales is not None else tuple(1.0 for _ in manifest.controlnets)
    if len(scales) != len(manifest.controlnets):
        raise BackendUnavailable(
            f"{len(scales)} ControlNet scales given for {len(manifest.controlnets)} exported ControlNets"
        )
    runners = {
        name: OrtGraph(directory / manifest.graphs[name], spec, device, threads)
        for name, spec in manifest.specs().items()
    }
    # fp16 graphs on a GPU hand fp16 to the sampler; on the CPU the sampler works in fp32 (runtime.py).
    dtype = torch.float16 if manifest.precision == "fp16" and device.type == "cuda" else torch.float32
    return assemble_networks(manifest, runners, load_tokenize(directory), scales, device, dtype)
