"""`rerender watch` parts on real files: detection, stability, locks (across processes), ledger, settings
from preset and sidecar through `rerender run`'s own parser, and the command line's one-line errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rerender.filter.errors import UsageError
from rerender.filter.watch.ledger import Ledger
from rerender.filter.watch.lock import ClipLocks, Owner
from rerender.filter.watch.output import Layout
from rerender.filter.watch.scan import StabilityTracker, scan_inbox
from rerender.filter.watch.wake import WakeHint, Waker

RERENDER = [sys.executable, "-m", "rerender.filter.cli"]


def _touch(path: Path, data: bytes = b"x" * 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- detection ---------------------------------------------------------------------------------------------


def test_scan_sees_visible_clips_in_sub_folders_and_nothing_else(tmp_path):
    inbox = tmp_path / "in"
    for name in ["a.mov", "sub/deeper/b.MP4", "c.mxf", "sub/d.mkv"]:
        _touch(inbox / name)
    ignored = [
        ".hidden.mov",
        "e.mov.part",
        "f.mp4.tmp",
        "g.mov~",
        "~lock.mov",
        "notes.txt",
        "a.mov.toml",
        ".cache/h.mov",
        "done/i.mov",
        "failed/j.mov",
        ".rerender-locks/k.mov",
        "x.crdownload",
    ]
    for name in ignored:
        _touch(inbox / name)
    os.symlink(inbox / "sub", inbox / "loop")  # a symlinked folder is not followed (no loops)
    result = scan_inbox(inbox)
    assert sorted(result.clips) == ["a.mov", "c.mxf", "sub/d.mkv", "sub/deeper/b.MP4"]
    assert result.errors == []
    assert result.clips["a.mov"].sidecar is not None  # a.mov.toml is its sidecar
    assert result.clips["c.mxf"].sidecar is None


def test_scan_of_a_missing_inbox_reports_instead_of_raising(tmp_path):
    result = scan_inbox(tmp_path / "gone")  # a network share that went away (watchdog#1065)
    assert result.clips == {} and len(result.errors) == 1


def test_a_clip_is_stable_only_after_size_and_mtime_held_for_the_window(tmp_path):
    inbox = tmp_path / "in"
    clip = _touch(inbox / "a.mov", b"x" * 10)
    now = [100.0]
    tracker = StabilityTracker(5.0, clock=lambda: now[0])
    assert tracker.update(scan_inbox(inbox).clips) == []
    now[0] += 4.9
    assert tracker.update(scan_inbox(inbox).clips) == []
    with clip.open("ab") as fh:  # the editor is still writing: the window starts again
        fh.write(b"y" * 10)
    now[0] += 0.2
    assert tracker.update(scan_inbox(inbox).clips) == []
    assert tracker.unsettled(scan_inbox(inbox).clips) == ["a.mov"]
    now[0] += 5.0
    stable = tracker.update(scan_inbox(inbox).clips)
    assert [c.rel for c in stable] == ["a.mov"] and stable[0].size == 20
    # A sidecar written later changes the signature too.
    _touch(inbox / "a.mov.toml", b"crf = 30\n")
    now[0] += 0.1
    assert tracker.update(scan_inbox(inbox).clips) == []


def test_an_empty_file_is_never_stable(tmp_path):
    inbox = tmp_path / "in"
    _touch(inbox / "a.mov", b"")
    now = [0.0]
    tracker = StabilityTracker(1.0, clock=lambda: now[0])
    tracker.update(scan_inbox(inbox).clips)
    now[0] += 10
    assert tracker.update(scan_inbox(inbox).clips) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the inotify wake-up hint is Linux only")
def test_a_file_dropped_into_inbox_wakes_the_loop_before_the_next_poll(tmp_path):
    waker = Waker()
    hint = WakeHint.start(tmp_path, waker)
    try:
        assert not waker.wait(0.0)
        (tmp_path / "a.mov").write_bytes(b"x")
        assert waker.wait(30.0)  # woken by the event, long before this generous timeout
        (tmp_path / "Reel2").mkdir()  # a sub-folder made after the start is watched too
        assert waker.wait(30.0)  # the hint thread adds the new folder's watch before it wakes us
        (tmp_path / "Reel2" / "b.mov").write_bytes(b"x")
        assert waker.wait(30.0)
        waker.set()  # wake-ups from workers and signal handlers use the same pipe
        assert waker.wait(30.0)
    finally:
        hint.close()
        waker.close()


# -- locks -------------------------------------------------------------------------------------------------

_HOLD_LOCK = """
import sys, time
from pathlib import Path
from rerender.filter.watch.lock import ClipLocks, Owner
locks = ClipLocks(Path(sys.argv[1]), Owner.me())
print("took" if locks.acquire("a.mov") else "busy", flush=True)
time.sleep(60)
"""


def test_a_lock_is_exclusive_across_processes_and_recovered_after_kill_9(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "took"
        mine = ClipLocks(tmp_path, Owner.me())
        assert not mine.acquire("a.mov")  # held by a live process
        assert f"pid {holder.pid}" in mine.holder("a.mov")
        assert mine.acquire("b.mov")  # other clips are free
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert mine.acquire("a.mov")  # the owner is dead: the stale lock is broken
    assert mine.holds("a.mov")
    assert _try_lock_in_another_process(tmp_path) == "busy"
    mine.release("a.mov")
    assert _try_lock_in_another_process(tmp_path) == "took"
    assert not mine.holds("a.mov")


def _try_lock_in_another_process(inbox: Path) -> str:
    script = _HOLD_LOCK.replace("time.sleep(60)", "")
    done = subprocess.run(
        [sys.executable, "-c", script, str(inbox)], capture_output=True, text=True, timeout=60
    )
    return done.stdout.strip()


def test_a_lock_of_another_host_is_taken_over_only_when_its_heartbeat_stops(tmp_path):
    remote = Owner("other-machine", 12345, None, "remote-token")
    theirs = ClipLocks(tmp_path, remote, stale_after=0.6)
    assert theirs.acquire("a.mov")
    mine = ClipLocks(tmp_path, Owner.me(), stale_after=0.6)
    assert socket.gethostname() != "other-machine"
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # the remote owner keeps its heartbeat going
        theirs.refresh()
        time.sleep(0.05)
        owner_file = theirs.path_for("a.mov") / "owner.json"
        os.utime(owner_file, ns=(time.time_ns(), time.time_ns()))
        assert not mine.acquire("a.mov")
    time.sleep(0.1)
    assert not mine.acquire("a.mov")  # first observation of the silent heartbeat: not stale yet
    time.sleep(0.8)
    assert mine.acquire("a.mov")  # unchanged for longer than stale_after: taken over
    assert json.loads((mine.path_for("a.mov") / "owner.json").read_text())["pid"] == os.getpid()


# -- ledger ------------------------------------------------------------------------------------------------


def test_ledger_rows_are_keyed_by_path_size_mtime_and_settings(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    first = ledger.enqueue("a.mov", 10, 1, "s1")
    assert ledger.enqueue("a.mov", 10, 1, "s1").id == first.id  # the same key is one row
    assert first.state == "queued" and first.attempts == 0
    changed = ledger.enqueue("a.mov", 11, 2, "s1")  # the clip changed before it was processed
    assert changed.id != first.id
    assert [r.id for r in ledger.rows()] == [changed.id]  # the stale queued row is dropped
    running = ledger.start(changed.id, "me", "/staging/x")
    assert running.state == "running" and running.attempts == 1
    ledger.requeue(changed.id, count_attempt=False)  # a clean abandon is not an attempt
    assert ledger.get(changed.id).attempts == 0
    ledger.start(changed.id, "me", "/staging/x")
    ledger.done(changed.id, "a_rerender.mov", 12)
    done = ledger.get(changed.id)
    assert (done.state, done.output, done.frames) == ("done", "a_rerender.mov", 12)
    assert done.seconds is not None and done.seconds >= 0
    other_settings = ledger.enqueue("a.mov", 11, 2, "s2")  # new settings: processed again
    assert other_settings.id != changed.id and other_settings.state == "queued"
    mode = sqlite3.connect(tmp_path / "l.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


_OPEN_LEDGER = """
import sys, time
from pathlib import Path
from rerender.filter.watch.ledger import Ledger
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
ledger = Ledger(Path(sys.argv[1]))
ledger.enqueue(f"clip{sys.argv[3]}.mov", 1, 1, "s")
"""


def test_daemons_opening_a_new_ledger_at_the_same_moment_all_start(tmp_path):
    # Switching a fresh database to WAL answered "database is locked" without waiting when a second daemon
    # opened it at the same instant (a CI failure of the two-daemon test); every opener must now get in.
    for attempt in range(3):
        path = tmp_path / f"l{attempt}.sqlite"
        start = time.time() + 1.0
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _OPEN_LEDGER, str(path), str(start), str(i)], stderr=subprocess.PIPE
            )
            for i in range(6)
        ]
        errors = [p.communicate(timeout=60)[1].decode() for p in procs]
        assert [p.returncode for p in procs] == [0] * 6, errors
        assert len(Ledger(path).rows()) == 6


# -- output naming ---------------------------------------------------------------------------------------


def test_commit_never_overwrites_unless_asked(tmp_path):
    layout = Layout(tmp_path / "in", tmp_path / "out")
    target = layout.final_output("sub/clip.mov")
    assert target == tmp_path / "out" / "sub" / "clip_rerender.mov"
    # The `format` setting decides the container, and so the extension.
    assert layout.staged_output(3, "sub/clip.mov", "matroska").name == "output.mkv"
    assert layout.final_output("sub/clip.mov", ".mkv").name == "clip_rerender.mkv"
    finals = []
    for content in (b"one", b"two"):
        staged = _touch(layout.staged_output(1, "sub/clip.mov"), content)
        finals.append(layout.commit(staged, target, overwrite=False))
        assert not staged.exists()
    assert [f.name for f in finals] == ["clip_rerender.mov", "clip_rerender-2.mov"]
    assert finals[0].read_bytes() == b"one"
    staged = _touch(layout.staged_output(1, "sub/clip.mov"), b"three")
    assert layout.commit(staged, target, overwrite=True) == target
    assert target.read_bytes() == b"three"


# -- settings (through `rerender run`'s parser) ----------------------------------------------------------


def _settings(tmp_path, preset_text: str | None):
    from rerender.filter.job import build_run_parser, options_from_values
    from rerender.filter.watch.settings import SettingsSource

    preset = None
    if preset_text is not None:
        preset = tmp_path / "preset.toml"
        preset.write_text(preset_text)
    return SettingsSource(preset, build_run_parser, options_from_values)


def _run_message(argv: list[str]) -> str:
    from rerender.filter.job import parse_run_options

    with pytest.raises(UsageError) as info:
        parse_run_options(argv)
    return str(info.value)


def test_preset_keys_become_run_flags_and_a_sidecar_overrides_them(tmp_path):
    source = _settings(tmp_path, 'crf = 30\n"no-audio" = true\n')
    clip = _touch(tmp_path / "in" / "a.mov")
    base = source.for_clip(clip)
    assert base.error is None and base.values == {"crf": 30, "no_audio": True}
    _touch(clip.with_name("a.mov.toml"), b"crf = 22\n")
    over = source.for_clip(clip)
    assert over.error is None and over.values["crf"] == 22 and over.digest != base.digest
    options = source.options(over, str(clip), str(tmp_path / "o.mov"))
    assert (options.sink.crf, options.sink.audio, options.input) == (22, False, str(clip))


def test_a_bad_preset_stops_the_daemon_with_the_run_commands_message(tmp_path):
    # A value `rerender run` refuses gets exactly `rerender run`'s sentence.
    expected = _run_message(["-i", "a.mov", "-o", "b.mov", "--size=100"])
    with pytest.raises(UsageError) as info:
        _settings(tmp_path, "size = 100\n")
    assert str(info.value).endswith(expected)
    with pytest.raises(UsageError, match="not a flag of `rerender run`"):
        _settings(tmp_path, "no-such-flag = 1\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        _settings(tmp_path, "crf = = 1\n")
    with pytest.raises(UsageError, match="chooses every clip's input"):
        _settings(tmp_path, 'output = "x.mp4"\n')
    with pytest.raises(UsageError, match="expected only `flag = value`"):
        _settings(tmp_path, "[run]\ncrf = 1\n")


@pytest.mark.parametrize(
    "sidecar",
    [
        'output = "../../escaped.mov"\n',
        'out = "/tmp/escaped.mov"\n',
        'o = "../escaped.mov"\n',
        'input = "/etc/passwd"\n',
        '"allow-pickle" = true\n',
        "allow_pickle = true\n",
        '"encoder-option" = ["stats=/tmp/escaped.log"]\n',
        'model = "someone/model-on-the-hub"\n',
        'lora = ["/nowhere/style.safetensors:0.8"]\n',
        'flow = "raft:/nowhere/raft.pth"\n',
    ],
)
def test_a_sidecar_can_not_choose_the_output_nor_allow_pickles(tmp_path, sidecar):
    source = _settings(tmp_path, None)
    clip = _touch(tmp_path / "in" / "a.mov")
    _touch(clip.with_name("a.mov.toml"), sidecar.encode())
    settings = source.for_clip(clip)
    assert settings.error is not None
    assert "\n" not in settings.error
    with pytest.raises(UsageError):
        source.options(settings, str(clip), str(tmp_path / "o.mov"))


def test_with_a_pickle_preset_a_sidecar_can_not_choose_the_checkpoint(tmp_path):
    source = _settings(
        tmp_path, '"allow-pickle" = true\nrenderer = "diffusion"\nmodel = "/models/trusted.ckpt"\n'
    )
    clip = _touch(tmp_path / "in" / "a.mov")
    assert source.for_clip(clip).error is None
    _touch(clip.with_name("a.mov.toml"), b'model = "/tmp/evil.ckpt"\n')
    error = source.for_clip(clip).error
    assert error is not None and "allows pickle checkpoints" in error
    _touch(clip.with_name("a.mov.toml"), b'flow = "dis:fast"\n')  # a checkpoint key that names no file
    assert source.for_clip(clip).error is None


def test_relative_paths_are_relative_to_the_preset_and_in_a_sidecar_to_the_model_dirs(tmp_path):
    (tmp_path / "stylized").mkdir()
    _touch(tmp_path / "raft.pth")
    lora = _touch(tmp_path / "models" / "looks" / "style.safetensors")
    source = _settings(
        tmp_path,
        'renderer = "frames"\nkeyframes-dir = "stylized"\nflow = "raft:raft.pth"\nmodel-dirs = ["models"]\n',
    )
    clip = _touch(tmp_path / "in" / "a.mov")
    values = source.for_clip(clip).values
    assert values["keyframes_dir"] == str(tmp_path / "stylized")
    assert values["flow"] == f"raft:{tmp_path / 'raft.pth'}"
    assert "model_dirs" not in values and source.model_dirs == (str(tmp_path / "models"),)
    _touch(clip.with_name("a.mov.toml"), b'lora = ["looks/style.safetensors:0.8"]\n')  # in a model folder
    settings = source.for_clip(clip)
    assert settings.error is None and settings.values["lora"] == [f"{lora}:0.8"]


def test_a_sidecar_may_pick_checkpoints_inside_the_model_dirs_only(tmp_path):
    lora = _touch(tmp_path / "models" / "style.safetensors")
    source = _settings(tmp_path, 'model-dirs = ["models"]\n')
    clip = _touch(tmp_path / "in" / "a.mov")
    _touch(clip.with_name("a.mov.toml"), f'lora = ["{lora}:0.8"]\nflow = "dis:fast"\n'.encode())
    assert source.for_clip(clip).error is None
    here = _touch(tmp_path / "in" / "style.safetensors")  # dropped next to the clip: not a model folder
    _touch(clip.with_name("a.mov.toml"), f'lora = ["{here}:0.8"]\n'.encode())
    assert "inside the preset's model-dirs" in (source.for_clip(clip).error or "")


def test_a_bad_sidecar_value_fails_its_clip_with_the_run_commands_message(tmp_path):
    source = _settings(tmp_path, None)
    clip = _touch(tmp_path / "in" / "a.mov")
    _touch(clip.with_name("a.mov.toml"), b"crf = 99\n")
    settings = source.for_clip(clip)
    with pytest.raises(UsageError) as info:
        source.options(settings, str(clip), str(tmp_path / "o.mov"))
    expected = _run_message(["-i", str(clip), "-o", "o.mov", "--crf=99"])
    assert str(info.value) == f"the sidecar {clip}.toml: {expected}"
    for text, expected in [
        (b"no-audio = 3\n", "expected true or false"),
        (b"crf = [1, 2]\n", "expected one value"),
        (b"bogus = 1\n", "not a flag of `rerender run`"),
    ]:
        _touch(clip.with_name("a.mov.toml"), text)
        assert expected in (source.for_clip(clip).error or "")


def test_boolean_flags_with_a_no_form_map_both_ways(tmp_path):
    source = _settings(tmp_path, None)
    clip = _touch(tmp_path / "in" / "a.mov")
    expected = {"poisson = false": False, "poisson = true": True, "no-poisson = true": False}
    expected["no-poisson = false"] = True
    for text, poisson in expected.items():
        _touch(clip.with_name("a.mov.toml"), f"{text}\n".encode())
        settings = source.for_clip(clip)
        assert settings.error is None, settings.error
        options = source.options(settings, str(clip), str(tmp_path / "o.mov"))
        assert options.filter.propagation.poisson is poisson, text


def test_a_sidecar_vae_must_be_inside_the_model_dirs_too(tmp_path):
    vae = _touch(tmp_path / "models" / "vae.safetensors")
    source = _settings(tmp_path, 'model-dirs = ["models"]\n')
    clip = _touch(tmp_path / "in" / "a.mov")
    _touch(clip.with_name("a.mov.toml"), b'vae = "vae.safetensors"\n')
    assert source.for_clip(clip).values["vae"] == str(vae)
    _touch(clip.with_name("a.mov.toml"), f'vae = "{clip}"\n'.encode())
    assert "inside the preset's model-dirs" in (source.for_clip(clip).error or "")


def test_odd_sidecar_values_fail_their_clip_with_one_line(tmp_path):
    _touch(tmp_path / "models" / "m.safetensors")
    source = _settings(tmp_path, 'model-dirs = ["models"]\n')
    clip = _touch(tmp_path / "in" / "a.mov")
    for text, expected in [
        (b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n", "could not be read (RecursionError)"),
        (b'format = ["matroska"]\n', "expected one of: avi"),
        (b"model = 5\n", "expected a path in quotes"),
        (b"lora = [5]\n", "expected a path in quotes"),
    ]:
        _touch(clip.with_name("a.mov.toml"), text)
        error = source.for_clip(clip).error
        assert error is not None and expected in error and "\n" not in error, (text[:20], error)
