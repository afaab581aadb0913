"""`rerender run`: re-render a video file or pipe. A thin shell over `job.run_job`.

Exit status: 0 done; 2 bad input or usage (one line on stderr); 1 internal error; 130 interrupted (Ctrl-C,
SIGINT); 143 terminated (SIGTERM, what `kill`, `timeout`, systemd and docker send).
No partial output file is left on failure or on either signal: the Sink writes to a temporary file and
renames it at the end, and the signal unwinds the job like an error, so the Sink and the lavfi test
source remove their temporaries.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import RerenderError
from .job import parse_run_options, run_job
from .progress import make_progress

EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(BaseException):
    """SIGTERM arrived: raised on the main thread so that the job unwinds as it does for Ctrl-C."""


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While active, SIGTERM raises `Terminated` on the main thread (a second SIGTERM during the clean-up
    is ignored, so the clean-up finishes). Does nothing off the main thread, where signals cannot be set."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated("terminated by SIGTERM")

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str]) -> int:
    try:
        options = parse_run_options(argv)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    progress = make_progress(options.progress)
    try:
        with sigterm_unwinds():
            run_job(options, on_event=progress)
    except Terminated:
        print("rerender run: terminated (SIGTERM); no output was left behind", file=sys.stderr)
        return EXIT_TERMINATED
    except RerenderError:
        raise  # the CLI prints its one-line message and exit status
    except Exception as exc:  # noqa: BLE001 - an internal error: one line, exit 1, never a traceback
        print(f"rerender run: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        progress.close()
    return 0
