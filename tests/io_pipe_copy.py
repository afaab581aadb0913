"""Copy every frame from standard input to standard output through the I/O layer (for the pipe tests).

    python io_pipe_copy.py [--input-format FMT] [-f FMT] [--no-audio] [--strict] [--fail-after N] < in > out

`--fail-after N` raises after N frames, to check what a failed run leaves behind. Exit statuses and error
lines are the CLI's: one line on stderr, 2 for bad input.
"""

from __future__ import annotations

import argparse
import sys

from rerender.filter.errors import RerenderError
from rerender.filter.io import add_io_arguments, check_dropped, open_sink, open_source, sink_options_from_args


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-i", "--input", default="-")
    parser.add_argument("-o", "--output", default="-")
    parser.add_argument("--fail-after", type=int, default=None)
    add_io_arguments(parser)
    args = parser.parse_args(argv)
    try:
        with open_source(args.input, format=args.input_format) as src:
            with open_sink(args.output, src, sink_options_from_args(args)) as sink:
                for frame in src.frames():
                    if args.fail_after is not None and frame.index == args.fail_after:
                        raise RuntimeError(f"failing on purpose at frame {frame.index}")
                    sink.write(frame)
                # Checked before the sink closes, so that --strict leaves no output file behind.
                warning = check_dropped(src, args.strict)
            if warning:
                print(f"io_pipe_copy: warning: {warning}", file=sys.stderr)
    except RerenderError as exc:
        print(f"io_pipe_copy: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except RuntimeError as exc:
        print(f"io_pipe_copy: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
