"""`RendererCache`: the preview's runs share one loaded diffusion model, and nothing else.

Real tiny SD1.5 folders on disk, real `run_job` calls on a real clip: a second run with the same cache
renders exactly what a fresh run renders (no per-anchor sampler state leaks between runs) without loading
the model again; per-run settings (prompt, seed, steps) keep the model, weight settings (ControlNet
scale, LoRA, another model) reload it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import media
import numpy as np
import pytest
import tiny_models
from rerender.filter import job
from rerender.filter.preview.session import PreviewSession
from rerender.filter.preview.settings import PageSettings

pytestmark = [
    pytest.mark.skipif(tiny_models.TOKENIZER_MISSING is not None, reason=str(tiny_models.TOKENIZER_MISSING)),
    pytest.mark.usefixtures("one_torch_thread"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("job-cache")
    c = tiny_models.build_components()
    return {
        "folder": tiny_models.write_diffusers_folder(root / "sd", c),
        "folder2": tiny_models.write_diffusers_folder(root / "sd-copy", c),
        "controlnet": tiny_models.write_controlnet_folder(root / "cn", c),
        "lora": tiny_models.write_lora(root / "lora.safetensors", c),
        "clip": media.write_clip(root / "clip.mp4", width=64, height=64, frames=5, audio=False),
        "root": root,
    }


def _options(files, *extra: str, model: str = "folder", scale: str = "0.7") -> job.RunOptions:
    return job.parse_run_options(
        [
            "-i", str(files["clip"]), "-o", str(files["root"] / "unused.mp4"), "--model", str(files[model]),
            "--controlnet", f"{files['controlnet']}:{scale}", "--prompt", "a cat", "--size", "64", "-K", "2",
            "--steps", "4", "--strength", "0.75", "--shape-fusion", "0,0.5", "--progress", "none", *extra,
        ]
    )  # fmt: skip


def _keyframes(options: job.RunOptions, cache: job.RendererCache | None) -> list[np.ndarray]:
    """Every keyframe (0, 2, 4: one anchor and two keyframes constrained by it) of the keyframe stage."""
    stylized: list[np.ndarray] = []
    result = job.run_job(
        options,
        stage="keyframes",
        on_keyframe=lambda index, source, image: stylized.append(image.copy()),
        renderers=cache,
    )
    assert result.keyframes == 3 and len(stylized) == 3
    return stylized


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_second_run_reuses_the_model_and_equals_a_fresh_run(files):
    options = _options(files)
    fresh = [_keyframes(options, None), _keyframes(options, None)]
    assert _same(fresh[0], fresh[1])  # the reference itself is reproducible

    cache = job.RendererCache()
    first = _keyframes(options, cache)
    model = cache.model
    second = _keyframes(options, cache)
    assert cache.loads == 1 and cache.model is model  # loaded once, the same networks served both runs
    assert _same(first, fresh[0]) and _same(second, fresh[1])


def test_per_run_settings_keep_the_model_and_weight_settings_reload_it(files):
    cache = job.RendererCache()
    base = _keyframes(_options(files), cache)
    model = cache.model
    networks = model.networks

    # Prompt, seed and steps are applied per run: same networks, and each result is the fresh run's.
    for extra in (["--prompt", "a dog"], ["--seed", "5"], ["--steps", "3"]):
        options = _options(files, *extra)
        cached = _keyframes(options, cache)
        assert cache.loads == 1 and cache.model is model and cache.model.networks is networks, extra
        assert not _same(cached, base), extra  # the setting took effect
        assert _same(cached, _keyframes(options, None)), extra

    # ControlNet scale, a LoRA and another model change the loaded weights: each reloads.
    loads = 1
    for options in (
        _options(files, scale="0.4"),
        _options(files, "--lora", f"{files['lora']}:0.8", scale="0.4"),
        _options(files, model="folder2"),
    ):
        previous = cache.model
        cached = _keyframes(options, cache)
        loads += 1
        assert cache.loads == loads and cache.model is not previous
        assert _same(cached, _keyframes(options, None))

    cache.clear()
    assert cache.model is None
    _keyframes(_options(files), cache)
    assert cache.loads == loads + 1


def test_a_job_waits_for_the_job_holding_the_cache_and_can_be_cancelled_meanwhile(files):
    cache = job.RendererCache()
    cancel = threading.Event()
    outcome: list[BaseException] = []

    def second_job() -> None:
        try:
            job.run_job(_options(files), stage="first-keyframe", cancel=cancel, renderers=cache)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)

    with cache.hold(lambda: None):  # a first job holds the cache
        thread = threading.Thread(target=second_job)
        thread.start()
        time.sleep(0.3)
        assert thread.is_alive() and cache.loads == 0  # waiting, not loading beside the first job
        cancel.set()
        thread.join(30)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], job.Cancelled) and cache.loads == 0


def _wait_for(session: PreviewSession, run_id: int) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = session.status()
        if status["run_id"] == run_id and status["state"] != "running":
            return status
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish: {session.status()}")


def test_the_preview_session_loads_the_model_once_for_the_ladder(files, tmp_path: Path):
    argv = [
        "-i",
        str(files["clip"]),
        "--model",
        str(files["folder"]),
        "--size",
        "64",
        "--steps",
        "3",
        "-K",
        "2",
    ]
    session = PreviewSession(files["clip"], argv, workdir=tmp_path, output_dir=tmp_path)
    try:
        settings = PageSettings(session.initial_values, session.initial_extra)
        for stage in ("first-keyframe", "keyframes"):
            started = session.start("preview", stage, settings, fast=True)
            assert _wait_for(session, started["run_id"])["state"] == "done"
        changed = PageSettings({**session.initial_values, "--prompt": "a dog"}, session.initial_extra)
        started = session.start("render", "full", changed, fast=False)
        status = _wait_for(session, started["run_id"])
        assert status["state"] == "done" and Path(status["output"]).is_file()
        assert session.renderers.loads == 1
    finally:
        session.close()
    assert session.renderers.model is None  # closing the session frees the model
