"""`rerender run` end to end (real subprocesses, files and pipes) and the job API under it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from media import texture, write_clip
from rerender.filter.errors import UsageError
from rerender.filter.events import DoneEvent, ErrorEvent, FrameEvent, StartEvent
from rerender.filter.job import Cancelled, build_run_parser, parse_run_options, run_job
from rerender.filter.renderers.classic import ClassicOptions

FAST = ["--size", "64", "--search-vote-iters", "1", "--patchmatch-iters", "1", "--pyramid-levels", "2"]
FAST += ["--threads", "1"]
CLI = [sys.executable, "-m", "rerender.filter.cli", "run"]


def video_frames(data_or_path) -> tuple[list[float], tuple[int, int], list[str]]:
    """Time in seconds of every decoded frame, (width, height), stream types."""
    import io

    source = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else str(data_or_path)
    with av.open(source) as container:
        kinds = [s.type for s in container.streams]
        stream = container.streams.video[0]
        times = [round(float(f.pts * f.time_base), 6) for f in container.decode(stream)]
        return times, (stream.codec_context.width, stream.codec_context.height), kinds


def test_pipe_in_pipe_out_keeps_every_frame_and_timestamp(tmp_path):
    # No audio: NUT output shifts every stream by the AAC encoder's priming delay (an I/O-layer matter).
    clip = write_clip(tmp_path / "in.mkv", width=64, height=48, frames=12, audio=False)
    in_times, in_size, _ = video_frames(clip)
    done = subprocess.run(
        [*CLI, "-i", "-", "-o", "-", "-f", "nut", "-K", "4", "--quiet", *FAST],
        input=clip.read_bytes(),
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    out_times, out_size, _ = video_frames(done.stdout)
    assert out_size == in_size
    assert len(out_times) == len(in_times) == 12
    assert out_times == in_times  # NUT picks its own time base: compare times, not ticks


def test_file_mode_with_json_progress_and_audio(tmp_path):
    clip = write_clip(tmp_path / "in.mkv", width=64, height=48, frames=9, audio=True)
    out = tmp_path / "out.mkv"
    done = subprocess.run(
        [*CLI, "-i", str(clip), "-o", str(out), "-K", "4", "--progress", "json", *FAST],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    events = [json.loads(line) for line in done.stderr.decode().splitlines() if line.startswith("{")]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert [e["index"] for e in events if e["event"] == "frame"] == list(range(9))
    assert [e["index"] for e in events if e["event"] == "keyframe"] == [0, 4, 8]
    last = [e for e in events if e["event"] == "frame"][-1]
    assert last["done"] == 9 and last["fps"] > 0
    pts, size, streams = video_frames(out)
    assert pts == video_frames(clip)[0] and size == (64, 48) and "audio" in streams


def test_lavfi_test_source_needs_no_video_of_ones_own(tmp_path):
    out = tmp_path / "out.mp4"
    done = subprocess.run(
        [*CLI, "-i", "lavfi:testsrc2=size=96x64:rate=10:duration=1", "-o", str(out), "-q", *FAST],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    pts, size, _ = video_frames(out)
    assert len(pts) == 10 and size == (96, 64)


@pytest.mark.parametrize(
    "args,message",
    [
        (["-i", "missing.mp4", "-o", "{out}"], "no such file"),
        (["-i", "{clip}", "-o", "{out}", "-K", "0"], "-K/--keyframe-interval: expects a whole number from 1"),
        (["-i", "{clip}", "-o", "{out}", "--size", "100"], "multiple of 64"),
        (["-i", "{clip}", "-o", "{out}", "--renderer", "frames"], "--keyframes-dir"),
        (["-i", "{clip}", "-o", "{out}", "--flow", "dis:slowest"], "preset"),
        (["-i", "{clip}", "-o", "{out}", "--bogus"], "unrecognized arguments"),
        (["-i", "lavfi:testsrc2", "-o", "{out}"], "needs a duration"),
        (
            ["-i", "{clip}", "-o", "{out}", "--renderer", "frames", "--keyframes-dir", "{keys}"],
            "none of the keyframe",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_output(tmp_path, args, message):
    clip = write_clip(tmp_path / "in.mkv", width=64, height=48, frames=4, audio=False)
    keys = tmp_path / "keys"
    keys.mkdir()
    cv2.imwrite(str(keys / "0100.png"), texture(0, 64, 48))
    out = tmp_path / "out.mp4"
    argv = [a.format(clip=clip, out=out, keys=keys) for a in args]
    done = subprocess.run([*CLI, "-q", *FAST, *argv], capture_output=True, timeout=120)
    stderr = done.stderr.decode().strip()
    assert done.returncode == 2, stderr
    assert message in stderr and len(stderr.splitlines()) == 1 and "Traceback" not in stderr
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))


def test_missing_model_is_a_usage_error_and_writes_nothing(tmp_path):
    clip = write_clip(tmp_path / "in.mkv", width=64, height=48, frames=2, audio=False)
    out = tmp_path / "o.mp4"
    done = subprocess.run(
        [*CLI, "-i", str(clip), "-o", str(out), "--model", str(tmp_path / "no-such-model"), "-q"],
        capture_output=True,
        timeout=60,
    )
    stderr = done.stderr.decode().strip()
    assert done.returncode == 2, stderr
    *warnings, error = stderr.splitlines()  # -q silences progress, not warnings (one line each)
    assert "--model" in error and "does not exist" in error and "Traceback" not in stderr
    assert all(": warning: " in line for line in warnings)
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))


# -- the job API (what the watch daemon and the preview server call) ------------------------------------


def options_for(tmp_path: Path, *extra: str, frames: int = 9):
    clip = write_clip(tmp_path / "in.mkv", width=64, height=48, frames=frames, audio=False)
    return parse_run_options(["-i", str(clip), "-o", str(tmp_path / "out.mp4"), "-K", "4", *FAST, *extra])


def test_parser_has_io_filter_and_diffusion_flags():
    parser = build_run_parser()
    flags = {s for a in parser._actions for s in a.option_strings}
    assert {"-i", "-o", "-f", "-K", "--keyframes", "--renderer", "--keyframes-dir", "--size"} <= flags
    assert {"--propagate-at", "--flow", "--threads", "--crf", "--codec", "--model", "--prompt"} <= flags
    assert {"--progress", "--quiet"} <= flags
    with pytest.raises(UsageError, match="--model is used by the diffusion renderer only"):
        parse_run_options(["-i", "a.mp4", "-o", "b.mp4", "--renderer", "classic", "--model", "m"])
    options = parse_run_options(["-i", "a.mp4", "-o", "b.mp4", "--keyframes", "adaptive"])
    assert isinstance(options.renderer, ClassicOptions) and options.filter.schedule.mode == "adaptive"


def test_run_job_calls_back_in_order(tmp_path):
    options = options_for(tmp_path)
    frames, keys, events = [], [], []
    result = run_job(
        options,
        on_event=events.append,
        on_frame=lambda frame, image: frames.append((frame.index, image.shape)),
        on_keyframe=lambda i, source, stylized: keys.append((i, stylized.shape)),
    )
    assert [i for i, _ in frames] == list(range(9)) and all(s == (48, 64, 3) for _, s in frames)
    assert [i for i, _ in keys] == [0, 4, 8] and all(s == (64, 128, 3) for _, s in keys)  # processing size
    assert result.frames == 9 and result.keyframes == 3 and result.output == tmp_path / "out.mp4"
    assert result.output.exists() and {"decode", "flow", "synthesis", "encode"} <= set(result.timings)
    assert isinstance(events[0], StartEvent) and isinstance(events[-1], DoneEvent)


def test_cancel_stops_promptly_and_leaves_no_output(tmp_path):
    options = options_for(tmp_path, frames=20)
    cancel = threading.Event()
    events = []

    def on_event(event):
        events.append(event)
        if isinstance(event, FrameEvent) and event.index == 4:
            cancel.set()

    with pytest.raises(Cancelled):
        run_job(options, on_event=on_event, cancel=cancel)
    assert not (tmp_path / "out.mp4").exists()
    assert isinstance(events[-1], ErrorEvent)
    assert max(e.index for e in events if isinstance(e, FrameEvent)) < 8


@pytest.mark.parametrize("stage,expected_keys", [("first-keyframe", [0]), ("keyframes", [0, 4, 8])])
def test_preview_stages_write_nothing(tmp_path, stage, expected_keys):
    options = options_for(tmp_path)
    keys = []
    result = run_job(options, stage=stage, on_keyframe=lambda i, s, t: keys.append(i))
    assert keys == expected_keys
    assert result.output is None and not (tmp_path / "out.mp4").exists()


def test_keyframe_cache_is_written_and_reused(tmp_path):
    options = options_for(tmp_path)
    cache = tmp_path / "cache"
    run_job(options, stage="keyframes", keyframe_cache=cache)
    files = sorted(p.name for p in cache.iterdir())
    assert files == ["keyframe_000000.png", "keyframe_000004.png", "keyframe_000008.png"]
    # Resume: a cached keyframe is used as is (here painted black), not rendered again.
    black = np.zeros((64, 128, 3), np.uint8)
    cv2.imwrite(str(cache / "keyframe_000004.png"), black)
    outputs = {}
    run_job(
        options, keyframe_cache=cache, on_frame=lambda frame, image: outputs.__setitem__(frame.index, image)
    )
    assert outputs[4].max() < 10 and outputs[0].mean() > 30


# -- processing size, ranges, --help, --version, signals, quiet warnings ----------------------------------


def start_event(stderr: bytes) -> dict:
    return next(
        json.loads(line) for line in stderr.decode().splitlines() if line.startswith('{"event":"start"')
    )


@pytest.mark.parametrize(
    "size_args,processing,note",
    [
        ([], [64, 64], "the input's own size 64x48, padded to multiples of 64"),  # never above the input
        (["--size", "128"], [192, 128], "scaled up to a short side of 128 as --size asks"),
    ],
)
def test_processing_size_follows_the_input_unless_size_asks(tmp_path, size_args, processing, note):
    clip = write_clip(tmp_path / "in.mkv", width=64, height=48, frames=3, audio=False)
    fast = [a for a in FAST if a not in ("--size", "64")]
    base = [*CLI, "-i", str(clip), "-o", str(tmp_path / "out.mkv"), "-K", "2", *fast, *size_args]
    done = subprocess.run([*base, "--progress", "json"], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    start = start_event(done.stderr)
    assert start["processing_size"] == processing and note in start["processing_note"]
    # The bar prints the same sentence as one line of its own, before the bar.
    done = subprocess.run([*base, "--progress", "bar"], capture_output=True, timeout=120)
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 0 and f"rerender run: {start['processing_note']}" in lines


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--patchmatch-iters", "1e20"),
        ("--patchmatch-iters", "51"),
        ("--search-vote-iters", "101"),
        ("--patch-size", "99999"),
        ("--patch-size", "4"),
        ("--threads", "100000"),
        ("--threads", "0"),
        ("--size", "65536"),
        ("--size", "100"),
        ("--keyframe-interval", "251"),
        ("--pyramid-levels", "13"),
        ("--keyframes-first-index", "-1"),
        ("--classic-sigma-s", "nan"),
        ("--classic-sigma-r", "inf"),
        ("--keyframe-pull", "1.5"),
        ("--keyframe-pull", "nan"),
        ("--scene-cut-threshold", "0"),
        ("--ray-max-gaps", "100000"),
        ("--ray-cpus-per-gap", "0"),
        ("--ray-gpus-per-keyframe", "nan"),
        ("--ray-gpus-per-gap", "1e9"),
    ],
)
def test_numeric_options_out_of_range_are_one_sentence_naming_the_flag(tmp_path, flag, value):
    clip = write_clip(tmp_path / "in.mkv", width=64, height=48, frames=2, audio=False)
    out = tmp_path / "out.mp4"
    done = subprocess.run(
        [*CLI, "-i", str(clip), "-o", str(out), "-q", f"{flag}={value}"], capture_output=True, timeout=60
    )
    stderr = done.stderr.decode().strip()
    assert done.returncode == 2, stderr  # never a crash (139) or an internal error (1)
    assert len(stderr.splitlines()) == 1 and flag in stderr and "expects" in stderr, stderr
    assert not out.exists()


def test_help_shows_every_default_and_version_prints_the_package_version():
    from importlib.metadata import version

    parser = build_run_parser()
    ours = {"keyframes and propagation", "progress"}  # the io and diffusion groups document their own
    for group in parser._action_groups:
        if group.title not in ours:
            continue
        for action in group._group_actions:
            if action.nargs == 0 or action.option_strings == ["--poisson"]:
                continue  # on/off flags: off unless given
            assert "default" in (action.help or ""), f"{action.option_strings} shows no default"
    text = " ".join(subprocess.run([*CLI, "--help"], capture_output=True, timeout=60).stdout.decode().split())
    assert "(default: 10)" in text and "(default: 5)" in text and "(default: stylization)" in text
    done = subprocess.run([sys.executable, "-m", "rerender.filter.cli", "--version"], capture_output=True)
    assert done.returncode == 0 and done.stdout.decode().split() == ["rerender", version("rerender")]


@pytest.mark.parametrize("source", ["file", "lavfi"])
def test_sigterm_exits_143_and_leaves_no_partial_output_or_temporary_folder(tmp_path, source):
    import os
    import signal

    temp = tmp_path / "tmp"
    temp.mkdir()
    if source == "file":
        clip = str(write_clip(tmp_path / "in.mkv", width=64, height=48, frames=150, audio=True))
    else:
        clip = "lavfi:testsrc2=size=64x48:rate=25:duration=6"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as stderr:  # a file, not a pipe: the JSON lines must never block the job
        proc = subprocess.Popen(
            [*CLI, "-i", clip, "-o", str(out_dir / "out.mp4"), "-K", "5", "--progress", "json", *FAST],
            stderr=stderr,
            env={**os.environ, "TMPDIR": str(temp)},
        )
    try:
        # The encoder writes the (hidden, partial) output once its lookahead is full.
        deadline = time.monotonic() + 90
        while not list(out_dir.iterdir()) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None and list(out_dir.iterdir()), "the partial output should exist by now"
        if source == "lavfi":
            assert list(temp.iterdir()), "the lavfi source's temporary folder should exist while the job runs"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rest = log.read_text()
    assert code == 143, rest
    assert "terminated" in rest and "Traceback" not in rest
    assert list(out_dir.iterdir()) == [] and list(temp.iterdir()) == []


def test_quiet_still_prints_the_frame_loss_warning(tmp_path):
    from media import corrupt_clip

    clip = corrupt_clip(tmp_path, frames=24, broken=3, audio=False)
    out = tmp_path / "out.mkv"
    for quiet in (["-q"], ["--progress", "none"]):
        done = subprocess.run(
            [*CLI, "-i", str(clip), "-o", str(out), *quiet, "-K", "6", *FAST],
            capture_output=True,
            timeout=120,
        )
        lines = done.stderr.decode().splitlines()
        assert done.returncode == 0, lines
        assert len(video_frames(out)[0]) == 21  # shorter: the 3 frames of the broken packets are lost
        warnings = [line for line in lines if line.startswith("rerender run: warning: ")]
        assert len(warnings) == 1 and "3 corrupt video packet(s)" in warnings[0], lines
        assert lines == warnings  # nothing else: quiet silences progress only


def test_dropped_stream_warnings_reach_every_reporter(tmp_path):
    from media import extra_streams_clip

    clip = extra_streams_clip(tmp_path)  # a second video stream and a cover picture besides the video
    out = tmp_path / "out.mkv"
    base = [*CLI, "-i", str(clip), "-o", str(out), "-K", "3", *FAST]
    quiet = subprocess.run([*base, "-q"], capture_output=True, timeout=120)
    lines = quiet.stderr.decode().splitlines()
    assert quiet.returncode == 0, lines
    assert len(lines) == 2 and all(line.startswith("rerender run: warning: dropping ") for line in lines)
    as_json = subprocess.run([*base, "--progress", "json"], capture_output=True, timeout=120)
    events = [json.loads(line) for line in as_json.stderr.decode().splitlines()]  # every line is JSON
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert warnings == [line.removeprefix("rerender run: warning: ") for line in lines]


# -- the options tree --------------------------------------------------------------------------------------


def test_the_renderer_is_one_dataclass_per_renderer_and_invalid_combinations_cannot_be_built(tmp_path):
    from dataclasses import replace

    from rerender.filter.renderers.diffusion_options import DiffusionOptions
    from rerender.filter.renderers.frames import FramesOptions
    from rerender.filter.run_options import RunOptions

    keys = tmp_path / "keys"
    frames = parse_run_options(
        ["-i", "a.mp4", "-o", "b.mp4", "--renderer", "frames", "--keyframes-dir", str(keys)]
    )
    assert frames.renderer == FramesOptions(keys, 0) and frames.diffusion is None
    diffusion = parse_run_options(["-i", "a.mp4", "-o", "b.mp4", "--model", "m", "--steps", "7"])
    assert isinstance(diffusion.renderer, DiffusionOptions) and diffusion.renderer.steps == 7
    # A keyframes folder lives only in FramesOptions, a model only in DiffusionOptions: there is no field
    # for either on another renderer, and the renderer must be one of the three.
    with pytest.raises(TypeError):
        ClassicOptions(keyframes_dir=keys)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        RunOptions("a.mp4", "b.mp4", renderer="frames")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="--keyframes-dir"):
        FramesOptions(None)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="--keyframes-first-index"):
        FramesOptions(keys, -1)
    with pytest.raises(UsageError, match="-o must differ from -i"):
        replace(frames, output="a.mp4")  # every copy is checked again
    for argv, message in (
        (["--keyframes-dir", str(keys)], "--keyframes-dir is used by the frames renderer only"),
        (["--renderer", "classic", "--model", "m"], "--model is used by the diffusion renderer only"),
    ):
        with pytest.raises(UsageError, match=message):
            parse_run_options(["-i", "a.mp4", "-o", "b.mp4", *argv])


@pytest.mark.parametrize(
    "text,weights,error",
    [
        ("dis", None, None),
        ("dis:fast", None, None),
        ("dis:", None, None),
        ("raft:/w/raft.pth", "/w/raft.pth", None),
        ("dis:slowest", None, "preset"),
        ("farneback", None, "--flow expects dis"),
    ],
)
def test_flow_is_parsed_in_one_place(text, weights, error):
    from rerender.filter.flow_spec import FlowSpec

    if error is not None:
        with pytest.raises(UsageError, match=error):
            FlowSpec.parse(text)
        return
    spec = FlowSpec.parse(text)
    assert spec.weights == weights and FlowSpec.parse(str(spec)) == spec


def test_values_keyed_by_flag_map_onto_the_same_options_and_messages_as_argv():
    from rerender.filter.job import options_from_values

    argv = ["-i", "a.mp4", "-o", "b.mp4", "-K", "5", "--model", "m", "--lora", "x:0.5", "--lora", "y"]
    argv += ["--no-poisson", "--crf", "20", "--freeu", "1.1,1.2,1,0.2", "--no-scene-cuts"]
    values = {
        "input": "a.mp4", "output": "b.mp4", "keyframe_interval": 5, "model": "m", "lora": ["x:0.5", "y"],
        "poisson": False, "crf": 20, "freeu": "1.1,1.2,1,0.2", "no_scene_cuts": True,
    }  # fmt: skip
    assert options_from_values(values) == parse_run_options(argv)
    for key, value, flag in (("size", 100, "--size"), ("fit", "x", "--fit"), ("steps", 0, "--steps")):
        with pytest.raises(UsageError) as by_values:
            options_from_values({"input": "a.mp4", "output": "b.mp4", "model": "m", key: value})
        with pytest.raises(UsageError) as by_argv:
            parse_run_options(["-i", "a.mp4", "-o", "b.mp4", "--model", "m", f"{flag}={value}"])
        assert str(by_values.value) == str(by_argv.value)
