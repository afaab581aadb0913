"""Synthetic test clips written with PyAV: a moving texture plus an audio tone, a few frames each.

Every function writes one small file into `folder` and returns its path, so tests never depend on media
they did not make. Import from a test as `from media import normal_clip` (pytest puts
`tests/` on `sys.path`). Sizes and lengths are parameters; the defaults keep each clip well under 100 ms
to write.

The colour tags are written explicitly (BT.709 limited range by default, BT.2020 for the 10-bit clip) so
that round-trip tests can check that the I/O layer carries them through.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

AUDIO_RATE = 16000
TONE_HZ = 440.0


@dataclass(frozen=True)
class ColorTags:
    """FFmpeg enum values (AVColorRange, AVColorSpace, AVColorTransferCharacteristic, AVColorPrimaries)."""

    color_range: int
    colorspace: int
    color_trc: int
    color_primaries: int


BT709_TV = ColorTags(color_range=1, colorspace=1, color_trc=1, color_primaries=1)
BT709_PC = ColorTags(color_range=2, colorspace=1, color_trc=1, color_primaries=1)
BT2020_TV = ColorTags(color_range=1, colorspace=9, color_trc=14, color_primaries=9)
# Irregular gaps (milliseconds) for the variable-frame-rate clip; repeated when more frames are asked for.
VFR_STEPS_MS = (40, 40, 20, 80, 33, 47, 100, 40, 60, 20)


def texture(index: int, width: int, height: int, bit_depth: int = 8) -> np.ndarray:
    """RGB frame `index` of a texture that drifts right and down, with a bright square crossing it."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    t = float(index)
    r = 0.5 + 0.4 * np.sin((x - 2.0 * t) / 5.0) * np.cos((y - t) / 7.0)
    g = 0.5 + 0.4 * np.sin((x + y - 3.0 * t) / 9.0)
    b = 0.5 + 0.4 * np.cos((x - y + 1.5 * t) / 6.0)
    image = np.stack([r, g, b], axis=-1)
    side = max(2, min(width, height) // 4)
    x0 = (3 * index) % max(1, width - side)
    y0 = (2 * index) % max(1, height - side)
    image[y0 : y0 + side, x0 : x0 + side] = (0.95, 0.9, 0.2)
    if bit_depth <= 8:
        return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.clip(image * 65535.0 + 0.5, 0, 65535).astype(np.uint16)


def write_clip(
    path: Path,
    *,
    width: int = 64,
    height: int = 48,
    frames: int = 12,
    rate: Fraction = Fraction(25),
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
    bit_depth: int = 8,
    codec: str = "libx264",
    pix_fmt: str | None = None,
    color: ColorTags = BT709_TV,
    rotation: int = 0,
    sample_aspect_ratio: Fraction | None = None,
    audio: bool = True,
    subtitles: bool = False,
    encoder_options: dict[str, str] | None = None,
) -> Path:
    """Write a clip; `pts` (in `time_base`) makes it variable-frame-rate, `rotation` adds a display matrix."""
    path = Path(path)
    if pts is not None and len(pts) != frames:
        raise ValueError(f"expected {frames} timestamps, got {len(pts)}")
    if time_base is None:
        time_base = Fraction(1, 1000) if pts is not None else 1 / Fraction(rate)
    if pts is None:
        pts = [round(i / Fraction(rate) / time_base) for i in range(frames)]
    if pix_fmt is None:
        pix_fmt = "yuv420p" if bit_depth <= 8 else "yuv420p10le"
    subtitle_input = _subtitle_source(path.parent) if subtitles else None

    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=rate, options=dict(encoder_options or {}))
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        video.time_base = time_base
        video.codec_context.time_base = time_base
        cc = video.codec_context
        cc.color_range, cc.colorspace = color.color_range, color.colorspace
        cc.color_trc, cc.color_primaries = color.color_trc, color.color_primaries
        if sample_aspect_ratio is not None:
            cc.sample_aspect_ratio = sample_aspect_ratio
        if rotation:
            video.set_display_rotation(rotation)
            # Containers without a display matrix (NUT) keep the angle in stream metadata instead.
            video.metadata["rotate"] = str(rotation % 360)
        tone = out.add_stream("aac", rate=AUDIO_RATE, layout="mono") if audio else None
        subtitle_stream = None
        subtitle_packets: list[av.Packet] = []
        if subtitle_input is not None:
            subtitle_stream = out.add_stream_from_template(subtitle_input.streams[0])
            subtitle_packets = [p for p in subtitle_input.demux() if p.size]

        audio_samples_written = 0
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(
                texture(i, width, height, bit_depth), format="rgb24" if bit_depth <= 8 else "rgb48le"
            )
            frame = frame.reformat(
                format=pix_fmt, dst_colorspace=color.colorspace, dst_color_range=color.color_range
            )
            frame.color_range, frame.colorspace = color.color_range, color.colorspace
            frame.color_trc, frame.color_primaries = color.color_trc, color.color_primaries
            frame.pts, frame.time_base = pts[i], time_base
            out.mux(video.encode(frame))
            now = float((pts[i] + 1) * time_base)
            if tone is not None:
                audio_samples_written = _write_tone(out, tone, audio_samples_written, now)
            while subtitle_packets and float(subtitle_packets[0].pts * subtitle_packets[0].time_base) <= now:
                packet = subtitle_packets.pop(0)
                packet.stream = subtitle_stream
                out.mux(packet)
        out.mux(video.encode(None))
        if tone is not None:
            end = float((pts[-1] * time_base) + 1 / Fraction(rate)) if frames else 0.2
            _write_tone(out, tone, audio_samples_written, end)
            out.mux(tone.encode(None))
        for packet in subtitle_packets:
            packet.stream = subtitle_stream
            out.mux(packet)
    if subtitle_input is not None:
        subtitle_input.close()
        Path(subtitle_input.name).unlink(missing_ok=True)
    return path


def _write_tone(out: av.container.OutputContainer, stream, written: int, until_seconds: float) -> int:
    target = int(until_seconds * AUDIO_RATE)
    while written < target:
        n = 1024
        t = (np.arange(written, written + n, dtype=np.float32)) / AUDIO_RATE
        samples = (0.3 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, written, Fraction(1, AUDIO_RATE)
        out.mux(stream.encode(frame))
        written += n
    return written


def _subtitle_source(folder: Path) -> av.container.InputContainer:
    """An SRT file opened with PyAV: its `subrip` stream is the template for the clip's subtitle stream."""
    srt = folder / ".subtitles.srt"
    srt.write_text(
        "1\n00:00:00,080 --> 00:00:00,200\nhello\n\n2\n00:00:00,240 --> 00:00:00,360\nworld\n\n",
        encoding="utf-8",
    )
    return av.open(str(srt))


# --- the clips the tests use -------------------------------------------------------------------------


def normal_clip(folder: Path, name: str = "normal.mp4", **kwargs) -> Path:
    """H.264 + AAC, constant 25 fps, BT.709 limited range, B-frames (pts reordered against dts)."""
    return write_clip(Path(folder) / name, **kwargs)


def vfr_clip(folder: Path, name: str = "vfr.mkv", frames: int = 12, **kwargs) -> Path:
    """Variable frame rate: irregular gaps between timestamps (time base 1/1000)."""
    steps = [VFR_STEPS_MS[i % len(VFR_STEPS_MS)] for i in range(frames)]
    pts = [sum(steps[:i]) for i in range(frames)]
    return write_clip(Path(folder) / name, frames=frames, pts=pts, time_base=Fraction(1, 1000), **kwargs)


def ten_bit_clip(folder: Path, name: str = "ten_bit.mkv", **kwargs) -> Path:
    """yuv420p10le, BT.2020 tags."""
    kwargs.setdefault("color", BT2020_TV)
    return write_clip(Path(folder) / name, bit_depth=10, **kwargs)


def odd_size_clip(folder: Path, name: str = "odd.mkv", width: int = 719, height: int = 405, **kwargs) -> Path:
    """Odd width and height (4:4:4 chroma, since 4:2:0 cannot hold an odd size), with a 4:3 pixel aspect."""
    kwargs.setdefault("frames", 4)
    kwargs.setdefault("pix_fmt", "yuv444p")
    kwargs.setdefault("sample_aspect_ratio", Fraction(4, 3))
    kwargs.setdefault("encoder_options", {"preset": "ultrafast"})
    return write_clip(Path(folder) / name, width=width, height=height, **kwargs)


def rotated_clip(folder: Path, name: str = "rotated.mp4", rotation: int = 90, **kwargs) -> Path:
    """A display matrix that rotates by `rotation` degrees (what phones write)."""
    return write_clip(Path(folder) / name, rotation=rotation, **kwargs)


def subtitled_clip(folder: Path, name: str = "subtitled.mkv", **kwargs) -> Path:
    """Matroska with video, audio and an SRT (subrip) subtitle stream with two cues."""
    return write_clip(Path(folder) / name, subtitles=True, **kwargs)


def full_range_clip(folder: Path, name: str = "full_range.mkv", **kwargs) -> Path:
    """Full (PC/JPEG) range BT.709."""
    return write_clip(Path(folder) / name, color=BT709_PC, **kwargs)


def corrupt_clip(
    folder: Path, name: str = "corrupt.mkv", frames: int = 24, broken: int = 3, **kwargs
) -> Path:
    """Intra-only H.264 in Matroska whose video packets `frames//2 .. +broken` have zeroed payloads.

    The container framing stays intact, so demuxing goes on; the decoder rejects the damaged packets
    ("Invalid NAL unit size") and the frames before and after them decode (corrupt packets in
    the middle of a stream). Exactly `broken` frames are lost.
    """
    kwargs.setdefault("encoder_options", {"preset": "ultrafast", "g": "1"})
    path = write_clip(Path(folder) / name, frames=frames, **kwargs)
    data = bytearray(path.read_bytes())
    with av.open(str(path)) as container:
        video_packets = [p for p in container.demux(video=0) if p.size]
        for packet in video_packets[frames // 2 : frames // 2 + broken]:
            payload = bytes(packet)
            offset = data.find(payload, packet.pos)  # `pos` is the block header; the payload follows it
            if offset < 0:
                raise RuntimeError("could not locate a video packet's payload in the file")
            data[offset : offset + len(payload)] = bytes(len(payload))
    path.write_bytes(bytes(data))
    return path


def truncated_clip(folder: Path, name: str = "truncated.mkv", keep: float = 0.6, **kwargs) -> Path:
    """A Matroska clip cut off at `keep` of its bytes (a download or a recording that stopped)."""
    kwargs.setdefault("frames", 24)
    path = write_clip(Path(folder) / name, **kwargs)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def truncated_mp4(folder: Path, name: str = "truncated.mp4", keep: float = 0.5, **kwargs) -> Path:
    """An MP4 cut before its index (`moov` is at the end): nothing in it can be read."""
    path = write_clip(Path(folder) / name, **kwargs)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def not_a_video(folder: Path, name: str = "notes.mp4") -> Path:
    """A text file with a video extension."""
    path = Path(folder) / name
    path.write_text("These are meeting notes, not a video.\n" * 20, encoding="utf-8")
    return path


def zero_frame_clip(folder: Path, name: str = "zero_frames.mkv") -> Path:
    """A video stream with no frames in it (the audio is there)."""
    path = Path(folder) / name
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        tone = out.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        _write_tone(out, tone, 0, 0.3)
        out.mux(tone.encode(None))
    return path


def audio_only_clip(folder: Path, name: str = "tone.mka") -> Path:
    """Audio, no video stream."""
    path = Path(folder) / name
    with av.open(str(path), "w") as out:
        tone = out.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        _write_tone(out, tone, 0, 0.3)
        out.mux(tone.encode(None))
    return path


def sixteen_bit_clip(folder: Path, name: str = "sixteen_bit.mkv", **kwargs) -> Path:
    """Lossless FFV1 at 16 bits per component: a depth the I/O layer refuses (it takes 8, 10 or 12)."""
    kwargs.setdefault("frames", 3)
    kwargs.setdefault("audio", False)
    return write_clip(Path(folder) / name, codec="ffv1", pix_fmt="yuv444p16le", bit_depth=16, **kwargs)


def interlaced_clip(folder: Path, name: str = "interlaced.mkv", frames: int = 6) -> Path:
    """H.264 coded interlaced (x264 with interlaced DCT and motion), top field first, tagged so in Matroska."""
    path = Path(folder) / name
    with av.open(str(path), "w") as out:
        video = out.add_stream(
            "libx264",
            rate=25,
            options={"flags": "+ildct+ilme", "x264-params": "tff=1", "preset": "ultrafast"},
        )
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.codec_context.field_order = 2  # AV_FIELD_TT
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(texture(i, 64, 48), format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
    return path


def extra_streams_clip(folder: Path, name: str = "extra_streams.mp4", frames: int = 6) -> Path:
    """MP4 with the main H.264 video, a second (MPEG-4 part 2) video stream and a JPEG cover picture."""
    path = Path(folder) / name
    with av.open(str(path), "w") as out:
        main = out.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
        main.width, main.height, main.pix_fmt = 64, 48, "yuv420p"
        second = out.add_stream("mpeg4", rate=25)
        second.width, second.height, second.pix_fmt = 32, 24, "yuv420p"
        cover = out.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 32, 32, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        picture = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 200, np.uint8), format="rgb24")
        picture = picture.reformat(format="yuvj420p")
        picture.pts = 0
        out.mux(cover.encode(picture) + cover.encode(None))
        for i in range(frames):
            for stream, (w, h) in ((main, (64, 48)), (second, (32, 24))):
                frame = av.VideoFrame.from_ndarray(texture(i, w, h), format="rgb24").reformat(
                    format="yuv420p"
                )
                frame.pts = i
                out.mux(stream.encode(frame))
        out.mux(main.encode(None) + second.encode(None))
    return path


def moov_at_end_clip(folder: Path, name: str = "moov_at_end.mp4", frames: int = 2) -> Path:
    """An ordinary (not fast-start) MP4, large enough that its index at the end lies beyond what a reader
    of a pipe can buffer: lossless noise at 320x240, about 140 kB a frame."""
    path = Path(folder) / name
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25, options={"qp": "0", "preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(
                rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), format="rgb24"
            )
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
    return path


def edit_list_clip(folder: Path, name: str = "edit_list.mp4", frames: int = 12, cut: int = 3) -> Path:
    """MP4 whose edit list starts `cut` frames into the coded video, as a trimmed copy (`ffmpeg -ss ... -c
    copy`) has: those frames are decoded (later ones refer to them) but flagged to be discarded."""
    path = Path(folder) / name
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25, options={"bf": "0", "preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.time_base = video.codec_context.time_base = Fraction(1, 25)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(texture(i, 64, 48), format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = i - cut, Fraction(1, 25)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
    return path


def damaged_container_clip(folder: Path, name: str = "damaged.mkv", frames: int = 48, **kwargs) -> Path:
    """Intra-only H.264 whose middle tenth of bytes is zeroed: the demuxer skips the damaged stretch while
    resynchronising, so its frames vanish without a decoder error (Matroska, NUT and MPEG-TS alike)."""
    kwargs.setdefault("encoder_options", {"preset": "ultrafast", "g": "1"})
    path = write_clip(Path(folder) / name, frames=frames, **kwargs)
    data = bytearray(path.read_bytes())
    start, end = int(len(data) * 0.45), int(len(data) * 0.55)
    data[start:end] = bytes(end - start)
    path.write_bytes(bytes(data))
    return path
