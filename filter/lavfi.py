"""`lavfi:GRAPH` inputs: an FFmpeg test source, written once to a lossless temporary file the Source reads."""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from pathlib import Path

from .errors import InputError, UsageError
from .io.paths import lavfi_folder_prefix, sweep_lavfi_folders

LAVFI_PREFIX = "lavfi:"


def lavfi_graph(spec: str) -> str:
    graph = spec[len(LAVFI_PREFIX) :]
    keys = {part.partition("=")[0].strip() for part in graph.replace(",", ":").split(":")}
    if not graph or not ({"duration", "d"} & keys):
        raise UsageError(
            f"-i {spec!r}: a lavfi source needs a duration, e.g. lavfi:testsrc2=size=640x360:rate=25:duration=2"
        )
    return graph


def materialize_lavfi(spec: str, folder: Path) -> tuple[Path, int]:
    """Decode an FFmpeg lavfi source (PyAV's `lavfi` demuxer) into a lossless NUT file the Source reads.

    The I/O layer opens files and pipes only; a test source written once keeps one code path for every
    input (and gives the Source a real container with a frame count)."""
    import av

    graph = lavfi_graph(spec)
    path = folder / "lavfi.nut"
    try:
        with av.open(graph, format="lavfi") as src, av.open(str(path), "w", format="nut") as dst:
            video = src.streams.video[0]
            rate = video.average_rate or 25
            out = dst.add_stream("ffv1", rate=rate)
            out.width, out.height, out.pix_fmt = (
                video.codec_context.width,
                video.codec_context.height,
                "yuv420p",
            )
            out.time_base = video.time_base
            count = 0
            for frame in src.decode(video):
                count += 1
                frame = frame.reformat(format="yuv420p")
                for packet in out.encode(frame):
                    dst.mux(packet)
            for packet in out.encode(None):
                dst.mux(packet)
    except (av.error.FFmpegError, ValueError, IndexError) as exc:
        raise InputError(
            f"-i {spec!r}: FFmpeg could not run this lavfi source ({exc}); check the filter graph"
        ) from None
    return path, count


def open_lavfi(spec: str, stack: ExitStack) -> tuple[Path, int]:
    """Materialise `spec` in a temporary folder that `stack` removes; returns the file and its frame count.

    Folders that killed runs left behind (their process is gone) are swept first."""
    sweep_lavfi_folders()
    temp = tempfile.TemporaryDirectory(prefix=lavfi_folder_prefix())
    folder = Path(stack.enter_context(temp))
    return materialize_lavfi(spec, folder)
