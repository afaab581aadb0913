"""`rerender run`: re-render a video file or pipe. A thin shell over `job.run_job`.

Exit status: 0 done; 2 bad input or usage (one line on stderr); 1 internal error; 130 interrupted.
No partial output file is left on failure (the Sink writes to a temporary file and renames it at the end).
"""

from __future__ import annotations

import sys

from .errors import RerenderError
from .job import parse_run_options, run_job
from .progress import make_progress


def main(argv: list[str]) -> int:
    try:
        options = parse_run_options(argv)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    progress = make_progress(options.progress)
    try:
        run_job(options, on_event=progress)
    except RerenderError:
        raise  # the CLI prints its one-line message and exit status
    except Exception as exc:  # noqa: BLE001 - an internal error: one line, exit 1, never a traceback
        print(f"rerender run: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        progress.close()
    return 0
