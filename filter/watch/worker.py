"""One clip's job in a process of its own, so that nothing one job does — a crash in native code, a runaway
allocation the kernel kills, an exception — can take the daemon or the other running jobs with it. The
job's outcome comes back as a failure of that clip with a one-line reason.

The daemon starts `python -m rerender.filter.watch.worker` and writes the request to its standard input
(JSON with the job's settings keyed by `rerender run` flag, the files that set them, the keyframe cache and
the two pipe descriptors; not on the command line, where every user's `ps` would show the prompts). The
worker maps the settings onto its options with `run_args.options_from_values`, as the daemon did to check
them: no argv in between. The worker reads nothing but that: the job's
events come back as JSON lines on one pipe (never pickles: the daemon does not load objects from a process
that reads dropped files; `events.from_json` checks each line back into its typed event); the other pipe carries the daemon's cancel (one byte) and, by its end of file,
the daemon's death, on which the worker exits at once (its successor recovers the clip). The clip's open
descriptor is inherited under the same number, so the worker reads the file the daemon checked.
"""

from __future__ import annotations

import collections
import contextlib
import faulthandler
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RerenderError
from ..events import BadEvent, JobEvent, from_json

# Lines of the worker's stderr kept for the clip's error report (a crash's traceback is printed there).
STDERR_LINES = 60
_GONE_STATUS = 3  # the worker's exit status when the daemon went away


class JobFailed(RerenderError):
    """The job refused its input or settings, or failed; the message is the job's own sentence."""


class JobCrashed(RerenderError):
    """The job's process ended without a result (a signal, or the kernel's out-of-memory killer)."""


@dataclass(frozen=True)
class WorkerResult:
    frames: int | None
    dropped: int


def run_in_worker(
    values: dict[str, Any],
    *,
    sources: dict[str, str] | None = None,
    keyframe_cache: Path,
    on_event: Callable[[JobEvent], None],
    on_log: Callable[[str], None],
    cancel: threading.Event,
    cancelled: type[BaseException],
    pass_fds: tuple[int, ...] = (),
) -> WorkerResult:
    """Run the job `values` stand for (flag keys, TOML-typed, with `input` and `output`; `sources`: the file
    that set each key, for messages) in a worker process. Raises `cancelled` when `cancel` stopped it,
    JobFailed with the job's message, JobCrashed when the process died without a result."""
    events_r, events_w = os.pipe()
    control_r, control_w = os.pipe()
    request = {
        "values": values,
        "sources": sources or {},
        "keyframe_cache": str(keyframe_cache),
        "events_fd": events_w,
        "control_fd": control_r,
        "parent": os.getpid(),
    }
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rerender.filter.watch.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=(events_w, control_r, *pass_fds),
            start_new_session=True,  # Ctrl-C reaches the daemon only; it cancels the worker itself
        )
    except BaseException:
        for fd in (events_r, events_w, control_r, control_w):
            os.close(fd)
        raise
    os.close(events_w)
    os.close(control_r)
    with contextlib.suppress(OSError):  # a worker that died at once is reported below
        proc.stdin.write(json.dumps(request).encode())
    with contextlib.suppress(OSError):
        proc.stdin.close()
    stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
    reader = threading.Thread(target=_collect, args=(proc.stderr, stderr_tail), daemon=True)
    reader.start()
    finished = threading.Event()
    canceller = threading.Thread(target=_forward_cancel, args=(cancel, finished, control_w), daemon=True)
    canceller.start()
    outcome: dict[str, Any] | None = None
    try:
        with os.fdopen(events_r, "rb") as events:
            for line in events:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(message, dict):
                    continue
                kind = message.get("kind")
                if kind == "event":
                    try:
                        event = from_json(message.get("event"))
                    except BadEvent:
                        continue  # the worker speaks only the job's events; anything else is dropped
                    on_event(event)
                elif kind == "log":
                    on_log(str(message.get("line", "")))
                elif kind in ("done", "cancelled", "failed"):
                    outcome = message
    finally:
        finished.set()
        if proc.poll() is None and outcome is None:
            # Our side is ending without a result (an exception here): the worker must not outlive it.
            with contextlib.suppress(OSError):
                proc.kill()
        proc.wait()
        canceller.join()
        reader.join(timeout=10)
        with contextlib.suppress(OSError):
            os.close(control_w)
    for line in stderr_tail:
        on_log(f"worker stderr: {line}")
    if outcome is None:
        raise JobCrashed(_death(proc.returncode))
    if outcome["kind"] == "cancelled":
        raise cancelled("the job was cancelled; no output was written")
    if outcome["kind"] == "failed":
        raise JobFailed(str(outcome.get("message") or "the job failed"))
    frames = outcome.get("frames")
    dropped = outcome.get("dropped")
    return WorkerResult(
        frames if isinstance(frames, int) else None, dropped if isinstance(dropped, int) else 0
    )


def _death(status: int) -> str:
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        hint = " (the kernel's out-of-memory killer sends it)" if -status == signal.SIGKILL else ""
        return (
            f"the job's process was killed by {name}{hint} before it finished; the daemon and the other "
            "clips are unaffected; see the log below, fix the settings or the clip, then touch it to retry"
        )
    return f"the job's process exited with status {status} before it finished; see the log below"


def _collect(stream, sink: collections.deque[str]) -> None:
    with contextlib.suppress(OSError, ValueError):
        for raw in stream:
            sink.append(raw.decode("utf-8", "replace").rstrip("\n"))


def _forward_cancel(cancel: threading.Event, finished: threading.Event, control_w: int) -> None:
    while not finished.is_set():
        if cancel.wait(0.1):
            with contextlib.suppress(OSError):
                os.write(control_w, b"c")
            return


# -- the worker side --------------------------------------------------------------------------------------------


class _Sender:
    def __init__(self, fd: int) -> None:
        self._out = os.fdopen(fd, "wb", buffering=0)
        self._lock = threading.Lock()

    def __call__(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message, default=str) + "\n").encode()
        with self._lock, contextlib.suppress(OSError):
            self._out.write(data)


class _LogToDaemon(logging.Handler):
    def __init__(self, send: _Sender) -> None:
        super().__init__(logging.INFO)
        self._send = send
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self._send({"kind": "log", "line": self.format(record)})


def _die_with(parent: int) -> None:
    """Ask Linux to kill this process when the daemon dies (the control pipe's end of file does it too, but
    not while native code holds the interpreter)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the daemon died before the request above
        os._exit(_GONE_STATUS)


def _watch_control(fd: int, cancel: threading.Event) -> None:
    with contextlib.suppress(OSError):
        data = os.read(fd, 1)
        if data:
            cancel.set()
            return
    os._exit(_GONE_STATUS)  # the daemon is gone: leave the clip to its successor's recovery


def main() -> int:
    request = json.loads(sys.stdin.buffer.read())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with(int(request["parent"]))
    faulthandler.enable()  # a crash in native code prints the Python stack to stderr, into the report
    send = _Sender(int(request["events_fd"]))
    cancel = threading.Event()
    threading.Thread(target=_watch_control, args=(int(request["control_fd"]), cancel), daemon=True).start()
    logging.getLogger().addHandler(_LogToDaemon(send))
    logging.getLogger().setLevel(logging.INFO)

    from ..job import Cancelled, options_from_values, run_job

    try:
        sources = request.get("sources") or {}
        options = options_from_values(
            dict(request["values"]), lambda key: str(sources.get(key, "the settings"))
        )
        result = run_job(
            options,
            on_event=lambda event: send({"kind": "event", "event": event.to_json()}),
            cancel=cancel,
            keyframe_cache=Path(request["keyframe_cache"]),
        )
    except Cancelled:
        send({"kind": "cancelled"})
        return 0
    except RerenderError as exc:
        send({"kind": "failed", "message": str(exc)})
        return 1
    except Exception as exc:  # noqa: BLE001 - reported as this clip's failure
        import traceback

        send({"kind": "log", "line": traceback.format_exc()})
        send({"kind": "failed", "message": f"internal error: {type(exc).__name__}: {exc}"})
        return 1
    send({"kind": "done", "frames": result.frames, "dropped": getattr(result, "dropped", 0)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
