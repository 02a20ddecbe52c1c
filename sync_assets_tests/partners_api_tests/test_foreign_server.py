"""The client against a server that follows SPEC §2 but is not our simulator.

This server is written independently here: strong ETags, chunked bodies without Content-Length,
lower-case header names, pretty-printed JSON, a `Link` header with several relations, and its own
credentials. The client must not depend on any of our simulator's habits.
"""

from __future__ import annotations

import hashlib
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import jwt
import pytest

from sync_assets.partners_api.client import ClientSettings, PartnersApiClient, run
from sync_assets.simulator.datasets import SANDBOX_DIR
from sync_assets.simulator.transports import running

KEY, SECRET = "partner-42", "a-different-secret-of-at-least-32-bytes"
RUN = "545ba924-9e73-4a30-bd54-4fb7dee8b913"
REPORT = json.loads((SANDBOX_DIR / "course_enrolments_report.json").read_text())["response"]["body"]
PAGE = 10


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hits: ClassVar[list[tuple[str, int]]] = []

    def do_GET(self) -> None:
        token = self.headers.get("authorization", "").removeprefix("Bearer ")
        try:
            jwt.decode(token, SECRET, algorithms=["HS256"], issuer=KEY)
        except jwt.PyJWTError:
            return self._send(401, {"error": "unauthorized"})
        path, _, query = self.path.partition("?")
        if path != f"/partners/course_runs/{RUN}/course_enrolments_report":
            return self._send(404, {"error": "not_found"})
        page = int(query.removeprefix("page=") or 1) if query else 1
        records = REPORT[(page - 1) * PAGE : page * PAGE]
        body = json.dumps(records, indent=2).encode()
        etag = '"' + hashlib.sha1(body).hexdigest() + '"'  # a strong ETag
        links = [f'<{path}?page={page - 1}>; rel="prev"'] if page > 1 else []
        if page * PAGE < len(REPORT):
            links.append(f'<http://{self.headers["host"]}{path}?page={page + 1}>; rel="next"')
        headers = {"etag": etag, "cache-control": "max-age=0, private, must-revalidate"}
        if links:
            headers["link"] = ", ".join(links)
        if self.headers.get("if-none-match") == etag:
            return self._send(304, None, headers)
        return self._send(200, body, headers)

    def _send(self, status: int, body, headers: dict | None = None) -> None:
        self.hits.append((self.path, status))
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if status == 304:
            self.end_headers()
            return
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_header("content-type", "application/json; charset=utf-8")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for start in range(0, len(payload), 700):
            chunk = payload[start : start + 700]
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def foreign_server():
    Handler.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with running(server):
        yield f"http://127.0.0.1:{server.server_address[1]}"


def test_client_reads_a_foreign_server(foreign_server: str, tmp_path) -> None:
    client_settings = ClientSettings(
        foreign_server, KEY, SECRET, cache_url=str(tmp_path / "cache.sqlite3")
    )

    async def fetch():
        async with PartnersApiClient(client_settings) as client:
            return (await client.enrolment_report(RUN)).parse(), client

    first, client = run(fetch())
    second, again = run(fetch())
    assert first.records.height == len(REPORT) and first.quarantine.is_empty()
    assert not first.not_modified
    assert second.not_modified and second.records.equals(first.records)
    assert [status for _, status in Handler.hits] == [200] * 4 + [304] * 4
    assert client.metrics.bytes_received > 0 and again.metrics.not_modified == 4
