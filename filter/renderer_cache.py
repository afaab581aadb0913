"""The keyframe renderer a job's options name (`make_renderer`), and `RendererCache`, which keeps the loaded
diffusion networks from one run to the next of the same caller (the preview server)."""

from __future__ import annotations

import gc
import importlib
import importlib.util
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .errors import UsageError
from .renderers.base import KeyframeRenderer
from .renderers.classic import ClassicOptions, ClassicRenderer
from .renderers.frames import FramesOptions, FramesRenderer
from .run_options import RunOptions


class RendererCache:
    """The diffusion model the last `run_job` loaded, kept for the next run of the same caller.

    The preview server runs job after job on one clip (first keyframe, all keyframes, full, render to file);
    reloading Stable Diffusion for each click costs tens of seconds. One entry (an LRU of 1): a run whose
    options give the same `diffusion.model_key` (model, model config, LoRAs and ControlNets with their
    scales, control preprocessor, FreeU, device, dtype, backend, engines, allow_pickle) reuses the loaded
    networks; a run with another key frees the old ones first, then loads. Only the networks are shared:
    every run builds its own renderer (text embeddings, per-anchor sampler state, flow estimator), so a run's
    output equals that of a fresh process. `loads` counts the loads this cache did.

    Not for concurrent jobs: one set of networks must not serve two jobs at once (the torch UNet passes
    cross-frame states through its attention processors during a call). `run_job` holds the cache for the
    whole job, so a second job given the same cache waits for the first (or for its own `cancel`); callers
    that run jobs in parallel (the watch daemon's workers) must not share one.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._model: object | None = None
        self._busy = threading.Lock()
        self.loads = 0

    @property
    def model(self) -> object | None:
        """The loaded model (`diffusion.LoadedModel`), or None."""
        return self._model

    def get(self, key: tuple, load: Callable[[], object]) -> object:
        """The model for `key`: the cached one, or (after freeing the cached one) `load()`."""
        if self._model is None or self._key != key:
            self.clear()  # free the old weights before the new ones take the same memory
            self._model = load()
            self._key = key
            self.loads += 1
        return self._model

    def clear(self) -> None:
        """Free the cached model; call it when no job uses the cache (e.g. when the server closes)."""
        model, self._model, self._key = self._model, None, None
        if model is not None:
            close = getattr(model, "close", None)
            if close is not None:
                close()
            del model
            gc.collect()  # the modules' reference cycles, so the memory is back before the next load

    @contextmanager
    def hold(self, check_cancel: Callable[[], None]) -> Iterator[None]:
        """Use the cache for one job; waits (checking `check_cancel`) while another job holds it."""
        while not self._busy.acquire(timeout=0.05):
            check_cancel()
        try:
            yield
        finally:
            self._busy.release()


def make_renderer(
    options: RunOptions,
    processing_size: tuple[int, int],
    renderers: RendererCache | None = None,
    short_side: int | None = None,
    on_note: Callable[[str], None] | None = None,
) -> KeyframeRenderer:
    """The keyframe renderer the options name; `processing_size` is (height, width) and `short_side` the
    input's short side scaled to it (`ProcessingGeometry.short_side`; default: the --size option). With
    `renderers`, the diffusion renderer's networks come from (and stay in) that cache."""
    f = options.filter
    chosen = options.renderer
    if isinstance(chosen, ClassicOptions):
        return ClassicRenderer(chosen)
    if isinstance(chosen, FramesOptions):
        size = f.size if short_side is None else short_side
        return FramesRenderer(chosen.keyframes_dir, chosen.first_index, size, f.fit)
    if importlib.util.find_spec("rerender.filter.renderers.diffusion") is None:
        raise UsageError(
            "the diffusion renderer is not available in this build; use --renderer classic or --renderer frames"
        )
    module = importlib.import_module("rerender.filter.renderers.diffusion")
    model = None
    if renderers is not None:
        key = module.model_key(chosen, processing_size)
        model = renderers.get(key, lambda: module.load_model(chosen, processing_size, on_note))
    return module.DiffusionRenderer.from_options(chosen, processing_size, model, on_note)
