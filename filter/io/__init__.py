"""Video I/O on PyAV: the Source and Sink of the graph (README).

    with open_source("in.mp4") as src, open_sink("out.mp4", src, SinkOptions()) as sink:
        for frame in src.frames():
            sink.write(frame)

`-` is standard input/output. See `source.py` and `sink.py` for what is kept and why; the modules they use:
demuxers.py (what may be opened), stream_info.py (the input's streams), timestamps.py (frame pts, lost
frames), target.py (where the output goes), video_encoder.py (the encoder), remux.py (the other streams),
options.py (encoder settings), args.py (the flags), paths.py (output checks and temporaries).
"""

from .args import add_io_arguments, check_dropped, sink_options_from_args
from .formats import VideoInfo
from .options import SinkOptions
from .sink import Sink, open_sink
from .source import Source, open_source

__all__ = [
    "Sink",
    "SinkOptions",
    "Source",
    "VideoInfo",
    "add_io_arguments",
    "check_dropped",
    "open_sink",
    "open_source",
    "sink_options_from_args",
]
