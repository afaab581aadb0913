"""`rerender watch`: a watch-folder daemon for video editors. `main(argv)` is the CLI entry."""

from .cli import main

__all__ = ["main"]
