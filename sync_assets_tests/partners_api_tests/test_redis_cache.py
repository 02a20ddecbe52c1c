"""The Partners API cache in Redis, shared by a deployment's containers (the real server; see
the `redis_cache` fixture), and the SYNC_ASSETS_HTTP_CACHE_URL setting."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
import pytest
import redis

from sync_assets.definitions import build_definitions
from sync_assets.defs.resources import PartnersApi
from sync_assets.partners_api import cache
from sync_assets.partners_api.client import (
    ClientSettings,
    PartnersApiClient,
    _cache_key,
    report_digest,
    run,
)
from sync_assets.settings import ConfigurationError, http_cache_path, http_cache_url
from sync_assets.simulator.app import (
    SIMULATOR_CONSUMER_KEY,
    SIMULATOR_CONSUMER_SECRET,
    PartnersApiSimulator,
)
from sync_assets.simulator.datasets import generate, load
from sync_assets.simulator.transports import serving
from sync_assets_tests.partners_api_tests.test_client_http import (
    changed_runs,
    failed_runs,
    reports,
)
from sync_assets_tests.processes import free_port, start, stop

if TYPE_CHECKING:
    from sync_assets_tests.conftest import RedisCache

RUN = "545ba924-9e73-4a30-bd54-4fb7dee8b913"
REPORT = "course_enrolments_report"
PASSWORD = "a-redis-password-never-to-be-seen"
THIRTY_DAYS = 30 * 24 * 3600


@contextmanager
def simulated(dataset: str = "sandbox") -> Iterator[tuple[PartnersApiSimulator, str]]:
    simulator = PartnersApiSimulator(load(dataset) if dataset == "sandbox" else generate(dataset))
    with serving(simulator) as server:
        yield simulator, server.base_url


def settings(base_url: str, cache_url: str) -> ClientSettings:
    return ClientSettings(
        base_url, SIMULATOR_CONSUMER_KEY, SIMULATOR_CONSUMER_SECRET, cache_url=cache_url
    )


async def fetch_report(client_settings: ClientSettings):
    """As a sync reads it: see test_client_http.fetch_report."""
    async with PartnersApiClient(client_settings) as client:
        return (await client.enrolment_report(RUN)).parse()


def closed_port() -> int:
    """A loopback port nothing listens on (a Redis that is down)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_new_client_with_an_empty_disk_gets_its_304_from_redis(redis_cache: RedisCache) -> None:
    with simulated() as (simulator, base_url):
        first = run(fetch_report(settings(base_url, redis_cache.url)))
        second = run(fetch_report(settings(base_url, redis_cache.url)))
    assert not first.not_modified and second.not_modified
    assert second.records.equals(first.records)
    assert simulator.requests(REPORT, 200) == 1 and simulator.requests(REPORT, 304) == 1


def test_the_checks_304_takes_the_digest_kept_in_redis(redis_cache: RedisCache) -> None:
    """As on disk (test_client_http): the report's body digest is kept with it in Redis, and the
    night's check of the unchanged report gives the digest reading the body gives."""

    async def version_then_read(client_settings: ClientSettings):
        async with PartnersApiClient(client_settings) as client:
            return await client.report_version(RUN), await client.enrolment_report(RUN)

    async def kept_digests(url: str) -> list[str]:
        storage = cache.open_storage(redis_cache.url, max_bytes=0, idle_seconds=THIRTY_DAYS)
        try:
            entries = await storage.get_entries(_cache_key(url))
        finally:
            await storage.close()
        return [entry.response.headers.get(cache.BODY_DIGEST_HEADER) for entry in entries]

    with simulated() as (simulator, base_url):
        first, _ = run(version_then_read(settings(base_url, redis_cache.url)))
        second, read = run(version_then_read(settings(base_url, redis_cache.url)))
        kept = run(kept_digests(f"{base_url}/partners/course_runs/{RUN}/course_enrolments_report"))
    assert not first.not_modified and second.not_modified and read.not_modified
    assert first.digest == second.digest == read.digest
    assert len(kept) == 1 and report_digest(kept) == second.digest  # the report's one page
    assert simulator.requests(REPORT, 200) == 1 and simulator.requests(REPORT, 304) == 3


def test_keys_are_namespaced_and_expire_after_thirty_idle_days(redis_cache: RedisCache) -> None:
    with simulated() as (_simulator, base_url):
        run(fetch_report(settings(base_url, redis_cache.url)))
    keys = redis_cache.stored_keys()
    kinds = {key.decode().removeprefix(redis_cache.prefix + ":").split(":")[0] for key in keys}
    assert kinds == {"entry", "stream", "stream_done", "idx"}
    assert redis_cache.prefix.endswith(":sync_assets:partners_api:v2")
    for key in keys:
        assert THIRTY_DAYS - 60 < redis_cache.client.ttl(key) <= THIRTY_DAYS + 180


def test_redis_keeps_no_credentials(redis_cache: RedisCache) -> None:
    with simulated() as (_simulator, base_url):

        async def fetch():
            async with PartnersApiClient(settings(base_url, redis_cache.url)) as client:
                await client.course_runs()
                await client.enrolment_report(RUN)
                return client.auth.token()

        token = run(fetch())
    stored = redis_cache.stored()
    assert any(b"course_enrolments_report" in blob for blob in stored)  # the request is kept
    for blob in stored:
        assert b"Bearer" not in blob and b"uthorization" not in blob
        assert token.encode() not in blob and b"eyJ" not in blob  # any JWT
        assert SIMULATOR_CONSUMER_SECRET.encode() not in blob


def test_a_changed_report_replaces_its_entry(redis_cache: RedisCache) -> None:
    with simulated("demo") as (simulator, base_url):
        runs = simulator.dataset.runs["run_uuid"].to_list()

        async def all_reports():
            async with PartnersApiClient(settings(base_url, redis_cache.url)) as client:
                return await reports(client, runs)

        run(all_reports())
        for _day in range(3):
            moved = simulator.advance_day()
            simulator.reset_counts()
            fetched = run(all_reports())
            # One request a report: one that changed yesterday is a plain 304 today.
            assert simulator.requests(REPORT) == len(runs)
            assert len(changed_runs(fetched)) == simulator.requests(REPORT, 200)
            assert len(changed_runs(fetched)) == moved["changed_reports"]
    # Memory is bounded by the reports, not by the days: one entry a report URL.
    indexes = [key for key in redis_cache.stored_keys() if b":idx:" in key]
    assert len(indexes) == len(runs)
    assert all(redis_cache.client.zcard(key) == 1 for key in indexes)


def test_with_redis_down_requests_go_uncached_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cache, "OUTAGES", cache.Outages())
    down = f"redis://:{PASSWORD}@127.0.0.1:{closed_port()}/0"
    with simulated("demo") as (simulator, base_url), caplog.at_level(logging.WARNING):
        runs = simulator.dataset.runs["run_uuid"].to_list()

        async def all_reports():
            async with PartnersApiClient(settings(base_url, down)) as client:
                return await reports(client, runs)

        first = run(all_reports())
        second = run(all_reports())  # the next step of the run, with a client of its own
    assert changed_runs(first) == changed_runs(second) == set(runs) and not failed_runs(first)
    assert simulator.requests(REPORT, 200) == 2 * len(runs)
    [warning] = caplog.records  # nothing else: no traceback per failed lookup or write
    assert warning.name == cache.__name__ and warning.levelno == logging.WARNING
    assert warning.exc_info is None
    message = warning.getMessage()
    assert "\n" not in message
    assert f"Partners API cache at redis://:***@127.0.0.1:{down.rsplit(':', 1)[1]}" in message
    assert "unreachable (ConnectionError" in message and "requests go uncached" in message
    assert PASSWORD not in caplog.text


def test_the_cache_url_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYNC_ASSETS_HTTP_CACHE_URL", raising=False)
    assert http_cache_url() == str(http_cache_path())
    for url in ("/var/cache/partners.sqlite3", "redis://cache:6379/2", "rediss://:pw@cache:6380"):
        monkeypatch.setenv("SYNC_ASSETS_HTTP_CACHE_URL", url)
        assert http_cache_url() == url
    for url in (
        f"https://:{PASSWORD}@cache/0",
        f"redis://:{PASSWORD}@cache:6379/zero",
        f"redis://:{PASSWORD}@cache:port/0",
        f"redis://:{PASSWORD}@/0",
    ):
        monkeypatch.setenv("SYNC_ASSETS_HTTP_CACHE_URL", url)
        with pytest.raises(ConfigurationError) as error:
            http_cache_url()
        assert error.value.setting == "SYNC_ASSETS_HTTP_CACHE_URL"
        assert PASSWORD not in str(error.value)


def test_a_redis_password_stays_out_of_run_config_and_repr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The cache is no config field of any job: a URL with a password cannot go into run config.
    job = build_definitions().resolve_job_def("resync_learners_job")
    with pytest.raises(dg.DagsterInvalidConfigError) as refused:
        dg.validate_run_config(
            job,
            {
                "resources": {
                    "partners_api": {"config": {"cache_url": f"redis://:{PASSWORD}@cache:6379/0"}}
                },
                "ops": {"resync_learners_op": {"config": {"course_uuid": "c", "user_ids": []}}},
            },
        )
    assert 'unexpected config entry "cache_url"' in str(refused.value)
    assert PASSWORD not in str(refused.value)

    monkeypatch.setenv("SYNC_ASSETS_HTTP_CACHE_URL", f"redis://:{PASSWORD}@cache:6379/0")
    resource = PartnersApi()
    client_settings = resource.client_settings()
    assert client_settings.cache_url == f"redis://:{PASSWORD}@cache:6379/0"
    assert PASSWORD not in repr(client_settings) and PASSWORD not in str(resource.model_dump())
    assert cache.redacted(client_settings.cache_url) == "redis://:***@cache:6379/0"


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[str]:
    """A Redis server of this test's own that requires PASSWORD, as compose and Helm run it."""
    port = free_port()
    server = start(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--requirepass", PASSWORD,
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        env={},
        cwd=tmp_path,
        log=tmp_path / "redis.log",
    )  # fmt: skip
    client = redis.Redis(port=port, password=PASSWORD, socket_connect_timeout=1)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail((tmp_path / "redis.log").read_text())
                time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        stop(server)


def test_the_redis_password_comes_apart_from_the_url(
    redis_with_password: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The URL (a ConfigMap) carries no secret; SYNC_ASSETS_HTTP_CACHE_PASSWORD (a Secret) is
    merged in when the cache connects. Without it the server turns the cache away."""
    monkeypatch.setattr(cache, "OUTAGES", cache.Outages())
    monkeypatch.setenv("SYNC_ASSETS_HTTP_CACHE_URL", redis_with_password)
    monkeypatch.setenv("SYNC_ASSETS_HTTP_CACHE_PASSWORD", PASSWORD)
    with simulated() as (simulator, base_url):
        first = run(fetch_report(settings(base_url, http_cache_url())))
        second = run(fetch_report(settings(base_url, http_cache_url())))
        assert not first.not_modified and second.not_modified  # the 304 came through Redis
        assert simulator.requests(REPORT, 304) == 1

        monkeypatch.delenv("SYNC_ASSETS_HTTP_CACHE_PASSWORD")
        with caplog.at_level(logging.WARNING):
            third = run(fetch_report(settings(base_url, http_cache_url())))
    assert not third.not_modified  # uncached: no password, no cache
    assert "unreachable (AuthenticationError" in caplog.text
    assert PASSWORD not in caplog.text
