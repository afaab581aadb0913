"""What every step of bench/gpu_check.py gets: the repository root, the run's context and the log line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Context:
    device: str
    dry_run: bool
    scratch: Path
    results: dict = field(default_factory=dict)


def log(message: str) -> None:
    print(message, flush=True)
