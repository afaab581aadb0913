"""What one client may take from the preview's HTTP server (`Limits`), and the deadline for a request head
that uvicorn does not set on its own (`RequestDeadline`); server.py applies both."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@dataclass(frozen=True)
class Limits:
    """What one client may take from the server."""

    max_body: int = 64 * 1024  # bytes of a POST body (the page sends well under 4 KiB)
    max_head: int = 16 * 1024  # bytes of a request line and headers (h11's buffer for an incomplete head)
    head_timeout_s: float = 10.0  # from connecting (or the previous response) to a complete request head
    body_timeout_s: float = 10.0  # from the request head to the end of its body
    keep_alive_s: int = 5  # an idle keep-alive connection is closed after this (uvicorn)
    max_connections: int = 64  # open connections and requests in flight; more get 503 (uvicorn)
    max_streams: int = 16  # open MJPEG streams; more get 503 (a page opens two)
    stream_poll_s: float = 0.04  # how often a stream looks for a newer frame (no thread per viewer)
    shutdown_s: int = 5  # how long a stop waits for requests in flight


class RequestDeadline(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head.

    uvicorn closes a keep-alive connection that stays silent after a response, but a client that connects
    and sends nothing, or half a request line, or headers without their end, or trickles the unread body of
    a request already answered, holds its connection (and a slot of `max_connections`) for as long as it
    likes: any byte received cancels uvicorn's timer. Here a connection gets `head_timeout_s` from connecting
    (or from its previous response) to hand the application a new request; otherwise it is closed, with a
    408 when it was in the middle of a request head. A request the application has is bounded by the
    application (body deadline) or is a stream that ends when its viewer leaves. The timer is armed where
    uvicorn arms its own keep-alive timer (`connection_made`, `on_response_complete`)."""

    head_timeout_s = Limits.head_timeout_s
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # a new request head arrived: the application has it
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = asyncio.get_running_loop().call_later(self.head_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        in_flight = self.cycle is not None and not self.cycle.response_complete
        if in_flight or self.transport.is_closing():
            return
        if self.conn.our_state is h11.IDLE and self.conn.their_state is h11.IDLE:
            self.transport.write(REQUEST_TIMEOUT)  # between requests: the client may read an answer
        self.transport.close()
