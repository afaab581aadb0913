"""The argument parser every `rerender` sub-command uses: argparse, but a wrong flag or value becomes one
line and exit status 2 through the CLI's error path (`UsageError`) instead of argparse's usage dump."""

from __future__ import annotations

import argparse

from .errors import UsageError


class OneLineParser(argparse.ArgumentParser):
    """`error` raises UsageError with argparse's message and a pointer to this command's `--help`."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message}; see `{self.prog} --help`")
