"""`rerender run --ray`: the same frames, timestamps and audio as a local run, on a real local Ray cluster.

One cluster for the module, started here on loopback with two CPUs (`ray.init(num_cpus=2)`), no other
address. Real jobs (`run_job`) on real files; the frames are compared before encoding (the `on_frame`
images) and after (the lossless FFV1 outputs decoded), the timestamps and the audio from the outputs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import tiny_models
from media import texture
from rerender.filter import job
from rerender.filter.cluster.session import RAY_MISSING
from rerender.filter.events import WorkersEvent

FRAMES = 40
CUT = 20  # the first frame of the second shot
RATE = 25
AUDIO_RATE = 16000


def _shot_frame(i: int, width: int, height: int) -> np.ndarray:
    """A warm textured shot, then (from CUT) a cold, mirrored one: a scene cut the detector finds."""
    image = texture(i, width, height)
    if i >= CUT:
        image = np.ascontiguousarray(image[::-1, ::-1, ::-1])
        image[..., 2] = np.maximum(image[..., 2], 200)
        image[..., 0] //= 3
    else:
        image[..., 0] = np.maximum(image[..., 0], 200)
        image[..., 2] //= 3
    return image


def _write_clip(path: Path, frames: int = FRAMES, width: int = 96, height: int = 64) -> Path:
    """FFV1 video (lossless) and an AAC tone, in Matroska."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("ffv1", rate=RATE)
        video.width, video.height, video.pix_fmt = width, height, "yuv444p"
        tone = out.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        written = 0
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(_shot_frame(i, width, height), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, RATE)
            out.mux(video.encode(frame.reformat(format="yuv444p")))
            until = round((i + 1) / RATE * AUDIO_RATE)
            while written < until:
                n = min(1024, until - written)
                t = (np.arange(written, written + n) / AUDIO_RATE).astype(np.float32)
                samples = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)[None]
                chunk = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts, chunk.time_base = AUDIO_RATE, written, Fraction(1, AUDIO_RATE)
                out.mux(tone.encode(chunk))
                written += n
        out.mux(video.encode(None))
        out.mux(tone.encode(None))
    return path


def _decoded(path: Path) -> tuple[list[np.ndarray], list[int], np.ndarray]:
    """(video frames as RGB, their pts, the audio samples)."""
    with av.open(str(path)) as container:
        frames, pts = [], []
        for f in container.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24"))
            pts.append(f.pts)
    with av.open(str(path)) as container:
        audio = [f.to_ndarray() for f in container.decode(audio=0)]
    return frames, pts, np.concatenate(audio, axis=1) if audio else np.zeros((1, 0))


def _argv(clip: Path, out: Path, *extra: str) -> list[str]:
    return [
        "-i", str(clip), "-o", str(out), "--codec", "ffv1", "--size", "64", "-K", "8",
        "--progress", "none", *extra,
    ]  # fmt: skip


def _run(argv: list[str], **kwargs) -> tuple[job.JobResult, list[tuple[int, int, np.ndarray]], list]:
    captured: list[tuple[int, int, np.ndarray]] = []
    events: list = []
    result = job.run_job(
        job.parse_run_options(argv),
        on_event=events.append,
        on_frame=lambda source, image: captured.append((source.index, source.pts, image.copy())),
        **kwargs,
    )
    return result, captured, events


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        logging_level="ERROR",
    )
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return _write_clip(tmp_path_factory.mktemp("ray") / "shots.mkv")


@pytest.fixture(scope="module")
def local(clip):
    """The local run every Ray run is compared with."""
    out = clip.with_name("local.mkv")
    result, captured, events = _run(_argv(clip, out))
    assert any(getattr(e, "KIND", "") == "scene_cut" and e.index == CUT for e in events)
    return out, captured


def _same_output(local, out: Path, captured) -> None:
    local_out, local_captured = local
    assert [(i, p) for i, p, _ in captured] == [(i, p) for i, p, _ in local_captured]
    for (i, _, a), (_, _, b) in zip(captured, local_captured, strict=True):
        assert np.array_equal(a, b), f"frame {i} differs"
    frames, pts, audio = _decoded(out)
    ref_frames, ref_pts, ref_audio = _decoded(local_out)
    assert len(frames) == FRAMES and pts == ref_pts
    assert all(np.array_equal(a, b) for a, b in zip(frames, ref_frames, strict=True))
    assert audio.shape[1] > 0 and np.array_equal(audio, ref_audio)


def test_ray_gives_the_local_frames_timestamps_and_audio(cluster, clip, local):
    out = clip.with_name("ray.mkv")
    result, captured, events = _run(_argv(clip, out, "--ray"))
    _same_output(local, out, captured)
    assert result.keyframes == 8  # 0, 8, 16, 19 | 20 (the cut), 28, 36, 39: 6 gaps
    notes = [e.message for e in events if getattr(e, "KIND", "") == "note" and e.message.startswith("ray:")]
    assert len(notes) == 1 and "2 CPU(s)" in notes[0]  # the defaults, from the cluster's resources
    workers = [e for e in events if isinstance(e, WorkersEvent)]
    final = workers[-1].to_json()
    assert sum(w["frames"] for w in final["gaps"]) == FRAMES - result.keyframes
    assert [k["keyframes"] >= result.keyframes for k in final["keyframes"]] == [True]


def _propagating_workers() -> list[int]:
    """Pids of processes whose title says they run a propagation task now (Ray names a busy worker
    `ray::FUNCTION`)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if title.startswith(b"ray::propagate_remote"):
            pids.append(int(entry.name))
    return pids


def test_a_worker_killed_during_a_propagation_task_changes_nothing(cluster, clip, local):
    out = clip.with_name("killed.mkv")
    killed: list[int] = []
    done = threading.Event()

    def killer() -> None:
        while not done.is_set() and not killed:
            for pid in _propagating_workers():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.005)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        result, captured, _ = _run(_argv(clip, out, "--ray"))
    finally:
        done.set()
        thread.join()
    assert killed, "no propagation task was seen running"
    _same_output(local, out, captured)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


RSS_GROWTH_MB = 40  # the bound the driver's memory stays within from frame 200 to frame 1000


def test_the_driver_memory_stays_bounded_over_1000_frames(cluster, tmp_path):
    """1000 frames of 256x256 (processed at 64): keeping the frames would grow the driver by about 190 MB
    for input and output; a bounded window keeps it to a few gaps."""
    out = tmp_path / "long.mkv"
    samples: dict[int, float] = {}

    def sample(source, image) -> None:
        if source.index in (200, 999):
            samples[source.index] = _rss_mb()

    argv = [
        "-i", "lavfi:testsrc2=size=256x256:rate=25:duration=40", "-o", str(out), "--codec", "ffv1",
        "--size", "64", "-K", "10", "--search-vote-iters", "1", "--patchmatch-iters", "1",
        "--pyramid-levels", "1", "--progress", "none", "--no-scene-cuts", "--ray", "--ray-max-gaps", "4",
    ]  # fmt: skip
    result = job.run_job(job.parse_run_options(argv), on_frame=sample)
    assert result.frames == 1000
    assert samples[999] - samples[200] <= RSS_GROWTH_MB, samples


def test_the_diffusion_renderer_runs_on_an_actor_that_loads_the_model_once(cluster, tmp_path):
    if getattr(tiny_models, "TOKENIZER_MISSING", None) is not None:
        pytest.skip(tiny_models.TOKENIZER_MISSING)
    model = tiny_models.write_diffusers_folder(tmp_path / "sd", tiny_models.build_components())
    source = _write_clip(tmp_path / "short.mkv", frames=7, width=64, height=64)
    reports = []
    for run in range(2):  # two jobs: the second finds the model loaded on the (kept) actor
        argv = [
            "-i", str(source), "-o", str(tmp_path / f"d{run}.mkv"), "--codec", "ffv1", "--model", str(model),
            "--prompt", "a cat", "--size", "64", "-K", "3", "--steps", "2", "--progress", "none", "--ray",
            "--ray-keep-models",
        ]  # fmt: skip
        result, captured, events = _run(argv)
        assert result.frames == 7 and len(captured) == 7
        reports.append([e for e in events if isinstance(e, WorkersEvent)][-1].keyframes)
    (first,), (second,) = reports
    assert first["actor"] == second["actor"] and first["pid"] == second["pid"]
    assert (first["loads"], second["loads"]) == (1, 1)  # loaded once per actor, not per job or keyframe
    assert second["keyframes"] - first["keyframes"] == result.keyframes


def test_without_ray_the_flag_fails_in_one_line_naming_the_extra(tmp_path):
    clip = tmp_path / "in.mkv"
    code = (
        "import sys; sys.modules['ray'] = None\n"  # `import ray` fails, as where the extra is missing
        "from rerender.filter.cli import main\n"
        f"sys.exit(main(['run', '-i', {str(clip)!r}, '-o', {str(tmp_path / 'out.mkv')!r}, '--ray']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and RAY_MISSING in lines[0] and "pip install 'rerender[ray]'" in lines[0]
    assert not (tmp_path / "out.mkv").exists()


def _keyframe_actor_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::KeyframeWorker"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_a_killed_keyframe_actor_restarts_and_the_frames_stay_the_same(cluster, clip, local):
    out = clip.with_name("actor.mkv")
    killed: list[int] = []
    others = set(_keyframe_actor_pids())  # kept actors of other tests' jobs

    def kill_actor(index: int, source, stylized) -> None:
        if index == 28 and not killed:  # mid-scene: the next keyframe needs the scene's anchor state
            killed.extend(set(_keyframe_actor_pids()) - others)
            for pid in killed:
                os.kill(pid, signal.SIGKILL)

    result, captured, events = _run(_argv(clip, out, "--ray"), on_keyframe=kill_actor)
    assert len(killed) == 1
    _same_output(local, out, captured)
    (actor,) = [e for e in events if isinstance(e, WorkersEvent)][-1].keyframes
    assert actor["pid"] != killed[0] and actor["rebuilt"] == 1  # restarted, anchor state rebuilt once


def test_cancel_stops_a_ray_job_and_leaves_no_output(cluster, clip):
    out = clip.with_name("cancelled.mkv")
    cancel = threading.Event()

    def on_keyframe(index: int, source, stylized) -> None:
        if index == 16:
            cancel.set()

    with pytest.raises(job.Cancelled):
        _run(_argv(clip, out, "--ray"), cancel=cancel, on_keyframe=on_keyframe)
    assert not out.exists()


def test_watch_sends_each_clip_to_the_cluster_and_keeps_the_ledger_here(cluster, clip, tmp_path):
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    (inbox / "a.mkv").write_bytes(clip.read_bytes())
    past = time.time() - 60  # written a minute ago: stable at the first scan
    os.utime(inbox / "a.mkv", (past, past))
    rerender = str(Path(sys.executable).with_name("rerender"))
    argv = [rerender, "watch", str(inbox), "--out", str(outbox), "--once", "--poll", "0.2", "--stable", "0.5"]
    done = subprocess.run(
        [*argv, "--ray", "auto", "--progress", "json"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (outbox / "a_rerender.mkv").is_file(), done.stdout[-3000:]
    assert (outbox / ".rerender" / "ledger.sqlite").is_file()
    # The job's keyframes rendered on the cluster's kept keyframe actor (watch sets --ray-keep-models).
    from ray.util import list_named_actors

    assert {"name": "rerender-keyframes-0", "namespace": "rerender"} in list_named_actors(all_namespaces=True)
    actor = cluster.get_actor("rerender-keyframes-0", namespace="rerender")
    assert cluster.get(actor.info.remote())["keyframes"] >= 6  # K = 10 with the cut: 0, 10, 19 | 20, 30, 39


def test_an_address_where_nothing_answers_fails_in_one_line_without_waiting_for_ray(clip, tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")
    import socket

    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rerender = str(Path(sys.executable).with_name("rerender"))
    out = tmp_path / "out.mkv"
    for address, expected in ((f"127.0.0.1:{port}", "nothing answers"), ("ray://nohost", "HOST:PORT")):
        done = subprocess.run(
            [rerender, "run", "-i", str(clip), "-o", str(out), "--ray", address],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2 and expected in done.stderr.strip().splitlines()[-1]
        assert not out.exists()


def test_a_rerun_resumes_from_the_keyframe_cache_on_the_driver(cluster, clip, local, tmp_path):
    cache = tmp_path / "keyframes"
    first, _, _ = _run(_argv(clip, tmp_path / "first.mkv", "--ray"), keyframe_cache=cache)
    assert len(list(cache.glob("keyframe_*.png"))) == first.keyframes
    out = tmp_path / "again.mkv"
    result, captured, events = _run(_argv(clip, out, "--ray"), keyframe_cache=cache)
    (actor,) = [e for e in events if isinstance(e, WorkersEvent)][-1].keyframes
    assert actor["keyframes"] == 0  # every keyframe came from the cache: nothing rendered on the cluster
    _same_output(local, out, captured)


def test_an_error_on_a_keyframe_actor_is_the_jobs_own_one_line_error(cluster, clip, tmp_path):
    from rerender.filter.errors import UsageError

    keys = tmp_path / "keys"
    keys.mkdir()
    for i in (0, 8):
        (keys / f"{i:04d}.png").write_bytes(_png(_shot_frame(i, 96, 64)))
    (keys / "0016.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")  # decodes on the actor: fails there
    out = tmp_path / "out.mkv"
    argv = ["-i", str(clip), "-o", str(out), "--codec", "ffv1", "--renderer", "frames", "--keyframes-dir"]
    with pytest.raises(UsageError) as caught:
        _run([*argv, str(keys), "--progress", "none", "--ray"])
    assert "0016.png" in str(caught.value) and len(str(caught.value).splitlines()) == 1
    assert not out.exists()


def _png(image: np.ndarray) -> bytes:
    import cv2

    ok, data = cv2.imencode(".png", image[..., ::-1])
    assert ok
    return data.tobytes()
