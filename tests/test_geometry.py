"""Processing size: never above the input's own size unless asked, and the same geometry for every part."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from media import texture, write_clip
from rerender.filter.geometry import ProcessingGeometry
from rerender.filter.job import parse_run_options, run_job

FAST = ["--search-vote-iters", "1", "--patchmatch-iters", "1", "--pyramid-levels", "2", "--threads", "1"]


@pytest.mark.parametrize(
    "input_size,upscale,canvas,scaled",
    [
        ((360, 640), False, (384, 640), (360, 640)),  # the input's own pixels, padded to multiples of 64
        ((360, 640), True, (512, 960), (512, 910)),  # asked for: scaled up to a short side of 512
        ((1080, 1920), False, (512, 960), (512, 910)),  # larger inputs are scaled down either way
        ((48, 64), False, (64, 64), (48, 64)),
    ],
)
def test_no_upscale_keeps_the_input_pixels(input_size, upscale, canvas, scaled):
    g = ProcessingGeometry.for_input(*input_size, short_side=512, upscale=upscale)
    assert (g.canvas, g.scaled) == (canvas, scaled)
    assert g.short_side == min(scaled)
    image = texture(1, input_size[1], input_size[0])
    if not upscale and scaled == input_size:
        # No resampling at all: the round trip gives the input back exactly.
        assert np.array_equal(g.to_output(g.to_processing(image)), image)


def test_crop_without_upscale_cuts_to_multiples_of_64():
    g = ProcessingGeometry.for_input(360, 640, short_side=512, fit="crop", upscale=False)
    assert g.canvas == (320, 640) and g.scaled == (360, 640)


def test_run_default_size_processes_small_inputs_at_their_own_size(tmp_path):
    clip = write_clip(tmp_path / "in.mkv", width=96, height=64, frames=5, audio=False)
    out = tmp_path / "out.mkv"
    events: list[dict] = []
    keys: list[tuple[int, int]] = []
    options = parse_run_options(["-i", str(clip), "-o", str(out), "-K", "4", *FAST])
    run_job(
        options,
        on_event=lambda e: events.append(e.to_json()),
        on_keyframe=lambda i, s, t: keys.append(t.shape[:2]),
    )
    start = events[0]
    assert start["processing_size"] == [128, 64]  # 96x64 padded to 128x64: not 768x512
    assert start["processing_note"].startswith("processing at 128x64: the input's own size 96x64")
    assert set(keys) == {(64, 128)}


def test_frames_renderer_keyframes_follow_the_processing_size_the_job_chose(tmp_path):
    """Keyframe files at the input's size (or twice it) fit the processing canvas of a small input that is
    not scaled up: the renderer gets the short side the job chose, not the --size default."""
    clip = write_clip(tmp_path / "in.mkv", width=96, height=64, frames=5, audio=False)
    keys = tmp_path / "keys"
    keys.mkdir()
    cv2.imwrite(str(keys / "0000.png"), texture(0, 96, 64))
    cv2.imwrite(str(keys / "0004.png"), texture(4, 192, 128))  # twice the input's size, same aspect
    options = parse_run_options(
        [
            "-i",
            str(clip),
            "-o",
            str(tmp_path / "out.mkv"),
            "--renderer",
            "frames",
            "--keyframes-dir",
            str(keys),
        ]
        + FAST
    )
    rendered: list[tuple[int, int]] = []
    result = run_job(options, on_keyframe=lambda i, s, t: rendered.append(t.shape[:2]))
    assert result.frames == 5 and rendered == [(64, 128), (64, 128)]
