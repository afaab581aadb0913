"""Video I/O, file to file: what the Sink writes keeps what the Source read.

Every clip is made by tests/media.py; outputs are read back with plain PyAV (tests/io_probe.py).
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import av
import media
import numpy as np
import pytest
from io_probe import max_interleave_lag, probe
from rerender.filter.errors import InputError, RerenderError, UsageError
from rerender.filter.frames import Frame
from rerender.filter.io import (
    SinkOptions,
    VideoInfo,
    add_io_arguments,
    open_sink,
    open_source,
    sink_options_from_args,
)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {
        "normal": media.normal_clip(folder),
        "vfr": media.vfr_clip(folder),
        "ten_bit": media.ten_bit_clip(folder),
        "odd": media.odd_size_clip(folder),
        "rotated": media.rotated_clip(folder),
        "subtitled": media.subtitled_clip(folder),
        "full_range": media.full_range_clip(folder),
        "corrupt": media.corrupt_clip(folder),
        "truncated": media.truncated_clip(folder),
    }


def copy(src_path: Path, out_path: Path, options: SinkOptions | None = None) -> tuple[VideoInfo, list[Frame]]:
    """The graph with nothing in it: every Source frame straight into the Sink."""
    frames = []
    with open_source(src_path) as src:
        with open_sink(out_path, src, options or SinkOptions()) as sink:
            for frame in src.frames():
                frames.append(frame)
                sink.write(frame)
        return src.info, frames


def assert_same_stream(a, b) -> None:
    assert b.frame_count == a.frame_count
    assert b.pts == a.pts
    assert b.time_base == a.time_base
    assert b.size == a.size
    assert b.sample_aspect_ratio == a.sample_aspect_ratio
    assert b.rotation == a.rotation
    assert b.color == a.color


@pytest.mark.parametrize("name", ["normal", "vfr", "rotated", "full_range"])
def test_round_trip_keeps_frames_timestamps_size_rotation_colour_audio(clips, tmp_path, name):
    source = clips[name]
    out = tmp_path / f"out{source.suffix}"
    info, frames = copy(source, out)
    a, b = probe(source), probe(out)
    assert_same_stream(a, b)
    assert [f.pts for f in frames] == a.pts
    assert [f.index for f in frames] == list(range(a.frame_count))
    assert all(f.image.dtype == np.uint8 and f.image.shape == (48, 64, 3) for f in frames)
    assert b.codec == "h264" and b.pix_fmt in ("yuv420p", "yuvj420p")
    # Audio is copied, not re-encoded: the same packets, byte for byte, in the same order.
    assert b.packets["audio"] == a.packets["audio"] and len(a.packets["audio"]) > 3
    assert max_interleave_lag(b.order) < 0.5
    assert info.frame_count in (None, a.frame_count)


def test_vfr_timestamps_are_irregular_and_kept(clips, tmp_path):
    out = tmp_path / "vfr.mkv"
    copy(clips["vfr"], out)
    steps = np.diff(probe(out).pts)
    assert len(set(steps.tolist())) > 3  # really variable, and (above) equal to the input's


def test_rotation_metadata(clips, tmp_path):
    with open_source(clips["rotated"]) as src:
        assert src.info.rotation == 90
    for suffix in (".mp4", ".mkv", ".nut"):  # display matrix in MP4/MKV, stream metadata in NUT
        out = tmp_path / f"rot{suffix}"
        copy(clips["rotated"], out)
        assert probe(out).rotation == 90
        with open_source(out) as again:
            assert again.info.rotation == 90


def test_ten_bit_stays_ten_bit(clips, tmp_path):
    out = tmp_path / "ten.mkv"
    info, frames = copy(clips["ten_bit"], out)
    assert info.bit_depth == 10 and info.pix_fmt == "yuv420p10le"
    assert frames[0].image.dtype == np.uint16
    # Full 16-bit scale: the bright square (0.95, 0.9, 0.2) is far above 10-bit code values.
    assert frames[0].image.max() > 50000
    a, b = probe(clips["ten_bit"]), probe(out)
    assert b.pix_fmt == "yuv420p10le"
    assert b.color == a.color == (1, 9, 14, 9)
    assert_same_stream(a, b)


def test_odd_size_and_pixel_aspect_are_kept(clips, tmp_path):
    out = tmp_path / "odd.mkv"
    info, frames = copy(clips["odd"], out)
    assert (info.width, info.height) == (719, 405)
    assert frames[0].image.shape == (405, 719, 3)
    a, b = probe(clips["odd"]), probe(out)
    assert b.size == (719, 405) and b.sample_aspect_ratio == Fraction(4, 3)
    assert b.pix_fmt == "yuv444p"  # 4:2:0 cannot hold an odd size
    assert_same_stream(a, b)


def test_subtitles_are_remuxed_and_dropped_with_a_warning_where_they_cannot_go(clips, tmp_path, capsys):
    a = probe(clips["subtitled"])
    out = tmp_path / "sub.mkv"
    copy(clips["subtitled"], out)
    b = probe(out)
    assert b.packets["subtitle"] == a.packets["subtitle"] == [b"hello", b"world"]
    assert b.packets["audio"] == a.packets["audio"]
    mp4 = tmp_path / "sub.mp4"  # MP4 cannot hold SRT
    copy(clips["subtitled"], mp4)
    assert "subtitle" not in probe(mp4).packets
    assert probe(mp4).packets["audio"] == a.packets["audio"]
    assert "cannot hold it" in capsys.readouterr().err


def test_no_audio_drops_audio_only(clips, tmp_path):
    out = tmp_path / "silent.mkv"
    copy(clips["subtitled"], out, SinkOptions(audio=False))
    b = probe(out)
    assert "audio" not in b.packets and b.packets["subtitle"] == [b"hello", b"world"]


def test_reader_without_sink_keeps_no_side_packets(clips):
    with open_source(clips["subtitled"], keep_side_packets=False) as src:
        assert len(list(src.frames())) == 12
        assert src.remux_streams == [] and src.take_side_packets() == []
    with open_source(clips["subtitled"]) as src:
        list(src.frames())
        kinds = {p.stream.type for p in src.take_side_packets()}
        assert kinds == {"audio", "subtitle"}


def _bt_reference(path: Path, kr: float, kb: float) -> np.ndarray:
    """RGB from the decoded 4:4:4 planes with the textbook limited-range formula (independent of swscale)."""
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        y, u, v = (
            np.frombuffer(p, np.uint8).reshape(frame.height, p.line_size)[:, : frame.width].astype(float)
            for p in frame.planes
        )
    y, u, v = (y - 16) / 219, (u - 128) / 224, (v - 128) / 224
    r = y + 2 * (1 - kr) * v
    b = y + 2 * (1 - kb) * u
    g = (y - kr * r - kb * b) / (1 - kr - kb)
    return np.clip(np.stack([r, g, b], -1) * 255, 0, 255)


@pytest.mark.parametrize(
    ("tags", "right", "wrong"),
    [
        (media.BT709_TV, (0.2126, 0.0722), (0.299, 0.114)),
        (media.ColorTags(1, 6, 6, 6), (0.299, 0.114), (0.2126, 0.0722)),
    ],
)
def test_colour_matrix_of_the_file_is_used(tmp_path, tags, right, wrong):
    clip = media.write_clip(
        tmp_path / "m.mkv", frames=1, pix_fmt="yuv444p", color=tags, audio=False, encoder_options={"qp": "0"}
    )
    with open_source(clip) as src:
        image = next(src.frames()).image.astype(float)
    assert np.abs(image - _bt_reference(clip, *right)).mean() < 1.0
    assert np.abs(image - _bt_reference(clip, *wrong)).mean() > 4.0


def test_sink_colour_conversion_is_the_inverse_of_the_source(tmp_path):
    """Lossless encode: RGB -> YUV (Sink) -> RGB (Source) returns the same RGB for BT.709 and 10-bit BT.2020."""
    for name, kwargs, pix_fmt in [
        ("a.mkv", {"color": media.BT709_TV}, "yuv444p"),
        ("b.mkv", {"color": media.BT2020_TV, "bit_depth": 10}, "yuv444p10le"),
    ]:
        clip = media.write_clip(tmp_path / name, frames=2, pix_fmt=pix_fmt, audio=False, **kwargs)
        out = tmp_path / f"out_{name}"
        _, frames = copy(clip, out, SinkOptions(crf=None, pix_fmt=pix_fmt, encoder_options=(("qp", "0"),)))
        with open_source(out) as again:
            back = [f.image for f in again.frames()]
        assert [b.dtype for b in back] == [f.image.dtype for f in frames]
        for before, after in zip(frames, back, strict=True):
            assert np.abs(before.image.astype(int) - after.astype(int)).max() <= 1


def test_corrupt_packets_drop_frames_and_the_rest_is_processed(clips, tmp_path):
    out = tmp_path / "fixed.mkv"
    with open_source(clips["corrupt"]) as src:
        with open_sink(out, src) as sink:
            for frame in src.frames():
                sink.write(frame)
        assert src.dropped == 3
        assert src.delivered == 21
    assert probe(out).frame_count == 21


def test_truncated_file_processes_what_is_there(clips, tmp_path):
    out = tmp_path / "cut.mkv"
    _, frames = copy(clips["truncated"], out)
    assert 3 < len(frames) < 24
    assert probe(out).frame_count == len(frames)


def test_coarse_time_base_is_kept_in_mp4(tmp_path):
    # y4m has a 1/25 time base; MP4 would turn it into 1/12800 unless told otherwise.
    clip = media.write_clip(tmp_path / "in.y4m", codec="rawvideo", audio=False, frames=5)
    out = tmp_path / "out.mp4"
    copy(clip, out)
    b = probe(out)
    assert (b.time_base, b.pts) == (Fraction(1, 25), [0, 1, 2, 3, 4])


REAL_MEDIA = Path("/work/shared/media")


@pytest.mark.skipif(not REAL_MEDIA.is_dir(), reason="no real clips: /work/shared/media is absent")
def test_real_clips_first_frames_round_trip(tmp_path):
    clips = sorted(REAL_MEDIA.glob("*.mp4"))
    if not clips:
        pytest.skip("no .mp4 in /work/shared/media")
    for clip in clips:
        out = tmp_path / f"{clip.stem}.mp4"
        with open_source(clip) as src:
            with open_sink(out, src, SinkOptions(encoder_options=(("preset", "ultrafast"),))) as sink:
                for frame in src.frames():
                    sink.write(frame)
                    if frame.index == 24:  # one second is enough; the Sink stops the audio there too
                        break
        a, b = probe(clip), probe(out)
        assert b.frame_count == 25
        assert b.pts == a.pts[:25] and b.time_base == a.time_base
        assert (b.size, b.color, b.rotation, b.sample_aspect_ratio) == (
            a.size,
            a.color,
            a.rotation,
            a.sample_aspect_ratio,
        )
        if "audio" in a.packets:
            copied = b.packets["audio"]
            assert 0 < len(copied) < len(a.packets["audio"]) and copied == a.packets["audio"][: len(copied)]


# --- failures leave nothing behind -------------------------------------------------------------------


def test_exception_inside_the_sink_leaves_no_file(clips, tmp_path):
    out = tmp_path / "never.mp4"
    with open_source(clips["normal"]) as src:
        with pytest.raises(RuntimeError, match="boom"):
            with open_sink(out, src) as sink:
                for frame in src.frames():
                    sink.write(frame)
                    if frame.index == 5:
                        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_fewer_frames_than_delivered_is_an_error_and_leaves_no_file(clips, tmp_path):
    out = tmp_path / "short.mp4"
    with open_source(clips["normal"]) as src:
        with pytest.raises(RerenderError, match="only 6 of 12 frames"):
            with open_sink(out, src) as sink:
                for frame in src.frames():
                    if frame.index % 2 == 0:
                        sink.write(frame)
    assert list(tmp_path.iterdir()) == []


def test_no_frames_written_is_an_error_and_leaves_no_file(clips, tmp_path):
    with open_source(clips["normal"]) as src, pytest.raises(RerenderError, match="only 0 of 0 frames"):
        with open_sink(tmp_path / "empty.mkv", src):
            pass
    assert list(tmp_path.iterdir()) == []


def test_existing_output_survives_a_failed_run(clips, tmp_path):
    out = tmp_path / "keep.mp4"
    out.write_bytes(b"previous result")
    with open_source(clips["normal"]) as src, pytest.raises(RuntimeError):
        with open_sink(out, src) as sink:
            sink.write(next(src.frames()))
            raise RuntimeError("stop")
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mp4"]


# --- bad input: one sentence, InputError (exit status 2) ---------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.mp4", "no such file"),
        (lambda d: d, "is a folder"),
        (media.not_a_video, "not a media file"),
        (media.truncated_mp4, "not a media file"),
        (media.audio_only_clip, "no video stream"),
        (media.zero_frame_clip, "zero frames"),
        (media.sixteen_bit_clip, "unsupported pixel format yuv444p16le"),
    ],
)
def test_bad_input_is_one_sentence(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(InputError, match=message) as caught:
        open_source(path)
    text = str(caught.value)
    assert "\n" not in text and text.count(". ") == 0


def test_bad_output_settings_are_usage_errors(clips, tmp_path):
    with open_source(clips["normal"]) as src:
        for options, message in [
            (SinkOptions(codec="no-such-codec"), "unknown video encoder"),
            (SinkOptions(codec="aac"), "audio encoder"),
            (SinkOptions(pix_fmt="rgb48le"), "cannot encode rgb48le"),
            (SinkOptions(format="no-such-muxer"), "unknown output format"),
        ]:
            with pytest.raises(UsageError, match=message):
                open_sink(tmp_path / "x.mp4", src, options)
        with pytest.raises(UsageError, match="does not exist"):
            open_sink(tmp_path / "nowhere" / "x.mp4", src)
        with pytest.raises(UsageError, match="container"):
            open_sink(tmp_path / "x.unknownext", src)
    assert list(tmp_path.iterdir()) == []


def test_cli_flags_become_sink_options():
    parser = argparse.ArgumentParser()
    add_io_arguments(parser)
    args = parser.parse_args(
        ["-f", "matroska", "--codec", "libx265", "--crf", "22", "--pix-fmt", "yuv444p"]
        + ["--encoder-option", "preset=slow", "--encoder-option", "x265-params=log-level=error", "--no-audio"]
    )
    assert sink_options_from_args(args) == SinkOptions(
        format="matroska",
        codec="libx265",
        crf=22.0,
        pix_fmt="yuv444p",
        encoder_options=(("preset", "slow"), ("x265-params", "log-level=error")),
        audio=False,
    )
    defaults = sink_options_from_args(parser.parse_args([]))
    assert defaults == SinkOptions() and not parser.parse_args([]).strict
    with pytest.raises(UsageError, match="KEY=VALUE"):
        sink_options_from_args(parser.parse_args(["--encoder-option", "preset"]))


def test_encoder_options_reach_the_encoder(clips, tmp_path):
    out = tmp_path / "allintra.mkv"
    copy(clips["normal"], out, SinkOptions(encoder_options=(("g", "1"),)))
    with av.open(str(out)) as container:
        keys = [p.is_keyframe for p in container.demux(video=0) if p.size]
    assert all(keys) and len(keys) == 12
