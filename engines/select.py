"""Choosing the backend once, when the models are loaded (`--backend auto|torch|onnxruntime|tensorrt`).

`auto` tries TensorRT, then onnxruntime with the CUDA provider, then torch, and records for every backend
above the chosen one the sentence that says why it was rejected ("TensorRT: no CUDA device"; "the
processing canvas 1024x576 (height x width) is outside the exported sizes 256x256..960x960; re-export with
--max-size 1024x960"), as xformers' `not_supported_reasons` does.
An explicitly requested backend that cannot serve is a EngineUsageError with that sentence. onnxruntime on the
CPU is served when asked for (`--backend onnxruntime` without CUDA), never picked by `auto`: torch-CPU is
the reference there (bench/backends.py compares the two).

The sampler receives the chosen `Networks` and never branches on the backend.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import EngineUsageError

BackendChoice = Literal["auto", "torch", "onnxruntime", "tensorrt"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "onnxruntime", "tensorrt")


@dataclass(frozen=True)
class Request:
    """What the run needs from a backend: the model identity, the image size and the device."""

    model: str
    loras: tuple[tuple[str, float], ...] = ()
    controlnets: tuple[tuple[str, float], ...] = ()
    size: tuple[int, int] | None = None  # processing (height, width)
    device: str = "auto"
    freeu: bool = False


@dataclass
class Selection:
    backend: str
    device: str
    networks: object  # engines.runtime.Networks
    rejected: tuple[str, ...] = ()
    session: object | None = field(default=None, repr=False)  # TensorRTSession, to unload

    def describe(self) -> str:
        why = "; ".join(self.rejected)
        return f"backend {self.backend} on {self.device}" + (f" (rejected: {why})" if why else "")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _graph_reason(name: str, engines: Path | None, request: Request) -> str | None:
    """Why the exported graphs in `engines` cannot serve `request` (None if they can)."""
    from .errors import BackendUnavailable
    from .export_format import ExportManifest, source_identity
    from .specs import SizeRange

    if engines is None:
        return f"{name}: no --engines DIR given (make one with `rerender export --out DIR`)"
    if request.freeu:
        return f"{name}: --freeu is not part of the exported graphs"
    try:
        manifest = ExportManifest.load(engines)
        manifest.check_matches(
            source_identity(request.model),
            tuple((source_identity(p), s) for p, s in request.loras),
            tuple(source_identity(p) for p, _ in request.controlnets),
        )
    except BackendUnavailable as error:
        return f"{name}: {error}"
    if request.size is not None:
        misfit = SizeRange(manifest.min_size, manifest.opt_size, manifest.max_size).misfit(*request.size)
        if misfit is not None:
            return f"{name}: {misfit}"
    return None


def _size_misfit(engines: Path | None, request: Request) -> str | None:
    """The export's size sentence alone (None when there is no readable export or the size fits), so that a
    fallback for another reason still says whether the export would have served this run's canvas."""
    from .errors import BackendUnavailable
    from .export_format import ExportManifest
    from .specs import SizeRange

    if engines is None or request.size is None:
        return None
    try:
        manifest = ExportManifest.load(engines)
    except BackendUnavailable:
        return None
    return SizeRange(manifest.min_size, manifest.opt_size, manifest.max_size).misfit(*request.size)


def _with_size(reason: str, engines: Path | None, request: Request) -> str:
    misfit = _size_misfit(engines, request)
    return reason if misfit is None else f"{reason}; and {misfit}"


def tensorrt_reason(engines: Path | None, request: Request) -> str | None:
    from .tensorrt_backend import tensorrt_unavailable_reason

    if request.device == "cpu":
        return _with_size("TensorRT: --device cpu", engines, request)
    unavailable = tensorrt_unavailable_reason()
    if unavailable is not None:
        return _with_size(unavailable, engines, request)
    return _graph_reason("TensorRT", engines, request)


def onnxruntime_cuda_reason(engines: Path | None, request: Request) -> str | None:
    reason = _onnxruntime_cuda_unavailable(request)
    if reason is not None:
        return _with_size(reason, engines, request)
    return _graph_reason("onnxruntime-CUDA", engines, request)


def _onnxruntime_cuda_unavailable(request: Request) -> str | None:
    if request.device == "cpu":
        return "onnxruntime-CUDA: --device cpu"
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime-CUDA: onnxruntime is not installed"
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime-CUDA: this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    if not _cuda_available():
        return "onnxruntime-CUDA: no CUDA device (torch.cuda.is_available() is False)"
    return None


def _cuda_device(request: Request) -> str:
    return request.device if request.device.startswith("cuda") else "cuda"


def select_networks(
    choice: BackendChoice,
    request: Request,
    engines: Path | None,
    load_torch: Callable[[], object],
) -> Selection:
    """Load the networks on the chosen backend; `load_torch` builds the torch backend's Networks."""
    from .errors import BackendUnavailable
    from .onnx_backend import load_onnx_networks
    from .tensorrt_backend import load_tensorrt_networks

    if choice not in BACKENDS:
        raise EngineUsageError(f"--backend must be one of {', '.join(BACKENDS)}; got {choice!r}")
    engines = Path(engines) if engines is not None else None
    scales = tuple(s for _, s in request.controlnets)
    rejected: list[str] = []

    if choice in ("auto", "tensorrt"):
        reason = tensorrt_reason(engines, request)
        if reason is None:
            try:
                networks, session = load_tensorrt_networks(engines, scales, _cuda_device(request))
                return Selection("tensorrt", _cuda_device(request), networks, tuple(rejected), session)
            except BackendUnavailable as error:
                reason = f"TensorRT: {error}"
        if choice == "tensorrt":
            raise EngineUsageError(f"--backend tensorrt cannot serve: {reason}")
        rejected.append(reason)

    if choice in ("auto", "onnxruntime"):
        reason = onnxruntime_cuda_reason(engines, request)
        if reason is None:
            try:
                device = _cuda_device(request)
                return Selection(
                    "onnxruntime", device, load_onnx_networks(engines, scales, device), tuple(rejected)
                )
            except BackendUnavailable as error:
                reason = f"onnxruntime-CUDA: {error}"
        if choice == "onnxruntime":
            cpu_reason = _graph_reason("onnxruntime", engines, request)
            if cpu_reason is not None:
                raise EngineUsageError(f"--backend onnxruntime cannot serve: {cpu_reason}")
            try:
                networks = load_onnx_networks(engines, scales, "cpu")
            except BackendUnavailable as error:
                raise EngineUsageError(f"--backend onnxruntime cannot serve: {error}") from None
            return Selection("onnxruntime", "cpu", networks, (reason,))
        rejected.append(reason)

    networks = load_torch()
    return Selection("torch", str(getattr(networks, "device", "cpu")), networks, tuple(rejected))


def explain(engines: Path | None, request: Request) -> list[tuple[str, str | None]]:
    """(backend, reason or None) for every backend in `auto` order, without loading anything."""
    return [
        ("tensorrt", tensorrt_reason(engines, request)),
        ("onnxruntime-cuda", onnxruntime_cuda_reason(engines, request)),
        ("torch", None),
    ]
