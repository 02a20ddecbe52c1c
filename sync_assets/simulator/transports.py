"""Two ways to reach the simulator: an httpx transport in process, and a loopback HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from sync_assets.simulator.app import PartnersApiSimulator, SimulatedRequest, SimulatedResponse

IN_PROCESS_BASE_URL = "http://partners-api.simulator"


def _to_simulated(request: httpx.Request) -> SimulatedRequest:
    return SimulatedRequest(
        method=request.method,
        url=str(request.url),
        headers={name.lower(): value for name, value in request.headers.items()},
    )


def _to_httpx(request: httpx.Request, response: SimulatedResponse) -> httpx.Response:
    # The same failures an HTTP client sees on the wire, as httpx raises them.
    if response.wire_fault == "drop":
        raise httpx.RemoteProtocolError(
            "Server disconnected without sending a response.", request=request
        )
    if response.wire_fault == "truncate":
        raise httpx.RemoteProtocolError(
            "peer closed connection without sending complete message body", request=request
        )
    return httpx.Response(
        response.status, headers=response.headers, content=response.body, request=request
    )


class SimulatorTransport(httpx.AsyncBaseTransport):
    """Answers httpx requests from the simulator in this process: no socket, same behaviour."""

    def __init__(self, simulator: PartnersApiSimulator) -> None:
        self.simulator = simulator

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        with self.simulator.in_flight():
            response = self.simulator.handle(_to_simulated(request))
            if response.latency_ms:
                await asyncio.sleep(response.latency_ms / 1000)
        return _to_httpx(request, response)


def _handler_for(simulator: PartnersApiSimulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a production API server
        # Headers and body go out in one write (buffered: `handle_one_request` flushes after each
        # answer), so the client wakes once per answer, not for the headers and again for the
        # body. Nagle stays off for answers larger than the buffer, written in two: with the
        # client's delayed ACK each would stall ~40 ms, and benchmarks would measure that.
        wbufsize = -1
        disable_nagle_algorithm = True
        server_version = "PartnersApiSimulator"
        arrived = 0.0  # when the request line was read: `time.monotonic()`

        def do_GET(self) -> None:
            with simulator.in_flight():
                self._answer("GET")

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))  # keep framing
            self._answer("POST")

        def parse_request(self) -> bool:
            # The request line is in: the latency runs from here (see `_answer`).
            self.arrived = time.monotonic()
            return super().parse_request()

        def _answer(self, method: str) -> None:
            response = simulator.control(method, self.path.split("?")[0])
            if response is None:
                host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
                request = SimulatedRequest(
                    method=method,
                    url=f"http://{host}{self.path}",
                    headers={name.lower(): value for name, value in self.headers.items()},
                )
                response = simulator.handle(request)
            if response.latency_ms:
                # The answer leaves its latency after the request came in, as a real API's
                # would: the time this process took to read and answer it (~0.4 ms of CPU, and
                # any wait for the GIL) is within the latency, not added on top of it.
                wait = response.latency_ms / 1000 - (time.monotonic() - self.arrived)
                if wait > 0:
                    time.sleep(wait)
            if response.wire_fault == "drop":
                self._drop()
                return
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if response.wire_fault == "truncate":
                self.wfile.write(response.body[: len(response.body) // 2])
                self.wfile.flush()
                self._drop()
                return
            self.wfile.write(response.body)

        def _drop(self) -> None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

        def log_message(self, format: str, *args: object) -> None:
            pass  # request lines would carry membership uuids; counts are kept instead

    return Handler


class SimulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self, simulator: PartnersApiSimulator, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        super().__init__((host, port), _handler_for(simulator))
        self.simulator = simulator
        self.connections_accepted = 0  # keep-alive reuse shows as few connections, many requests

    def process_request(self, request: object, client_address: object) -> None:
        self.connections_accepted += 1
        super().process_request(request, client_address)  # type: ignore[arg-type]

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


@contextlib.contextmanager
def serving(
    simulator: PartnersApiSimulator, host: str = "127.0.0.1", port: int = 0
) -> Iterator[SimulatorServer]:
    """Serve the simulator over loopback HTTP in a background thread for the duration."""
    server = SimulatorServer(simulator, host, port)
    with running(server, "partners-api-simulator"):
        yield server


# How often the serving loop looks for a shutdown request: `shutdown()` waits for it. The
# standard library's 0.5 s made every block that served the simulator (or a scripted server) end
# up to half a second after its last request; an idle loop waking 20 times a second costs nothing.
SHUTDOWN_POLL_SECONDS = 0.05


@contextlib.contextmanager
def running(server: socketserver.BaseServer, name: str = "loopback-server") -> Iterator[None]:
    """`server.serve_forever()` in a background thread for the duration; then shut down."""
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": SHUTDOWN_POLL_SECONDS},
        name=name,
        daemon=True,
    )
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
