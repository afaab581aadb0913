"""AAC in ADTS framing (MPEG-TS, .aac) copied into MP4/Matroska: headers out, AudioSpecificConfig in.

FFmpeg's muxers insert the `aac_adtstoasc` bitstream filter on their own, but only when they may rewrite
the header at the end; a pipe (or a fragmented MP4 with an empty moov) writes its header before the
first audio packet arrives and fails with "Malformed AAC bitstream". So the Sink does the conversion:
the 2-byte AudioSpecificConfig (ISO 14496-3 §1.6.2.1) built from the first ADTS header becomes the
stream's extradata, and each packet loses its 7- or 9-byte ADTS header; the raw AAC payload is unchanged.
"""

from __future__ import annotations

# Muxers that want raw AAC with an AudioSpecificConfig rather than ADTS frames.
ASC_MUXERS = frozenset({"mp4", "mov", "ipod", "ismv", "3gp", "3g2", "matroska", "webm"})


def is_adts(data: bytes) -> bool:
    return len(data) >= 7 and data[0] == 0xFF and (data[1] & 0xF6) == 0xF0


def header_length(data: bytes) -> int:
    """7 bytes, or 9 when a CRC follows (protection_absent = 0)."""
    return 7 if data[1] & 0x01 else 9


def audio_specific_config(header: bytes) -> bytes:
    """AudioSpecificConfig for the stream an ADTS header describes: object type, rate index, channels."""
    profile = header[2] >> 6  # ADTS profile = audio object type - 1
    rate_index = (header[2] >> 2) & 0x0F
    channels = ((header[2] & 0x01) << 2) | (header[3] >> 6)
    value = ((profile + 1) << 11) | (rate_index << 7) | (channels << 3)
    return value.to_bytes(2, "big")


def raw_blocks(data: bytes) -> int:
    """Number of raw AAC data blocks in the ADTS frame (the ASC path handles exactly one)."""
    return (data[6] & 0x03) + 1
