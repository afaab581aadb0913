"""One preview session: the input clip, the job running on it (at most one at a time) and its status.

Every run is the one `run_job` of the streaming filter (no second pipeline): a preview stage of the ladder
(first keyframe → all keyframes → full propagation, as in the official web UI) or "render to file" with the
full settings and `rerender run` semantics. Starting a run cancels the one in flight: there are two cores,
and the user wants the newest settings, not the older ones. The session's `RendererCache` keeps the
diffusion model loaded from run to run while only per-run settings (prompt, seed, strength, steps, K, ...)
change; runs take turns on it (one job at a time).
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np

from .. import job
from ..errors import InputError, RerenderError, UsageError
from ..events import FrameEvent, JobEvent, StartEvent
from ..frames import Frame
from ..run_args import options_from_args
from .latest import LatestImages
from .settings import (
    FastPreview,
    PageSettings,
    fast_note,
    fast_options,
    form_fields,
    page_choice,
    split_run_argv,
)
from .sheet import KeyframeSheet

Stage = Literal["first-keyframe", "keyframes", "full"]
STAGES: tuple[Stage, ...] = ("first-keyframe", "keyframes", "full")
# How long close() waits for a cancelled job; the filter checks `cancel` between frames.
CANCEL_WAIT_S = 30.0


def render_path(input_path: Path, output_dir: Path | None) -> Path:
    """`<stem>.rerender<ext>` next to the input (or in output_dir), never over an existing file:
    `-2`, `-3`, ... are added, so an earlier render is kept."""
    folder = output_dir if output_dir is not None else input_path.parent
    # The input's container when it is one the default encode (libx264 + remuxed audio) fits, else Matroska.
    suffix = input_path.suffix if input_path.suffix.lower() in (".mp4", ".mov", ".mkv") else ".mkv"
    candidate = folder / f"{input_path.stem}.rerender{suffix}"
    n = 2
    while candidate.exists():
        candidate = folder / f"{input_path.stem}.rerender-{n}{suffix}"
        n += 1
    return candidate


def _expected_keyframes(options: job.RunOptions, total: int | None, stage: Stage) -> int | None:
    """How many keyframes a stage renders when the run's keyframe schedule knows them up front (uniform K,
    the user's keyframe files) for the frame count of the job's start event; scene cuts may add some, and
    the adaptive schedule decides as it goes (None)."""
    if stage == "first-keyframe":
        return 1
    if total is None:
        return None
    keys = job.keyframe_schedule(options).expected_keyframes(total)
    return None if keys is None else len(keys)


class PreviewSession:
    def __init__(
        self,
        input_path: Path,
        run_argv: list[str],
        *,
        workdir: Path,
        output_dir: Path | None = None,
        fast: FastPreview = FastPreview(),
        log: Callable[[str], None] | None = None,
    ) -> None:
        self._job = job
        self.input_path = input_path
        self.workdir = workdir
        self.output_dir = output_dir
        self.fast = fast
        self._log = log or (lambda message: None)
        self.parser = job.build_run_parser()
        self.fields = form_fields(self.parser)
        self.initial_values, self.initial_extra = split_run_argv(run_argv, self.fields, self.parser)
        # What the command line set and the run parser's defaults, with the output every check uses: the page
        # may change only the options the schema lets it (`page_options`); every other option keeps one of
        # these values.
        self._check_output = str(workdir / "check.mp4")
        self._fixed = self.parser.parse_args([*run_argv, "-o", self._check_output])
        self._defaults = self.parser.parse_args(["-i", str(input_path), "-o", self._check_output])
        self.images = LatestImages()
        self.renderers = job.RendererCache()  # the loaded model, shared by this session's runs only
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()  # one start at a time: two clicks never leave two jobs running
        self._thread: threading.Thread | None = None
        self._cancel: threading.Event | None = None
        self._run_id = 0
        self._status: dict = {"run_id": 0, "state": "idle", "stage": None, "kind": None}

    # -- what the page reads -------------------------------------------------------------------------

    def settings_json(self) -> dict:
        return {
            "input": self.input_path.name,
            "fields": [
                {
                    "flag": f.flag,
                    "label": f.label,
                    "help": f.help,
                    "default": f.default,
                    "choices": f.choices,
                    "fixed": f.fixed,
                }
                for f in self.fields
            ],
            "values": self.initial_values,
            "extra": self.initial_extra,
            "fast": {"size": self.fast.size, "steps": self.fast.steps},
            "stages": list(STAGES),
        }

    def status(self) -> dict:
        with self._lock:
            status = dict(self._status)
            status["keyframes"] = list(status.get("keyframes", []))
        status["model_loads"] = self.renderers.loads  # diffusion model loads by this session so far
        if status["state"] == "running":
            status["elapsed"] = round(time.monotonic() - status["started"], 2)
        status.pop("started", None)
        return status

    # -- runs ----------------------------------------------------------------------------------------

    def check_initial(self) -> None:
        """Validate the command line's run options as `rerender run` would (UsageError otherwise), through
        the page's own path: the form starts from them."""
        self.options_for(PageSettings(self.initial_values, self.initial_extra))

    def options_for(self, settings: PageSettings) -> tuple[job.RunOptions, list[str]]:
        """The run options the page's settings stand for, checked as `rerender run` checks its flags and
        against what the page may set (output: the stand-in every check uses), and the `rerender run` words
        shown on the page for them (without -o). UsageError otherwise."""
        choice = page_choice(
            settings, self.fields, self.parser.schema, vars(self._fixed), vars(self._defaults)
        )
        return options_from_args(argparse.Namespace(**choice.chosen)), choice.shown

    def show_first_frame(self) -> None:
        """Open the input once at start: a file that is not a usable video is a one-line InputError now,
        and the page shows its first frame before anything is rendered."""
        from ..io import open_source

        with open_source(self.input_path, keep_side_packets=False) as source:
            first = next(source.frames(), None)
        if first is None:
            raise InputError(f"{self.input_path} has no video frames; give a clip with at least one frame")
        self.images.put("input", first.image)

    def start(
        self, kind: Literal["preview", "render"], stage: str, settings: PageSettings, fast: bool
    ) -> dict:
        """Validate the settings exactly as `rerender run` does and start the run; UsageError otherwise."""
        if stage not in STAGES:
            raise UsageError(f"stage must be one of {', '.join(STAGES)}; got {stage!r}")
        # The user's own values are validated first (before fast mode caps them, which would hide a bad
        # --size or --steps): the page shows the message `rerender run` prints for them.
        checked, shown = self.options_for(settings)
        if kind == "render":
            stage, output = "full", render_path(self.input_path, self.output_dir)
        else:
            output = self.workdir / "preview.mkv"  # a by-product: Matroska takes any input's streams
        # The run's options are the checked ones with the run's output; fast mode is the same options with
        # smaller caps. Both are `dataclasses.replace` (the command line is only shown).
        options = replace(checked, output=str(output))
        run_argv = [*shown, "-o", str(output)]
        note = ""
        if fast and kind == "preview":
            note = fast_note(options, self.fast)
            options = fast_options(options, self.fast)
        # Keyframes rendered by an earlier stage with the same settings are reused by the later stages.
        key = hashlib.sha256(repr(replace(options, output="")).encode()).hexdigest()[:16]
        cache = self.workdir / "keyframes" / key
        with self._start_lock:
            self.stop()
            return self._launch(kind, stage, fast, run_argv, options, cache, output, note)

    def _launch(self, kind, stage, fast, run_argv, options, cache, output, note="") -> dict:
        with self._lock:
            self._run_id += 1
            cancel = threading.Event()
            self._cancel = cancel
            self._status = {
                "run_id": self._run_id,
                "kind": kind,
                "stage": stage,
                "fast": bool(fast and kind == "preview"),
                "state": "running",
                "message": "",
                "command": "rerender run " + shlex.join(run_argv),
                "fast_caps": note,  # what fast mode capped ("" when nothing)
                # The size cap and steps the run uses (fast mode included): the processing size is the
                # input's own short side when that is smaller, unless --size asked for upscaling.
                "effective": {
                    "size": options.filter.size,
                    "upscale": options.filter.upscale,
                    "steps": options.diffusion.steps if options.diffusion is not None else None,
                },
                "total": None,
                "done": 0,
                "fps": None,
                "eta": None,
                "keyframes": [],
                "keyframes_expected": None,
                "output": None,
                "started": time.monotonic(),
                "elapsed": 0.0,
            }
            run_id = self._run_id
        thread = threading.Thread(
            target=self._run,
            args=(run_id, options, stage, cache, cancel, kind, output),
            name=f"preview-run-{run_id}",
            daemon=True,
        )
        self._thread = thread
        thread.start()
        return {"run_id": run_id, "stage": stage, "kind": kind}

    def _update(self, run_id: int, **changes) -> None:
        with self._lock:
            if self._status.get("run_id") == run_id:
                self._status.update(changes)

    def _run(self, run_id, options, stage, cache, cancel, kind, output) -> None:
        started = time.monotonic()
        keyframes: list[int] = []
        sheet = KeyframeSheet()

        def on_event(event: JobEvent) -> None:
            if isinstance(event, StartEvent):
                self._update(
                    run_id,
                    total=event.total,
                    keyframes_expected=_expected_keyframes(options, event.total, stage),
                    processing_size=list(event.processing_size),
                )
            elif isinstance(event, FrameEvent) and stage == "full":
                # In the keyframe stages only keyframes come out; their progress is counted in on_keyframe.
                self._update(run_id, done=event.done, total=event.total, fps=event.fps, eta=event.eta)

        def on_keyframe(index: int, source: np.ndarray, stylized: np.ndarray) -> None:
            keyframes.append(index)
            self.images.put("keyframe", stylized)
            self.images.put("sheet", sheet.add(index, stylized))
            if stage != "full":
                # Shown at once; on_frame then replaces them with the same frame at the input's size.
                self.images.put("input", source)
                self.images.put("output", stylized)
            with self._lock:
                if self._status.get("run_id") != run_id:
                    return
                status = self._status
                status["keyframes"] = list(keyframes)
                expected = status.get("keyframes_expected")
                if stage != "full":
                    # Keyframe stages emit no frame events: progress and ETA come from the keyframe rate.
                    elapsed = time.monotonic() - started
                    status["fps"] = round(len(keyframes) / elapsed, 3) if elapsed > 0 else None
                    if expected:
                        left = max(0, expected - len(keyframes))
                        status["eta"] = round(elapsed / len(keyframes) * left, 1)

        def on_frame(frame: Frame, output_image: np.ndarray) -> None:
            self.images.put("input", frame.image)
            self.images.put("output", output_image)

        try:
            self._job.run_job(
                options,
                on_event=on_event,
                cancel=cancel,
                on_frame=on_frame,
                on_keyframe=on_keyframe,
                stage=stage,
                keyframe_cache=cache,
                renderers=self.renderers,
            )
        except self._job.Cancelled:
            self._update(run_id, state="cancelled", message="cancelled", eta=None)
        except RerenderError as exc:
            self._update(run_id, state="error", message=str(exc), eta=None)
            self._log(f"run {run_id} ({stage}) failed: {exc}")
        except Exception as exc:  # a bug: keep serving, show it, and print the traceback for a report
            traceback.print_exc(file=sys.stderr)
            self._update(
                run_id, state="error", message=f"internal error: {type(exc).__name__}: {exc}", eta=None
            )
        else:
            self._update(
                run_id,
                state="done",
                eta=0.0,
                message=f"wrote {output}" if kind == "render" else "",
                output=str(output) if kind == "render" else None,
            )
            if kind == "render":
                self._log(f"wrote {output}")
        finally:
            self._update(run_id, elapsed=round(time.monotonic() - started, 2))
            if kind == "preview" and stage == "full":
                Path(output).unlink(missing_ok=True)  # the preview's file is a by-product; the page saw it

    @property
    def running(self) -> bool:
        with self._lock:
            return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Cancel the run in flight (if any) and wait for it to end."""
        with self._lock:
            thread, cancel = self._thread, self._cancel
        if cancel is not None:
            cancel.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(CANCEL_WAIT_S)

    def close(self) -> None:
        self.stop()
        if not self.running:  # a run that outlived the cancel wait still uses the model; it goes with it
            self.renderers.clear()
        self.images.close()
