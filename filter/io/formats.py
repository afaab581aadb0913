"""What the I/O layer knows about a video stream, and the choices that depend on the container and codec.

Colour tags are FFmpeg's own enum values (AVColorRange, AVColorSpace, AVColorTransferCharacteristic,
AVColorPrimaries) so they go back into PyAV unchanged; `color_names()` gives the human names.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

# AVColorRange: 0 unspecified, 1 limited ("tv"/MPEG), 2 full ("pc"/JPEG).
COLOR_RANGE_NAMES = {0: "unspecified", 1: "tv", 2: "pc"}
COLORSPACE_NAMES = {
    0: "rgb",
    1: "bt709",
    2: "unspecified",
    4: "fcc",
    5: "bt470bg",
    6: "smpte170m",
    7: "smpte240m",
    8: "ycgco",
    9: "bt2020nc",
    10: "bt2020c",
}
COLOR_TRC_NAMES = {
    1: "bt709",
    2: "unspecified",
    4: "gamma22",
    5: "gamma28",
    6: "smpte170m",
    7: "smpte240m",
    8: "linear",
    13: "iec61966-2-1",
    14: "bt2020-10",
    15: "bt2020-12",
    16: "smpte2084",
    18: "arib-std-b67",
}
COLOR_PRIMARIES_NAMES = {
    1: "bt709",
    2: "unspecified",
    5: "bt470bg",
    6: "smpte170m",
    9: "bt2020",
    12: "smpte432",
}

# Muxer names (as PyAV reports `container.format.name`) of containers that carry a display matrix.
DISPLAY_MATRIX_MUXERS = frozenset({"mp4", "mov", "ipod", "3gp", "3g2", "ismv", "matroska", "webm"})
# Muxers that can only be written to a pipe when fragmented ("muxer does not support non
# seekable output").
FRAGMENTABLE_MP4_MUXERS = frozenset({"mp4", "mov", "ipod", "ismv"})
# The MOV-family muxers (they share movenc's options such as video_track_timescale).
MOV_MUXERS = frozenset({"mp4", "mov", "ipod", "ismv", "3gp", "3g2", "psp", "f4v"})
FRAGMENTED_MP4_FLAGS = "frag_keyframe+empty_moov+default_base_moof"
# Default video codec per muxer when libx264 cannot go in it.
DEFAULT_CODEC_BY_MUXER = {"webm": "libvpx-vp9", "yuv4mpegpipe": "rawvideo", "rawvideo": "rawvideo"}
DEFAULT_CODEC = "libx264"
DEFAULT_PIPE_FORMAT = "nut"
SUPPORTED_BIT_DEPTHS = (8, 9, 10, 12)


@dataclass(frozen=True)
class VideoInfo:
    """The input video stream as the graph sees it (frames are RGB at `width` x `height`)."""

    width: int
    height: int
    frame_count: int | None  # from the container's index; None when it does not say (pipes, Matroska)
    time_base: Fraction
    average_rate: Fraction | None
    bit_depth: int  # bits per component of the decoded pixel format: 8, 9, 10 or 12
    pix_fmt: str  # decoded pixel format, e.g. yuv420p10le
    color_range: int
    colorspace: int
    color_trc: int
    color_primaries: int
    rotation: int  # display rotation in degrees (counter-clockwise, as in FFmpeg's display matrix)
    sample_aspect_ratio: Fraction | None
    codec: str
    container_format: str
    duration: float | None  # seconds, when the container says

    @property
    def dtype_name(self) -> str:
        """numpy dtype of `Frame.image`: uint8 for 8-bit sources, uint16 for deeper ones."""
        return "uint8" if self.bit_depth <= 8 else "uint16"

    def color_names(self) -> dict[str, str]:
        return {
            "color_range": COLOR_RANGE_NAMES.get(self.color_range, str(self.color_range)),
            "colorspace": COLORSPACE_NAMES.get(self.colorspace, str(self.colorspace)),
            "color_trc": COLOR_TRC_NAMES.get(self.color_trc, str(self.color_trc)),
            "color_primaries": COLOR_PRIMARIES_NAMES.get(self.color_primaries, str(self.color_primaries)),
        }


def component_bits(pix_fmt) -> int:
    """Largest bit depth among the colour (non-alpha) components of a PyAV VideoFormat."""
    bits = [c.bits for c in pix_fmt.components if not c.is_alpha]
    return max(bits) if bits else 0


def graph_bit_depth(bits: int) -> int:
    """Depth the graph works at: formats with fewer than 8 bits (rgb555, monob, ...) are widened to 8."""
    return 8 if bits <= 8 else bits


def is_float_format(name: str) -> bool:
    return "f32" in name or "f16" in name or "f64" in name


def default_codec(muxer: str) -> str:
    return DEFAULT_CODEC_BY_MUXER.get(muxer, DEFAULT_CODEC)


def default_pix_fmt(supported: list[str] | None, bit_depth: int, width: int, height: int) -> str:
    """yuv420p (yuv420p10le for deeper input when the encoder has it); 4:4:4 when the size is odd.

    4:2:0 halves the chroma planes, so an odd width or height cannot be kept (x264 refuses it); 4:4:4 keeps
    the exact size instead of padding or cropping (the output keeps the input's size: docs/decisions.md 10).
    """
    odd = width % 2 or height % 2
    chroma = "yuv444p" if odd else "yuv420p"
    wanted = [f"{chroma}10le", chroma] if bit_depth > 8 else [chroma]
    if supported is None:  # rawvideo and friends take anything
        return wanted[0]
    for name in wanted:
        if name in supported:
            return name
    return supported[0]


def sws_colorspace(colorspace: int) -> int | None:
    """swscale's coefficient table is indexed by AVColorSpace; 'unspecified' and RGB use its default."""
    return None if colorspace in (0, 2) else colorspace
