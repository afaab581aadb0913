"""Hostile inputs and outputs for the video I/O layer: playlists and lists that point elsewhere, text, odd
streams, outputs that are FIFOs, devices, folders, the input itself, too long or on a full disk, stale
temporaries of killed runs, and encoder settings the encoder does not take.

Payloads are built here (playlists, FIFOs, device nodes, real dead and live process ids); media comes from
tests/media.py. Nothing is mocked: FFmpeg opens what it opens, and a FIFO tells whether it was opened.
"""

from __future__ import annotations

import argparse
import errno
import os
import resource
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import media
import pytest
from io_probe import probe
from rerender.filter.errors import InputError, RerenderError, UsageError
from rerender.filter.io import (
    SinkOptions,
    add_io_arguments,
    open_sink,
    open_source,
    paths,
    sink_options_from_args,
)
from rerender.filter.io.options import check_encoder_settings

COPY = Path(__file__).with_name("io_pipe_copy.py")
CLI = [sys.executable, "-m", "rerender.filter.cli", "run"]


def copy(src_path, out_path, options: SinkOptions | None = None, **source_kwargs) -> int:
    with open_source(src_path, **source_kwargs) as src:
        with open_sink(out_path, src, options or SinkOptions()) as sink:
            for frame in src.frames():
                sink.write(frame)
        return src.delivered


class FifoWatch:
    """A FIFO that records whether anyone opened it for reading (and then feeds it `payload`).

    A reader's open() of a FIFO blocks until a writer appears; this thread keeps trying a non-blocking
    writer open, which succeeds only while a reader is there, so `opened` is set exactly when something
    opened the path to read it.
    """

    def __init__(self, path: Path, payload: bytes) -> None:
        os.mkfifo(path)
        self.path, self.payload = path, payload
        self.opened = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                    return
                time.sleep(0.01)
                continue
            self.opened.set()
            try:
                os.set_blocking(fd, True)
                os.write(fd, self.payload)
            except OSError:
                pass
            finally:
                os.close(fd)
            return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# --- inputs that open other files ---------------------------------------------------------------------------


def test_hls_playlist_pointing_outside_its_folder_is_refused_and_the_target_never_opened(tmp_path):
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir()
    outside.mkdir()
    segment = media.write_clip(tmp_path / "segment.ts", audio=False)
    secret = FifoWatch(outside / "secret.ts", segment.read_bytes())
    playlist = inbox / "clip.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{secret.path}\n#EXT-X-ENDLIST\n")
    try:
        with pytest.raises(InputError, match="HLS playlist") as caught:
            open_source(playlist)
        time.sleep(0.2)  # give a late open the time to show up
        assert not secret.opened.is_set()
    finally:
        secret.stop()
    assert "\n" not in str(caught.value) and "--input-format" in str(caught.value)
    # Named on the command line, the playlist is read (its segment is a plain file here).
    forced = inbox / "forced.m3u8"
    forced.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{segment}\n#EXT-X-ENDLIST\n")
    with open_source(forced, format="hls") as src:
        assert len(list(src.frames())) == 12


def test_hls_playlist_on_standard_input_is_refused(tmp_path):
    segment = media.write_clip(tmp_path / "segment.ts", audio=False)
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{segment}\n#EXT-X-ENDLIST\n"
    done = subprocess.run(
        [sys.executable, str(COPY)], input=playlist.encode(), capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 2 and not done.stdout
    assert "expected a video" in done.stderr.decode()


def test_concat_list_pointing_outside_is_refused_and_the_target_never_opened(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    segment = media.write_clip(tmp_path / "segment.mkv", audio=False)
    secret = FifoWatch(tmp_path / "secret.mkv", segment.read_bytes())
    listing = inbox / "list.txt"
    listing.write_text(f"ffconcat version 1.0\nfile '{secret.path}'\nfile '../secret.mkv'\n")
    try:
        with pytest.raises(InputError, match="concat list"):
            open_source(listing)
        time.sleep(0.2)
        assert not secret.opened.is_set()
    finally:
        secret.stop()


def test_text_file_is_refused_unless_the_tty_demuxer_is_asked_for(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("These are meeting notes, not a video.\n" * 40, encoding="utf-8")
    with pytest.raises(InputError, match="text .*tty demuxer") as caught:
        open_source(notes)
    assert "\n" not in str(caught.value)
    with open_source(notes, format="tty") as src:  # forced: FFmpeg's ANSI-art rendering, as asked
        assert src.info.container_format == "tty"


def test_a_path_that_looks_like_a_protocol_is_read_as_a_file(tmp_path, monkeypatch):
    # Without "file:" FFmpeg would take "concat:" (or "subfile:", "data:") as a protocol to run.
    monkeypatch.chdir(tmp_path)
    clip = media.write_clip(tmp_path / "a.mkv", audio=False)
    weird = Path("concat:a.mkv|a.mkv")
    weird.write_bytes(clip.read_bytes())
    with open_source(str(weird)) as src:
        assert len(list(src.frames())) == 12


# --- what the output will not have --------------------------------------------------------------------------


def test_interlaced_input_warns_that_it_is_written_progressive(tmp_path):
    clip = media.interlaced_clip(tmp_path)
    seen: list[str] = []
    with open_source(clip, on_warning=seen.append) as src:
        assert src.warnings == seen
    assert len(seen) == 1 and "interlaced (top field first)" in seen[0] and "bwdif" in seen[0]
    with open_source(media.normal_clip(tmp_path), on_warning=seen.append):
        pass
    assert len(seen) == 1  # progressive input: no warning


def test_second_video_stream_and_cover_art_are_dropped_with_warnings(tmp_path, capsys):
    clip = media.extra_streams_clip(tmp_path)
    out = tmp_path / "out.mkv"
    assert copy(clip, out) == 6
    err = capsys.readouterr().err  # no callback given: the warnings go to stderr
    assert "dropping video stream #1 (mpeg4)" in err
    assert "dropping stream #2, a cover picture" in err
    with av.open(str(out)) as container:
        assert [s.type for s in container.streams] == ["video"]
        assert (container.streams.video[0].width, container.streams.video[0].height) == (64, 48)


# --- outputs that are not regular files -------------------------------------------------------------------------


def _read_all(path: Path, into: list[bytes]) -> threading.Thread:
    def read() -> None:
        with open(path, "rb") as handle:
            into.append(handle.read())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(("name", "fmt"), [("out.nut", None), ("pipe", "mp4")])
def test_fifo_output_is_written_straight_and_survives(tmp_path, name, fmt):
    clip = media.normal_clip(tmp_path)
    fifo = tmp_path / name
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = _read_all(fifo, received)
    copy(clip, fifo, SinkOptions(format=fmt))
    reader.join(timeout=30)
    assert not reader.is_alive() and received
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([clip.name, name])  # no temporary left
    stream = tmp_path / "received.bin"
    stream.write_bytes(received[0])
    got, want = probe(stream), probe(clip)
    assert got.frame_count == want.frame_count == 12
    assert got.packets["audio"] == want.packets["audio"]
    if fmt == "mp4":
        assert b"moof" in received[0][:4096]  # not seekable, so fragmented like a pipe


def test_character_device_output_is_written_straight_and_the_node_survives(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    node = tmp_path / "null"  # no extension: NUT, as for standard output
    try:
        os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # the numbers of /dev/null
    except PermissionError:
        pytest.skip("this container may not make device nodes")
    clip = media.normal_clip(tmp_path)
    assert copy(clip, node) == 12
    info = os.stat(node)
    assert stat.S_ISCHR(info.st_mode) and info.st_rdev == os.makedev(1, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([clip.name, node.name])


# --- the input as the output ---------------------------------------------------------------------------------


def test_output_that_is_the_input_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clip = media.normal_clip(tmp_path, "same.mp4")
    before = clip.read_bytes()
    os.link(clip, tmp_path / "hard.mp4")
    (tmp_path / "soft.mp4").symlink_to(clip)
    parser = argparse.ArgumentParser()
    parser.add_argument("-i", "--input")
    parser.add_argument("-o", "--output")
    add_io_arguments(parser)
    for output in (
        f"{tmp_path}/same.mp4",
        "./same.mp4",
        "hard.mp4",
        "soft.mp4",
        "../" + tmp_path.name + "/same.mp4",
    ):
        with pytest.raises(UsageError, match="is the input file"):
            sink_options_from_args(parser.parse_args(["-i", "./same.mp4", "-o", output]))
        with open_source("./same.mp4") as src, pytest.raises(UsageError, match="is the input file"):
            open_sink(output, src)
    assert clip.read_bytes() == before
    # The command line refuses it before decoding or rendering anything: exit 2, one line, input intact.
    done = subprocess.run(
        [*CLI, "-q", "-i", "./same.mp4", "-o", f"{tmp_path}/same.mp4"], capture_output=True, timeout=120
    )
    assert done.returncode == 2, done.stderr.decode()
    assert "is the input file" in done.stderr.decode() and done.stderr.decode().count("\n") == 1
    assert clip.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.mp4", "same.mp4", "soft.mp4"]


# --- stale temporaries of killed runs ----------------------------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the id names no process now
    return child.pid


def test_stale_partial_outputs_of_dead_processes_are_swept_and_live_ones_kept(tmp_path):
    host = paths.host_tag()
    dead, live = _dead_pid(), os.getpid()
    folder = tmp_path / "out"
    folder.mkdir()
    dead_file = folder / f".out.{dead}.{host}0123abcd.partial.mkv"
    live_file = folder / f".out.{live}.{host}89abcdef.partial.mkv"
    other_host = folder / f".out.{dead}.ffffff0123abcd.partial.mkv" if host != "ffffff" else None
    old_style = folder / ".out.0123abcd.partial.mkv"  # no process id: cannot tell, never removed
    for path in (dead_file, live_file, old_style, other_host):
        if path is not None:
            path.write_bytes(b"half a video")
    copy(media.normal_clip(tmp_path), folder / "out.mkv")
    names = {p.name for p in folder.iterdir()}
    assert dead_file.name not in names
    assert {live_file.name, old_style.name, "out.mkv"} <= names
    if other_host is not None:
        assert other_host.name in names


def test_temporary_names_match_the_sweep_pattern():
    name = paths.temp_name(Path("/tmp/My clip.v2.mp4")).name
    match = paths.PARTIAL_RE.match(name)
    assert match and int(match["pid"]) == os.getpid() and match["host"] == paths.host_tag()
    assert name.endswith(".partial.mp4") and name.startswith(".My clip.v2.")


def test_stale_lavfi_folders_of_dead_processes_are_swept_and_live_ones_kept(tmp_path):
    host = paths.host_tag()
    dead = tmp_path / f"rerender-lavfi-{_dead_pid()}-{host}-abc"
    live = tmp_path / f"rerender-lavfi-{os.getpid()}-{host}-def"
    old_style = tmp_path / "rerender-lavfi-xyz"
    for folder in (dead, live, old_style):
        folder.mkdir()
        (folder / "lavfi.nut").write_bytes(b"frames")
    assert paths.sweep_lavfi_folders(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, old_style.name])


def test_a_lavfi_run_sweeps_dead_lavfi_folders_and_leaves_none_of_its_own(tmp_path):
    temp = tmp_path / "temp"
    temp.mkdir()
    dead = temp / f"rerender-lavfi-{_dead_pid()}-{paths.host_tag()}-abc"
    dead.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    done = subprocess.run(
        [*CLI, "-q", "-i", "lavfi:testsrc2=size=64x48:rate=5:duration=0.4", "-o", str(tmp_path / "out.mkv")]
        + ["--size", "64", "--search-vote-iters", "1", "--patchmatch-iters", "1", "--threads", "1"],
        capture_output=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert list(temp.iterdir()) == []


# --- output locations that cannot work ---------------------------------------------------------------------------


def test_bad_output_locations_are_one_sentence_before_any_frame(tmp_path):
    clip = media.normal_clip(tmp_path)
    folder = tmp_path / "existing"
    folder.mkdir()
    cases = [
        (folder, "is a folder"),
        (tmp_path / "missing" / "out.mp4", "does not exist"),
        (tmp_path / ("x" * 300 + ".mp4"), "longer than the 255"),
    ]
    for output, message in cases:
        with open_source(clip) as src, pytest.raises(UsageError, match=message) as caught:
            open_sink(output, src)
        assert "\n" not in str(caught.value)
    parser = argparse.ArgumentParser()
    parser.add_argument("-i", "--input")
    parser.add_argument("-o", "--output")
    add_io_arguments(parser)
    for output, message in cases:  # found while the flags are parsed, before the input is even opened
        with pytest.raises(UsageError, match=message):
            sink_options_from_args(parser.parse_args(["-i", str(clip), "-o", str(output)]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", clip.name]


def test_a_250_character_output_name_is_written(tmp_path):
    clip = media.normal_clip(tmp_path)
    out = tmp_path / ("n" * 246 + ".mkv")  # 250 characters: the temporary name is cut to fit, not this one
    assert copy(clip, out) == 12
    assert probe(out).frame_count == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([clip.name, out.name])


def test_file_size_limit_is_one_sentence_and_leaves_nothing(tmp_path):
    clip = media.write_clip(tmp_path / "noise.mkv", width=160, height=120, frames=10, audio=False)
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))  # EFBIG past 20 kB (Python ignores SIGXFSZ)

    done = subprocess.run(
        [sys.executable, str(COPY), "-i", str(clip), "-o", str(out_dir / "out.mkv"), "--crf", "0"],
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "file size limit" in done.stderr and done.stderr.count("\n") == 1
    assert list(out_dir.iterdir()) == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_disk_full_is_one_sentence_and_leaves_nothing(tmp_path, tiny_tmpfs):
    clip = media.write_clip(tmp_path / "noise.mkv", width=160, height=120, frames=10, audio=False)
    with open_source(clip) as src, pytest.raises(RerenderError, match="no space left") as caught:
        with open_sink(tiny_tmpfs / "out.mkv", src, SinkOptions(crf=0)) as sink:
            for frame in src.frames():
                sink.write(frame)
    assert "\n" not in str(caught.value)
    assert list(tiny_tmpfs.iterdir()) == []
    # A disk that is already full is found when the output opens, before any frame.
    fd = os.open(tiny_tmpfs / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError):
            while True:
                os.write(fd, bytes(4096))
    finally:
        os.close(fd)
    with open_source(clip) as src, pytest.raises(UsageError, match="no space left"):
        open_sink(tiny_tmpfs / "out.mkv", src)


# --- frame loss --------------------------------------------------------------------------------------------------


def test_frames_an_edit_list_hides_are_not_counted_as_corrupt(tmp_path):
    clip = media.edit_list_clip(tmp_path, frames=12, cut=3)
    with open_source(clip) as src:
        assert len(list(src.frames())) == 9
        assert src.dropped == 0


def test_corrupt_packets_are_counted_and_reported_as_a_warning_event(tmp_path):
    from rerender.filter.job import parse_run_options, run_job

    clip = media.corrupt_clip(tmp_path, frames=24, broken=3)
    events: list[dict] = []
    options = parse_run_options(
        ["-i", str(clip), "-o", str(tmp_path / "out.mkv"), "-q", "--size", "64", "--threads", "1"]
        + ["--search-vote-iters", "1", "--patchmatch-iters", "1"]
    )
    result = run_job(options, on_event=lambda event: events.append(event.to_json()))
    assert result.dropped == 3 and result.frames == 21
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert any("3 corrupt video packet" in w for w in warnings)


# --- standard input that cannot work -----------------------------------------------------------------------------


def test_mp4_with_its_index_at_the_end_on_standard_input_says_how_to_fix_it(tmp_path):
    clip = media.moov_at_end_clip(tmp_path)
    done = subprocess.run(
        [sys.executable, str(COPY)], input=clip.read_bytes(), capture_output=True, timeout=60, check=False
    )
    err = done.stderr.decode()
    assert done.returncode == 2 and not done.stdout
    assert "index (moov) is at the end" in err and "+faststart" in err and "-f nut" in err
    assert err.count("\n") == 1
    assert copy(clip, tmp_path / "out.mkv") == 2  # the same file given by path is fine


# --- encoder settings ---------------------------------------------------------------------------------------------


def _io_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("-i", "--input", default="in.mkv")
    parser.add_argument("-o", "--output", default="out.mp4")
    add_io_arguments(parser)
    return parser


def test_unknown_encoder_option_is_refused_with_a_sentence(tmp_path):
    parser = _io_parser()
    with pytest.raises(UsageError, match="libx264 has no option 'nonsense'") as caught:
        sink_options_from_args(parser.parse_args(["--encoder-option", "nonsense=1"]))
    assert "\n" not in str(caught.value)
    with pytest.raises(UsageError, match="did you mean preset"):
        sink_options_from_args(parser.parse_args(["--encoder-option", "presett=slow"]))
    accepted = ["preset=ultrafast", "x264-params=keyint=5", "g=1", "bf=0", "tune=film", "flags=+cgop"]
    args = parser.parse_args([item for pair in accepted for item in ("--encoder-option", pair)])
    sink_options_from_args(args)
    # The Sink checks too (callers that build SinkOptions themselves), before any frame.
    clip = media.normal_clip(tmp_path)
    with open_source(clip) as src, pytest.raises(UsageError, match="no option 'nonsense'"):
        open_sink(tmp_path / "out.mp4", src, SinkOptions(encoder_options=(("nonsense", "1"),)))
    assert sorted(p.name for p in tmp_path.iterdir()) == [clip.name]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--crf", "55"], "libx264 takes; expected a number from 0 to 51"),
        (["--crf", "-1"], "from 0 to 51"),
        (["--crf", "nan"], "expected a number"),
        (["-o", "out.webm", "--crf", "70"], "libvpx-vp9 takes; expected a whole number from 0 to 63"),
        (["-o", "out.webm", "--crf", "30.5"], "whole number"),
        (["--codec", "ffv1", "-o", "out.mkv", "--crf", "20"], "ffv1 has no constant rate factor"),
    ],
)
def test_crf_outside_the_encoders_range_is_refused_with_the_range(argv, message):
    with pytest.raises(UsageError, match=message):
        sink_options_from_args(_io_parser().parse_args(argv))


def test_crf_inside_the_range_and_the_default_are_accepted():
    parser = _io_parser()
    assert sink_options_from_args(parser.parse_args(["--crf", "51"])).crf == 51
    assert sink_options_from_args(parser.parse_args(["-o", "out.webm", "--crf", "63"])).crf == 63
    assert sink_options_from_args(parser.parse_args(["--codec", "ffv1", "-o", "o.mkv"])).crf == 18  # unused
    check_encoder_settings("libx264", {"crf": "55"}, 18.0)  # an explicit crf option is the user's own


def test_crf_55_is_refused_by_the_command_line_before_any_work(tmp_path):
    clip = media.normal_clip(tmp_path)
    done = subprocess.run(
        [*CLI, "-q", "-i", str(clip), "-o", str(tmp_path / "out.mp4"), "--crf", "55"],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "from 0 to 51" in done.stderr.decode()
    assert sorted(p.name for p in tmp_path.iterdir()) == [clip.name]


def test_every_io_option_shows_its_default_in_help():
    parser = argparse.ArgumentParser()
    add_io_arguments(parser)
    group = next(g for g in parser._action_groups if g.title == "video input/output")
    for action in group._group_actions:
        assert "default" in (action.help or ""), action.option_strings


@pytest.mark.parametrize("suffix", [".mkv", ".nut", ".ts"])
def test_frames_lost_in_a_damaged_container_are_counted(tmp_path, suffix):
    clip = media.damaged_container_clip(tmp_path, f"damaged{suffix}", frames=48)
    with open_source(clip) as src:
        delivered = len(list(src.frames()))
        assert 30 < delivered < 48
        assert src.dropped == 48 - delivered


def test_variable_rate_gaps_are_not_counted_as_lost_frames(tmp_path):
    with open_source(media.vfr_clip(tmp_path, frames=20)) as src:
        assert len(list(src.frames())) == 20 and src.dropped == 0


def test_symlinked_output_replaces_its_target_and_keeps_the_link(tmp_path):
    clip = media.normal_clip(tmp_path)
    target_dir = tmp_path / "real"
    target_dir.mkdir()
    target = target_dir / "out.mkv"
    target.write_bytes(b"old result")
    link = tmp_path / "link.mkv"
    link.symlink_to(target)
    assert copy(clip, link) == 12
    assert link.is_symlink() and probe(target).frame_count == 12
    assert [p.name for p in target_dir.iterdir()] == ["out.mkv"]


def test_dev_stdout_redirected_to_a_file_is_written_straight(tmp_path):
    clip = media.normal_clip(tmp_path)
    out = tmp_path / "redirected.nut"
    was_link = Path("/dev/stdout").is_symlink()
    with open(out, "wb") as handle:
        done = subprocess.run(
            [sys.executable, str(COPY), "-i", str(clip), "-o", "/dev/stdout", "-f", "nut"],
            stdout=handle,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr.decode()
    assert probe(out).frame_count == 12
    assert not [p for p in Path("/dev").iterdir() if ".partial" in p.name]  # no temporary next to /dev/stdout
    if was_link:
        assert Path("/dev/stdout").is_symlink()  # as root, a rename would have replaced it with a file


def test_a_terminal_device_is_refused_as_output(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    node = tmp_path / "tty.nut"
    try:
        os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(5, 0))  # the numbers of /dev/tty
    except PermissionError:
        pytest.skip("this container may not make device nodes")
    with open_source(media.normal_clip(tmp_path)) as src, pytest.raises(UsageError, match="is a terminal"):
        open_sink(node, src)
    assert stat.S_ISCHR(os.stat(node).st_mode)


def test_process_ids_no_process_can_have_are_not_alive():
    """A crafted temporary name or lock owner file can carry any number: 0 and -1 would make os.kill address
    a process group or every process, and a number past the C int range raises; none of them is alive."""
    import os

    from rerender.filter.io.paths import pid_alive

    assert pid_alive(os.getpid())
    for pid in (0, -1, -12345, 10**30):
        assert not pid_alive(pid), pid
