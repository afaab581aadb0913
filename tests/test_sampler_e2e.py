"""End to end: `rerender run --model <tiny SD1.5> ...` on a synthetic clip, offline, and the diffusion
renderer's per-anchor state through the `KeyframeRenderer` interface."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import media
import numpy as np
import pytest
import tiny_models
import torch
from rerender.filter.renderers.base import KeyframeContext, RenderedKeyframe
from rerender.filter.renderers.diffusion_options import DiffusionOptions, Window

pytestmark = pytest.mark.skipif(
    tiny_models.TOKENIZER_MISSING is not None, reason=str(tiny_models.TOKENIZER_MISSING)
)

RERENDER = str(Path(sys.executable).with_name("rerender"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    c = tiny_models.build_components()
    return {
        "folder": tiny_models.write_diffusers_folder(root / "sd", c),
        "controlnet": tiny_models.write_controlnet_folder(root / "cn", c),
        "single": tiny_models.write_single_file(root / "sd.safetensors", c),
        "configs": tiny_models.write_config_folder(root / "configs"),
        "lora": tiny_models.write_lora(root / "lora.safetensors", c),
        "clip": media.write_clip(root / "clip.mp4", width=80, height=64, frames=7, audio=False),
        "root": root,
    }


def _run(*args: str, progress: str = "none") -> subprocess.CompletedProcess:
    # Offline and one thread per process (a shared 2-core machine); the tiny model needs no more.
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(
        [RERENDER, "run", *args, "--progress", progress], capture_output=True, text=True, env=env, timeout=600
    )


def _frames(path: Path) -> tuple[list[int], list[np.ndarray]]:
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return [f.pts for f in frames], [f.to_ndarray(format="rgb24") for f in frames]


def _check_output(files, out: Path) -> None:
    pts_in, images_in = _frames(files["clip"])
    pts_out, images_out = _frames(out)
    assert pts_out == pts_in and len(images_out) == 7  # every frame, once, with its timestamp
    assert images_out[0].shape == images_in[0].shape
    # Random weights render noise, far from the input: the diffusion renderer really made the keyframes.
    assert np.abs(images_out[0].astype(float) - images_in[0]).mean() > 20


def test_run_with_a_diffusers_folder_and_controlnet(files):
    out = files["root"] / "folder.mp4"
    result = _run(
        "-i", str(files["clip"]), "-o", str(out), "--model", str(files["folder"]),
        "--controlnet", f"{files['controlnet']}:0.7", "--prompt", "a cat", "--size", "64", "-K", "3", "--steps", "6",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    _check_output(files, out)
    assert "no --controlnet" not in result.stderr


def test_run_with_a_single_file_checkpoint_and_a_lora(files):
    out = files["root"] / "single.mp4"
    result = _run(
        "-i", str(files["clip"]), "-o", str(out), "--model", str(files["single"]), "--model-config",
        str(files["configs"]), "--lora", f"{files['lora']}:0.8", "--prompt", "a cat", "--size", "64", "-K", "3",
        "--steps", "6", "--cross-frame", "full", "--freeu", "1.1,1.2,1.0,0.2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    _check_output(files, out)
    # Without a ControlNet the keyframes follow the text only: said once, on stderr.
    warnings = [line for line in result.stderr.splitlines() if "no --controlnet" in line]
    assert len(warnings) == 1 and "drift from the input's structure" in warnings[0]


def test_json_progress_keeps_stderr_pure_json_with_the_controlnet_warning(files):
    """The no-ControlNet sentence and the backend note are events, so --progress json stays parseable."""
    out = files["root"] / "json.mp4"
    result = _run(
        "-i", str(files["clip"]), "-o", str(out), "--model", str(files["folder"]), "--prompt", "a cat",
        "--size", "64", "-K", "3", "--steps", "4", "--backend", "torch", progress="json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert all(line.startswith("{") for line in lines), result.stderr[-2000:]
    events = [json.loads(line) for line in lines]
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert len(warnings) == 1 and "no --controlnet" in warnings[0]
    assert any(e["event"] == "note" for e in events)  # --backend torch: which backend serves the run


def test_two_controlnets_each_with_its_own_hint(files):
    from rerender.filter.renderers.diffusion import DiffusionRenderer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cn = str(files["controlnet"])
        options = DiffusionOptions(
            model=str(files["folder"]),
            controlnets=((cn, 0.7), (cn, 0.4)),
            control=("canny", "canny:10,20"),
            steps=4,
        )
        renderer = DiffusionRenderer.from_options(options, (64, 64))
        assert [c.name for c in renderer.controls] == ["canny:50,100", "canny:10,20"]
        assert [s for _, s in renderer.networks.controlnets] == [0.7, 0.4]
        frame = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
        assert renderer.render(frame, KeyframeContext(0, True, None, None)).shape == (64, 64, 3)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--strength", "1.5"], "--strength must be in"),
        (["--pixel-fusion", "0.8,0.5"], "--pixel-fusion expects"),
        (["--control", "sketch"], "--control expects"),
        (["--control", "hed:weights.pth"], "needs a ControlNet"),
        (["--steps", "1000"], "--steps must be"),
    ],
)
def test_impossible_values_are_one_sentence(files, flags, message):
    out = files["root"] / "bad.mp4"
    result = _run("-i", str(files["clip"]), "-o", str(out), "--model", str(files["folder"]), *flags)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_missing_model_is_one_sentence_and_no_output(files):
    out = files["root"] / "missing.mp4"
    result = _run(
        "-i", str(files["clip"]), "-o", str(out), "--model", str(files["root"] / "none.safetensors")
    )
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_renderer_resets_its_state_at_every_anchor(files):
    from rerender.filter.renderers.diffusion import DiffusionRenderer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        options = DiffusionOptions(
            model=str(files["folder"]),
            controlnets=((str(files["controlnet"]), 0.7),),
            steps=10,
            strength=0.8,
            shape_fusion=Window(0.0, 0.3),
        )
        renderer = DiffusionRenderer.from_options(options, (64, 64))
        rng = np.random.default_rng(0)
        frames = [np.roll((rng.random((64, 64, 3)) * 255).astype(np.uint8), 2 * i, axis=1) for i in range(3)]
        first = renderer.render(frames[0], KeyframeContext(0, True, None, None))
        anchor_state = renderer.state
        assert sorted(anchor_state.first) == list(range(2, 10)) and sorted(anchor_state.anchor_x0) == [2, 3]
        anchor = RenderedKeyframe(0, frames[0], first)
        second = renderer.render(frames[1], KeyframeContext(3, False, anchor, anchor))
        assert renderer.state is anchor_state and second.shape == (64, 64, 3)
        # A scene cut: the next keyframe is a new anchor, with a fresh state.
        renderer.render(frames[2], KeyframeContext(6, True, None, None))
        assert renderer.state is not anchor_state
        assert [s.passes for s in renderer.stats] == [1, 2, 1]
        assert renderer.stats[0].evaluations == 16  # round(10 · 0.8) = 8 steps × CFG 2
    finally:
        torch.set_num_threads(threads)
