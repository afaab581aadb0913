"""The README's FFmpeg pipe recipes, run through the real `ffmpeg` binary (skipped with a reason without one).

`ffmpeg ... -f nut - | rerender run -i - -o - | ffmpeg -i - ... out.mp4` on a variable-frame-rate clip with
audio and on a phone-style clip with a display rotation: every frame comes out once, the gaps between the
timestamps are the input's, the audio is there with its length, and the picture stays upright.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import av
import pytest
from media import rotated_clip, vfr_clip

FFMPEG = shutil.which("ffmpeg")
pytestmark = pytest.mark.skipif(
    FFMPEG is None, reason="no ffmpeg binary on PATH (the README's set-up installs Debian's ffmpeg)"
)

RERENDER = [sys.executable, "-m", "rerender.filter.cli", "run", "-i", "-", "-o", "-", "-q", "-K", "4"]
RERENDER += ["--size", "64", "--search-vote-iters", "1", "--patchmatch-iters", "1", "--pyramid-levels", "2"]
RERENDER += ["--threads", "1"]

# The README's recipes (Usage: rerender run, "With FFmpeg"), with `in.mp4` and `out.mp4` filled in.
DECODE_FIRST = ["-map", "0:v:0", "-map", "0:a?", "-c:v", "ffv1", "-c:a", "copy"]
DECODE_FIRST += ["-fps_mode", "passthrough", "-enc_time_base:v", "-1", "-f", "nut", "-"]
COPY_FIRST = ["-map", "0:v:0", "-map", "0:a?", "-c", "copy", "-f", "nut", "-"]
LAST = ["-map", "0", "-c:v", "libx264", "-c:a", "copy", "-fps_mode", "passthrough", "-enc_time_base:v", "-1"]


def pipeline(source: Path, first: list[str], target: Path) -> None:
    """ffmpeg | rerender run | ffmpeg, each stage a real process; every stage must exit 0."""
    quiet = [FFMPEG, "-nostdin", "-v", "error"]
    a = subprocess.Popen([*quiet, "-i", str(source), *first], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    b = subprocess.Popen(RERENDER, stdin=a.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    a.stdout.close()
    c = subprocess.Popen(
        [*quiet, "-y", "-i", "-", *LAST, str(target)], stdin=b.stdout, stderr=subprocess.PIPE
    )
    b.stdout.close()
    errors = [p.communicate(timeout=300)[1] for p in (c, b, a)]
    codes = [p.returncode for p in (a, b, c)]
    assert codes == [0, 0, 0], [e.decode(errors="replace") for e in errors]


def probe(path: Path) -> dict:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        times = [float(f.pts * f.time_base) for f in container.decode(video)]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frame = next(container.decode(stream))
        upright = frame.to_ndarray(format="rgb24").shape[:2]  # PyAV does not rotate: the stored picture
        rotation = getattr(frame, "rotation", 0) or 0
    audio_seconds = audio_start = None
    with av.open(str(path)) as container:
        if container.streams.audio:
            frames = list(container.decode(audio=0))
            audio_seconds = sum(f.samples / f.sample_rate for f in frames)
            audio_start = float(frames[0].pts * frames[0].time_base)
    return {
        "times": times,
        "picture": upright,
        "rotation": rotation,
        "audio": audio_seconds,
        "audio_start": audio_start,
    }


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 3) for a, b in zip(times, times[1:], strict=False)]


@pytest.mark.parametrize("first", [DECODE_FIRST, COPY_FIRST], ids=["decode-first", "copy-first"])
def test_pipe_recipe_keeps_every_frame_the_timestamps_and_the_audio(tmp_path, first):
    clip = vfr_clip(tmp_path, name="vfr.mp4", frames=12, audio=True)
    out = tmp_path / "out.mp4"
    pipeline(clip, first, out)
    before, after = probe(clip), probe(out)
    assert len(after["times"]) == len(before["times"]) == 12
    assert gaps(after["times"]) == gaps(before["times"])  # variable frame rate kept, to the millisecond
    # The audio is all there. The MP4's edit list hid the AAC encoder's priming (one 1024-sample frame,
    # 64 ms at 16 kHz); NUT has no edit list, so the priming comes out as audio before the first frame,
    # and the video starts that much later: picture and sound stay in step.
    priming = after["audio"] - before["audio"]
    assert 0 <= priming <= 1024 / 16000 + 0.005
    lead_before = before["times"][0] - before["audio_start"]
    lead_after = after["times"][0] - after["audio_start"]
    assert lead_after - priming == pytest.approx(lead_before, abs=0.005)


def test_pipe_recipe_that_decodes_first_keeps_the_picture_upright(tmp_path):
    clip = rotated_clip(tmp_path, name="phone.mp4", rotation=90, frames=6, audio=True)
    out = tmp_path / "out.mp4"
    pipeline(clip, DECODE_FIRST, out)
    before, after = probe(clip), probe(out)
    assert before["picture"] == (48, 64)  # stored landscape, shown portrait by its display matrix
    # The first ffmpeg turns the frames upright, so nothing depends on the matrix surviving NUT.
    assert after["picture"] == (64, 48) and len(after["times"]) == 6
    assert after["audio"] is not None
