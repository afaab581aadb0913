"""`synthesize`: guided patch synthesis of a style exemplar onto a target (the EbSynth algorithm, Jamriška et al. 2019).

Validates inputs into one sentence per problem, splits the style and guide weights over channels (synthesis.md §4),
resolves the pyramid depth (synthesis.md §2) and hands the arrays to a backend: the one search-vote schedule
(native/csrc/synth_driver.h) run by the CPU executor or by the CUDA kernel executor.

The backend is chosen once: `make_synthesizer(backend, device)` probes what can run here (backends.py) and
returns a `Synthesizer`, an object that then synthesizes frame after frame with no probe and no branch on the
backend. `synthesize(...)` is the one-call convenience: it makes a synthesizer and calls it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import ClassVar, Literal, Protocol

import numpy as np
from rerender.native.backends import cpu_unavailable_reason, cuda_unavailable_reason
from rerender.native.params import (
    MAX_GUIDE_CHANNELS,
    MAX_PIXELS,
    MAX_SIDE,
    MAX_STYLE_CHANNELS,
    Guide,
    SynthParams,
    SynthResult,
    _check_uint8_image,
    default_threads,
)

Backend = Literal["auto", "cpu", "cuda"]


def max_pyramid_levels(style_hw: tuple[int, int], target_hw: tuple[int, int], patch_size: int) -> int:
    """1 + the largest k such that the smaller side of min(style, target) halved k times is >= 2p + 1 (synthesis.md §2)."""
    side = min(style_hw[0], style_hw[1], target_hw[0], target_hw[1])
    k = 0
    while (side >> (k + 1)) >= 2 * patch_size + 1:
        k += 1
    return k + 1


def _check_size(name: str, h: int, w: int) -> None:
    if h > MAX_SIDE or w > MAX_SIDE or h * w > MAX_PIXELS:
        raise ValueError(
            f"{name} is {h}x{w}; synthesis takes at most {MAX_SIDE} pixels per side and {MAX_PIXELS} pixels in "
            "all: scale the frames down first."
        )


def _validate(style, guides, params, init_nnf, keep=None):
    style = _check_uint8_image("style", style)
    hs, ws, ns = style.shape
    _check_size("style", hs, ws)
    if ns > MAX_STYLE_CHANNELS:
        raise ValueError(f"style must have 1 to {MAX_STYLE_CHANNELS} channels, got {ns}.")
    if not isinstance(params, SynthParams):
        raise ValueError(f"params must be a SynthParams, got {type(params).__name__}.")
    if isinstance(guides, Guide):
        guides = [guides]
    if not isinstance(guides, Sequence) or len(guides) == 0:
        raise ValueError(
            "guides must be a non-empty list of Guide(source, target, weight); the target size comes from them."
        )
    for i, g in enumerate(guides):
        if not isinstance(g, Guide):
            raise ValueError(f"guides[{i}] must be a Guide, got {type(g).__name__}.")
        if g.source.shape[:2] != (hs, ws):
            raise ValueError(
                f"guides[{i}].source must have the style's size {hs}x{ws} (height x width), got "
                f"{g.source.shape[0]}x{g.source.shape[1]}."
            )
    ht, wt = guides[0].target.shape[:2]
    _check_size("the guide target", ht, wt)
    for i, g in enumerate(guides):
        if g.target.shape[:2] != (ht, wt):
            raise ValueError(
                f"every guide target must have the same size; guides[0] is {ht}x{wt} but guides[{i}] is "
                f"{g.target.shape[0]}x{g.target.shape[1]}."
            )
    ng = sum(g.source.shape[2] for g in guides)
    if ng > MAX_GUIDE_CHANNELS:
        raise ValueError(
            f"the guides have {ng} channels in total; at most {MAX_GUIDE_CHANNELS} are supported."
        )
    p = params.patch_size
    if p > min(hs, ws, ht, wt):
        raise ValueError(
            f"patch_size {p} is larger than the images (style {hs}x{ws}, target {ht}x{wt}); use a smaller "
            f"odd patch size."
        )
    if init_nnf is not None:
        if not isinstance(init_nnf, np.ndarray) or init_nnf.shape != (ht, wt, 2):
            got = init_nnf.shape if isinstance(init_nnf, np.ndarray) else type(init_nnf).__name__
            raise ValueError(f"init_nnf must be an int32 array of shape ({ht}, {wt}, 2), got {got}.")
        if init_nnf.dtype != np.int32:
            raise ValueError(f"init_nnf must have dtype int32, got {init_nnf.dtype}.")
        x, y = init_nnf[..., 0], init_nnf[..., 1]
        if x.min() < 0 or y.min() < 0 or x.max() >= ws or y.max() >= hs:
            raise ValueError(f"init_nnf holds (x, y) positions outside the {ws}x{hs} (width x height) style.")
    if keep is not None:
        if init_nnf is None:
            raise ValueError("keep needs init_nnf: a kept pixel keeps its init_nnf match (synthesis.md §11).")
        if not isinstance(keep, np.ndarray) or keep.shape != (ht, wt) or keep.dtype != np.bool_:
            got = f"{keep.dtype} {keep.shape}" if isinstance(keep, np.ndarray) else type(keep).__name__
            raise ValueError(f"keep must be a bool array of shape ({ht}, {wt}), got {got}.")
    return style, list(guides)


class Synthesizer(Protocol):
    """A synthesis backend, chosen once (`make_synthesizer`): calling it synthesizes one target."""

    backend: str  # "cpu" or "cuda"

    def __call__(
        self,
        style: np.ndarray,
        guides: Sequence[Guide],
        params: SynthParams = SynthParams(),
        init_nnf: np.ndarray | None = None,
        keep: np.ndarray | None = None,
    ) -> SynthResult: ...


@dataclass(frozen=True)
class CpuSynthesizer:
    """The C++/OpenMP executor of the compiled module (`_synth`, imported when the synthesizer is made)."""

    module: ModuleType
    backend: ClassVar[str] = "cpu"

    def __call__(
        self, style, guides, params: SynthParams = SynthParams(), init_nnf=None, keep=None
    ) -> SynthResult:
        image, error, nnf, stats = _run_cpu(self.module, *_prepare(style, guides, params, init_nnf, keep))
        return SynthResult(
            image=image,
            error=error,
            nnf=nnf,
            backend=self.backend,
            stats=stats,
            patch_evaluations=stats["patch_evaluations"],
        )


@dataclass(frozen=True)
class CudaSynthesizer:
    """The CUDA kernel executor on one device (an index, resolved when the synthesizer is made). Each calling
    thread gets its own stream and buffers on that device (cuda_backend.py), so one synthesizer may serve the
    two chains of a gap at once."""

    device: int
    run: Callable[..., tuple]  # cuda_backend.synthesize_cuda
    backend: ClassVar[str] = "cuda"

    def __call__(
        self, style, guides, params: SynthParams = SynthParams(), init_nnf=None, keep=None
    ) -> SynthResult:
        image, error, nnf, stats = self.run(
            *_prepare(style, guides, params, init_nnf, keep), device=self.device
        )
        return SynthResult(image=image, error=error, nnf=nnf, backend=self.backend, stats=stats)


def make_synthesizer(backend: Backend = "auto", device: str | int | None = None) -> Synthesizer:
    """The synthesizer of `backend` ("auto": CUDA where it can run, else the CPU), resolved once.

    `device` ("cuda", "cuda:N" or N; None: torch's current device of the calling thread) picks the GPU of the
    CUDA backend and is ignored by the CPU one. A backend that cannot run here is a ValueError that says
    why."""
    name = _pick_backend(backend)
    if name == "cuda":
        from rerender.native.cuda_backend import resolve_device, synthesize_cuda

        return CudaSynthesizer(resolve_device(device), synthesize_cuda)
    from rerender.native import _synth

    return CpuSynthesizer(_synth)


def synthesize(
    style: np.ndarray,
    guides: Sequence[Guide],
    params: SynthParams = SynthParams(),
    backend: Backend = "auto",
    init_nnf: np.ndarray | None = None,
    device: str | int | None = None,
    keep: np.ndarray | None = None,
) -> SynthResult:
    """Synthesize the target-sized image whose patches come from `style`, guided by `guides` (EbSynth).

    `device` ("cuda", "cuda:N" or N; None: torch's current device) picks the GPU of the CUDA backend. The GIL
    is released while the backend runs, so two calls can run in two threads at once (on CUDA each thread
    gets its own stream). Resolves the backend on every call: code that synthesizes many frames makes one
    `make_synthesizer(backend, device)` and calls it.

    `init_nnf` (int32 [Ht, Wt, 2], (x, y) into the style) starts the search from a known field, e.g. the
    previous frame's moved along the flow; `keep` (bool [Ht, Wt], with `init_nnf`) marks the pixels whose
    guides did not change since that field was found: they keep its match at every level and are not
    searched unless a changed neighbour moves their estimate, so the cost follows the changed area
    (synthesis.md §11)."""
    return make_synthesizer(backend, device)(style, guides, params, init_nnf, keep)


def _prepare(style, guides, params: SynthParams, init_nnf, keep=None) -> tuple:
    """Checked, packed arguments of a backend: (style, source, target, style_w, guide_w, levels, params, init,
    keep)."""
    style, guides = _validate(style, guides, params, init_nnf, keep)
    ns = style.shape[2]
    source = np.ascontiguousarray(np.concatenate([g.source for g in guides], axis=2))
    target = np.ascontiguousarray(np.concatenate([g.target for g in guides], axis=2))
    # synthesis.md §4: style weight split equally over the style's channels, each guide's weight over its channels.
    style_w = np.full(ns, params.style_weight / ns, np.float32)
    guide_w = np.concatenate(
        [np.full(g.source.shape[2], g.weight / g.source.shape[2], np.float32) for g in guides]
    )
    max_levels = max_pyramid_levels(style.shape[:2], target.shape[:2], params.patch_size)
    levels = max_levels if params.pyramid_levels is None else min(params.pyramid_levels, max_levels)
    init = None if init_nnf is None else np.ascontiguousarray(init_nnf)
    kept = None if keep is None else np.ascontiguousarray(keep, dtype=np.uint8)
    return (np.ascontiguousarray(style), source, target, style_w, guide_w, levels, params, init, kept)


def _pick_backend(backend: str) -> str:
    if backend not in ("auto", "cpu", "cuda"):
        raise ValueError(f"backend must be 'auto', 'cpu' or 'cuda', got {backend!r}.")
    if backend == "auto":
        return "cuda" if cuda_unavailable_reason() is None else "cpu"
    reason = cpu_unavailable_reason() if backend == "cpu" else cuda_unavailable_reason()
    if reason is not None:
        raise ValueError(f"backend {backend!r} cannot run here: {reason}")
    return backend


def _synthesize_cpu(
    style,
    source,
    target,
    style_w,
    guide_w,
    levels,
    params: SynthParams,
    init_nnf,
    keep=None,
    executor: str = "cpu",
):
    """The CPU executor of the one schedule (synth_driver.h), or with executor="kernels-host" the CUDA kernels
    compiled for the host and sequenced exactly as on a GPU (what CI compares frame for frame)."""
    from rerender.native import _synth

    return _run_cpu(_synth, style, source, target, style_w, guide_w, levels, params, init_nnf, keep, executor)


def _run_cpu(
    module: ModuleType,
    style,
    source,
    target,
    style_w,
    guide_w,
    levels,
    params: SynthParams,
    init_nnf,
    keep=None,
    executor: str = "cpu",
):
    return module.synthesize(
        style,
        source,
        target,
        style_w,
        guide_w,
        **params.schedule_kwargs(levels),
        threads=params.threads or default_threads(),
        init_nnf=init_nnf,
        executor=executor,
        keep=keep,
    )
