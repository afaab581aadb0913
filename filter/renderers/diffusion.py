"""The diffusion keyframe renderer: SD1.5 + ControlNet keyframes with the hierarchical cross-frame constraints.

Loads the model once (`load_model`: `rerender.engines.loading`, on the backend `engines/select.py` chooses)
and renders every keyframe with the constrained sampler (`rerender.filter.sampler.keyframe`). Per-anchor
state (stored attention inputs, anchor x̂0, AdaIN statistics) lives on one `AnchorState`, replaced at every
anchor (stream start and scene cuts, docs/decisions.md decision 2). Flow between the keyframe and the anchor / previous keyframe comes from the
`--flow` estimator (OpenCV DIS by default, RAFT with `raft:WEIGHTS`). A `LoadedModel` holds no per-run
state, so the preview's `RendererCache` (filter/job.py) hands one to run after run with an equal `model_key`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import UsageError
from ..sampler.color import color_correct
from ..sampler.keyframe import (
    AnchorState,
    Conditioning,
    FlowGuide,
    SamplerSettings,
    encode_image,
    encode_text,
    render_anchor,
    render_keyframe,
)
from .base import KeyframeContext, RenderedKeyframe
from .diffusion_options import DiffusionOptions

if TYPE_CHECKING:
    from ...engines.control import ControlPreprocessor
    from ...engines.runtime import Networks
    from ...engines.select import Selection

_VARY_NOISE_STRIDE = 1_000_003  # --vary-noise: a distinct, reproducible seed per keyframe index


def _image_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> (1, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return ((image[0].float().clamp(-1, 1) + 1.0) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def _flow_tensor(flow: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32)).permute(2, 0, 1)[None]


def _mask_tensor(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(mask.astype(np.float32))[None, None]


def make_flow(spec: str):
    """The flow estimator named by `--flow` (RAFT lives in engines/flow_raft.py)."""
    from ...engines import flow

    name, _, arg = spec.partition(":")
    if name == "raft":
        from ...engines import flow_raft

        return flow_raft.make_estimator(arg or None)
    try:
        return flow.make_flow_estimator(spec)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _check_size(processing_size: tuple[int, int]) -> None:
    height, width = processing_size
    if height % 64 or width % 64:
        raise UsageError(
            f"the diffusion renderer needs a processing size in multiples of 64; got {width}x{height}"
        )


def _control_is_stateless(specs: tuple[str, ...]) -> bool:
    # canny/hed/depth map a frame to a hint and keep nothing; `video:PATH` reads its file forward only, so
    # a reader shared between runs would start the second run where the first one stopped.
    return all(spec.partition(":")[0] != "video" for spec in specs)


def _make_controls(opts: DiffusionOptions, device) -> tuple[ControlPreprocessor, ...]:
    from ...engines.control import make_control

    return tuple(make_control(spec, opts.allow_pickle, device) for spec in opts.control_specs())


def model_key(opts: DiffusionOptions, processing_size: tuple[int, int]) -> tuple:
    """Everything that changes what `load_model` loads: runs with equal keys can share one `LoadedModel`.

    Prompt, seed, strength, steps, CFG, the step windows, K and (on torch) the size are applied per run and
    are not part of it. The size is, with `--engines`: an exported engine's profile decides whether it can
    serve that size (engines/select.py). Files changed on disk under the same path are not noticed."""
    return (
        opts.model,
        opts.model_config,
        opts.loras,
        opts.controlnets,
        opts.control_specs() if _control_is_stateless(opts.control_specs()) else None,
        opts.vae,
        opts.freeu,
        opts.device,
        opts.dtype,
        opts.backend,
        opts.engines,
        opts.allow_pickle,
        tuple(processing_size) if opts.engines is not None else None,
    )


@dataclass
class LoadedModel:
    """The loaded networks of one `model_key` (weights on their backend, ControlNet hint models): nothing in
    here changes while a run renders, so one `LoadedModel` can serve run after run (not two at once: the
    torch UNet passes cross-frame states through its attention processors during a call)."""

    networks: Networks
    selection: Selection
    controls: tuple[ControlPreprocessor, ...] | None  # None: a stateful preprocessor, made per run

    def controls_for_run(self, opts: DiffusionOptions) -> tuple[ControlPreprocessor, ...]:
        if self.controls is not None:
            return self.controls
        return _make_controls(opts, self.networks.device)

    def close(self) -> None:
        """Unload what the garbage collector cannot (a TensorRT session's engines)."""
        if self.selection.session is not None:
            self.selection.session.unload()
            self.selection.session = None


def load_model(
    opts: DiffusionOptions, processing_size: tuple[int, int], on_note: Callable[[str], None] | None = None
) -> LoadedModel:
    """Load the model, LoRAs and ControlNets the options name on the backend they choose."""
    from ...engines.loading import load_bundle
    from ...engines.select import Request, select_networks
    from ...engines.torch_backend import resolve_device, resolve_dtype, torch_networks

    _check_size(processing_size)
    height, width = processing_size
    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype, device)

    def load_torch():
        bundle = load_bundle(
            opts.model,
            loras=opts.loras,
            controlnets=opts.controlnets,
            allow_pickle=opts.allow_pickle,
            config_dir=opts.model_config,
            vae=opts.vae,
        )
        return torch_networks(bundle, device, dtype, opts.freeu)

    # The backend is chosen once here (engines/select.py); the sampler never branches on it.
    request = Request(
        opts.model, opts.loras, opts.controlnets, (height, width), opts.device, opts.freeu is not None
    )
    selection = select_networks(opts.backend, request, opts.engines, load_torch)
    if opts.engines is not None or opts.backend != "auto":  # without --engines only torch can serve
        (on_note or _print_note)(selection.describe())
    networks = selection.networks
    controls = _make_controls(opts, networks.device) if _control_is_stateless(opts.control_specs()) else None
    return LoadedModel(networks, selection, controls)


@dataclass(frozen=True)
class KeyframeStats:
    index: int
    evaluations: int
    passes: int


def _print_note(message: str) -> None:
    print(f"rerender: {message}", file=sys.stderr)


class DiffusionRenderer:
    """`KeyframeRenderer` over the constrained sampler; `stats` lists the cost of each rendered keyframe."""

    name = "diffusion"

    def __init__(self, networks, settings: SamplerSettings, options: DiffusionOptions, controls, flow):
        self.networks = networks
        self.settings = settings
        self.options = options
        self.controls = tuple(controls)
        self.flow = flow
        prompt = options.prompt
        if options.added_prompt:
            prompt = f"{prompt}, {options.added_prompt}" if prompt else options.added_prompt
        self.text_embeddings = encode_text(networks, prompt, options.negative_prompt)
        self.state = AnchorState()
        self.stats: list[KeyframeStats] = []

    @classmethod
    def from_options(
        cls,
        opts: DiffusionOptions,
        processing_size: tuple[int, int],
        model: LoadedModel | None = None,
        on_note: Callable[[str], None] | None = None,
    ) -> DiffusionRenderer:
        """A renderer for one run. `model` is networks loaded earlier by `load_model` with the same
        `model_key` (the preview's `RendererCache`); without it the model is loaded now. Everything per run
        (text embeddings, anchor state, flow estimator, a control video's reader) is built fresh here."""
        _check_size(processing_size)
        model = model if model is not None else load_model(opts, processing_size, on_note)
        settings = SamplerSettings(
            steps=opts.steps,
            strength=opts.strength,
            cfg_scale=opts.cfg_scale,
            cross_frame=opts.cross_frame,
            shape_fusion=(opts.shape_fusion.start, opts.shape_fusion.end),
            pixel_fusion=(opts.pixel_fusion.start, opts.pixel_fusion.end),
            adain=(opts.adain.start, opts.adain.end),
            mask_strength=opts.mask_strength,
            inner_strength=opts.inner_strength,
            smooth_boundary=opts.smooth_boundary,
            fidelity_threshold=opts.fidelity_threshold,
            direct_image=opts.direct_image,
        )
        return cls(model.networks, settings, opts, model.controls_for_run(opts), make_flow(opts.flow))

    def _seed(self, index: int) -> int:
        # docs/decisions.md decision 4: every keyframe pass re-seeds identically unless --vary-noise.
        return (
            self.options.seed + index * _VARY_NOISE_STRIDE if self.options.vary_noise else self.options.seed
        )

    def _guide(self, frame: np.ndarray, anchor: RenderedKeyframe, previous: RenderedKeyframe) -> FlowGuide:
        from ...engines.flow import occlusion

        def towards(reference: RenderedKeyframe) -> tuple[torch.Tensor, torch.Tensor]:
            backward = self.flow.estimate(frame, reference.source)
            forward = self.flow.estimate(reference.source, frame)
            return _flow_tensor(backward), _mask_tensor(occlusion(backward, forward))

        flow_anchor, occ_anchor = towards(anchor)
        if previous.index == anchor.index:
            flow_previous, occ_previous = flow_anchor, occ_anchor
        else:
            flow_previous, occ_previous = towards(previous)
        return FlowGuide(
            flow_anchor,
            occ_anchor,
            flow_previous,
            occ_previous,
            _image_tensor(anchor.stylized),
            _image_tensor(previous.stylized),
        )

    def render(self, frame: np.ndarray, context: KeyframeContext) -> np.ndarray:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(
                f"the diffusion renderer takes RGB uint8 frames; got {frame.dtype} {frame.shape}"
            )
        anchor = context.is_anchor or context.anchor is None
        source = frame
        if self.options.color_correct and not anchor:
            source = color_correct(frame, context.anchor.stylized)  # SDEdit source only
        hints = tuple(
            torch.from_numpy(control(frame, context.index)).permute(2, 0, 1)[None].float() / 255.0
            for control in self.controls
        )
        cond = Conditioning(self.text_embeddings, hints, encode_image(self.networks, _image_tensor(source)))
        seed = self._seed(context.index)
        if anchor:
            self.state = AnchorState()
            result = render_anchor(self.networks, self.settings, cond, self.state, seed)
        else:
            previous = context.previous or context.anchor
            guide = self._guide(frame, context.anchor, previous)
            result = render_keyframe(self.networks, self.settings, cond, self.state, guide, seed)
        self.stats.append(KeyframeStats(context.index, result.evaluations, result.passes))
        return _to_uint8(result.image)
