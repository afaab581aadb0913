"""One clip's job inside the watch daemon (`ClipJobs`, a part of `daemon.Watcher`): run it in a worker
process, relay its events, and end it: the staged output renamed into OUTBOX and the ledger `done`, or the
clip `failed` with its error report; the finish marks other daemons read are written either way.
"""

from __future__ import annotations

import logging
import threading
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import RerenderError
from ..events import DoneEvent, ErrorEvent, JobEvent, NoteEvent, StartEvent, WarningEvent
from .events import ClipAbandoned, ClipDone, ClipFailed, ClipJobEvent, ClipStarted, DaemonMessage
from .inbox_files import OpenedClip
from .ledger import Ledger, Row
from .lock import ClipLocks, Owner
from .marks import FinishMarks
from .output import Layout, fsync_path, numbered
from .report import Reporter
from .scan import SeenClip
from .settings import ClipSettings, SettingsSource
from .wake import Waker

if TYPE_CHECKING:
    from .daemon import JobApi, WatchOptions


@dataclass
class RunningClip:
    """A clip whose job runs: its thread, its cancel and the log lines kept for its error report."""

    rel: str
    thread: threading.Thread
    cancel: threading.Event
    input_path: str  # what the job reads the clip as (its descriptor's path), named back as the clip
    log: list[str] = field(default_factory=list)

    def clip_words(self, text: str) -> str:
        """`text` (a message of the job) with the clip's descriptor path replaced by the clip's name."""
        return text.replace(self.input_path, self.rel) if self.input_path != self.rel else text


class _ThreadLog(logging.Handler):
    """Collects the log records of one worker thread for its `.error.txt`."""

    def __init__(self, thread_id: int, sink: list[str]) -> None:
        super().__init__(logging.INFO)
        self._thread_id = thread_id
        self._sink = sink
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self._thread_id:
            self._sink.append(self.format(record))


class ClipJobs:
    """The job half of the Watcher: what it needs of the Watcher is declared here."""

    options: WatchOptions
    api: JobApi
    reporter: Reporter
    layout: Layout
    owner: Owner
    ledger: Ledger
    locks: ClipLocks
    marks: FinishMarks
    settings: SettingsSource
    wake: Waker

    def _work(
        self, clip: SeenClip, row: Row, settings: ClipSettings, job: RunningClip, opened: OpenedClip
    ) -> None:
        rel = clip.rel
        layout = self.layout
        handler = _ThreadLog(threading.get_ident(), job.log)
        logging.getLogger().addHandler(handler)
        muxer = settings.values.get("format")
        staged = layout.staged_output(row.id, rel, muxer if isinstance(muxer, str) else None)
        try:
            layout.clear_staged_output(row.id)
            staged.parent.mkdir(parents=True, exist_ok=True)
            row = self.ledger.start(row.id, self.owner.describe(), str(staged))
            cache = layout.keyframe_cache(row.id)
            reused = len(list(cache.iterdir())) if cache.is_dir() else 0
            cache.mkdir(parents=True, exist_ok=True)
            self.reporter.emit(ClipStarted(clip=rel, attempt=row.attempts, reused_keyframes=reused))
            job.log.append(
                f"clip {rel} ({clip.size} bytes), attempt {row.attempts}, settings {row.settings_hash}"
            )
            try:
                # What the worker would refuse is refused here; the worker gets the checked values.
                values = self.settings.job_values(settings, opened.job_path, str(staged))
                result = self.api.run(
                    values,
                    sources=settings.sources,
                    keyframe_cache=cache,
                    on_event=lambda event: self._job_event(rel, job, event),
                    on_log=lambda line: job.log.append(job.clip_words(line)),
                    cancel=job.cancel,
                    cancelled=self.api.cancelled,
                    pass_fds=(opened.fd,),
                )
            except self.api.cancelled:
                layout.clear_staged_output(row.id)
                self.ledger.requeue(row.id, count_attempt=False)
                self.reporter.emit(ClipAbandoned(rel, "stopped by a signal"))
                return
            except RerenderError as exc:
                self._fail(row, rel, job.clip_words(str(exc)), job)
                return
            except Exception as exc:  # a bug in one clip's job must not stop the daemon
                job.log.append(traceback.format_exc())
                self._fail(row, rel, job.clip_words(f"internal error: {type(exc).__name__}: {exc}"), job)
                return
            frames = _frames_of(result)
            if not staged.is_file() or staged.stat().st_size == 0:
                self._fail(row, rel, "the job finished without writing an output file", job)
                return
            if job.cancel.is_set():
                layout.clear_staged_output(row.id)
                self.ledger.requeue(row.id, count_attempt=False)
                self.reporter.emit(ClipAbandoned(rel, "stopped by a signal"))
                return
            fsync_path(staged)
            if not self.locks.holds(rel):
                layout.clear_staged_output(row.id)
                self.reporter.emit(ClipAbandoned(rel, "its lock was taken by another daemon"))
                return
            final = self._commit(row, staged, frames)
            self.reporter.emit(
                ClipDone(
                    clip=rel,
                    output=layout.relative_output(final),
                    frames=frames,
                    # Frames lost to corrupt packets: the output is shorter than the clip (the preset's
                    # `strict = true` makes such clips fail instead).
                    dropped=getattr(result, "dropped", 0),
                    seconds=self.ledger.get(row.id).seconds or 0.0,
                )
            )
            if self.options.done_action == "move":
                layout.move_original(rel, "done")
        except Exception as exc:  # ledger or file-system failure around the job: keep the daemon alive
            job.log.append(traceback.format_exc())
            self.reporter.emit(DaemonMessage("warning", f"{rel}: {type(exc).__name__}: {exc}"))
        finally:
            opened.close()
            logging.getLogger().removeHandler(handler)
            self.locks.release(rel)
            self.wake.set()

    def _job_event(self, rel: str, job: RunningClip, event: JobEvent) -> None:
        if isinstance(event, StartEvent | DoneEvent):
            # The daemon's own start/done events (with attempt, output) carry these; keep them in the log.
            job.log.append(f"job {event.KIND}: {event.to_json()}")
            if isinstance(event, StartEvent):
                self.reporter.emit(ClipJobEvent(rel, event))
            return
        if isinstance(event, WarningEvent | NoteEvent | ErrorEvent):
            event = replace(event, message=job.clip_words(event.message))
        if isinstance(event, WarningEvent | ErrorEvent):
            job.log.append(f"job {event.KIND}: {event.message}")
        self.reporter.emit(ClipJobEvent(rel, event))

    def _commit(self, row: Row, staged: Path, frames: int | None) -> Path:
        """Rename the staged output to its final name; the ledger knows the name before the rename."""
        target = self.layout.final_output(row.path, staged.suffix)
        if self.options.overwrite:
            self.ledger.committing(row.id, str(target), frames)
            final = self.layout.commit(staged, target, overwrite=True)
        else:
            for n in range(1, 10_000):
                candidate = numbered(target, n)
                if candidate.exists():
                    continue
                self.ledger.committing(row.id, str(candidate), frames)
                try:
                    final = self.layout.commit(staged, candidate, overwrite=False)
                except FileExistsError:
                    continue
                break
            else:
                raise OSError(f"no free output name next to {target}")
        self.ledger.done(row.id, self.layout.relative_output(final), frames)
        self._mark(row, "done", self.layout.relative_output(final), None)
        self.layout.remove_staging(row.id)
        return final

    def _fail(self, row: Row, rel: str, reason: str, job: RunningClip | None, log: str = "") -> None:
        reason = " ".join(reason.split())  # one line, whatever the exception said
        self.layout.remove_staging(row.id)
        log = "\n".join(job.log) if job is not None else log
        report = self.layout.write_report(rel, row.id, f"{reason}\n\n--- log ---\n{log}\n")
        self.ledger.failed(row.id, reason)
        self._mark(row, "failed", None, reason)
        self.reporter.emit(ClipFailed(rel, reason, self.layout.relative_output(report)))
        if self.options.done_action == "move":
            self.layout.move_original(rel, "failed")

    def _mark(self, row: Row, state: str, output: str | None, error: str | None) -> None:
        record = {
            "state": state,
            "outbox": str(self.options.outbox),
            "output": output,
            "error": error,
            "by": self.owner.describe(),
        }
        self.marks.write(row.path, row.size, row.mtime_ns, row.settings_hash, record)


def _frames_of(result: Any) -> int | None:
    frames = getattr(result, "frames", None)  # JobResult.frames: frames written
    return frames if isinstance(frames, int) else None
