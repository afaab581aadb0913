"""The preview's HTTP server: its own page, its assets, its job's status and frames, and nothing else.

Routes are an exact table (no path parameters, nothing read from disk by request path), so `/../etc/passwd`
or `/static/../../x` are simply unknown paths: 404 (issue 8 item 4). Frames go out as MJPEG
(`multipart/x-mixed-replace`, as in StreamDiffusion's demo, ecosystem.md §6). Requests that change state
are POSTs with a JSON body: a page from another site cannot send one without a CORS preflight, which this
server never answers.
"""

from __future__ import annotations

import json
import socket
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import urlsplit

from ..errors import RerenderError
from .session import PreviewSession
from .settings import PageSettings

ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
STREAMS = {"/input.mjpg": "input", "/output.mjpg": "output"}
SNAPSHOTS = {
    "/input.jpg": "input",
    "/output.jpg": "output",
    "/keyframe.jpg": "keyframe",
    "/keyframes.jpg": "sheet",
}
BOUNDARY = "rerenderframe"
MAX_BODY = 64 * 1024
# A stream handler wakes at least this often to notice that the server is stopping.
STREAM_POLL_S = 0.5


def load_assets() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once at start from the package (they ship as package data)."""
    package = resources.files(__package__)
    return {route: (package.joinpath(name).read_bytes(), kind) for route, (name, kind) in ASSETS.items()}


class PreviewServer(ThreadingHTTPServer):
    daemon_threads = True  # an open MJPEG stream never keeps the process alive
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], session: PreviewSession, *, check_host: bool) -> None:
        self.session = session
        self.assets = load_assets()
        self.check_host = check_host
        if ":" in address[0]:
            self.address_family = socket.AF_INET6  # e.g. --host ::1
        super().__init__(address, PreviewHandler)


class PreviewHandler(BaseHTTPRequestHandler):
    server: PreviewServer
    server_version = "rerender-preview"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass  # the terminal shows the job's status line, not one line per request

    # -- plumbing ------------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, kind: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: dict) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _not_found(self) -> None:
        self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def _host_ok(self) -> bool:
        """Refuse other Host names (DNS rebinding: a web page whose name resolves to 127.0.0.1)."""
        if not self.server.check_host:
            return True
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        return host in ("127.0.0.1", "localhost", "[::1]")

    def _route(self) -> str | None:
        if not self._host_ok():
            self._json(HTTPStatus.FORBIDDEN, {"error": "unexpected Host header"})
            return None
        return urlsplit(self.path).path

    # -- GET -----------------------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = self._route()
        if path is None:
            return
        session = self.server.session
        if path in self.server.assets:
            body, kind = self.server.assets[path]
            self._send(HTTPStatus.OK, body, kind)
        elif path == "/status":
            self._json(HTTPStatus.OK, session.status())
        elif path == "/settings":
            self._json(HTTPStatus.OK, session.settings_json())
        elif path in SNAPSHOTS:
            latest = session.images.jpeg(SNAPSHOTS[path])
            if latest is None:
                self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "no image yet"})
            else:
                self._send(HTTPStatus.OK, latest[1], "image/jpeg", {"X-Frame-Seq": str(latest[0])})
        elif path in STREAMS and self.command == "GET":
            self._stream(STREAMS[path])
        else:
            self._not_found()

    def _stream(self, stream: str) -> None:
        """MJPEG: every part is followed by the next boundary at once, so the browser shows it without
        waiting for the next frame."""
        images = self.server.session.images
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            self.wfile.write(f"--{BOUNDARY}\r\n".encode())
            seq = -1
            while not images.closed:
                if images.seq(stream) <= seq and not images.wait_newer(stream, seq, STREAM_POLL_S):
                    continue
                latest = images.jpeg(stream)
                if latest is None:
                    continue
                seq, data = latest
                head = f"Content-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                self.wfile.write(head + data + f"\r\n--{BOUNDARY}\r\n".encode())
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the page was closed or reloaded

    # -- POST ----------------------------------------------------------------------------------------

    def do_POST(self) -> None:
        # A POST's body may be left unread (a refused request): never reuse the connection after it.
        self.close_connection = True
        path = self._route()
        if path is None:
            return
        if path not in ("/run", "/render", "/cancel"):
            self._not_found()
            return
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if kind != "application/json":
            self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "send the settings as application/json"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self._json(HTTPStatus.BAD_REQUEST, {"error": "a valid Content-Length is required"})
            return
        if length > MAX_BODY:
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "request body too large"})
            return
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._json(HTTPStatus.BAD_REQUEST, {"error": "the request body is not JSON"})
            return
        session = self.server.session
        if path == "/cancel":
            session.stop()
            self._json(HTTPStatus.OK, session.status())
            return
        try:
            settings = PageSettings.from_json(body)
            if path == "/render":
                started = session.start("render", "full", settings, fast=False)
            else:
                stage = body.get("stage", "first-keyframe")
                started = session.start("preview", str(stage), settings, fast=bool(body.get("fast", True)))
        except RerenderError as exc:  # the CLI's own sentence for a bad setting
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        self._json(HTTPStatus.ACCEPTED, started)
