"""Shared pytest fixtures and the `gpu` marker's skip rule."""

from __future__ import annotations

import shutil

import pytest


def _gpu_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device: torch.cuda.is_available() is False"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _gpu_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"gpu test: {reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def nvcc() -> str:
    path = shutil.which("nvcc")
    if path is None:
        pytest.skip("nvcc is not on PATH; the CUDA sources cannot be compiled here")
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch intra-op thread for a test module (`pytestmark = pytest.mark.usefixtures(...)`): tiny networks
    gain nothing from more, and spinning OpenMP threads make torch many times slower on a busy 2-core
    machine (the subprocess tests set OMP_NUM_THREADS=1 for the same reason). Restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- the watch daemon's tests (watch_helpers.py) --------------------------------------------------------------


@pytest.fixture
def no_daemon_left_behind():
    """A failing assertion must not leave a `rerender watch` daemon running on the shared machine."""
    from watch_helpers import STARTED

    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def folders(tmp_path):
    """A watch folder's INBOX (made) and OUTBOX (left to the daemon to make)."""
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    return inbox, outbox
