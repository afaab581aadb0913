"""How the video I/O layer words what it reports: an error's reason, a stream's codec, and warnings."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import av


def reason(exc: BaseException) -> str:
    """An exception from FFmpeg or the OS in a few words, for the parenthesis of a one-line error."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text).strip().rstrip(".").replace("\n", " ")


def codec_name(stream: av.stream.Stream) -> str:
    context = stream.codec_context
    return context.name if context is not None else "unknown codec"


class Warnings:
    """Warnings of one Source or Sink: kept in `messages` and passed to `on_warning`, else to stderr."""

    def __init__(self, on_warning: Callable[[str], None] | None = None) -> None:
        self.messages: list[str] = []
        self._on_warning = on_warning

    def __call__(self, message: str) -> None:
        self.messages.append(message)
        if self._on_warning is not None:
            self._on_warning(message)
        else:
            print(f"rerender: warning: {message}", file=sys.stderr)
