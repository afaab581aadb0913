"""`rerender preview -i INPUT [run options] [--port 8765] [--host 127.0.0.1] [--output-dir DIR]`."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

from .. import job
from ..cli_parser import OneLineParser
from ..errors import InputError, UsageError
from .server import PreviewServer
from .session import PreviewSession
from .settings import FastPreview, command_line_fixed

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="rerender preview",
        allow_abbrev=False,  # every other flag belongs to `rerender run`; no prefix may be taken for ours
        description=(
            "Serve a local web page that shows the input and the re-rendered output side by side while they "
            "are produced: first keyframe, all keyframes, then the full propagation; change the settings and "
            "re-run, then render the file. Every other flag is a `rerender run` option (see "
            "`rerender run --help`) and fills the page's settings."
        ),
    )
    parser.add_argument("-i", "--input", required=True, help="the clip to preview (a file, not a pipe)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port (0: any free port); default 8765")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on; default 127.0.0.1 (this machine only)"
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where 'render to file' writes (default: next to the input)",
    )
    parser.add_argument(
        "--fast-size", type=int, default=FastPreview.size, help="processing size in fast mode"
    )
    parser.add_argument(
        "--fast-steps", type=int, default=FastPreview.steps, help="sampler steps in fast mode"
    )
    return parser


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = build_parser()
    if any(a in ("-h", "--help") for a in argv):
        parser.print_help()
        raise SystemExit(0)
    try:
        args, run_argv = parser.parse_known_args(argv)
    except SystemExit:
        raise UsageError(
            "rerender preview needs -i INPUT (a video file); see `rerender preview --help`"
        ) from None
    if args.input == "-":
        raise UsageError("rerender preview needs a file for -i, not '-': every run reads the clip again")
    if not Path(args.input).is_file():
        raise InputError(f"input file not found: {args.input}; give the path of a video file to -i")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535; got {args.port}")
    if args.output_dir is not None and not args.output_dir.is_dir():
        raise UsageError(f"--output-dir must be an existing folder; got {args.output_dir}")
    if args.fast_size < 64 or args.fast_size % 64:
        raise UsageError(
            f"--fast-size must be a multiple of 64 and at least 64 (e.g. 256); got {args.fast_size}"
        )
    if args.fast_steps < 1:
        raise UsageError(f"--fast-steps must be at least 1; got {args.fast_steps}")
    fixed = command_line_fixed(job.build_run_parser(), args.input, run_argv)  # in any spelling
    if fixed == "--output":
        raise UsageError(
            "rerender preview writes a file only on 'Render to file' (next to the input or into "
            "--output-dir); drop -o"
        )
    if fixed is not None:
        raise UsageError(f"{fixed} has no use in rerender preview (the page shows the progress); drop it")
    return args, run_argv


def _stop_on_signal(signum, frame) -> None:
    raise KeyboardInterrupt


def _announce(host_arg: str, address: tuple) -> None:
    host, port = address[:2]
    url_host = f"[{host}]" if ":" in host else host
    if host_arg in LOOPBACK:
        print(
            f"rerender preview: serving http://{url_host}:{port}/ on {host} only (this machine); Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
    else:
        print(
            f"rerender preview: warning: --host {host_arg} makes the page reachable from other machines; "
            "anyone who reaches it can start jobs on this one",
            file=sys.stderr,
        )
        print(
            f"rerender preview: serving http://{url_host}:{port}/; Ctrl-C stops", file=sys.stderr, flush=True
        )


def main(argv: list[str]) -> int:
    args, run_argv = _parse(list(argv))
    input_path = Path(args.input).resolve()
    with tempfile.TemporaryDirectory(prefix="rerender-preview-") as tmp:
        session = PreviewSession(
            input_path,
            ["-i", str(input_path), *run_argv],
            workdir=Path(tmp),
            output_dir=args.output_dir.resolve() if args.output_dir else None,
            fast=FastPreview(size=args.fast_size, steps=args.fast_steps),
            log=lambda message: print(f"rerender preview: {message}", file=sys.stderr, flush=True),
        )
        # The command line's run options are checked like `rerender run` checks them, before serving.
        session.check_initial()
        session.show_first_frame()
        try:
            server = PreviewServer((args.host, args.port), session, check_host=args.host in LOOPBACK)
        except OSError as exc:
            raise UsageError(
                f"cannot listen on {args.host}:{args.port} ({exc.strerror}); pick another --port"
            ) from None
        # Ctrl-C and SIGTERM end the wait with KeyboardInterrupt, also when the parent started us with
        # SIGINT ignored (a non-interactive shell's background job). The HTTP server runs on its own thread.
        previous = {sig: signal.signal(sig, _stop_on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            server.start()
            _announce(args.host, server.server_address)
            server.wait()
        except KeyboardInterrupt:
            note = " (cancelling the run in flight)" if session.running else ""
            print(f"rerender preview: stopping{note}", file=sys.stderr, flush=True)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            session.close()  # ends the MJPEG streams too
            server.close()
    print("rerender preview: stopped", file=sys.stderr, flush=True)
    return 0
