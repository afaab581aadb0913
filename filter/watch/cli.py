"""`rerender watch`: the command line of the watch-folder daemon (README, *For video editors: watch folders*)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..cli_parser import OneLineParser
from ..errors import UsageError
from .daemon import JobApi, Watcher, WatchOptions
from .ledger import Ledger
from .output import HIDDEN_FOLDER, Layout
from .report import Reporter, format_status

# Upper bounds of the numeric options: each job is a process with its own copy of the model.
MAX_JOBS = 64
MAX_ATTEMPTS = 1000


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="rerender watch",
        description="Re-render every clip dropped into INBOX (and its sub-folders) into OUTBOX. "
        "A clip is taken once its size and time stopped changing for --stable seconds; results appear in "
        "OUTBOX only when complete.",
    )
    p.add_argument("inbox", nargs="?", type=Path, metavar="INBOX", help="folder the editor renders into")
    p.add_argument("--out", type=Path, metavar="OUTBOX", help="folder the results appear in")
    p.add_argument("--status", type=Path, metavar="OUTBOX", help="print OUTBOX's ledger and exit")
    p.add_argument(
        "--preset", type=Path, metavar="FILE", help="TOML with `rerender run` flags for the folder"
    )
    p.add_argument("--poll", type=float, default=2.0, metavar="SECONDS", help="scan interval (default 2)")
    p.add_argument(
        "--stable",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="size and time unchanged this long = fully written (default 5; 20 or more on network shares)",
    )
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="clips rendered at once (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output instead of numbering")
    p.add_argument(
        "--done-action",
        choices=["keep", "move"],
        default="keep",
        help="keep originals in INBOX (default) or move them to INBOX/done/ (failed ones to INBOX/failed/)",
    )
    p.add_argument(
        "--progress",
        choices=["text", "json"],
        default="text",
        help="json: events on stdout, one object a line (with --status: one ledger row a line)",
    )
    p.add_argument("--once", action="store_true", help="process what is in INBOX, then exit")
    p.add_argument(
        "--max-attempts",
        type=int,
        default=5,
        metavar="N",
        help="a clip whose render was interrupted by a crash this many times is marked failed (default 5)",
    )
    p.add_argument(
        "--stale-lock",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="a lock of another machine whose heartbeat stopped this long is taken over (default 120)",
    )
    p.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="render each clip on this Ray cluster (host:port, or auto) instead of one local process; "
        "the ledger stays here, with OUTBOX (needs pip install 'rerender[ray]')",
    )
    return p


def _folder(path: Path, what: str, create: bool) -> Path:
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create {what} {path}: {exc.strerror or exc}; check the path") from None
    if not path.is_dir():
        raise UsageError(f"{what} {path} is not a folder; give an existing folder")
    return path.resolve()


@dataclass(frozen=True)
class StatusRequest:
    outbox: Path
    progress: Literal["text", "json"]


def parse_options(argv: list[str]) -> WatchOptions | StatusRequest:
    """WatchOptions, or what `--status` should print."""
    args = build_parser().parse_args(argv)
    if args.status is not None:
        if args.inbox is not None or args.out is not None:
            raise UsageError("--status takes only OUTBOX; run `rerender watch --status OUTBOX`")
        return StatusRequest(args.status, args.progress)
    if args.inbox is None or args.out is None:
        raise UsageError(
            "expected INBOX and --out OUTBOX, e.g. `rerender watch ~/Renders --out ~/Rerendered`"
        )
    for name, value, low, high in (
        ("--poll", args.poll, 0.05, 3600.0),
        ("--stable", args.stable, 0.0, 86400.0),
        # Locks are refreshed every poll: a shorter timeout would take live daemons' clips over.
        ("--stale-lock", args.stale_lock, max(3 * args.poll, 1.0), 86400.0),
    ):
        if not low <= value <= high:  # also refuses nan
            raise UsageError(f"{name} must be from {low:g} to {high:g} seconds, got {value}")
    if not 1 <= args.jobs <= MAX_JOBS:
        raise UsageError(f"--jobs must be from 1 to {MAX_JOBS} (clips rendered at once), got {args.jobs}")
    if not 1 <= args.max_attempts <= MAX_ATTEMPTS:
        raise UsageError(f"--max-attempts must be from 1 to {MAX_ATTEMPTS}, got {args.max_attempts}")
    inbox = _folder(args.inbox, "INBOX", create=False)
    outbox = _folder(args.out, "OUTBOX", create=True)
    if inbox == outbox or inbox in outbox.parents or outbox in inbox.parents:
        raise UsageError("INBOX and OUTBOX must be separate folders, neither inside the other")
    if not os.access(inbox, os.W_OK):
        raise UsageError(f"INBOX {inbox} is not writable; the per-clip locks live in it")
    preset = args.preset
    if preset is not None and not preset.is_file():
        raise UsageError(f"the preset {preset} does not exist; give a TOML file with `rerender run` flags")
    return WatchOptions(
        inbox=inbox,
        outbox=outbox,
        preset=preset.resolve() if preset is not None else None,
        poll=args.poll,
        stable=args.stable,
        jobs=args.jobs,
        overwrite=args.overwrite,
        done_action=args.done_action,
        progress=args.progress,
        once=args.once,
        max_attempts=args.max_attempts,
        stale_lock=args.stale_lock,
    )


def _status(request: StatusRequest) -> int:
    outbox = request.outbox
    ledger_path = Layout(outbox, outbox).ledger_path
    if not ledger_path.is_file():
        raise UsageError(
            f"no ledger in {outbox} (expected {HIDDEN_FOLDER}/ledger.sqlite); give the --out folder of a watch"
        )
    try:
        ledger = Ledger(ledger_path)
        rows = ledger.rows()
        ledger.close()
    except sqlite3.Error as exc:
        raise UsageError(f"cannot read the ledger {ledger_path}: {exc}") from None
    if request.progress == "json":
        for row in rows:
            print(json.dumps(dataclasses.asdict(row)))
    else:
        print(format_status(rows))
    return 0


def _job_api(ray: str | None = None) -> JobApi:
    from ..job import Cancelled, build_run_parser, options_from_values
    from .worker import run_in_worker

    if ray is None:
        return JobApi(
            build_parser=build_run_parser, options=options_from_values, run=run_in_worker, cancelled=Cancelled
        )
    # Every job's settings get the cluster flags last (they win over a preset's): its keyframes and gaps
    # run on the cluster, whose keyframe actors keep the model loaded for the next clip.
    extra = {"ray": ray, "ray_keep_models": True}
    return JobApi(
        build_parser=build_run_parser,
        options=lambda values, where: options_from_values({**values, **extra}, where),
        run=lambda values, **kwargs: run_in_worker({**values, **extra}, **kwargs),
        cancelled=Cancelled,
    )


def _ray_address(argv: list[str]) -> str | None:
    """--ray's address, checked (and the ray extra required) before the daemon starts."""
    address = build_parser().parse_args(argv).ray
    if address is not None:
        from ..cluster.options import RayOptions
        from ..cluster.session import require_ray

        RayOptions(address=address)
        require_ray()
    return address


def main(argv: list[str]) -> int:
    parsed = parse_options(argv)
    if isinstance(parsed, StatusRequest):
        return _status(parsed)
    watcher = Watcher(parsed, _job_api(_ray_address(argv)), Reporter(parsed.progress))

    def on_signal(signum, _frame):
        watcher.request_stop(f"{signal.Signals(signum).name}: abandoning the running jobs cleanly")

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return watcher.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.stdout.flush()
