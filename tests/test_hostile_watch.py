"""Hostile drops into a watch folder, against the real daemon on real files (payloads built here): a pickle
that would create a marker file when loaded, named by sidecars in every way a path can be given; symbolic
links to files outside INBOX; an HLS playlist pointing outside INBOX; sidecars with out-of-range values next
to a good clip. Nothing outside INBOX may be read, no payload may run, and every bad drop fails alone with a
one-line reason while the good clips come out."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
from pathlib import Path

import av
import pytest
from media import write_clip
from rerender.filter.errors import InputError, UsageError
from rerender.filter.watch.inbox_files import MAX_SIDECAR_BYTES, open_clip, open_in_inbox
from watch_helpers import PRESET, Daemon, count_frames, once, visible_files

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("no_daemon_left_behind")]


class _CreatesMarker:
    """Unpickling this calls open(marker, "w"): the file appears iff the pickle was loaded as code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickle_payload(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(_CreatesMarker(marker)))
    return path


def _reasons(daemon) -> dict[str, str]:
    return {e["clip"]: e["reason"] for e in daemon.of("failed")}


def _assert_reported(outbox: Path, reasons: dict[str, str]) -> None:
    """Each failure is one line, in the event and as the first line of its `.error.txt`."""
    for clip, reason in reasons.items():
        assert "\n" not in reason
        first = (outbox / "failed" / f"{clip}.error.txt").read_text().partition("\n")[0]
        assert first == reason


# -- models: only inside the preset's model-dirs, never a pickle ----------------------------------------------


def test_a_sidecar_can_not_make_the_daemon_unpickle_a_dropped_file(folders, tmp_path):
    inbox, outbox = folders
    marker = tmp_path / "MARKER"
    models = tmp_path / "models"
    (models / "sd").mkdir(parents=True)
    (tmp_path / "preset.toml").write_text(PRESET + 'model-dirs = ["models"]\n')
    evil = _pickle_payload(inbox / "evil.pkl", marker)
    for name in ("x.ckpt ", "x.ckpt.", "x.pth.tar", "noext"):
        _pickle_payload(inbox / name, marker)
    outside = _pickle_payload(tmp_path / "elsewhere" / "evil.pkl", marker)
    os.symlink(evil, models / "linked.pkl")  # a link inside a model folder to a dropped file
    diffusion = 'renderer = "diffusion"\nprompt = "x"\n'
    sidecars = {
        "relative.mp4": diffusion + 'model = "evil.pkl"\n',
        "absolute.mp4": diffusion + f'model = "{evil}"\n',
        "outside.mp4": diffusion + f'model = "{outside}"\n',
        "trailing.mp4": diffusion + f'model = "{inbox / "x.ckpt "}"\n',
        "traversal.mp4": diffusion + 'model = "../inbox/evil.pkl"\n',
        "linked.mp4": diffusion + 'model = "linked.pkl"\n',
        "config.mp4": diffusion + f'model = "{models / "sd"}"\n"model-config" = "{inbox}"\n',
        "lora.mp4": diffusion + f'model = "{models / "sd"}"\nlora = ["{inbox / "noext"}:0.5"]\n',
        "controlnet.mp4": diffusion + f'model = "{models / "sd"}"\ncontrolnet = ["{inbox / "x.ckpt."}"]\n',
        "control.mp4": diffusion + f'model = "{models / "sd"}"\ncontrol = "hed:{inbox / "x.pth.tar"}"\n',
        "flow.mp4": f'flow = "raft:{evil}"\n',
        "keyframes.mp4": f'renderer = "frames"\n"keyframes-dir" = "{inbox}"\n',
        "pickle.mp4": diffusion + f'model = "{models / "sd"}"\n"allow-pickle" = true\n',
        "pickle2.mp4": "allow_pickle = true\n",
        "pickle3.mp4": '"--allow-pickle" = true\n',
        "pickle4.mp4": '" allow_pickle " = true\n',
        "dirs.mp4": f'model-dirs = ["{inbox}"]\n',
    }
    for name, text in sidecars.items():
        write_clip(inbox / name, frames=4, audio=False)
        (inbox / f"{name}.toml").write_text(text)
    write_clip(inbox / "fine.mp4", frames=6, audio=False)

    daemon = once(inbox, outbox)
    assert not marker.exists()
    reasons = _reasons(daemon)
    assert sorted(reasons) == sorted(sidecars)
    for clip, reason in reasons.items():
        assert reason.startswith(f"the sidecar {inbox / clip}.toml"), reason
    assert "model-dirs" in reasons["relative.mp4"] and "model-dirs" in reasons["linked.mp4"]
    assert "only the folder's --preset may set" in reasons["pickle3.mp4"]
    _assert_reported(outbox, reasons)
    assert [e["clip"] for e in daemon.of("done")] == ["fine.mp4"]
    assert count_frames(outbox / "fine_rerender.mp4") == 6
    # Refused before any job started: no model was ever opened.
    assert [e["clip"] for e in daemon.of("start")] == ["fine.mp4"]


def test_model_dirs_must_be_folders_and_must_not_hold_inbox(folders, tmp_path):
    inbox, outbox = folders
    (tmp_path / "preset.toml").write_text(PRESET + f'model-dirs = ["{tmp_path}"]\n')
    assert "holds INBOX, so any dropped file could be loaded" in _refused_at_start(inbox, outbox)
    (tmp_path / "preset.toml").write_text(PRESET + 'model-dirs = ["no-such-folder"]\n')
    assert "model-dirs entry 'no-such-folder' is not a folder" in _refused_at_start(inbox, outbox)


def _refused_at_start(inbox: Path, outbox: Path) -> str:
    argv = [sys.executable, "-m", "rerender.filter.cli", "watch", str(inbox), "--out", str(outbox), "--once"]
    argv += ["--preset", str(inbox.parent / "preset.toml")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done.stderr


# -- links and other non-regular files ------------------------------------------------------------------------


def test_symlinks_dropped_in_inbox_are_refused_never_followed(folders, tmp_path):
    inbox, outbox = folders
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = write_clip(outside / "secret.mp4", frames=7, audio=False)
    secret_bytes = secret.read_bytes()
    (outside / "settings.toml").write_text("crf = 20\n")
    os.symlink(secret, inbox / "link.mp4")
    os.symlink(outside / "gone.mp4", inbox / "dangling.mp4")
    os.symlink(outside, inbox / "linked-folder")  # a linked folder is not scanned at all
    (inbox / "sub").mkdir()
    os.symlink("../../outside/secret.mp4", inbox / "sub" / "relative.mov")
    write_clip(inbox / "real.mp4", frames=5, audio=False)
    os.symlink(outside / "settings.toml", inbox / "real.mp4.toml")  # a linked sidecar
    write_clip(inbox / "good.mp4", frames=6, audio=False)

    daemon = once(inbox, outbox, "--done-action", "move")
    reasons = _reasons(daemon)
    assert sorted(reasons) == ["dangling.mp4", "link.mp4", "real.mp4", "sub/relative.mov"]
    for clip in ("dangling.mp4", "link.mp4", "sub/relative.mov"):
        assert reasons[clip] == (
            f"the clip {clip} is a symbolic link; the watch folder takes only regular files: copy the file "
            "into INBOX instead of linking it"
        )
    assert "sidecar" in reasons["real.mp4"] and "symbolic link" in reasons["real.mp4"]
    _assert_reported(outbox, reasons)
    assert [e["clip"] for e in daemon.of("start")] == ["good.mp4"]
    assert visible_files(outbox) == [
        "failed/dangling.mp4.error.txt",
        "failed/link.mp4.error.txt",
        "failed/real.mp4.error.txt",
        "failed/sub/relative.mov.error.txt",
        "good_rerender.mp4",
    ]
    # The links were moved as links: the target was neither read into OUTBOX nor hard-linked into INBOX.
    moved = inbox / "failed" / "link.mp4"
    assert moved.is_symlink() and os.readlink(moved) == str(secret)
    assert (inbox / "failed" / "real.mp4.toml").is_symlink()
    assert os.stat(secret).st_nlink == 1 and secret.read_bytes() == secret_bytes
    assert sorted(os.listdir(outside)) == ["secret.mp4", "settings.toml"]


def test_a_clip_is_read_as_the_file_that_was_checked_even_if_swapped_for_a_link(tmp_path):
    inbox = tmp_path / "inbox"
    (inbox / "sub").mkdir(parents=True)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"SECRET")
    clip = inbox / "sub" / "a.mp4"
    clip.write_bytes(b"DROPPED")
    opened = open_clip(inbox, "sub/a.mp4")
    try:
        swap = inbox / "sub" / "swap"
        os.symlink(secret, swap)
        os.replace(swap, clip)  # after the check, the name now points outside INBOX
        with open(opened.job_path, "rb") as fh:  # what the job opens
            assert fh.read() == b"DROPPED"
    finally:
        opened.close()
    with pytest.raises(InputError, match="is a symbolic link"):
        open_clip(inbox, "sub/a.mp4")
    # A sub-folder swapped for a link to a folder outside INBOX is refused too.
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "b.mp4").write_bytes(b"OUTSIDE")
    os.rename(inbox / "sub", tmp_path / "old-sub")
    os.symlink(tmp_path / "elsewhere", inbox / "sub")
    with pytest.raises(InputError, match=r"in a folder that is a symbolic link \(sub\)"):
        open_clip(inbox, "sub/b.mp4")


def test_a_fifo_or_an_oversized_sidecar_never_blocks_or_fills_the_daemon(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    os.mkfifo(inbox / "pipe.mp4")
    result: list[BaseException] = []
    opener = threading.Thread(target=lambda: _catch(result, lambda: open_clip(inbox, "pipe.mp4")))
    opener.start()
    opener.join(timeout=10)
    assert not opener.is_alive(), "opening a FIFO blocked"
    assert isinstance(result[0], InputError) and "is a FIFO; expected a regular file" in str(result[0])

    from rerender.filter.job import build_run_parser, options_from_values
    from rerender.filter.watch.settings import SettingsSource

    source = SettingsSource(None, build_run_parser, options_from_values, inbox=inbox)
    (inbox / "a.mov").write_bytes(b"x")
    (inbox / "a.mov.toml").write_bytes(b"#" * (MAX_SIDECAR_BYTES + 1))
    assert "is over 64 KiB" in (source.for_clip(inbox / "a.mov").error or "")
    os.unlink(inbox / "a.mov.toml")
    os.mkfifo(inbox / "a.mov.toml")
    assert "is a FIFO" in (source.for_clip(inbox / "a.mov").error or "")
    with pytest.raises(InputError, match="not a path inside INBOX"):
        open_in_inbox(inbox, "../a.mov", "clip")


def _catch(sink: list[BaseException], call) -> None:
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - the test inspects it
        sink.append(exc)


# -- playlists ------------------------------------------------------------------------------------------------


def test_a_playlist_dropped_in_inbox_can_not_pull_in_a_file_outside_it(folders, tmp_path):
    inbox, outbox = folders
    (tmp_path / "outside").mkdir()
    secret = write_clip(tmp_path / "outside" / "secret.ts", frames=9, audio=False)
    playlist = (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:10.0,\n{secret}\n#EXT-X-ENDLIST\n"
    )
    (inbox / "forced.mp4").write_text(playlist)
    (inbox / "forced.mp4.toml").write_text('input-format = "hls"\n')
    (inbox / "probed.mp4").write_text(playlist)  # no sidecar: whatever the demuxer probing decides
    (inbox / "list.m3u8").write_text(playlist)  # not a clip name: left alone
    # FFmpeg's concat demuxer is chosen by content and reads the names it lists relative to the list:
    # through a link dropped next to it, or by absolute path.
    os.symlink(secret, inbox / "link.ts")
    (inbox / "concat.mp4").write_text("ffconcat version 1.0\nfile link.ts\n")
    (inbox / "absolute.mp4").write_text(f"ffconcat version 1.0\nfile {secret}\n")
    with av.open(str(inbox / "forced.mp4"), format="hls") as payload:  # the payloads work when read by path
        assert sum(1 for _ in payload.decode(video=0)) == 9
    with av.open(str(inbox / "concat.mp4")) as payload:
        assert sum(1 for _ in payload.decode(video=0)) == 9

    daemon = once(inbox, outbox)
    reasons = _reasons(daemon)
    assert sorted(reasons) == ["absolute.mp4", "concat.mp4", "forced.mp4", "link.ts", "probed.mp4"]
    assert reasons["forced.mp4"] == (
        f"the sidecar {inbox / 'forced.mp4.toml'} sets 'input-format', which only the folder's --preset may "
        "set (it would choose how the dropped file is read (a playlist could pull in other files)); remove it"
    )
    assert daemon.of("done") == []
    assert visible_files(outbox) == sorted(f"failed/{clip}.error.txt" for clip in reasons)
    _assert_reported(outbox, reasons)


# -- bounds: a bad sidecar fails its clip alone ---------------------------------------------------------------


def test_bad_sidecar_values_fail_their_clip_alone_and_the_good_clips_come_out(folders):
    inbox, outbox = folders
    bad = {
        "iters.mp4": "patchmatch-iters = 1e20\n",
        "crf.mp4": "crf = 99\n",
        "size.mp4": "size = 100\n",
        "muxer.mp4": 'format = "hls"\n',
        "options.mp4": '"encoder-option" = ["stats=/tmp/x.log"]\n',
        "device.mp4": 'device = "cuda:7"\n',
        "notoml.mp4": "crf = = 3\n",
        "table.mp4": "[run]\ncrf = 3\n",
        "type.mp4": "threads = [1, 2]\n",
        "unknown.mp4": "no-such-flag = 1\n",
    }
    for name, text in bad.items():
        write_clip(inbox / name, frames=4, audio=False)
        (inbox / f"{name}.toml").write_text(text)
    write_clip(inbox / "good.mp4", frames=6, audio=False)
    # Encoding quality is the clip's to choose (README: codec, crf, pix-fmt and a known container).
    write_clip(inbox / "quality.mp4", frames=5, audio=False)
    (inbox / "quality.mp4.toml").write_text(
        'codec = "libx264"\ncrf = 30\n"pix-fmt" = "yuv444p"\nformat = "matroska"\n'
    )
    daemon = once(inbox, outbox, "--jobs", "2")
    reasons = _reasons(daemon)
    assert sorted(reasons) == sorted(bad)
    for clip, reason in reasons.items():
        assert reason.startswith(f"the sidecar {inbox / clip}.toml"), reason
    assert "--crf 99" in reasons["crf.mp4"]
    assert "expected one of: avi, ipod, matroska" in reasons["muxer.mp4"]
    _assert_reported(outbox, reasons)
    assert sorted(e["clip"] for e in daemon.of("start")) == ["good.mp4", "quality.mp4"]
    assert count_frames(outbox / "good_rerender.mp4") == 6
    with av.open(str(outbox / "quality_rerender.mkv")) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv444p")
        assert sum(1 for _ in container.decode(video=0)) == 5


def _run_parser_refuses(flag: str) -> bool:
    from rerender.filter.job import parse_run_options

    try:
        parse_run_options(["-i", "a.mov", "-o", "b.mov", flag])
    except UsageError:
        return True
    return False


@pytest.mark.parametrize(
    ("key", "flag"),
    [
        ("threads = 100000", "--threads=100000"),
        ("size = 65536", "--size=65536"),
        ('"patch-size" = 99999', "--patch-size=99999"),
        ('"patch-size" = 101', "--patch-size=101"),
    ],
)
def test_resource_bombs_in_a_sidecar_are_refused_before_a_job_starts(folders, key, flag):
    # These values would take the machine's memory or crash the native module; they must be refused by the
    # run parser's range checks, which the daemon applies to every sidecar before starting a job. Running
    # them without those checks would exhaust a shared test machine, so the test waits for the parser.
    if not _run_parser_refuses(flag):
        pytest.skip(f"`rerender run` does not bound {flag} yet")
    inbox, outbox = folders
    write_clip(inbox / "bomb.mp4", frames=4, audio=False)
    (inbox / "bomb.mp4.toml").write_text(key + "\n")
    write_clip(inbox / "good.mp4", frames=6, audio=False)
    daemon = once(inbox, outbox, "--jobs", "2")
    (reason,) = [e["reason"] for e in daemon.of("failed") if e["clip"] == "bomb.mp4"]
    assert reason.startswith(f"the sidecar {inbox / 'bomb.mp4.toml'}: ") and "\n" not in reason
    assert [e["clip"] for e in daemon.of("start")] == ["good.mp4"]
    assert count_frames(outbox / "good_rerender.mp4") == 6


# -- a crash in one job ---------------------------------------------------------------------------------------


def _workers(daemon_pid: int) -> list:
    import psutil

    return [
        p
        for p in psutil.Process(daemon_pid).children(recursive=True)
        if "rerender.filter.watch.worker" in " ".join(p.cmdline())
    ]


def test_a_job_that_crashes_fails_its_clip_alone_and_the_daemon_goes_on(folders):
    inbox, outbox = folders
    write_clip(inbox / "crashes.mp4", frames=150, audio=False)
    daemon = Daemon(inbox, outbox, "--jobs", "2")
    daemon.wait_until(lambda: any(e["clip"] == "crashes.mp4" for e in daemon.of("keyframe")))
    (worker,) = _workers(daemon.proc.pid)
    worker.send_signal(signal.SIGSEGV)  # as a crash in native code would end it
    write_clip(inbox / "after.mp4", frames=6, audio=False)
    daemon.wait_until(lambda: daemon.of("failed") and daemon.of("done"))
    assert daemon.proc.poll() is None  # still watching
    (failed,) = daemon.of("failed")
    assert failed["clip"] == "crashes.mp4"
    assert failed["reason"].startswith("the job's process was killed by SIGSEGV before it finished")
    report = (outbox / "failed" / "crashes.mp4.error.txt").read_text()
    assert "Segmentation fault" in report  # the worker's stack, for whoever debugs it
    assert [e["clip"] for e in daemon.of("done")] == ["after.mp4"]
    assert count_frames(outbox / "after_rerender.mp4") == 6
    assert daemon.stop() == 0
    assert visible_files(outbox) == ["after_rerender.mp4", "failed/crashes.mp4.error.txt"]


def test_killing_the_daemon_takes_its_workers_with_it(folders):
    inbox, outbox = folders
    write_clip(inbox / "long.mp4", frames=150, audio=False)
    daemon = Daemon(inbox, outbox)
    daemon.wait_until(lambda: daemon.of("keyframe"))
    (worker,) = _workers(daemon.proc.pid)
    daemon.stop(signal.SIGKILL)
    worker.wait(timeout=30)  # gone with the daemon, not rendering on behind the next daemon's back
    resumed = once(inbox, outbox)
    assert [e["clip"] for e in resumed.of("done")] == ["long.mp4"]
    assert count_frames(outbox / "long_rerender.mp4") == 150
