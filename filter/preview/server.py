"""The preview's HTTP server: its own page, its assets, its job's status and frames, and nothing else.

The page is a small ASGI application (`PreviewApp`, on Starlette's requests and responses) served by uvicorn
on its h11 protocol, both maintained HTTP stacks, instead of our own on `http.server`: uvicorn parses and
bounds the request head (h11), decodes chunked bodies, times out idle keep-alive connections and shuts down
gracefully; Starlette's streaming response stops the MJPEG generator when the client disconnects. What the
page itself bounds is here: the request body (size, time to arrive, JSON nesting), the number of open
streams and connections, and the time a client may take to send a request head (`RequestDeadline` in
http_limits.py, which uvicorn does not time out on its own). The README explains the choice.

Routes are an exact table (no path parameters, nothing read from disk by request path), so `/../etc/passwd`
or `/static/../../x` are simply unknown paths: 404. Frames go out as MJPEG (`multipart/x-mixed-replace`, as
in StreamDiffusion's demo). Requests that change state are POSTs with a JSON body: a page from another site
cannot send one without a CORS preflight, which this server never answers.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator
from http import HTTPStatus
from importlib import resources

import uvicorn
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from ..errors import RerenderError
from .http_limits import Limits, RequestDeadline
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
POSTS = ("/run", "/render", "/cancel")
BOUNDARY = "rerenderframe"
COMMON_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def load_assets() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once at start from the package (they ship as package data)."""
    package = resources.files(__package__)
    return {route: (package.joinpath(name).read_bytes(), kind) for route, (name, kind) in ASSETS.items()}


def _json(status: int, payload: dict, *, close: bool = False) -> Response:
    headers = dict(COMMON_HEADERS)
    if close:
        headers["Connection"] = "close"
    return Response(json.dumps(payload).encode(), status, headers, "application/json")


def _error(status: int, message: str, *, close: bool = False) -> Response:
    return _json(status, {"error": message}, close=close)


def host_allowed(host_header: str) -> bool:
    """The Host header names this machine's loopback (DNS rebinding: a web page whose name resolves to
    127.0.0.1 sends its own name)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[: host.find("]") + 1] if "]" in host else ""
    else:
        host = host.partition(":")[0]
    return host in LOOPBACK_HOSTS


class PreviewApp:
    """The ASGI application: one session, the page's exact route table, and the limits on what a client may
    take. Its state (the count of open streams) is touched only on the server's event loop."""

    def __init__(self, session: PreviewSession, *, check_host: bool, limits: Limits = Limits()) -> None:
        self.session = session
        self.assets = load_assets()
        self.check_host = check_host
        self.limits = limits
        self.open_streams = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan or websocket handling: uvicorn runs with both off
        request = Request(scope, receive)
        path, method = scope["path"], request.method
        if self.check_host and not host_allowed(request.headers.get("host", "")):
            response = _error(HTTPStatus.FORBIDDEN, "unexpected Host header", close=method == "POST")
        elif method == "GET" and path in STREAMS:
            if self.open_streams >= self.limits.max_streams:
                response = _error(HTTPStatus.SERVICE_UNAVAILABLE, "too many open streams; close some pages")
            else:
                self.open_streams += 1
                try:
                    await self._stream(STREAMS[path])(scope, receive, send)
                finally:
                    self.open_streams -= 1
                return
        elif method in ("GET", "HEAD"):
            response = await self._get(path)
        elif method == "POST":
            response = await self._post(request, path)
        else:
            response = _error(HTTPStatus.METHOD_NOT_ALLOWED, "only GET, HEAD and POST", close=True)
        await response(scope, receive, send)

    # -- GET -----------------------------------------------------------------------------------------

    async def _get(self, path: str) -> Response:
        session = self.session
        if path in self.assets:
            body, kind = self.assets[path]
            return Response(body, HTTPStatus.OK, COMMON_HEADERS, kind)
        if path == "/status":
            return _json(HTTPStatus.OK, session.status())
        if path == "/settings":
            return _json(HTTPStatus.OK, session.settings_json())
        if path in SNAPSHOTS:
            latest = await run_in_threadpool(session.images.jpeg, SNAPSHOTS[path])
            if latest is None:
                return _error(HTTPStatus.SERVICE_UNAVAILABLE, "no image yet")
            headers = {**COMMON_HEADERS, "X-Frame-Seq": str(latest[0])}
            return Response(latest[1], HTTPStatus.OK, headers, "image/jpeg")
        return _error(HTTPStatus.NOT_FOUND, "not found")

    def _stream(self, stream: str) -> StreamingResponse:
        """MJPEG: every part is followed by the next boundary at once, so the browser shows it without
        waiting for the next frame. The generator ends when the session closes; Starlette cancels it when
        the client disconnects."""
        images, poll = self.session.images, self.limits.stream_poll_s

        async def parts() -> AsyncIterator[bytes]:
            yield f"--{BOUNDARY}\r\n".encode()
            seq = -1
            while not images.closed:
                if images.seq(stream) <= seq:
                    await asyncio.sleep(poll)
                    continue
                latest = await run_in_threadpool(images.jpeg, stream)
                if latest is None:
                    await asyncio.sleep(poll)
                    continue
                seq, data = latest
                head = f"Content-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                yield head + data + f"\r\n--{BOUNDARY}\r\n".encode()

        headers = {**COMMON_HEADERS, "Connection": "close"}
        return StreamingResponse(
            parts(), HTTPStatus.OK, headers, f"multipart/x-mixed-replace; boundary={BOUNDARY}"
        )

    # -- POST ----------------------------------------------------------------------------------------

    async def _read_json(self, request: Request) -> object | Response:
        """The request's JSON body, or the response that refuses it. Only a body with a Content-Length is
        read (chunked bodies have none: 411), never more than `max_body` bytes nor for longer than
        `body_timeout_s`."""
        headers = request.headers
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            return _error(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the settings as application/json", close=True
            )
        if "transfer-encoding" in headers or "content-length" not in headers:
            return _error(
                HTTPStatus.LENGTH_REQUIRED,
                "send the settings with a Content-Length (chunked bodies are not accepted)",
                close=True,
            )
        length_text = headers["content-length"].strip()
        if not length_text.isdigit():  # h11 refuses malformed lengths before this; kept as a guard
            return _error(HTTPStatus.BAD_REQUEST, "a valid Content-Length is required", close=True)
        length = int(length_text)
        if length > self.limits.max_body:
            return _error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"request body too large: at most {self.limits.max_body} bytes",
                close=True,
            )
        body = bytearray()
        try:
            async with asyncio.timeout(self.limits.body_timeout_s):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > length:
                        return _error(
                            HTTPStatus.BAD_REQUEST, "the body is longer than its Content-Length", close=True
                        )
        except TimeoutError:
            return _error(
                HTTPStatus.REQUEST_TIMEOUT,
                f"the request body did not arrive within {self.limits.body_timeout_s:g} s",
                close=True,
            )
        except ClientDisconnect:
            return _error(HTTPStatus.BAD_REQUEST, "the client closed the connection", close=True)
        if not body.strip():
            return {}
        try:
            return json.loads(body)
        except RecursionError:
            return _error(
                HTTPStatus.BAD_REQUEST,
                'the request body is nested too deeply; send {"values": {...}, "extra": "..."}',
                close=True,
            )
        except ValueError:
            return _error(HTTPStatus.BAD_REQUEST, "the request body is not JSON", close=True)

    async def _post(self, request: Request, path: str) -> Response:
        # A POST's body may be left unread (a refused request): its connection is never reused.
        if path not in POSTS:
            return _error(HTTPStatus.NOT_FOUND, "not found", close=True)
        body = await self._read_json(request)
        if isinstance(body, Response):
            return body
        session = self.session
        if path == "/cancel":
            await run_in_threadpool(session.stop)
            return _json(HTTPStatus.OK, session.status(), close=True)
        if not isinstance(body, dict) or not body:
            return _error(
                HTTPStatus.BAD_REQUEST,
                'send the settings as a JSON object: {"values": {...}, "extra": "..."}',
                close=True,
            )
        try:
            settings = PageSettings.from_json(body)
            if path == "/render":
                started = await run_in_threadpool(session.start, "render", "full", settings, False)
            else:
                stage, fast = str(body.get("stage", "first-keyframe")), bool(body.get("fast", True))
                started = await run_in_threadpool(session.start, "preview", stage, settings, fast)
        except RerenderError as exc:  # the CLI's own sentence for a bad setting
            return _error(HTTPStatus.BAD_REQUEST, str(exc), close=True)
        except Exception as exc:  # a bug: keep serving, answer, and print the traceback for a report
            traceback.print_exc(file=sys.stderr)
            return _error(
                HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(exc).__name__}: {exc}", close=True
            )
        return _json(HTTPStatus.ACCEPTED, started, close=True)


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (an IPv6 host such as ::1 too); OSError when it cannot bind."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait for TIME_WAIT
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class PreviewServer:
    """uvicorn serving a PreviewApp on a socket bound up front (so a busy port is an error before the page
    is announced, and port 0 is resolved), on its own thread and event loop: the main thread keeps the
    process's signal handling."""

    def __init__(
        self,
        address: tuple[str, int],
        session: PreviewSession,
        *,
        check_host: bool,
        limits: Limits = Limits(),
    ) -> None:
        self.socket = listen(*address)
        self.app = PreviewApp(session, check_host=check_host, limits=limits)
        protocol = type("PreviewProtocol", (RequestDeadline,), {"head_timeout_s": limits.head_timeout_s})
        config = uvicorn.Config(
            self.app,
            http=protocol,
            ws="none",
            lifespan="off",
            loop="asyncio",
            interface="asgi3",
            log_config=None,
            log_level="error",  # a refused request is answered; only a failure inside the server is printed
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_keep_alive=limits.keep_alive_s,
            timeout_graceful_shutdown=limits.shutdown_s,
            limit_concurrency=limits.max_connections,
            h11_max_incomplete_event_size=limits.max_head,
        )
        self._server = uvicorn.Server(config)
        self._shutdown_s = limits.shutdown_s
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self.socket]}, name="preview-http", daemon=True
        )

    @property
    def server_address(self) -> tuple:
        return self.socket.getsockname()

    def start(self, timeout: float = 30.0) -> None:
        """Start serving; returns when uvicorn accepts connections (RuntimeError if it did not start)."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the preview's HTTP server did not start")
            time.sleep(0.02)

    def wait(self, poll_s: float = 0.25) -> None:
        """Block until the server stops (KeyboardInterrupt from a signal handler ends the wait)."""
        while self._thread.is_alive():
            self._thread.join(poll_s)

    def close(self) -> None:
        """Stop accepting, let requests in flight end (at most `shutdown_s`), and free the socket."""
        self._server.should_exit = True
        self._thread.join(self._shutdown_s + 5)
        self.socket.close()
