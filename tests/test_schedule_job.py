"""The keyframe schedule where the job and the preview use it, and the Filter's keyframe cache on disk.

`rerender run` builds the frames renderer's schedule from the keyframe folder (the renderer carries none);
its progress totals and the preview's expected keyframe count come from that one schedule. Real clips,
real files, real `run_job` and `PreviewSession` runs.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from media import texture, write_clip
from rerender.filter.job import keyframe_schedule, parse_run_options, run_job
from rerender.filter.keyframe_cache import KeyframeCache
from rerender.filter.preview.session import PreviewSession
from rerender.filter.preview.settings import PageSettings
from rerender.filter.schedule import AdaptiveSchedule, FixedSchedule, UniformSchedule

FAST = ["--size", "64", "--search-vote-iters", "1", "--patchmatch-iters", "1", "--pyramid-levels", "2"]
FAST += ["--threads", "1"]
FRAMES = 9


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return write_clip(tmp_path / "in.mp4", width=64, height=48, frames=FRAMES, audio=False)


def write_keys(folder: Path, indices: list[int]) -> Path:
    folder.mkdir()
    for i in indices:
        cv2.imwrite(str(folder / f"{i:04d}.png"), texture(i, 64, 48))
    return folder


def frames_argv(clip: Path, keys: Path) -> list[str]:
    return ["-i", str(clip), "--renderer", "frames", "--keyframes-dir", str(keys), "-K", "2", *FAST]


def test_the_job_schedules_the_frames_renderer_from_its_folder(clip, tmp_path):
    keys = write_keys(tmp_path / "keys", [1, 5, 30])
    options = parse_run_options([*frames_argv(clip, keys), "-o", str(tmp_path / "out.mp4")])
    schedule = keyframe_schedule(options)
    assert isinstance(schedule, FixedSchedule) and schedule.expected_keyframes(FRAMES) == [1, 5]
    events: list[dict] = []
    rendered: list[int] = []
    result = run_job(
        options, on_event=lambda e: events.append(e.to_json()), on_keyframe=lambda i, s, t: rendered.append(i)
    )
    assert rendered == [1, 5] and result.frames == FRAMES  # the files, not -K 2
    assert any("frame 30" in w for w in result.warnings)
    # Progress plans with the same schedule: 2 keyframes; frame 0 (backward only) and 6-8 (forward only)
    # take one synthesis step each, 2-4 two: 10 in all, which is what was done.
    work = [e["work"] for e in events if "work" in e][-1]  # the last frame written
    assert work["keyframes_total"] == 2 and work["keyframes"] == 2
    assert work["synthesis_total"] == 10 == work["synthesized"]


def test_uniform_and_adaptive_runs_get_their_schedules(tmp_path):
    out = ["-i", "in.mkv", "-o", str(tmp_path / "out.mp4")]
    assert isinstance(keyframe_schedule(parse_run_options([*out, "-K", "3"])), UniformSchedule)
    adaptive = keyframe_schedule(parse_run_options([*out, "--keyframes", "adaptive"]))
    assert isinstance(adaptive, AdaptiveSchedule)


def _run_stage(session: PreviewSession, stage: str) -> dict:
    settings = PageSettings(session.initial_values, session.initial_extra)
    run_id = session.start("preview", stage, settings, fast=False)["run_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = session.status()
        if status["run_id"] == run_id and status["state"] != "running":
            return status
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish: {session.status()}")


@pytest.mark.parametrize(
    "extra,expected",
    [
        ([], [0, 2, 4, 6, 8]),  # uniform -K 2
        (["--keyframes", "adaptive"], None),  # decided on the way: no count up front
        ("frames", [1, 5]),  # the keyframe files, not -K 2
    ],
    ids=["uniform", "adaptive", "frames"],
)
def test_the_preview_expects_the_keyframes_of_the_runs_schedule(clip, tmp_path, extra, expected):
    if extra == "frames":
        argv = frames_argv(clip, write_keys(tmp_path / "keys", [1, 5, 30]))
    else:
        argv = ["-i", str(clip), "-K", "2", *FAST, *extra]
    session = PreviewSession(clip, argv, workdir=tmp_path, output_dir=tmp_path)
    try:
        status = _run_stage(session, "keyframes")
    finally:
        session.close()
    assert status["state"] == "done", status["message"]
    assert status["keyframes_expected"] == (None if expected is None else len(expected))
    if expected is not None:
        assert status["keyframes"] == expected


def test_keyframe_cache_keeps_a_keyframe_at_its_own_size_only(tmp_path):
    cache = KeyframeCache(tmp_path / "a" / "b")  # created with its parents
    image = texture(3, 64, 48)
    assert cache.load(7, (48, 64)) is None
    cache.store(7, image)
    assert [p.name for p in cache.folder.iterdir()] == ["keyframe_000007.png"]  # no temporary file left
    assert np.array_equal(cache.load(7, (48, 64)), image)
    assert cache.load(7, (64, 64)) is None  # another processing size: rendered again
    cache.path(8).write_bytes(b"not a png")
    assert cache.load(8, (48, 64)) is None  # unreadable: rendered again
    cache.path(9).mkdir()
    assert cache.load(9, (48, 64)) is None
