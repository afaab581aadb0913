"""A real `rerender preview` subprocess for the preview tests: started on a free loopback port, its stderr
collected by a thread, plain HTTP requests to it, and a bounded wait helper. Import from a test as
`from preview_server import Server, wait_for` (pytest puts `tests/` on `sys.path`)."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `rerender preview` subprocess; its stderr is collected by a thread (the pipe never fills up)."""

    def __init__(self, args: list[str], env: dict | None = None) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "rerender.filter.cli", "preview", *args, "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 30
        while not any("serving http://" in line for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"preview server did not start: {self.stderr}")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}/"

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def request(
        self, method: str, path: str, body: dict | None = None, headers: dict | None = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """A raw request: http.client sends the path exactly as given (no `..` normalisation)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        data = None if body is None else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json"} if body is not None else {}
        all_headers.update(headers or {})
        conn.request(method, path, body=data, headers=all_headers)
        response = conn.getresponse()
        payload = response.read()
        conn.close()
        return response.status, response.headers, payload  # header names in any case

    def status(self) -> dict:
        code, _, payload = self.request("GET", "/status")
        assert code == 200
        return json.loads(payload)

    def run_and_wait(self, path: str, body: dict, timeout: float, what: str) -> dict:
        """POST a run (`/run` or `/render`) and wait until it is no longer running; its final status."""
        before = self.status()["run_id"]
        code, _, payload = self.request("POST", path, body=body)
        assert code == 202, payload

        def finished():
            st = self.status()
            return st if st["run_id"] > before and st["state"] != "running" else None

        return wait_for(finished, timeout, what)

    def interrupt(self, timeout: float = 20) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)


def wait_for(predicate, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
