"""Hostile requests against a real `rerender preview` server, over real HTTP on 127.0.0.1.

The page's free-text flags and form fields must never steer the server off its input and its own files
(-i/-o/-f in any spelling, --allow-pickle, --model and every other option that names a file), numbers out of
range are refused with the CLI's sentence, and the HTTP layer bounds what one client may take: a deeply
nested JSON body, a chunked body, half-open connections, a body that never arrives, and a hundred MJPEG
viewers that come and go. After every bad request the server must still answer, and no run may start.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from media import normal_clip
from preview_server import Server, wait_for

CHEAP = ["--size", "64", "--search-vote-iters", "2", "--patchmatch-iters", "2", "--fast-size", "64"]
# Generous bounds for waits that the server's own limits end (head and body deadlines of 10 s, keep-alive
# of 5 s, idle worker threads); they only stop a broken server from hanging the test run.
WAIT_S = 60


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return normal_clip(tmp_path_factory.mktemp("hostile-preview-clip"), width=160, height=96, frames=6)


@pytest.fixture(scope="module")
def server(clip):
    srv = Server(["-i", str(clip), "-K", "3", *CHEAP])
    yield srv
    srv.stop()
    assert "Traceback" not in srv.stderr, srv.stderr


def still_answers(server: Server) -> dict:
    """The server answers /status (and its page) after whatever came before."""
    status = server.status()
    code, _, _ = server.request("GET", "/")
    assert code == 200
    return status


def refused(server: Server, body: dict, path: str = "/run") -> str:
    """POST the page's settings; they must get a 400 with a sentence, start nothing, and leave the server
    answering. Returns the sentence."""
    before = server.status()["run_id"]
    code, _, payload = server.request("POST", path, body=body)
    assert code == 400, (body, payload)
    message = json.loads(payload)["error"]
    assert message and "\n" not in message and "internal error" not in message
    assert still_answers(server)["run_id"] == before  # nothing was started
    return message


def raw_exchange(port: int, data: bytes, timeout: float = WAIT_S) -> bytes:
    """Send raw bytes, then read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_code(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


# -- the page's flags cannot steer the server ------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "option"),
    [
        ("-i/etc/passwd", "--input"),  # value attached
        ("-i /etc/passwd", "--input"),
        ("--input=/etc/passwd", "--input"),
        ("-i=/etc/passwd", "--input"),
        ("-o/tmp/hostile.mp4", "--output"),
        ("--output=/tmp/hostile.mp4", "--output"),
        ("--out /tmp/hostile.mp4", "--output"),  # an abbreviation argparse accepts
        ("-fnut", "--format"),
        ("-f nut", "--format"),
        ("--form=nut", "--format"),
        ("--input-format hls", "--input-format"),
        ("--allow-pickle", "--allow-pickle"),
        ("--allow", "--allow-pickle"),
        ("--model /tmp/x.pkl", "--model"),
        ("--model=/tmp/x.pkl", "--model"),
        ("--lora /tmp/x.pkl", "--lora"),
        ("--lor=/tmp/x.pkl:0.5", "--lora"),
        ("--controlnet /tmp/x.pkl", "--controlnet"),
        ("--model-config /tmp", "--model-config"),
        ("--keyframes-dir /tmp", "--keyframes-dir"),
        ("--keyframes-d=/tmp", "--keyframes-dir"),
        ("--engines /tmp", "--engines"),
        ("--encoder-option stats=/tmp/x", "--encoder-option"),
        ("--flow raft:/tmp/x.pth", "--flow"),
        ("--control hed:/tmp/x.pth", "--control"),
        ("--control depth:/tmp/x.pth", "--control"),
        ("--control video:/tmp/x.mp4", "--control"),
        ("--control canny --control hed:/tmp/x.pth", "--control"),
        ("--vae /tmp/x.pkl", "--vae"),
        ("--progress json", "--progress"),
        ("-q", "--quiet"),
    ],
)
def test_page_flags_cannot_steer_the_server(server, extra, option):
    message = refused(server, {"values": {}, "extra": extra, "stage": "first-keyframe"})
    assert option in message, message


def test_the_allow_list_names_run_options():
    """Every option the page may change is one `rerender run` has (a renamed option is caught here, not
    silently fixed by the command line)."""
    from rerender.filter.job import build_run_parser
    from rerender.filter.preview.settings import page_options

    parser = build_run_parser()
    allowed = page_options(parser.schema)
    dests = set(vars(parser.parse_args(["-i", "in.mp4", "-o", "out.mp4"])))
    assert allowed <= dests, sorted(allowed - dests)
    assert {"keyframe_interval", "prompt", "steps", "flow", "control", "codec"} <= allowed
    assert not {"input", "output", "format", "input_format", "allow_pickle", "model", "lora"} & allowed


@pytest.mark.parametrize(
    "extra", ["--inp=/etc/passwd", "--mod /tmp/x.pkl", "@/etc/passwd", "-- -i /etc/passwd", "'unclosed"]
)
def test_page_flags_argparse_cannot_resolve_are_refused(server, extra):
    refused(server, {"values": {}, "extra": extra})  # ambiguous abbreviations, no @file, no positionals


def test_form_fields_cannot_name_files_or_allow_pickle(server, tmp_path):
    """A pickle whose loading would create a marker file, named through the form's --model field and
    allowed through the extra flags: refused before anything is loaded."""
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(Payload()))
    for body in (
        {"values": {"--model": str(evil)}, "extra": ""},
        {"values": {"--model": str(evil)}, "extra": "--allow-pickle"},
        {"values": {}, "extra": f"--renderer diffusion --model {evil} --allow-pickle"},
    ):
        for path in ("/run", "/render"):
            message = refused(server, body, path)
            assert "--model" in message or "--allow-pickle" in message, message
    time.sleep(1)
    assert not marker.exists()
    # The page marks the field it may only keep or clear.
    code, _, payload = server.request("GET", "/settings")
    fixed = {f["flag"]: f["fixed"] for f in json.loads(payload)["fields"]}
    assert fixed["--model"] is True and fixed["-K"] is False


def test_page_may_still_change_its_own_settings(server):
    """The allow-list is not a refusal of everything: per-run settings in any spelling start a run."""
    before = server.status()["run_id"]
    body = {
        "values": {"-K": "2"},
        "extra": "--flow=dis:fast --keyframes adaptive --patch-s 3",
        "stage": "keyframes",
    }
    code, _, payload = server.request("POST", "/run", body=body)
    assert code == 202, payload
    code, _, payload = server.request("POST", "/cancel", body={})
    assert code == 200
    status = still_answers(server)
    assert status["run_id"] == before + 1 and status["state"] != "running"
    assert "--flow=dis:fast" in status["command"]


@pytest.mark.parametrize(
    ("values", "extra", "option"),
    [
        ({"--size": "65536"}, "", "--size"),
        ({}, "--size 65536", "--size"),
        ({}, "--threads 100000", "--threads"),
        ({}, "--patch-size 99999", "--patch-size"),
        ({}, "--patchmatch-iters 1e20", "--patchmatch-iters"),
        ({"-K": "-1"}, "", "-K"),
        ({"--size": "1e400"}, "", "--size"),
    ],
)
def test_numbers_out_of_range_are_refused(server, values, extra, option):
    message = refused(server, {"values": values, "extra": extra, "stage": "first-keyframe", "fast": False})
    assert option in message, message


# -- HTTP hygiene ----------------------------------------------------------------------------------


@pytest.mark.parametrize("opening", ["[", '{"":'])
def test_deeply_nested_json_is_a_400(server, opening):
    depth = 30_000 if opening == "[" else 12_000  # both under the 64 KiB body limit
    closing = "]" if opening == "[" else "}"
    data = (opening * depth + "0" + closing * depth).encode()
    request = (
        b"POST /run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    response = raw_exchange(server.port, request)
    assert status_code(response) == 400 and b"nested too deeply" in response, response[:300]
    still_answers(server)


def test_chunked_body_is_refused_and_starts_nothing(server):
    before = server.status()["run_id"]
    body = json.dumps({"values": {}, "extra": "", "stage": "first-keyframe"}).encode()
    request = (
        b"POST /run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    )
    response = raw_exchange(server.port, request)
    assert status_code(response) == 411, response[:300]
    assert b"Content-Length" in response
    assert still_answers(server)["run_id"] == before


@pytest.mark.parametrize(
    "headers",
    [
        "",  # no Content-Length at all
        "Content-Length: 0\r\n",  # an empty body is not settings
    ],
)
def test_post_without_settings_starts_nothing(server, headers):
    before = server.status()["run_id"]
    request = f"POST /run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{headers}\r\n"
    response = raw_exchange(server.port, request.encode())
    assert status_code(response) in (400, 411), response[:300]
    assert still_answers(server)["run_id"] == before


def test_body_limits(server):
    request = (
        b"POST /run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000000\r\n\r\n{"
    )
    assert status_code(raw_exchange(server.port, request)) == 413
    # A body that never arrives in full: answered with a 408 when the body deadline passes.
    request = (
        b"POST /run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"values": {}'
    )
    assert status_code(raw_exchange(server.port, request)) == 408
    still_answers(server)


def test_half_open_connections_are_timed_out(server):
    """Connections that send nothing, half a request line, or headers without their end are closed by the
    server (408 or a plain close) while it keeps answering everyone else."""
    partial = [b"", b"GET /sta", b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"POST /run HTTP/1.1\r\n"]
    sockets = []
    for data in partial * 3:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
        sock.sendall(data)
        sockets.append(sock)
    try:
        still_answers(server)  # the half-open ones do not block anyone
        for sock in sockets:
            received = b""
            while chunk := sock.recv(65536):  # returns b"" when the server closes; a timeout fails the test
                received += chunk
            assert received == b"" or status_code(received) == 408, received[:200]
    finally:
        for sock in sockets:
            sock.close()
    still_answers(server)


def test_a_trickled_body_does_not_hold_the_connection(server):
    """A GET that announces a huge body, gets its answer, then trickles the body a byte at a time: every
    byte would restart a plain keep-alive timer; the connection is closed all the same."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as sock:
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            assert chunk
            head += chunk
        assert status_code(head) == 200
        sock.settimeout(1.0)
        closed = False
        for _ in range(WAIT_S):  # a byte a second until the server closes the connection
            try:
                sock.sendall(b"x")
                if sock.recv(65536) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        assert closed, "the server kept a trickling connection open"
    still_answers(server)


def _server_connections(pid: int, port: int) -> int:
    return sum(
        1
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


def _open_viewer(port: int) -> tuple[socket.socket, int]:
    """A raw client that asks for the output stream; the socket and the status code it got."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    sock.sendall(b"GET /output.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(1024)
        assert chunk, "the server closed a viewer without an answer"
        head += chunk
    return sock, status_code(head)


def test_mjpeg_viewers_are_released_when_they_disconnect(server):
    """A hundred viewers open the output stream and go away: the open streams are capped (503 beyond the
    cap, and beyond the connection cap), and afterwards the server's connections and threads are back to
    where they were and a new viewer gets frames."""
    pid = server.proc.pid

    def threads() -> int:
        """The server's threads, after a snapshot request: JPEGs are encoded on the server's worker-thread
        pool, which ends its idle workers when it is next used."""
        code, _, _ = server.request("GET", "/input.jpg")
        assert code == 200
        return psutil.Process(pid).num_threads()

    wait_for(lambda: _server_connections(pid, server.port) == 0, WAIT_S, "idle connections to close")
    threads_before = threads()
    viewers = []
    try:
        # One after the other: every stream slot is taken, then the next viewer is refused.
        codes = []
        for _ in range(17):
            sock, code = _open_viewer(server.port)
            viewers.append(sock)
            codes.append(code)
        assert codes == [200] * 16 + [503], codes
        still_answers(server)  # with every stream slot taken, the page's other requests are served
        # The rest all at once: refused by the stream cap or, past 64 connections, by uvicorn's.
        for _ in range(83):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
            sock.sendall(b"GET /output.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            viewers.append(sock)
        for sock in viewers[17:]:
            head = b""
            while b"\r\n" not in head:
                chunk = sock.recv(1024)
                assert chunk, "the server closed a viewer without an answer"
                head += chunk
            assert status_code(head) == 503, head
    finally:
        for sock in viewers:
            sock.close()
    wait_for(lambda: _server_connections(pid, server.port) == 0, WAIT_S, "the viewers' connections to close")
    wait_for(
        lambda: threads() <= threads_before,
        WAIT_S,
        f"the server's threads to return to {threads_before}",
    )
    # Every stream slot is free again: a new viewer gets a frame.
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as sock:
        sock.sendall(b"GET /output.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        received = b""
        while b"\xff\xd8" not in received:
            chunk = sock.recv(65536)
            assert chunk, received[:300]
            received += chunk
        assert status_code(received) == 200


def test_other_methods_and_hosts(server):
    code, _, _ = server.request("PUT", "/run", body={})
    assert code == 405
    code, _, _ = server.request("GET", "/status", headers={"Host": "127.0.0.1.evil.example"})
    assert code == 403
    code, _, _ = server.request("GET", "/status", headers={"Host": "[::1]:80"})
    assert code == 200
    code, _, _ = server.request("POST", "/run", body={"values": {}}, headers={"Host": "evil.example"})
    assert code == 403
    still_answers(server)


# -- the command line ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["-o/tmp/hostile.mp4"], "only on 'Render to file'"),
        (["--output=/tmp/hostile.mp4"], "only on 'Render to file'"),
        (["-fnut"], "--format has no use"),
        (["--prog", "json"], "--progress has no use"),
    ],
)
def test_command_line_output_flags_in_any_spelling(clip, argv, needle):
    result = subprocess.run(
        [sys.executable, "-m", "rerender.filter.cli", "preview", "-i", str(clip), *argv, "--port", "0"],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        env=dict(os.environ),
    )
    assert result.returncode == 2 and needle in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
