"""`rerender` command line: one sub-command per module, imported only when it is used.

Each sub-command module has `main(argv: list[str]) -> int`. Errors derived from RerenderError become one
line on stderr and their exit status (2 for bad input or usage, 1 for internal errors); no traceback.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "info": (
        "rerender.filter.info",
        "versions, devices and native backends, with the reason for each missing piece",
    ),
    "run": ("rerender.filter.run", "re-render a video (file or pipe)"),
    "export": ("rerender.export.cli", "export models to ONNX and build TensorRT engines"),
    "watch": ("rerender.filter.watch", "watch a folder and re-render every clip dropped into it"),
    "preview": ("rerender.filter.preview", "near-realtime preview in a local web page"),
}


def _version() -> str:
    """The installed package's version (its metadata), or a sentence saying it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"rerender {version('rerender')}"
    except PackageNotFoundError:
        return "rerender (version unknown: the package is not installed; run `pip install -e .`)"


def _usage() -> str:
    lines = ["usage: rerender [--version] <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `rerender <command> --help` for the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from .errors import RerenderError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(_version())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(
            f"rerender: error: unknown command {name!r}; expected one of {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except RerenderError as exc:
        print(f"rerender {name}: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print(f"rerender {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
