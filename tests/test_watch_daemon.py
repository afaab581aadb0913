"""`rerender watch` as a real process on real folders: clips dropped (one written slowly in
chunks, one corrupt, one not a video) come out exactly once and complete; kill -9 at random moments and
restarts leave every clip done exactly once with no partial file ever visible in OUTBOX; SIGTERM abandons
cleanly and the next start resumes from the checkpointed keyframes; sidecars cannot escape OUTBOX; two
daemons on one folder never take the same clip. Renders with the default `classic` renderer (no weights)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import av
import pytest
from media import corrupt_clip, not_a_video, truncated_mp4, write_clip
from watch_helpers import (
    FAST,
    PRESET,
    RERENDER,
    Daemon,
    count_frames,
    ledger_rows,
    locks_left,
    once,
    visible_files,
)

pytestmark = pytest.mark.usefixtures("no_daemon_left_behind")


def _write_slowly(data: bytes, target: Path, chunks: int, pause: float) -> None:
    step = -(-len(data) // chunks)
    with open(target, "wb") as fh:
        for start in range(0, len(data), step):
            fh.write(data[start : start + step])
            fh.flush()
            time.sleep(pause)


def test_dropped_clips_come_out_once_complete_and_bad_ones_go_to_failed(folders, tmp_path):
    inbox, outbox = folders
    write_clip(inbox / "a.mp4", frames=12)
    (inbox / "sub").mkdir()
    write_clip(inbox / "sub" / "b.mkv", frames=15)
    not_a_video(inbox, "notes.mp4")
    truncated_mp4(inbox, "broken.mp4")  # corrupt beyond reading: fails
    corrupt_clip(inbox, "damaged.mkv", frames=24, broken=3)  # 3 garbage packets mid-stream: done, shorter
    (inbox / "readme.txt").write_text("not for the daemon")
    slow_source = write_clip(tmp_path / "slow.mkv", frames=18)

    # The slow clip grows in chunks 0.2 s apart while the daemon polls every 0.2 s with a 1.5 s window.
    daemon = Daemon(inbox, outbox, "--poll", "0.2", "--stable", "1.5")
    writer = threading.Thread(
        target=_write_slowly, args=(slow_source.read_bytes(), inbox / "slow.mkv", 8, 0.2)
    )
    writer.start()
    writer.join()
    finished = lambda: {e["clip"] for e in daemon.of("done") + daemon.of("failed")}  # noqa: E731
    daemon.wait_until(lambda: len(finished()) == 6)
    time.sleep(1.0)  # a few more polls: nothing is taken twice
    assert daemon.stop() == 0
    assert daemon.of("stopped")

    assert sorted(e["clip"] for e in daemon.of("start")) == sorted(
        ["a.mp4", "sub/b.mkv", "slow.mkv", "notes.mp4", "broken.mp4", "damaged.mkv"]
    )
    assert visible_files(outbox) == [
        "a_rerender.mp4",
        "damaged_rerender.mkv",
        "failed/broken.mp4.error.txt",
        "failed/notes.mp4.error.txt",
        "slow_rerender.mkv",
        "sub/b_rerender.mkv",
    ]
    assert count_frames(outbox / "a_rerender.mp4") == 12
    assert count_frames(outbox / "sub" / "b_rerender.mkv") == 15
    assert count_frames(outbox / "slow_rerender.mkv") == 18
    (damaged,) = [e for e in daemon.of("done") if e["clip"] == "damaged.mkv"]
    assert damaged["dropped"] == 3 and count_frames(outbox / "damaged_rerender.mkv") == 24 - 3
    for name in ("notes.mp4", "broken.mp4"):
        reason, _, log = (outbox / "failed" / f"{name}.error.txt").read_text().partition("\n")
        assert reason.strip() and name in log
        assert [e["reason"] for e in daemon.of("failed") if e["clip"] == name] == [reason]
    assert sorted(os.listdir(inbox)) == [
        ".rerender-locks",
        "a.mp4",
        "broken.mp4",
        "damaged.mkv",
        "notes.mp4",
        "readme.txt",
        "slow.mkv",
        "sub",
    ]  # originals kept
    assert locks_left(inbox) == []

    status = subprocess.run([*RERENDER, "watch", "--status", str(outbox)], capture_output=True, text=True)
    assert status.returncode == 0
    assert status.stdout.strip().splitlines()[-1] == "0 queued, 0 running, 4 done, 2 failed"
    as_json = subprocess.run(
        [*RERENDER, "watch", "--status", str(outbox), "--progress", "json"], capture_output=True, text=True
    )
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert sorted((r["path"], r["state"], r["attempts"]) for r in rows) == [
        ("a.mp4", "done", 1),
        ("broken.mp4", "failed", 1),
        ("damaged.mkv", "done", 1),
        ("notes.mp4", "failed", 1),
        ("slow.mkv", "done", 1),
        ("sub/b.mkv", "done", 1),
    ]

    # A restart never processes a done (or failed) clip again...
    again = once(inbox, outbox)
    assert again.of("start") == []
    # ...but a clip that changed on disk is processed again, and its earlier output is not overwritten.
    write_clip(inbox / "a.mp4", frames=14)
    changed = once(inbox, outbox)
    assert [e["clip"] for e in changed.of("start")] == ["a.mp4"]
    assert count_frames(outbox / "a_rerender.mp4") == 12
    assert count_frames(outbox / "a_rerender-2.mp4") == 14
    # --overwrite replaces the first-choice name instead of numbering.
    write_clip(inbox / "a.mp4", frames=16)
    once(inbox, outbox, "--overwrite")
    assert count_frames(outbox / "a_rerender.mp4") == 16
    assert not (outbox / "a_rerender-3.mp4").exists()


def test_kill_9_at_random_moments_leaves_every_clip_done_exactly_once(folders, tmp_path):
    inbox, outbox = folders
    expected = {"c0.mp4": 80, "c1.mkv": 60, "deep/c2.mp4": 100, "c3.mov": 50}
    for rel, frames in expected.items():
        (inbox / rel).parent.mkdir(parents=True, exist_ok=True)
        write_clip(inbox / rel, frames=frames)
    outputs = {rel: rel.rsplit(".", 1)[0] + "_rerender." + rel.rsplit(".", 1)[1] for rel in expected}

    # A concurrent scanner plays the editor's media browser: every output it ever sees must be complete.
    seen: dict[str, int] = {}
    problems: list[str] = []
    stop = threading.Event()

    def scanner() -> None:
        while not stop.is_set():
            for rel in visible_files(outbox) if outbox.exists() else []:
                if rel in seen:
                    continue
                try:
                    seen[rel] = count_frames(outbox / rel)
                except Exception as exc:  # a partial file would not decode completely
                    problems.append(f"{rel}: {exc}")
                    seen[rel] = -1
            time.sleep(0.01)

    watcher = threading.Thread(target=scanner, daemon=True)
    watcher.start()
    rng = random.Random(7)
    log = tmp_path / "daemon.log"
    recovered = resumed = 0
    try:
        for _ in range(20):
            daemon = Daemon(inbox, outbox, "--max-attempts", "100", log=log)
            # Kill at a random moment after start-up (imports take a variable time on a loaded machine):
            # half the time within 1.5 s (scanning, recovery, a worker starting), else after a random number
            # of a job's keyframes, so that some kills land mid-job whatever the worker's start-up costs.
            daemon.wait_until(lambda d=daemon: d.of("watching"), timeout=60)
            if rng.random() < 0.5:
                time.sleep(rng.uniform(0.0, 1.5))
            else:
                keyframes = rng.randint(1, 12)
                with contextlib.suppress(AssertionError):  # nothing left to render: kill it idle
                    daemon.wait_until(
                        lambda d=daemon, k=keyframes: len(d.of("keyframe")) >= k or d.of("done"), timeout=20
                    )
            daemon.stop(signal.SIGKILL)
            recovered += len(daemon.of("recovered"))
            resumed += sum(1 for e in daemon.of("start") if e["reused_keyframes"])
        final = once(inbox, outbox, "--max-attempts", "100")
    finally:
        stop.set()
        watcher.join()
    time.sleep(0.1)

    assert problems == []
    assert final.of("stopped")
    recovered += len(final.of("recovered"))
    resumed += sum(1 for e in final.of("start") if e["reused_keyframes"])
    # The kills did land in the middle of jobs, and interrupted jobs resumed from their keyframes.
    assert recovered > 0 and resumed > 0, (recovered, resumed)
    assert visible_files(outbox) == sorted(outputs.values())  # exactly one output per clip, no numbering
    for rel, frames in expected.items():
        assert count_frames(outbox / outputs[rel]) == frames
        assert seen.get(outputs[rel], frames) == frames
    rows = ledger_rows(outbox)
    assert sorted(r["path"] for r in rows) == sorted(expected)
    assert {r["state"] for r in rows} == {"done"}
    staging = outbox / ".rerender" / "staging"
    assert not staging.exists() or os.listdir(staging) == []
    assert locks_left(inbox) == []


def test_sigterm_abandons_cleanly_and_the_next_start_resumes_from_the_keyframes(folders):
    inbox, outbox = folders
    write_clip(inbox / "long.mp4", frames=150)
    daemon = Daemon(inbox, outbox)
    daemon.wait_until(lambda: len(daemon.of("keyframe")) >= 2)
    assert daemon.stop(signal.SIGTERM) == 0
    if daemon.of("done"):
        pytest.fail("the clip finished before SIGTERM arrived; make it longer")
    assert [e["clip"] for e in daemon.of("abandoned")] == ["long.mp4"]
    assert visible_files(outbox) == []
    (row,) = ledger_rows(outbox)
    assert (row["state"], row["attempts"]) == ("queued", 0)
    staging = outbox / ".rerender" / "staging" / str(row["id"])
    assert [p.name for p in staging.iterdir()] == ["keyframes"]  # the partial output is gone...
    assert any((staging / "keyframes").iterdir())  # ...the checkpoints are kept

    resumed = once(inbox, outbox)
    (start,) = resumed.of("start")
    assert start["reused_keyframes"] > 0
    assert count_frames(outbox / "long_rerender.mp4") == 150
    assert not staging.exists()


def test_sidecars_can_not_write_outside_outbox_nor_load_pickles(folders, tmp_path):
    inbox, outbox = folders
    sidecars = {
        "escape.mp4": 'output = "../../escaped.mp4"\n',
        "absolute.mp4": f'out = "{tmp_path / "escaped.mp4"}"\n',
        "pickle.mp4": '"allow-pickle" = true\n',
        "fine.mp4": 'crf = 30\nformat = "matroska"\n',
    }
    for name, text in sidecars.items():
        write_clip(inbox / name, frames=10)
        (inbox / f"{name}.toml").write_text(text)
    daemon = once(inbox, outbox, "--done-action", "move")
    assert [e["clip"] for e in daemon.of("done")] == ["fine.mp4"]
    assert sorted(e["clip"] for e in daemon.of("failed")) == ["absolute.mp4", "escape.mp4", "pickle.mp4"]
    for event in daemon.of("failed"):
        assert "sidecar" in event["reason"]
    assert not any(p.name.startswith("escaped") for p in tmp_path.rglob("*"))
    assert visible_files(outbox) == [
        "failed/absolute.mp4.error.txt",
        "failed/escape.mp4.error.txt",
        "failed/pickle.mp4.error.txt",
        "fine_rerender.mkv",  # the sidecar's container
    ]
    with av.open(str(outbox / "fine_rerender.mkv")) as container:
        assert "matroska" in container.format.name
    # --done-action move: originals (with their sidecars) leave the watched part of INBOX.
    assert sorted(os.listdir(inbox / "done")) == ["fine.mp4", "fine.mp4.toml"]
    assert sorted(os.listdir(inbox / "failed")) == [
        "absolute.mp4",
        "absolute.mp4.toml",
        "escape.mp4",
        "escape.mp4.toml",
        "pickle.mp4",
        "pickle.mp4.toml",
    ]


def test_two_daemons_on_one_folder_never_take_the_same_clip(folders):
    inbox, outbox = folders
    names = [f"clip{i}.mp4" for i in range(6)]
    for name in names:
        write_clip(inbox / name, frames=12)
    first = Daemon(inbox, outbox, "--once", "--jobs", "2")
    second = Daemon(inbox, outbox, "--once")
    assert first.wait() == 0 and second.wait() == 0
    started = [e["clip"] for e in first.of("start") + second.of("start")]
    assert sorted(started) == names  # each clip started once, by one of them
    assert visible_files(outbox) == sorted(n.replace(".mp4", "_rerender.mp4") for n in names)
    assert [(r["state"], r["attempts"]) for r in ledger_rows(outbox)] == [("done", 1)] * 6


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "expected INBOX and --out OUTBOX"),
        (["{inbox}", "--out", "{inbox}/out"], "neither inside the other"),
        (["{inbox}", "--out", "{outbox}", "--jobs", "0"], "--jobs must be from 1 to 64"),
        (["{inbox}", "--out", "{outbox}", "--jobs", "100000"], "--jobs must be from 1 to 64"),
        (["{inbox}", "--out", "{outbox}", "--poll", "nan"], "--poll must be from 0.05 to 3600 seconds"),
        (["{inbox}", "--out", "{outbox}", "--stale-lock", "-1"], "--stale-lock must be from 6 to 86400"),
        (["{inbox}", "--out", "{outbox}", "--max-attempts", "0"], "--max-attempts must be from 1 to 1000"),
        (["{inbox}", "--out", "{outbox}", "--preset", "{inbox}/none.toml"], "does not exist"),
        (["--status", "{outbox}"], "no ledger in"),
        (["{inbox}", "--out", "{outbox}", "--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_command_lines_get_one_line_and_exit_2(folders, args, expected):
    inbox, outbox = folders
    outbox.mkdir()
    argv = [a.format(inbox=inbox, outbox=outbox) for a in args]
    done = subprocess.run([*RERENDER, "watch", *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_bad_preset_stops_the_daemon_before_it_takes_anything(folders):
    inbox, outbox = folders
    write_clip(inbox / "a.mp4", frames=10)
    preset = inbox.parent / "preset.toml"
    preset.write_text('output = "x.mp4"\n')
    done = subprocess.run(
        [*RERENDER, "watch", str(inbox), "--out", str(outbox), "--preset", str(preset), "--once"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "chooses every clip's input" in done.stderr
    assert visible_files(outbox) == []
    shutil.rmtree(outbox)


def test_text_mode_prints_a_status_line_per_job(folders):
    inbox, outbox = folders
    write_clip(inbox / "a.mp4", frames=10)
    preset = inbox.parent / "preset.toml"
    preset.write_text(PRESET)
    done = subprocess.run(
        [*RERENDER, "watch", str(inbox), "--out", str(outbox), *FAST, "--preset", str(preset), "--once"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert "rerender watch: [start] a.mp4 (attempt 1)" in lines
    assert any(line.startswith("rerender watch: [10/10 frames") for line in lines)
    assert any(line.startswith("rerender watch: [done] a.mp4 -> a_rerender.mp4 (10 frames") for line in lines)


def test_an_inbox_that_goes_away_is_waited_for(folders, tmp_path):
    """A network share that is unmounted for a while must not stop the daemon (watchdog#1065)."""
    inbox, outbox = folders
    daemon = Daemon(inbox, outbox)
    daemon.wait_until(lambda: daemon.of("watching"))
    away = tmp_path / "away"
    inbox.rename(away)
    daemon.wait_until(lambda: any("cannot scan" in e["message"] for e in daemon.of("warning")))
    write_clip(away / "a.mp4", frames=10)
    away.rename(inbox)
    daemon.wait_until(lambda: daemon.of("done"))
    assert daemon.stop() == 0
    assert count_frames(outbox / "a_rerender.mp4") == 10


def test_two_daemons_with_separate_outboxes_never_take_the_same_clip(folders, tmp_path):
    inbox, outbox = folders
    other_outbox = tmp_path / "outbox-of-another-machine"
    names = [f"clip{i}.mp4" for i in range(4)]
    for name in names:
        write_clip(inbox / name, frames=12)
    first = Daemon(inbox, outbox, "--once")
    second = Daemon(inbox, other_outbox, "--once")
    assert first.wait() == 0 and second.wait() == 0
    started = [e["clip"] for e in first.of("start") + second.of("start")]
    assert sorted(started) == names  # the finish marks in INBOX tell each daemon what the other did
    outputs = visible_files(outbox) + visible_files(other_outbox)
    assert sorted(outputs) == sorted(n.replace(".mp4", "_rerender.mp4") for n in names)
    # A daemon that starts later with the same preset takes nothing either, and its ledger says why.
    third = once(inbox, tmp_path / "third-outbox")
    assert third.of("start") == [] and len(third.of("skipped")) == len(names)
    assert {r["state"] for r in ledger_rows(tmp_path / "third-outbox")} == {"done"}


def test_a_clip_that_keeps_killing_the_daemon_is_failed_after_max_attempts(folders):
    inbox, outbox = folders
    write_clip(inbox / "poison.mp4", frames=150)
    daemon = Daemon(inbox, outbox, "--max-attempts", "1")
    daemon.wait_until(lambda: daemon.of("keyframe"))
    daemon.stop(signal.SIGKILL)  # as if the decoder had crashed the process
    again = once(inbox, outbox, "--max-attempts", "1")
    assert again.of("start") == []
    (failed,) = again.of("failed")
    assert failed["clip"] == "poison.mp4" and "--max-attempts" in failed["reason"]
    assert visible_files(outbox) == ["failed/poison.mp4.error.txt"]
    assert [(r["state"], r["attempts"]) for r in ledger_rows(outbox)] == [("failed", 1)]
