"""Small servers on loopback for tests: scripted HTTP answers that record every request, and raw
sockets for answers no HTTP server library would send."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sync_assets.simulator.transports import running

Answer = tuple[int, dict[str, str], bytes]  # status, headers, body


class Scripted(ThreadingHTTPServer):
    """Answers each path (with its query) as scripted, else 404, and records every request.
    A scripted 200 with an ETag answers 304 to a request that names it."""

    daemon_threads = True

    def __init__(self, answers: dict[str, Answer]) -> None:
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        self.answers = answers
        self.seen: list[dict[str, str]] = []  # each request's path and headers (lower-case)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ScriptedHandler(BaseHTTPRequestHandler):
    server: Scripted

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.server.seen.append({"path": self.path, **headers})
        status, answer_headers, body = self.server.answers.get(self.path, (404, {}, b"{}"))
        etag = answer_headers.get("ETag")
        if status == 200 and etag is not None and headers.get("if-none-match") == etag:
            status, body = 304, b""  # revalidated: the client serves what it kept
        self.send_response(status)
        for name, value in answer_headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def scripted(answers: dict[str, Answer] | None = None) -> Iterator[Scripted]:
    server = Scripted(answers or {})
    with running(server):
        yield server


@contextmanager
def raw_server(
    answer: Callable[[socket.socket, threading.Event], None],
) -> Iterator[str]:
    """`answer(connection, stop)` for each connection, in its own thread; yields the base URL.
    `stop` is set when the block ends: an answer that never ends on its own waits on it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=answer, args=(connection, stop), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
