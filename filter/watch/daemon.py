"""The watch loop: scan, wait for stability, lock, record in the ledger, run one job per clip in a worker
process watched by a thread (at most `--jobs` at once; worker.py), rename the result into OUTBOX, and
recover from crashes. Settings and the dropped file are checked before a job starts; whatever one job does
ends as that clip's failure, never the daemon's.

Crash safety rests on three orderings:
  * the ledger says `running` before anything is written, and the clip's lock is taken before that, so a
    `running` row whose lock we can take belongs to a dead process and is re-queued (its partial output
    deleted, its keyframe checkpoints kept for the resume);
  * the staged file is complete and fsynced before the ledger says `committing` with the output name, and
    the rename happens after, so a crash in between is finished by the recovery, never rendered twice;
  * the ledger says `done` before the original is moved and the lock released.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import InputError, RerenderError
from .clip_job import ClipJobs, RunningClip
from .events import (
    ClipRecovered,
    DaemonMessage,
    Skipped,
    Watching,
)
from .inbox_files import OpenedClip, open_clip
from .ledger import Ledger, Row
from .lock import ClipLocks, Owner
from .marks import FinishMarks
from .output import Layout
from .report import Reporter
from .scan import SeenClip, StabilityTracker, scan_inbox
from .settings import ClipSettings, SettingsSource
from .wake import WakeHint, Waker


@dataclass(frozen=True)
class WatchOptions:
    inbox: Path
    outbox: Path
    preset: Path | None = None
    poll: float = 2.0
    stable: float = 5.0
    jobs: int = 1
    overwrite: bool = False
    done_action: Literal["keep", "move"] = "keep"
    progress: Literal["text", "json"] = "text"
    once: bool = False
    max_attempts: int = 5
    stale_lock: float = 120.0


@dataclass(frozen=True)
class JobApi:
    """The filter's job entry points (rerender.filter.job), passed in so this module imports no renderer:
    the run parser (its flags' schema, for the sidecar rules), `options` (`run_args.options_from_values`,
    to check settings before a job starts), `run` (`worker.run_in_worker`: one job in its own process) and
    the cancelled exception."""

    build_parser: Any
    options: Any
    run: Any
    cancelled: type[BaseException]


class Watcher(ClipJobs):
    """The watch loop (module doc); one clip's job, and how it ends, are `ClipJobs`'s."""

    def __init__(self, options: WatchOptions, api: JobApi, reporter: Reporter) -> None:
        self.options = options
        self.api = api
        self.reporter = reporter
        self.layout = Layout(options.inbox, options.outbox)
        self.owner = Owner.me()
        self.ledger = Ledger(self.layout.ledger_path)
        self.locks = ClipLocks(options.inbox, self.owner, stale_after=options.stale_lock)
        self.marks = FinishMarks(self.locks)
        self.settings = SettingsSource(options.preset, api.build_parser, api.options, inbox=options.inbox)
        self.tracker = StabilityTracker(options.stable)
        self.wake = Waker()
        self._stop_reason: str | None = None  # set by signal handlers: a plain assignment is signal-safe
        self._running: dict[str, RunningClip] = {}
        self._settled: dict[str, tuple] = {}  # clip -> signature the ledger has as done or failed
        self._mutex = threading.Lock()

    # -- control -------------------------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stop_reason is not None

    def request_stop(self, reason: str) -> None:
        """Safe in a signal handler (no locks): the loop stops taking clips and then, in the main thread's
        normal flow, cancels the running jobs, which clean up after themselves."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self.wake.set()

    def _cancel_running(self) -> None:
        with self._mutex:
            for job in self._running.values():
                job.cancel.set()

    def run(self) -> int:
        self.reporter.emit(
            Watching(
                message=f"{self.options.inbox} -> {self.options.outbox} ({self.owner.describe()})",
                inbox=str(self.options.inbox),
                outbox=str(self.options.outbox),
            )
        )
        self._recover_all()
        hint = WakeHint.start(self.options.inbox, self.wake)
        warned: set[str] = set()
        try:
            while not self.stopping:
                self.locks.refresh()
                self._reap()
                result = scan_inbox(self.options.inbox)
                for error in result.errors:
                    if error not in warned:  # a share that went away: said once, retried every poll
                        warned.add(error)
                        self.reporter.emit(DaemonMessage("warning", f"cannot scan {error}"))
                stable = self.tracker.update(result.clips, complete=not result.errors)
                waiting = 0
                for clip in stable:
                    if self.stopping:
                        break
                    try:
                        waiting += self._consider(clip)
                    except (OSError, sqlite3.Error, RerenderError) as exc:  # e.g. the share went away
                        self.reporter.emit(DaemonMessage("warning", f"{clip.rel}: {exc}"))
                    except Exception as exc:  # noqa: BLE001 - one clip's bug must not stop the others
                        message = f"{clip.rel}: {type(exc).__name__}: {exc}"
                        self.reporter.emit(DaemonMessage("warning", " ".join(message.split())))
                if self.options.once:
                    busy = bool(self._running)
                    if not busy and not waiting and not self.tracker.unsettled(result.clips):
                        break
                # Sleep one poll, or less when a clip's stability window ends sooner.
                due = self.tracker.next_due()
                self.wake.wait(self.options.poll if due is None else min(self.options.poll, due + 0.01))
        finally:
            hint.close()
            if self._stop_reason is not None:
                self.reporter.emit(DaemonMessage("stopping", self._stop_reason))
            # A signal, or an exception in the loop: abandon the running jobs cleanly.
            self._stop_reason = self._stop_reason or "the watch loop ended"
            self._cancel_running()
            for job in list(self._running.values()):
                job.thread.join()
            self._reap()
            self.locks.release_all()
            self.wake.close()
            self.reporter.emit(DaemonMessage("stopped", "ledger consistent, no job running"))
        return 0

    # -- scheduling ------------------------------------------------------------------------------------------

    def _consider(self, clip: SeenClip) -> int:
        """Queue or start a stable clip. Returns 1 if it still waits for a free slot, else 0."""
        if clip.rel in self._running or self._settled.get(clip.rel) == clip.signature:
            return 0
        source = self.layout.source(clip.rel)
        settings = self.settings.for_clip(source)
        row = self.ledger.find(clip.rel, clip.size, clip.mtime_ns, settings.digest)
        if row is not None and row.state in ("done", "failed"):
            # Done before, but the original is still here: a crash came between the ledger and the move.
            if self.options.done_action == "move" and self.locks.acquire(clip.rel):
                try:
                    if self._unchanged(clip):
                        self.layout.move_original(clip.rel, row.state)
                finally:
                    self.locks.release(clip.rel)
            # The preset is fixed for this process and the sidecar is in the signature, so a kept original
            # needs no ledger look-up again until it changes (it may stay in INBOX for days).
            if self.options.done_action == "keep":
                self._settled[clip.rel] = clip.signature
            return 0
        if row is None:
            row = self.ledger.enqueue(clip.rel, clip.size, clip.mtime_ns, settings.digest)
        if len(self._running) >= self.options.jobs:
            return 1
        if not self.locks.acquire(clip.rel):
            return 0  # another daemon has it
        try:
            row = self.ledger.get(row.id)
            if row.state == "running":
                # We hold the lock, so whoever marked it running is gone.
                row = self._recover(row)
            if row.state == "queued" and self._finished_elsewhere(row):
                self.locks.release(clip.rel)
                return 0
            if row.state != "queued" or not self._unchanged(clip):
                self.locks.release(clip.rel)
                return 0
            # Refused before any job starts: a bad sidecar, or a drop that is not a regular file in INBOX.
            if settings.error is not None:
                self._refuse(row, clip.rel, settings.error)
                return 0
            try:
                opened = open_clip(self.options.inbox, clip.rel)
            except FileNotFoundError:
                self.locks.release(clip.rel)
                return 0
            except InputError as exc:
                self._refuse(row, clip.rel, str(exc))
                return 0
            if (opened.size, opened.mtime_ns) != (clip.size, clip.mtime_ns):
                opened.close()  # replaced since the scan: judged again when it is stable
                self.locks.release(clip.rel)
                return 0
        except BaseException:
            self.locks.release(clip.rel)
            raise
        try:
            self._start(clip, row, settings, opened)
        except BaseException:
            opened.close()
            self.locks.release(clip.rel)
            raise
        return 0

    def _refuse(self, row: Row, rel: str, reason: str) -> None:
        """Fail a clip before its job starts (the caller holds its lock, which this releases)."""
        try:
            self._fail(row, rel, reason, None, log=f"clip {rel}: refused before rendering")
        finally:
            self.locks.release(rel)

    def _finished_elsewhere(self, row: Row) -> bool:
        """True (and the ledger updated) if a daemon writing to another OUTBOX already took this clip."""
        mark = self.marks.read(row.path, row.size, row.mtime_ns, row.settings_hash)
        if mark is None or mark.get("outbox") == str(self.options.outbox):
            return False  # our own mark: our ledger is the authority (deleting it forces a re-render)
        output = f"{mark.get('outbox')}/{mark.get('output')}" if mark.get("output") else None
        self.ledger.adopt(row.id, mark.get("state", "done"), output, mark.get("error"))
        self.reporter.emit(
            Skipped(
                clip=row.path,
                message=f"{row.path}: already {mark.get('state')} by {mark.get('by')} into {mark.get('outbox')}",
            )
        )
        return True

    def _unchanged(self, clip: SeenClip) -> bool:
        try:
            st = os.lstat(self.layout.source(clip.rel))  # the scan's signature of a link is the link's
        except OSError:
            return False
        return (st.st_size, st.st_mtime_ns) == (clip.size, clip.mtime_ns)

    def _start(self, clip: SeenClip, row: Row, settings: ClipSettings, opened: OpenedClip) -> None:
        cancel = threading.Event()
        job = RunningClip(clip.rel, threading.Thread(target=lambda: None), cancel, opened.job_path)
        job.thread = threading.Thread(
            target=self._work, args=(clip, row, settings, job, opened), name=f"job-{row.id}", daemon=True
        )
        with self._mutex:
            self._running[clip.rel] = job
            if self.stopping:
                cancel.set()
        job.thread.start()

    def _reap(self) -> None:
        with self._mutex:
            for rel, job in list(self._running.items()):
                if not job.thread.is_alive():
                    del self._running[rel]

    # -- recovery --------------------------------------------------------------------------------------------

    def _recover_all(self) -> None:
        """At start: every `running` row whose clip lock can be taken was left by a dead process; staging
        folders of rows that ended (a kill between the ledger's `done` and the clean-up) are removed."""
        for row in self.ledger.rows("running"):
            if not self.locks.acquire(row.path):
                continue
            try:
                self._recover(row)
            finally:
                self.locks.release(row.path)
        self.locks.sweep()
        staging = self.layout.hidden / "staging"
        if not staging.is_dir():
            return
        for entry in staging.iterdir():
            row_id = entry.name.split(".", 1)[0]
            # Read the row right before deleting: a daemon sharing OUTBOX may have just started a job (its
            # row exists before its staging folder does; a done/failed/dropped row never comes back).
            state = self.ledger.state_of(int(row_id)) if row_id.isdigit() else None
            if state in ("queued", "running"):
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def _recover(self, row: Row) -> Row:
        """Bring a dead job's row back to a consistent state (the caller holds the clip's lock)."""
        staged = Path(row.staged) if row.staged else None
        if row.phase == "committing" and row.output:
            output = Path(row.output)
            staged_there = staged is not None and staged.exists()
            if staged_there and output.exists() and os.path.samefile(staged, output):
                staged.unlink()  # crashed between the hard link and the unlink
                staged_there = False
            if not staged_there and output.exists():
                self.ledger.done(row.id, self.layout.relative_output(output), row.frames)
                self._mark(row, "done", self.layout.relative_output(output), None)
                self.layout.remove_staging(row.id)
                self.reporter.emit(ClipRecovered(row.path, "output was complete"))
                return self.ledger.get(row.id)
            if staged_there:
                final = self._commit(row, staged, row.frames)
                self.reporter.emit(ClipRecovered(row.path, f"finished renaming to {final.name}"))
                return self.ledger.get(row.id)
        self.layout.clear_staged_output(row.id)
        if row.attempts >= self.options.max_attempts:
            reason = (
                f"the daemon was killed or crashed while rendering this clip, on each of its {row.attempts} "
                "attempt(s); fix the cause or raise --max-attempts, then touch the clip to retry"
            )
            self._fail(row, row.path, reason, None)
        else:
            self.ledger.requeue(row.id, count_attempt=True)
            self.reporter.emit(ClipRecovered(row.path, "re-queued after an interrupted run"))
        return self.ledger.get(row.id)
