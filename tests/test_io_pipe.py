"""Video I/O over real pipes: a subprocess reads `-` (its stdin) and writes `-` (its stdout).

tests/io_pipe_copy.py drives Source and Sink exactly like a filter with nothing in it, so everything the
output holds went through stdin, the Source, the Sink and stdout.
"""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import media
import pytest
from io_probe import max_interleave_lag, probe

COPY = Path(__file__).with_name("io_pipe_copy.py")


def run_copy(stdin: bytes, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(COPY), *args], input=stdin, capture_output=True, timeout=timeout, check=False
    )


def piped(tmp_path: Path, source: Path, *args: str, suffix: str) -> Path:
    result = run_copy(source.read_bytes(), *args)
    assert result.returncode == 0, result.stderr.decode()
    out = tmp_path / f"piped{suffix}"
    out.write_bytes(result.stdout)
    return out


def times(p) -> list[Fraction]:
    return [pts * p.time_base for pts in p.pts]


def assert_kept(a, b) -> None:
    assert b.frame_count == a.frame_count
    assert b.pts == a.pts
    assert b.time_base == a.time_base
    assert b.size == a.size
    assert b.rotation == a.rotation
    assert b.color == a.color
    assert b.packets.get("audio") == a.packets.get("audio")


def test_nut_pipe_to_nut_pipe_keeps_everything(tmp_path):
    # NUT has no display matrix: rotation travels as stream metadata, both ways.
    source = media.write_clip(tmp_path / "in.nut", rotation=270, width=80, height=60)
    out = piped(tmp_path, source, suffix=".nut")  # `-` output defaults to NUT
    a, b = probe(source), probe(out)
    assert a.rotation == 270 and len(a.packets["audio"]) > 3
    assert_kept(a, b)
    assert max_interleave_lag(b.order) < 0.5


def test_matroska_pipe_keeps_vfr_audio_and_subtitles(tmp_path):
    source = media.vfr_clip(tmp_path, subtitles=True)
    out = piped(tmp_path, source, "-f", "matroska", suffix=".mkv")
    a, b = probe(source), probe(out)
    assert_kept(a, b)
    assert len(set(b.pts[i + 1] - b.pts[i] for i in range(len(b.pts) - 1))) > 3
    assert b.packets["subtitle"] == a.packets["subtitle"] == [b"hello", b"world"]


@pytest.mark.parametrize(("fmt", "suffix"), [("mp4", ".mp4"), ("matroska", ".mkv")])
def test_mpegts_pipe_to_mp4_and_matroska_pipes(tmp_path, fmt, suffix):
    source = media.write_clip(tmp_path / "in.ts", color=media.BT709_PC)
    out = piped(tmp_path, source, "-f", fmt, suffix=suffix)
    a, b = probe(source), probe(out)
    assert (b.frame_count, b.size, b.color, b.rotation) == (a.frame_count, a.size, a.color, a.rotation)
    assert times(b) == times(a)
    # ADTS AAC from the transport stream: same AAC payloads, without the 7-byte ADTS headers (adts.py).
    assert b.packets["audio"] == [p[7:] for p in a.packets["audio"]]
    if fmt == "mp4":
        assert b"moof" in out.read_bytes()[:4096]  # fragmented: the index comes with each fragment
        assert (b.time_base, b.pts) == (a.time_base, a.pts)  # 1/90000 kept (Matroska is always 1/1000)


def test_forced_input_format_y4m(tmp_path):
    source = media.write_clip(tmp_path / "in.y4m", codec="rawvideo", audio=False, frames=5)
    out = piped(tmp_path, source, "--input-format", "yuv4mpegpipe", suffix=".nut")
    a, b = probe(source), probe(out)
    # NUT picks its own time base for video (FFmpeg's nutenc), so the times are compared, not the ticks.
    assert (b.frame_count, b.size, times(b)) == (5, a.size, times(a))


def test_ten_bit_through_a_pipe_stays_ten_bit(tmp_path):
    source = media.ten_bit_clip(tmp_path, name="in.nut", frames=6)
    out = piped(tmp_path, source, suffix=".nut")
    a, b = probe(source), probe(out)
    assert b.pix_fmt == "yuv420p10le"
    assert_kept(a, b)


def test_not_a_video_on_stdin_is_one_line_exit_2(tmp_path):
    result = run_copy(media.not_a_video(tmp_path).read_bytes())
    assert result.returncode == 2
    assert result.stdout == b""
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "standard input is not a media file" in lines[0]


def test_corrupt_stream_warns_and_strict_fails(tmp_path):
    source = media.corrupt_clip(tmp_path, name="in.mkv")
    ok = run_copy(source.read_bytes(), "-f", "matroska")
    assert ok.returncode == 0
    assert "3 frames of standard input could not be decoded" in ok.stderr.decode()
    out = tmp_path / "fixed.mkv"
    out.write_bytes(ok.stdout)
    assert probe(out).frame_count == 21
    strict = run_copy(source.read_bytes(), "--strict", "-o", str(tmp_path / "strict.mkv"))
    assert strict.returncode == 2
    assert "--strict" in strict.stderr.decode()
    assert not (tmp_path / "strict.mkv").exists()


@pytest.mark.parametrize("output", ["out.mp4", "out.mkv"])
def test_failure_mid_run_leaves_no_file(tmp_path, output):
    source = media.normal_clip(tmp_path, name="in.nut")
    result = run_copy(source.read_bytes(), "-o", str(tmp_path / output), "--fail-after", "4")
    assert result.returncode == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nut"]
