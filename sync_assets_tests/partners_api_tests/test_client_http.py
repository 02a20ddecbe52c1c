"""The client against the simulator over real loopback HTTP, with every fault class injected."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.abc
import json
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import polars as pl
import pytest
from yarl import URL

from sync_assets.partners_api import client as client_module
from sync_assets.partners_api.client import (
    ClientSettings,
    PartnersApiClient,
    PartnersApiError,
    RawReport,
    or_failure,
    run,
)
from sync_assets.partners_api.lookups_wire import LookupWire
from sync_assets.partners_api.metrics import ApiMetrics
from sync_assets.simulator.app import (
    SIMULATOR_CONSUMER_KEY,
    SIMULATOR_CONSUMER_SECRET,
    PartnersApiSimulator,
)
from sync_assets.simulator.datasets import generate, load
from sync_assets.simulator.faults import FaultPlan
from sync_assets.simulator.transports import serving
from sync_assets_tests.loopback import raw_server, scripted

RUN = "545ba924-9e73-4a30-bd54-4fb7dee8b913"
REPORT = "course_enrolments_report"


@contextmanager
def simulated(dataset: str = "sandbox", faults: tuple[str, ...] = (), **options) -> Iterator[tuple]:
    simulator = PartnersApiSimulator(load(dataset), faults=FaultPlan.parse(faults), **options)
    with serving(simulator) as server:
        yield simulator, server.base_url


def settings(base_url: str, tmp_path: Path | None = None, **overrides) -> ClientSettings:
    values = {
        "base_url": base_url,
        "consumer_key": SIMULATOR_CONSUMER_KEY,
        "consumer_secret": SIMULATOR_CONSUMER_SECRET,
        "backoff_seconds": 0.01,
        "max_backoff_seconds": 0.05,
        "cache_url": str(tmp_path / "cache.sqlite3") if tmp_path else None,
    } | overrides
    return ClientSettings(**values)


async def fetch_report(client_settings: ClientSettings, run_uuid: str = RUN):
    """The run's report read as a sync reads it (`steps.fetch_enrolments`): `enrolment_report`,
    a 304's cached body left undecoded until the report is parsed."""
    async with PartnersApiClient(client_settings) as client:
        return (await client.enrolment_report(run_uuid)).parse(), client


async def reports(
    client: PartnersApiClient, runs: list[str]
) -> dict[str, RawReport | PartnersApiError]:
    """Every run's report as a sync asks for them (`steps.fetch_enrolments`): `concurrency` at a
    time, a run that fails for good answered with its error, not raised."""
    answers = await client.fan_out(or_failure(client.enrolment_report), runs)
    return dict(zip(runs, answers, strict=True))


def changed_runs(answers: dict[str, RawReport | PartnersApiError]) -> set[str]:
    return {
        run_uuid
        for run_uuid, answer in answers.items()
        if isinstance(answer, RawReport) and not answer.not_modified
    }


def failed_runs(answers: dict[str, RawReport | PartnersApiError]) -> dict[str, str]:
    return {
        run_uuid: str(answer)
        for run_uuid, answer in answers.items()
        if isinstance(answer, PartnersApiError)
    }


@pytest.mark.parametrize(
    "fault",
    ["500", "502", "503", "drop", "truncate", "malformed"],
)
def test_transient_faults_are_retried_to_the_right_data(fault: str, tmp_path: Path) -> None:
    with simulated(faults=(f"{REPORT}:{fault}:nth=1,2",)) as (simulator, base_url):
        fetched, client = run(fetch_report(settings(base_url, tmp_path)))
    assert fetched.records.height == 31 and fetched.quarantine.is_empty()
    assert simulator.requests(REPORT) == 3
    assert client.metrics.retries[REPORT] == 2


def test_a_malformed_body_does_not_poison_the_cache(tmp_path: Path) -> None:
    with simulated(faults=(f"{REPORT}:malformed:nth=1",)) as (_simulator, base_url):
        first, _ = run(fetch_report(settings(base_url, tmp_path)))
        second, client = run(fetch_report(settings(base_url, tmp_path)))
    assert first.records.equals(second.records)
    assert second.not_modified and client.metrics.count(REPORT, 304) == 1


def test_429_waits_for_retry_after(tmp_path: Path) -> None:
    with simulated(faults=(f"{REPORT}:429:nth=1,retry_after=1",)) as (simulator, base_url):
        started = time.monotonic()
        fetched, _ = run(fetch_report(settings(base_url, tmp_path)))
        waited = time.monotonic() - started
    assert fetched.records.height == 31
    assert simulator.requests(REPORT, 429) == 1
    assert waited >= 1.0  # it honoured Retry-After instead of its own 10 ms backoff


def test_persistent_failure_is_bounded_and_named(tmp_path: Path) -> None:
    with (
        simulated(faults=(f"{REPORT}:503:rate=1",)) as (simulator, base_url),
        pytest.raises(PartnersApiError) as failure,
    ):
        run(fetch_report(settings(base_url, tmp_path, max_attempts=3)))
    message = str(failure.value)
    assert simulator.requests(REPORT) == 3
    assert f"Partners API {REPORT} {RUN}: HTTP 503 (gave up after 3 attempts" in message
    assert SIMULATOR_CONSUMER_SECRET not in message and "Bearer" not in message


def test_retry_time_budget_stops_early(tmp_path: Path) -> None:
    budget = {"max_attempts": 10, "max_retry_seconds": 1.5}
    with (
        simulated(faults=(f"{REPORT}:429:rate=1,retry_after=1",)) as (simulator, base_url),
        pytest.raises(PartnersApiError, match="HTTP 429"),
    ):
        run(fetch_report(settings(base_url, tmp_path, **budget)))
    assert simulator.requests(REPORT, 429) <= 3


def test_a_refused_token_is_renewed_once(tmp_path: Path) -> None:
    with simulated(faults=(f"{REPORT}:refuse_token:nth=1",)) as (simulator, base_url):
        fetched, client = run(fetch_report(settings(base_url, tmp_path)))
    assert fetched.records.height == 31
    assert simulator.requests(REPORT, 401) == 1 and client.auth.tokens_signed == 2


def test_wrong_secret_fails_clearly_without_leaking_it(tmp_path: Path) -> None:
    with simulated() as (simulator, base_url), pytest.raises(PartnersApiError) as failure:
        run(
            fetch_report(
                settings(
                    base_url, tmp_path, consumer_secret="not-the-secret-but-long-enough-for-hs256"
                )
            )
        )
    assert "token refused (401)" in str(failure.value)
    assert "not-the-secret-but-long-enough-for-hs256" not in str(failure.value)
    assert simulator.requests(REPORT, 401) == 2  # the request and one retry with a new token


def test_latency_fault_slows_but_succeeds(tmp_path: Path) -> None:
    with simulated(faults=(f"{REPORT}:latency:ms=300",)) as (_, base_url):
        started = time.monotonic()
        fetched, _ = run(fetch_report(settings(base_url, tmp_path)))
    assert fetched.records.height == 31 and time.monotonic() - started >= 0.3


def test_unchanged_report_is_a_304_served_from_the_kept_body_in_another_process(
    tmp_path: Path,
) -> None:
    with simulated() as (simulator, base_url):
        first, _ = run(fetch_report(settings(base_url, tmp_path)))
        # A new process, as tomorrow's sync would be: ETag and body come from the cache file.
        cache = str(tmp_path / "cache.sqlite3")
        script = (
            "import json, sys\n"
            "from sync_assets.partners_api.client import ClientSettings, PartnersApiClient, run\n"
            "async def main():\n"
            f"    s = ClientSettings({base_url!r}, {SIMULATOR_CONSUMER_KEY!r}, "
            f"{SIMULATOR_CONSUMER_SECRET!r}, cache_url={cache!r})\n"
            "    async with PartnersApiClient(s) as c:\n"
            f"        f = (await c.enrolment_report({RUN!r})).parse()\n"
            "        print(json.dumps({'rows': f.records.height, 'not_modified': f.not_modified,"
            " 'ratios': f.records['steps_completed_ratio'].to_list()}))\n"
            "run(main())\n"
        )
        output = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
        )
    second = json.loads(output.stdout)
    assert second["not_modified"] and second["rows"] == 31
    assert second["ratios"] == first.records["steps_completed_ratio"].to_list()
    assert simulator.requests(REPORT, 200) == 1 and simulator.requests(REPORT, 304) == 1


def test_changed_report_is_fetched_again(tmp_path: Path) -> None:
    dataset = generate("demo")
    simulator = PartnersApiSimulator(dataset)
    runs = dataset.runs["run_uuid"].to_list()
    with serving(simulator) as server:
        client_settings = settings(server.base_url, tmp_path)

        async def all_reports():
            async with PartnersApiClient(client_settings) as client:
                return await reports(client, runs)

        first = run(all_reports())
        moved = simulator.advance_day()
        second = run(all_reports())
    assert changed_runs(first) == set(runs)
    assert len(changed_runs(second)) == moved["changed_reports"]
    assert failed_runs(second) == {} and second.keys() == set(runs)
    # Unchanged reports' 304 bodies decoded only now, from the cache.
    assert sum(report.parse().records.height for report in second.values()) == (
        dataset.enrolments.height
    )


def test_the_day_after_a_change_an_unchanged_report_is_one_304(tmp_path: Path) -> None:
    dataset = generate("demo")
    simulator = PartnersApiSimulator(dataset)
    runs = dataset.runs["run_uuid"].to_list()
    with serving(simulator) as server:

        async def all_reports():
            async with PartnersApiClient(settings(server.base_url, tmp_path)) as client:
                return await reports(client, runs)

        run(all_reports())
        changed = simulator.advance_day()["changed_reports"]
        run(all_reports())
        simulator.advance_day()
        simulator.reset_counts()
        third = run(all_reports())
    # hishel alone kept yesterday's replaced entries: those reports cost a 304 and a 200.
    assert changed and simulator.requests(REPORT) == len(runs)
    assert simulator.requests(REPORT, 200) == len(changed_runs(third))


def test_a_304_says_which_report_it_is_without_the_kept_body_being_read_back(
    tmp_path: Path,
) -> None:
    """The night's check (`report_version`) of an unchanged report: every page a 304, and the
    report's digest from the digests kept with the bodies when they were stored, equal to what
    reading the bodies gives. A body changed in the cache under its digest is not read by the
    check, and is refused when a step reads it (`kept_report` digests what it reads)."""
    with simulated(page_size=4) as (simulator, base_url):
        client_settings = settings(base_url, tmp_path)

        async def version():
            async with PartnersApiClient(client_settings) as client:
                return await client.report_version(RUN)

        async def read(digest: str):
            async with PartnersApiClient(client_settings) as client:
                return await client.kept_report(RUN, digest, not_modified=True), (
                    await client.enrolment_report(RUN)
                )

        first, second = run(version()), run(version())
        kept, requested = run(read(second.digest))
        with contextlib.closing(sqlite3.connect(tmp_path / "cache.sqlite3")) as cache, cache:
            cache.execute("UPDATE streams SET chunk_data = CAST('[]' AS BLOB)")
        third = run(version())
        spoilt, _ = run(read(third.digest))
    assert not first.not_modified and second.not_modified and third.not_modified
    assert simulator.requests(REPORT, 200) == 8  # ceil(31 / 4) pages, stored once
    assert first.digest == second.digest == requested.digest == kept.digest == third.digest
    assert kept.parse().records.height == 31
    assert spoilt is None


def test_a_servers_own_body_digest_header_is_not_taken_for_the_kept_one(tmp_path: Path) -> None:
    """Only the client says what a kept body's digest is: a server sending the header (on its
    200 and its 304) changes nothing."""
    body = b"[]"
    with scripted() as api:
        forged = {**CACHEABLE, "X-Sync-Assets-Body-Sha256": "0" * 64}
        api.answers[REPORT_PATH] = (200, forged, body)

        async def version():
            async with PartnersApiClient(settings(api.base_url, tmp_path)) as client:
                return await client.report_version(RUN)

        first, second = run(version()), run(version())
    page_digest = hashlib.sha256(body).hexdigest()
    assert first.digest == second.digest == hashlib.sha256(page_digest.encode()).hexdigest()
    assert second.not_modified and "if-none-match" in api.seen[1]


def test_the_checks_path_and_the_steps_path_share_what_the_cache_keeps(tmp_path: Path) -> None:
    """The check (`report_version`) asks past httpx; the steps read through it. A compressed
    report kept by either is revalidated by the other (a 304, no second 200), kept inflated, and
    digests the same whichever path read it."""
    body = json.dumps([{"id": 1}]).encode()
    page_digest = hashlib.sha256(body).hexdigest()
    expected = hashlib.sha256(page_digest.encode()).hexdigest()
    with scripted() as api:
        gzipped_answer = (200, {**CACHEABLE, "Content-Encoding": "gzip"}, gzip.compress(body))
        api.answers[REPORT_PATH] = gzipped_answer

        async def night(folder: Path, check_first: bool):
            async with PartnersApiClient(settings(api.base_url, folder)) as client:
                if check_first:
                    version = await client.report_version(RUN)
                    report = await client.enrolment_report(RUN)
                else:
                    report = await client.enrolment_report(RUN)
                    version = await client.report_version(RUN)
                kept = await client.kept_report(RUN, version.digest, not_modified=True)
                return version, report, kept

        for check_first in (True, False):
            folder = tmp_path / str(check_first)
            api.seen.clear()
            version, report, kept = run(night(folder, check_first))
            assert version.digest == report.digest == expected
            assert kept is not None and kept.pages == (body,)  # kept inflated
            assert [request.get("if-none-match") for request in api.seen] == [None, '"v1"']
            assert (version.not_modified, report.not_modified) == (
                (False, True) if check_first else (True, False)
            )


def test_a_304_that_only_moves_the_date_writes_nothing_to_the_cache(tmp_path: Path) -> None:
    """hishel rewrites a kept entry on every 304; a quiet night's thousands of 304s that bring
    nothing but a new `Date` now leave the cache as it was. A 304 with a header that did change
    is kept."""
    with scripted() as api:
        api.answers[REPORT_PATH] = (200, CACHEABLE, b"[]")

        async def version():
            async with PartnersApiClient(settings(api.base_url, tmp_path)) as client:
                return await client.report_version(RUN)

        def kept_entries() -> list[bytes]:
            with contextlib.closing(sqlite3.connect(tmp_path / "cache.sqlite3")) as cache:
                return [row[0] for row in cache.execute("SELECT data FROM entries ORDER BY id")]

        run(version())
        stored = kept_entries()
        time.sleep(1.1)  # the server's Date has moved on (it has one-second resolution)
        quiet = run(version())
        after_quiet = kept_entries()
        api.answers[REPORT_PATH] = (200, {**CACHEABLE, "Cache-Control": "no-cache, private"}, b"[]")
        changed = run(version())
        after_changed = kept_entries()
    assert quiet.not_modified and changed.not_modified
    assert [request.get("if-none-match") for request in api.seen] == [None, '"v1"', '"v1"']
    assert after_quiet == stored != after_changed


def test_pagination_is_followed(tmp_path: Path) -> None:
    with simulated(page_size=4) as (simulator, base_url):
        fetched, _ = run(fetch_report(settings(base_url, tmp_path)))
        again, _ = run(fetch_report(settings(base_url, tmp_path)))
    assert fetched.records.height == 31
    assert simulator.requests(REPORT, 200) == 8  # ceil(31 / 4) pages
    assert again.not_modified and simulator.requests(REPORT, 304) == 8


def test_fan_out_is_bounded_and_memberships_are_looked_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Three batches of look-ups (16, 16, 9): nothing lost or doubled at a batch's edge.
    monkeypatch.setattr(client_module, "MEMBERSHIP_BATCH", 16)
    dataset = generate("demo")
    simulator = PartnersApiSimulator(dataset, latency_ms=20)
    uuids = [*dataset.memberships["membership_uuid"].head(40).to_list(), "no-such-membership"]
    with serving(simulator) as server:

        async def look_up():
            async with PartnersApiClient(settings(server.base_url, concurrency=4)) as client:
                return await client.memberships(uuids), client

        found, client = run(look_up())
    assert found.gone == ["no-such-membership"]
    assert sorted(found.found["membership_uuid"]) == sorted(uuids[:-1])
    expected = dataset.memberships.filter(pl.col("membership_uuid").is_in(uuids))
    assert dict(found.found.select("membership_uuid", "external_learner_id").iter_rows()) == dict(
        expected.select("membership_uuid", "external_learner_id").iter_rows()
    )
    assert simulator.max_in_flight <= 4
    assert client.metrics.count("organisation_membership") == 41
    # Each of the 4 workers keeps its own connection alive: no new connection per look-up.
    assert server.connections_accepted <= 4


def test_requests_per_second_ceiling(tmp_path: Path) -> None:
    dataset = generate("demo")
    simulator = PartnersApiSimulator(dataset)
    uuids = dataset.memberships["membership_uuid"].head(30).to_list()
    with serving(simulator) as server:

        async def look_up():
            client_settings = settings(server.base_url, max_requests_per_second=20, concurrency=16)
            async with PartnersApiClient(client_settings) as client:
                return await client.memberships(uuids)

        started = time.monotonic()
        run(look_up())
        elapsed = time.monotonic() - started
    assert elapsed >= 0.45  # 30 requests at 20 per second cannot finish in much under 1 s


MEMBERSHIP = "organisation_membership"


@pytest.mark.parametrize(
    "fault",
    [
        "500",
        "503",
        "429:nth=1,2,retry_after=0",
        "drop",
        "truncate",
        "malformed",
        "refuse_token:nth=1",
    ],
)
def test_membership_look_ups_survive_every_fault(fault: str) -> None:
    """Look-ups take their own path to the wire (past the cache): it must be as robust."""
    kind, _, options = fault.partition(":")
    dataset = generate("demo")
    uuids = dataset.memberships["membership_uuid"].head(6).to_list()
    simulator = PartnersApiSimulator(
        dataset, faults=FaultPlan.parse((f"{MEMBERSHIP}:{kind}:{options or 'nth=1,2'}",))
    )
    with serving(simulator) as server:

        async def look_up():
            async with PartnersApiClient(settings(server.base_url, concurrency=2)) as client:
                return await client.memberships(uuids), client

        found, client = run(look_up())
    expected = dataset.memberships.filter(pl.col("membership_uuid").is_in(uuids))
    assert dict(found.found.select("membership_uuid", "external_learner_id").iter_rows()) == dict(
        expected.select("membership_uuid", "external_learner_id").iter_rows()
    )
    assert found.gone == [] and found.quarantine.is_empty()
    if kind == "refuse_token":  # renewed on the spot, not retried as a failure
        assert simulator.requests(MEMBERSHIP, 401) == 1 and client.auth.tokens_signed == 2
    else:
        assert client.metrics.retries[MEMBERSHIP] == 2


def test_membership_look_up_with_a_wrong_secret_fails_clearly() -> None:
    simulator = PartnersApiSimulator(generate("demo"))
    uuid = simulator.dataset.memberships["membership_uuid"][0]
    secret = "not-the-secret-but-long-enough-for-hs256"
    with serving(simulator) as server, pytest.raises(PartnersApiError) as failure:

        async def look_up():
            client_settings = settings(server.base_url, consumer_secret=secret)
            async with PartnersApiClient(client_settings) as client:
                return await client.memberships([uuid])

        run(look_up())
    assert "token refused (401)" in str(failure.value) and secret not in str(failure.value)
    assert simulator.requests(MEMBERSHIP, 401) == 2


def dripping(seconds_per_byte: float) -> Callable[[socket.socket, threading.Event], None]:
    """An answer of 200 at once, then its body one byte at a time, slowly."""

    def answer(connection: socket.socket, stop: threading.Event) -> None:
        with connection:
            connection.recv(65536)
            body = b"[" + b" " * 10_000 + b"]"
            connection.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
            )
            for byte in body:
                if stop.wait(seconds_per_byte):
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return

    return answer


def test_a_dripping_body_ends_by_the_deadline_and_the_budget(tmp_path: Path) -> None:
    """httpx's read timeout is per chunk: a byte every 0.2 s would never trip a 1 s one."""
    with raw_server(dripping(seconds_per_byte=0.2)) as base_url:
        options = settings(base_url, timeout_seconds=1.0, max_attempts=10, max_retry_seconds=2.5)
        started = time.monotonic()
        with pytest.raises(PartnersApiError, match="no complete answer within") as raised:
            run(fetch_report(options))
        elapsed = time.monotonic() - started
    assert elapsed < 4.0  # the budget bounds the whole request, not each attempt
    assert "gave up after" in str(raised.value)


def test_without_a_cache_location_nothing_is_kept_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with simulated() as (simulator, base_url):
        run(fetch_report(settings(base_url)))
        again, _ = run(fetch_report(settings(base_url)))
    assert not again.not_modified and simulator.requests(REPORT, 200) == 2  # each its own cache
    assert list(tmp_path.iterdir()) == []


class _ImportsSeen(importlib.abc.MetaPathFinder):
    """Records every import the interpreter has to look for (one not already loaded)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def find_spec(self, name: str, path: object, target: object = None) -> None:
        self.names.append(name)


def test_look_ups_import_nothing_per_request() -> None:
    # httpcore asks for `sniffio` several times a request; were it not installed, every request
    # would search the import path for it and fail: an eighth of a first sync's client CPU.
    dataset = generate("demo")
    uuids = dataset.memberships["membership_uuid"].head(60).to_list()
    seen = _ImportsSeen()
    with serving(PartnersApiSimulator(dataset)) as server:

        async def look_up() -> None:
            async with PartnersApiClient(settings(server.base_url, concurrency=4)) as client:
                await client.memberships(uuids[:20])  # the first requests may import lazily
                sys.meta_path.insert(0, seen)
                try:
                    found = await client.memberships(uuids[20:])
                finally:
                    sys.meta_path.remove(seen)
                assert found.found.height == 40

        run(look_up())
    assert seen.names == []


# --- hostile answers: another origin, bodies that cannot be read, bodies past the cap ----------


REPORT_PATH = f"/partners/course_runs/{RUN}/course_enrolments_report"
CACHEABLE = {
    "Content-Type": "application/json",
    "Cache-Control": "max-age=0, private, must-revalidate",
    "ETag": '"v1"',
}


def two_nights_behind_a_next_link(link: str, tmp_path: Path):
    """The report asked for twice, its first page linking `link` ({lure} and {api} filled with
    the ports of a second server and of the API): both answers, both servers, the ports."""
    with scripted() as lure, scripted() as api:
        ports = {"lure": lure.server_address[1], "api": api.server_address[1]}
        link_header = f'<{link.format(**ports)}>; rel="next"'
        api.answers[REPORT_PATH] = (200, {**CACHEABLE, "Link": link_header}, b"[]")

        async def report():
            async with PartnersApiClient(settings(api.base_url, tmp_path)) as client:
                return await reports(client, [RUN])

        return run(report()), run(report()), lure, api, ports


@pytest.mark.parametrize(
    "link, origin",
    [
        ("http://127.0.0.1:{lure}/next", "http://127.0.0.1:{lure}"),  # another port
        ("http://localhost:{api}/next", "http://localhost:{api}"),  # another host (same server)
        ("https://127.0.0.1:{api}/next", "https://127.0.0.1:{api}"),  # another scheme
        ("//localhost:{api}/next", "http://localhost:{api}"),  # scheme-relative, another host
    ],
)
def test_a_next_link_to_another_origin_is_not_requested(
    link: str, origin: str, tmp_path: Path
) -> None:
    first, again, lure, api, ports = two_nights_behind_a_next_link(link, tmp_path)
    assert failed_runs(first) == {
        RUN: f"Partners API {REPORT} {RUN}: next link points to another origin "
        f"({origin.format(**ports)}), not requested"
    }
    assert failed_runs(again) == failed_runs(first)
    assert lure.seen == []  # not a request, so not a token
    assert [request["path"] for request in api.seen] == [REPORT_PATH, REPORT_PATH]
    # The first page's cached copy (its headers hold the link) was dropped: asked afresh.
    assert "if-none-match" not in api.seen[1]


@pytest.mark.parametrize(
    "link",
    [
        "http://[127.0.0.1]:{lure}/next",  # urlsplit and httpx both refuse it
        "http://127.0.0.1:{lure}[@127.0.0.1:{api}/next",  # httpx reads userinfo, urlsplit refuses
        "http://127.0.0.1:{lure}\t@127.0.0.1:{api}/next",  # urlsplit: same origin; httpx refuses
        "http://127.0.0.1:{api}@127.0.0.1:{lure}/next",  # userinfo that names the API
    ],
)
def test_a_next_link_either_parser_reads_otherwise_costs_its_course_and_its_cache(
    link: str, tmp_path: Path
) -> None:
    """Seen from outside: such links raised out of the enrolments step (every course failed) and
    stayed cached, so every later night failed on the same 304."""
    first, again, lure, api, _ = two_nights_behind_a_next_link(link, tmp_path)
    why = failed_runs(first)[RUN]
    assert why.startswith(f"Partners API {REPORT} {RUN}: next link ")
    assert why.endswith(", not requested")
    assert failed_runs(again) == failed_runs(first)
    assert lure.seen == []
    assert "if-none-match" not in api.seen[1]  # the cached page holding the link was dropped


def test_a_next_link_on_the_same_origin_is_followed(tmp_path: Path) -> None:
    with scripted() as api:
        page_two = f"{REPORT_PATH}?page=2"
        absolute = f'<{api.base_url}{page_two}>; rel="next"'
        api.answers[REPORT_PATH] = (200, {**CACHEABLE, "Link": absolute}, b"[]")
        api.answers[page_two] = (200, {**CACHEABLE, "Link": '</third>; rel="next"'}, b"[]")
        api.answers["/third"] = (200, CACHEABLE, b"[]")

        async def report():
            async with PartnersApiClient(settings(api.base_url, tmp_path)) as client:
                return await reports(client, [RUN])

        answers = run(report())
    assert failed_runs(answers) == {} and changed_runs(answers) == {RUN}
    assert answers[RUN].pages == ([], [], [])  # the three pages, in order
    assert [request["path"] for request in api.seen] == [REPORT_PATH, page_two, "/third"]


@pytest.mark.parametrize(
    "base_url, link, foreign",
    [
        ("https://api.example.org", "https://api.example.org:443/x", None),
        ("https://api.example.org/v1", "HTTPS://API.example.org/v2?page=2", None),
        ("https://api.example.org", "/partners/x?page=2", None),
        ("https://api.example.org", "http://api.example.org/x", "http://api.example.org:80"),
        (
            "https://api.example.org",
            "https://api.example.org:8443/x",
            "https://api.example.org:8443",
        ),
        (
            "https://api.example.org",
            "https://evil@api.example.org.evil.net/",
            "https://api.example.org.evil.net:443",
        ),
        (
            "https://api.example.org",
            "https://api.example.org:99999/x",
            "https://api.example.org:99999",
        ),
    ],
)
def test_foreign_origin(base_url: str, link: str, foreign: str | None) -> None:
    assert client_module.foreign_origin(base_url, link) == foreign


def test_a_look_up_is_never_sent_to_a_url(tmp_path: Path) -> None:
    """Look-ups bypass httpx's client: their own path must not send the token to a full URL."""
    with scripted() as lure:

        async def look_up():
            async with PartnersApiClient(settings("http://127.0.0.1:1")) as client:
                await client._get_uncached(f"{lure.base_url}/partners/organisation_memberships/x")

        with pytest.raises(ValueError, match="a path under the base URL"):
            run(look_up())
    assert lure.seen == []


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1:8000",
        "http://127.0.0.1:8000/",
        "https://api.example.org/v1/",
        "http://[::1]:8080/a%20b",
        "https://user@api.example.org/v1?key=1",
    ],
)
@pytest.mark.parametrize(
    "path",
    [
        "/partners/organisation_memberships/0f8fad5b-d9cb-469f-a165-70867728950e",
        "/partners/organisation_memberships/a b?c=d#e",
        "/partners/organisation_memberships/../course_runs",
        "/partners/organisation_memberships/%2e%2e/%41",
        "/partners/organisation_memberships/é",
        "//api.example.org.evil.net/partners",
    ],
)
def test_a_look_ups_url_is_the_base_url_and_path_joined_and_parsed(
    base_url: str, path: str
) -> None:
    """A plain path is not parsed (`LookupWire.url`): the URL must be the one parsing gives."""
    wire = LookupWire(
        base_url,
        headers={},
        connections=1,
        timeout_seconds=1.0,
        max_body_bytes=1,
        metrics=ApiMetrics(),
        tls=ssl.create_default_context(),
    )
    built = wire.url(path)
    parsed = URL(base_url.rstrip("/") + path)
    assert (str(built), built.origin(), built.path) == (str(parsed), parsed.origin(), parsed.path)


MEMBERSHIPS = [f"0000000{n}-0000-4000-8000-000000000000" for n in range(5)]
UNREADABLE_MEMBERSHIPS = {
    MEMBERSHIPS[0]: (b'{"uuid": ' + b"9" * 5000 + b"}", "an integer too long to read"),
    MEMBERSHIPS[1]: (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    MEMBERSHIPS[2]: (b'{"uuid": "\xff"}', "not UTF-8"),
    MEMBERSHIPS[3]: (b"[]", "expected a JSON object"),  # JSON, not a membership at all
}


def test_one_unreadable_look_up_costs_its_membership_only() -> None:
    good = MEMBERSHIPS[4]
    answers = {
        f"/partners/organisation_memberships/{uuid}": (200, {}, body)
        for uuid, (body, _) in UNREADABLE_MEMBERSHIPS.items()
    }
    answers[f"/partners/organisation_memberships/{good}"] = (
        200,
        {},
        json.dumps({"uuid": good, "external_learner_id": "teacher@example.org"}).encode(),
    )
    with scripted(answers) as api:

        async def look_up():
            async with PartnersApiClient(settings(api.base_url, max_attempts=2)) as client:
                return await client.memberships(MEMBERSHIPS)

        found = run(look_up())
    assert found.found["membership_uuid"].to_list() == [good]
    assert found.failed.keys() == UNREADABLE_MEMBERSHIPS.keys()
    for uuid, (_, why) in UNREADABLE_MEMBERSHIPS.items():
        assert why in found.failed[uuid] and "\n" not in found.failed[uuid]
        assert found.failed[uuid].startswith(f"Partners API {MEMBERSHIP} {uuid}: ")


def endless(sent: list[int]) -> Callable[[socket.socket, threading.Event], None]:
    """An answer of 200 with a chunked body that never ends, 64 KiB a chunk; counts what it sent."""

    def answer(connection: socket.socket, stop: threading.Event) -> None:
        with connection:
            connection.recv(65536)
            connection.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            chunk = b" " * 65536
            while not stop.is_set():
                try:
                    connection.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                except OSError:
                    return
                sent[0] += len(chunk)

    return answer


async def failures_of(client: PartnersApiClient, path: str) -> dict[str, str]:
    """What each way of asking failed with, by run or membership: the steps' report read
    (`report`), the night's check of it (`check`, past httpx), a membership look-up."""
    if path == "report":
        return failed_runs(await reports(client, [RUN]))
    if path == "check":
        return failed_runs({RUN: await or_failure(client.report_version)(RUN)})
    return (await client.memberships([MEMBERSHIPS[0]])).failed


@pytest.mark.parametrize("path", ["report", "check", "look-up"])
def test_a_body_past_the_cap_stops_being_read_and_is_not_retried(path: str, tmp_path: Path) -> None:
    cap = 1024**2
    sent = [0]
    with raw_server(endless(sent)) as base_url:
        options = settings(base_url, tmp_path, max_body_bytes=cap, timeout_seconds=20)

        async def fetch():
            async with PartnersApiClient(options) as client:
                return await failures_of(client, path)

        started = time.monotonic()
        failed = run(fetch())
        elapsed = time.monotonic() - started
    why = failed[MEMBERSHIPS[0] if path == "look-up" else RUN]
    assert why.endswith("body larger than 1,048,576 bytes (FL_PARTNERS_MAX_BODY_BYTES), not read")
    assert elapsed < 10  # not read on to the request's deadline
    assert sent[0] < 16 * cap  # once (not retried), and not much past the cap (socket buffers)


def gzipped(body: bytes, coding: str) -> bytes:
    """`body` compressed with `coding` ("gzip" or "gzip, gzip")."""
    for _ in coding.split(","):
        body = gzip.compress(body, compresslevel=9)
    return body


def compressed(body: bytes, coding: str) -> Callable[[socket.socket, threading.Event], None]:
    """An answer of 200 whose body is `body` compressed with `coding` ("gzip" or "gzip, gzip")."""
    return sending_encoded(gzipped(body, coding), coding)


def sending_encoded(body: bytes, coding: str) -> Callable[[socket.socket, threading.Event], None]:
    """An answer of 200 whose body is `body`, already compressed with `coding`."""

    def answer(connection: socket.socket, stop: threading.Event) -> None:
        with connection:
            connection.recv(65536)
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Encoding: {coding}\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            with contextlib.suppress(OSError):  # the client may hang up on a refused body
                connection.sendall(head.encode() + body)

    return answer


@cache
def zip_bomb(layers: int) -> bytes:
    """256 MiB of JSON gzipped `layers` times: a few hundred KiB, made once per test process (the
    compression takes seconds, and each test of it sends the same bytes)."""
    inner = b"[" + b" " * (256 * 1024**2) + b"]" if layers == 1 else zip_bomb(layers - 1)
    return gzip.compress(inner, compresslevel=9)


@pytest.mark.parametrize("path", ["report", "check", "look-up"])
@pytest.mark.parametrize("coding", ["gzip", "gzip, gzip"])
def test_a_compressed_body_past_the_cap_is_refused_before_it_is_inflated(
    coding: str, path: str, tmp_path: Path
) -> None:
    """A "zip bomb": 256 MiB of JSON that travels as a few hundred KiB. The cap counts what it
    inflates to while it arrives, so the client never holds the whole of it."""
    cap = 1024**2
    with raw_server(sending_encoded(zip_bomb(len(coding.split(","))), coding)) as base_url:
        options = settings(base_url, tmp_path, max_body_bytes=cap, timeout_seconds=20)

        async def fetch():
            async with PartnersApiClient(options) as client:
                return await failures_of(client, path)

        tracemalloc.start()
        try:
            failed = run(fetch())
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert failed[MEMBERSHIPS[0] if path == "look-up" else RUN].endswith(
        "body larger than 1,048,576 bytes (FL_PARTNERS_MAX_BODY_BYTES), not read"
    )
    assert peak < 64 * 1024**2  # never the 256 MiB it inflates to


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_compressed_look_up_is_inflated_and_read(coding: str) -> None:
    """Look-ups take aiohttp with its own inflation off (the cap counts it): inflated here."""
    membership = {"uuid": MEMBERSHIPS[0], "external_learner_id": "teacher@example.org"}
    raw = json.dumps(membership).encode()
    body = gzip.compress(raw) if coding == "gzip" else zlib.compress(raw)
    path = f"/partners/organisation_memberships/{MEMBERSHIPS[0]}"
    with scripted({path: (200, {"Content-Encoding": coding}, body)}) as api:

        async def look_up():
            async with PartnersApiClient(settings(api.base_url, max_body_bytes=1024)) as client:
                return await client.memberships([MEMBERSHIPS[0]]), client

        found, client = run(look_up())
    assert found.failed == {}
    assert found.found["external_learner_id"].to_list() == ["teacher@example.org"]
    assert client.metrics.bytes_received == len(body)  # as it came over the wire
    assert api.seen[0]["accept-encoding"] == "gzip, deflate"


def test_a_look_up_redirected_elsewhere_is_not_followed() -> None:
    """A redirect would carry the request (and, to the same origin, the token) where the base
    URL does not point: it is an unexpected answer, nothing more."""
    with scripted() as lure, scripted() as api:
        path = f"/partners/organisation_memberships/{MEMBERSHIPS[0]}"
        api.answers[path] = (302, {"Location": f"{lure.base_url}{path}"}, b"")

        async def look_up():
            async with PartnersApiClient(settings(api.base_url)) as client:
                return await client.memberships([MEMBERSHIPS[0]]), client

        found, client = run(look_up())
    assert found.failed[MEMBERSHIPS[0]].endswith("unexpected HTTP 302")
    assert lure.seen == [] and len(api.seen) == 1
    assert client.metrics.count(MEMBERSHIP, 302) == 1


def test_a_look_up_that_cannot_connect_is_retried_and_counted() -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        base_url = f"http://127.0.0.1:{closed.getsockname()[1]}"

        async def look_up():
            async with PartnersApiClient(settings(base_url, max_attempts=3)) as client:
                return await client.memberships([MEMBERSHIPS[0]]), client

        found, client = run(look_up())
    assert "ConnectError" in found.failed[MEMBERSHIPS[0]]
    assert "gave up after 3 attempts" in found.failed[MEMBERSHIPS[0]]
    assert client.metrics.count(MEMBERSHIP, "ConnectError") == 3


def test_a_compressed_report_under_the_cap_is_read(tmp_path: Path) -> None:
    report = json.dumps([]).encode()
    with raw_server(compressed(report, "gzip")) as base_url:
        options = settings(base_url, tmp_path, max_body_bytes=1024)

        async def fetch():
            async with PartnersApiClient(options) as client:
                return await reports(client, [RUN])

        answers = run(fetch())
    assert failed_runs(answers) == {}
    assert changed_runs(answers) == {RUN}
    assert answers[RUN].pages == ([],)  # inflated, and read to the report


def test_a_night_drops_each_courses_enrolments_once_handed_on(tmp_path: Path) -> None:
    """The enrolments step of a night holds the frames of the courses in flight, not the
    catalogue's (on `large`, every course's frame at once was ~1 GiB): each course's outcome is
    handed on as soon as it is read, and nothing of the step keeps it after that."""
    import weakref

    from sync_assets.sync.outcomes import Computed
    from sync_assets.sync.steps import stream_enrolments

    dataset = generate("demo")
    courses = sorted(set(dataset.runs["course_uuid"]))
    handed_on: list[str] = []
    kept: list[weakref.ref] = []  # each outcome handed on, dropped by the recorder at once

    def record(course: str, outcome: object) -> None:
        assert isinstance(outcome, Computed)
        assert [ref() for ref in kept] == [None] * len(kept)  # the earlier ones are gone
        handed_on.append(course)
        kept.append(weakref.ref(outcome.frame))

    with serving(PartnersApiSimulator(dataset)) as server:

        async def night():
            async with PartnersApiClient(settings(server.base_url, tmp_path)) as client:
                return await stream_enrolments(client, dataset.runs, courses, record)

        tally = run(night())
    assert sorted(handed_on) == courses
    assert tally.summary().startswith(f"{len(courses)} courses: {dataset.runs.height} reports")


def test_a_cached_report_that_cannot_be_parsed_is_forgotten(tmp_path: Path) -> None:
    """A report served as a 304 is decoded only when parsed, from the cached bytes: when those
    cannot be used, the course fails alone and the cached body goes, so the next request asks
    afresh (no If-None-Match) instead of being served the same bytes again."""
    from datetime import UTC, datetime

    from sync_assets.sync.steps import fetch_enrolments

    course = "00000000-0000-4000-8000-00000000c0de"
    runs = pl.DataFrame(
        {
            "course_uuid": [course],
            "run_uuid": [RUN],
            "start_time": [datetime(2026, 1, 1, tzinfo=UTC)],
        }
    )
    with scripted({REPORT_PATH: (200, CACHEABLE, b'{"not": "a report"}')}) as api:

        async def sync_night(first: bool):
            async with PartnersApiClient(settings(api.base_url, tmp_path)) as client:
                if first:  # fetched (and cached) but not parsed, as a skipped course's report
                    return await client.enrolment_report(RUN)
                return await fetch_enrolments(client, runs, [course])

        first = run(sync_night(first=True))
        second = run(sync_night(first=False))
        third = run(sync_night(first=False))
    assert first.not_modified is False
    assert second.failure(course) == (
        f"report of run {RUN}: course_enrolments_report for {RUN}: expected a JSON array, got dict"
    )
    assert third.failure(course) == second.failure(course)
    assert ["if-none-match" in request for request in api.seen] == [False, True, False]


def test_the_tls_context_is_built_once_and_follows_ssl_cert_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every client of a process shares one TLS context (loading the CAs costs ~30 ms), yet a
    CA bundle named by SSL_CERT_FILE later is the one a new client trusts."""
    import certifi  # httpx's CA bundle

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    default = client_module.tls_context()
    assert client_module.tls_context() is default
    assert len(default.get_ca_certs()) > 1  # certifi's bundle
    bundle = Path(certifi.where()).read_text()
    first = bundle[: bundle.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
    (tmp_path / "one-ca.pem").write_text(first[first.index("-----BEGIN CERTIFICATE-----") :])
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "one-ca.pem"))

    chosen = client_module.tls_context()

    assert chosen is not default
    assert len(chosen.get_ca_certs()) == 1
    monkeypatch.delenv("SSL_CERT_FILE")
    assert client_module.tls_context() is default
