"""A hostile stand-in of the Partners API over loopback: it costs the courses it touches only.

The proxy forwards to the simulator and spoils chosen answers: malformed JSON, an HTML page with
200, a body dripped a byte at a time, a 500 for ever, records with NUL bytes, huge strings and
wrong types. End to end through `sync-assets sync`, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import httpx
import polars as pl
import pytest

from sync_assets.definitions import defs
from sync_assets.defs.alerts.sensors import failed_run
from sync_assets.defs.sync.jobs import all_partitions_tags
from sync_assets.partners_api.cache import open_storage
from sync_assets.partners_api.client import _cache_key
from sync_assets.platform.demo_catalogue import load_catalogue
from sync_assets.settings import http_cache_url
from sync_assets.simulator.transports import running
from sync_assets_tests.conftest import BACKENDS, sqlite_only
from sync_assets_tests.loopback import scripted

from .conftest import World
from .test_sync_end_to_end import expected_achievements

CATALOGUE = {c["future_learn_course_uuid"]: c["slug"] for c in load_catalogue()}
FORWARDED = ("authorization", "if-none-match", "accept", "user-agent")
KEPT = ("etag", "cache-control", "content-type", "link")

# A spoiler gets the simulator's answer (status, headers, body) and returns what to send instead;
# None sends it as it is. "drip" is handled apart: it needs the socket.
Spoiler = Callable[[int, dict[str, str], bytes], tuple[int, dict[str, str], bytes] | None]


def malformed(status: int, headers: dict, body: bytes):
    return 200, {"Content-Type": "application/json"}, b'[{"run": {"uuid": '


def html(status: int, headers: dict, body: bytes):
    return 200, {"Content-Type": "text/html"}, b"<html><body>Down for maintenance</body></html>"


def server_error(status: int, headers: dict, body: bytes):
    return 500, {"Content-Type": "text/plain"}, b"internal error"


class HostileProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream
        self.spoilers: dict[str, Spoiler | str] = {}  # path → spoiler (or "drip")
        self.client = httpx.Client(base_url=upstream, timeout=30)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: HostileProxy

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        spoiler = self.server.spoilers.get(self.path.split("?")[0])
        if spoiler == "drip":
            self._drip()
            return
        if spoiler == "truncate":
            self._truncate()
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() in FORWARDED}
        answer = self.server.client.get(self.path, headers=headers)
        status, kept, body = (
            answer.status_code,
            {k: v for k, v in answer.headers.items() if k.lower() in KEPT},
            answer.content,
        )
        if callable(spoiler):
            status, kept, body = spoiler(status, kept, body) or (status, kept, body)
        self.send_response(status)
        for name, value in kept.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the client hung up on a body it refused (past its cap): its right
            self.close_connection = True

    def _truncate(self) -> None:
        """Promise a body, send a tenth of it, hang up."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b'[{"run": {"uuid"')
        self.wfile.flush()
        self.close_connection = True

    def _drip(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "1000")
        self.end_headers()
        try:
            for _ in range(1000):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.3)
        except OSError:
            pass


@pytest.fixture
def proxy(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[HostileProxy]:
    import os

    server = HostileProxy(os.environ["FL_PARTNERS_URL"])
    monkeypatch.setenv("FL_PARTNERS_URL", server.base_url)
    # Short, so a dripping report ends soon; not so short that a healthy request through the proxy
    # times out on a loaded machine (at 1 s, a CI run beside other work failed healthy courses).
    monkeypatch.setenv("FL_PARTNERS_TIMEOUT_SECONDS", "3")
    try:
        with running(server):
            yield server
    finally:
        server.client.close()


def _course_and_run(world: World) -> tuple[str, str, str]:
    """A known course, the title of its first run, and one of its runs with enrolments."""
    runs = world.dataset.runs.filter(pl.col("course_uuid").is_in(list(CATALOGUE))).sort(
        "start_time", "run_uuid"
    )
    busy = set(world.dataset.enrolments["run_uuid"])
    course = sorted(set(runs["course_uuid"]))[0]
    of_course = runs.filter(pl.col("course_uuid") == course)
    run = next(r for r in of_course["run_uuid"] if r in busy)
    return course, of_course["title"][0], run


def _report(run: str) -> str:
    return f"/partners/course_runs/{run}/course_enrolments_report"


def _names(text: str, value: str) -> bool:
    """Whether `text` holds `value` as a token of its own: external ids such as "100031" (a
    platform user id) also occur inside the output's Dagster run ids (uuid4, random) by chance,
    which once failed this check with nothing leaked."""
    return re.search(rf"(?<![0-9A-Za-z]){re.escape(value)}(?![0-9A-Za-z])", text) is not None


def _assert_one_course_failed_alone(result, course: str, title: str, world: World, before: dict):
    _assert_courses_failed_alone(result, {course: ""}, world, before)


def _assert_courses_failed_alone(result, why: dict[str, str], world: World, before: dict):
    """Each course of `why` failed, on one line of the summary holding its `why`; the others
    were applied; no trace, no body and no learner's external id in the output."""
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "Stack Trace" not in result.output
    keys = {world.key(course): course for course in why}
    failed = len(keys)
    assert f"Courses not applied, and why ({failed}):\n" in result.output
    lines = result.output.splitlines()
    for key, course in keys.items():
        assert f"{key}: " in result.output  # the run's failure, by the course's readable key
        line = next(line for line in lines if line.startswith(f"  {key} ({course}): "))
        assert why[course] in line, line
    courses = len(set(world.dataset.runs["course_uuid"]) & CATALOGUE.keys())
    assert (
        f"{failed} of {courses} courses not applied (see above); the other {courses - failed} were"
        in result.output
    )
    assert "9" * 100 not in result.output and "[[[[" not in result.output
    external_ids = world.dataset.memberships["external_learner_id"].drop_nulls().unique()
    assert not [external for external in external_ids if _names(result.output, external)]
    # The run failure alert names them too, by key, with why, and the step that ended the run.
    with dg.DagsterInstance.get() as instance:
        [run] = instance.get_runs(dg.RunsFilter(job_name="futurelearn_sync"), limit=1)
        alert = failed_run(instance, run.run_id)
    assert alert is not None and sorted(alert.failed_courses) == sorted(keys)
    assert alert.failed_steps == ["activity_progress"] and all(key in alert.error for key in keys)
    # The UI's partitions view: those courses failed, at every step from the one that failed them.
    for asset in ("latest_enrolments", "activity_progress"):
        status = world.partition_status(asset)
        assert {course: status.pop(course) for course in why} == dict.fromkeys(why, "FAILED")
        assert set(status.values()) == {"MATERIALIZED"}, asset
    # The failed courses keep exactly what they had; every other course is applied.
    activities = {CATALOGUE[course] for course in why}
    after = world.achievements()
    expected = expected_achievements(world.dataset, before)
    assert {k: v for k, v in after.items() if k[1] in activities} == {
        k: v for k, v in before.items() if k[1] in activities
    }
    assert {k: v for k, v in after.items() if k[1] not in activities} == {
        k: v for k, v in expected.items() if k[1] not in activities
    }


# Four kinds of spoilt answer in one night, each on one course's report, the fifth course left
# healthy: each spoilt course fails alone, on its own line, and the next good night catches up.
# What differs between the kinds is the HTTP client's side (how the answer is refused, retried,
# given up on), the same whatever the database; the database side (a failed course keeps what it
# had, the others are applied) is checked on both. The drip (every attempt runs into the request
# deadline: the slowest) has a night of its own, on SQLite.
SPOILERS = {
    "malformed": malformed,
    "html": html,
    "500": server_error,
    "truncated": "truncate",
}


def _spoilt_night(world: World, proxy: HostileProxy, spoilers: dict[str, Spoiler | str]) -> None:
    """A first night, then a next day with each spoiler on one course's report: those courses
    fail alone; then a good night catches up."""
    assert world.sync().exit_code == 0
    before = world.achievements()
    world.simulator.advance_day()
    runs = _busy_runs(world)
    assert len(runs) > len(spoilers)  # a course is left healthy
    spoilt = dict(zip(runs, spoilers.values(), strict=False))  # course → spoiler
    for course, spoiler in spoilt.items():
        proxy.spoilers[_report(runs[course])] = spoiler

    started = time.monotonic()
    result = world.sync()

    assert time.monotonic() - started < 90  # every request ends
    _assert_courses_failed_alone(result, dict.fromkeys(spoilt, ""), world, before)
    proxy.spoilers.clear()
    assert world.sync().exit_code == 0  # and the next good night catches up
    assert world.achievements() == expected_achievements(world.dataset, before)


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_reports_spoilt_on_every_attempt_each_fail_their_course_alone(
    world: World, proxy: HostileProxy
) -> None:
    _spoilt_night(world, proxy, SPOILERS)


@sqlite_only
def test_a_report_dripped_a_byte_at_a_time_fails_its_course_alone(
    world: World, proxy: HostileProxy
) -> None:
    _spoilt_night(world, proxy, {"drip": "drip"})


def test_a_membership_look_up_failing_for_good_fails_the_courses_holding_it(
    world: World, proxy: HostileProxy
) -> None:
    course, title, run = _course_and_run(world)
    enrolments = world.dataset.enrolments
    in_run = set(enrolments.filter(pl.col("run_uuid") == run)["membership_uuid"])
    runs_of = (
        enrolments.join(world.dataset.runs, on="run_uuid")
        .group_by("membership_uuid")
        .agg(pl.col("course_uuid").n_unique().alias("courses"))
    )
    only_here = sorted(set(runs_of.filter(pl.col("courses") == 1)["membership_uuid"]) & in_run)[0]
    proxy.spoilers[f"/partners/organisation_memberships/{only_here}"] = server_error

    result = world.sync()

    _assert_one_course_failed_alone(result, course, title, world, {})
    assert f"look-up of 1 membership(s) failed, e.g. {only_here}" in result.output


# --- bodies no decoder should be trusted with: each costs its own course -----------------------

CAP = 1024**2  # FL_PARTNERS_MAX_BODY_BYTES in these tests: far above any body of `tiny`


def huge_integer(status: int, headers: dict, body: bytes):
    """A 5,000-digit integer first: Python's json refuses it with ValueError, not a JSON error."""
    name = b'"n": ' if body.startswith(b"{") else b""
    return status, headers, body[:1] + name + b"9" * 5000 + b", " + body[1:]


def deep_nesting(status: int, headers: dict, body: bytes):
    """Valid JSON that json.loads cannot read without RecursionError."""
    return status, headers, b"[" * 100_000 + b"]" * 100_000


def over_the_cap(status: int, headers: dict, body: bytes):
    """The real body padded with whitespace past the cap: valid JSON, only too long."""
    return status, headers, body[:-1] + b" " * (2 * CAP) + body[-1:]


def invalid_utf8(status: int, headers: dict, body: bytes):
    return status, headers, body.replace(b'"', b'"\xff', 1)


# Each spoiler and what the course's line says of it. The ETag is the simulator's, as a proxy or
# an API bug would leave it: the body is cached under it, unless forgotten.
UNREADABLE = {
    huge_integer: "an integer too long to read",
    deep_nesting: "nested too deeply",
    over_the_cap: f"body larger than {CAP:,} bytes (FL_PARTNERS_MAX_BODY_BYTES)",
    invalid_utf8: "not UTF-8",
}


def _busy_runs(world: World) -> dict[str, str]:
    """Each known course and one of its runs with enrolments, by course uuid."""
    busy = set(world.dataset.enrolments["run_uuid"])
    runs = world.dataset.runs.filter(
        pl.col("course_uuid").is_in(list(CATALOGUE)) & pl.col("run_uuid").is_in(list(busy))
    ).sort("course_uuid", "start_time", "run_uuid")
    return dict(
        runs.group_by("course_uuid", maintain_order=True)
        .agg(pl.col("run_uuid").first())
        .iter_rows()
    )


def _cached(url: str) -> bool:
    """Whether the sync's HTTP cache holds a response for `url`."""

    async def entries() -> list:
        storage = open_storage(http_cache_url(), max_bytes=2**30, idle_seconds=3600)
        try:
            return await storage.get_entries(_cache_key(url))
        finally:
            await storage.close()

    return bool(asyncio.run(entries()))


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_unreadable_reports_each_fail_their_course_alone_and_are_forgotten(
    world: World, proxy: HostileProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 5,000-digit integer, 100,000 '[', a body past the cap and invalid UTF-8, each in one
    course's report in the same night: four courses fail, each on its own line, the fifth is
    applied, and no spoilt body stays in the cache to come back tomorrow as a 304."""
    monkeypatch.setenv("FL_PARTNERS_MAX_BODY_BYTES", str(CAP))
    runs = _busy_runs(world)
    spoilt = dict(zip(runs, UNREADABLE, strict=False))  # course → spoiler; the last course kept
    assert len(runs) == len(spoilt) + 1
    for course, spoiler in spoilt.items():
        proxy.spoilers[_report(runs[course])] = spoiler

    result = world.sync()

    _assert_courses_failed_alone(
        result,
        {course: f"report of run {runs[course]}: " for course in spoilt},
        world,
        {},
    )
    lines = result.output.splitlines()
    for course, spoiler in spoilt.items():
        line = next(line for line in lines if line.startswith(f"  {world.key(course)} ("))
        assert UNREADABLE[spoiler] in line, line
        assert not _cached(proxy.base_url + _report(runs[course]))
    [kept] = set(runs) - set(spoilt)
    assert _cached(proxy.base_url + _report(runs[kept]))  # what is cached is found by `_cached`


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_a_report_unreadable_once_is_asked_again_and_its_course_applied_the_same_night(
    world: World, proxy: HostileProxy
) -> None:
    """The night's check keeps each changed report without decoding it; the step that reads it
    finds it unreadable (a 5,000-digit integer, once), forgets it and asks again: the second
    answer is good, so every course is applied that night, and tomorrow is a quiet night."""
    _, _, run = _course_and_run(world)
    answers: list[int] = []

    def once(status: int, headers: dict, body: bytes):
        answers.append(status)
        return huge_integer(status, headers, body) if len(answers) == 1 else None

    proxy.spoilers[_report(run)] = once
    before = world.achievements()

    result = world.sync()

    assert result.exit_code == 0, result.output
    assert answers == [200, 200]  # the check's (spoilt), then the step's own request
    assert world.achievements() == expected_achievements(world.dataset, before)
    assert _cached(proxy.base_url + _report(run))  # the good body, kept for tomorrow's 304
    proxy.spoilers.clear()
    quiet = world.sync()
    assert quiet.exit_code == 0 and "futurelearn_sync" not in quiet.output, quiet.output


def _memberships_only_in(world: World, courses: list[str]) -> dict[str, str]:
    """For each course, one membership enrolled in that course only."""
    enrolments = world.dataset.enrolments.join(world.dataset.runs, on="run_uuid")
    only_one = (
        enrolments.group_by("membership_uuid")
        .agg(pl.col("course_uuid").unique())
        .filter(pl.col("course_uuid").list.len() == 1)
        .with_columns(pl.col("course_uuid").list.first())
        .sort("membership_uuid")
    )
    return {
        course: only_one.filter(pl.col("course_uuid") == course)["membership_uuid"][0]
        for course in courses
    }


@sqlite_only  # the database side of a failed look-up is the 500 test's, on both databases
def test_unreadable_look_ups_each_fail_the_course_holding_them_alone(
    world: World, proxy: HostileProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FL_PARTNERS_MAX_BODY_BYTES", str(CAP))
    courses = sorted(_busy_runs(world))[: len(UNREADABLE)]
    memberships = _memberships_only_in(world, courses)
    spoilt = dict(zip(courses, UNREADABLE, strict=True))
    for course, spoiler in spoilt.items():
        proxy.spoilers[f"/partners/organisation_memberships/{memberships[course]}"] = spoiler

    result = world.sync()

    _assert_courses_failed_alone(
        result,
        {
            course: f"look-up of 1 membership(s) failed, e.g. {memberships[course]}: "
            for course in courses
        },
        world,
        {},
    )
    lines = result.output.splitlines()
    for course, spoiler in spoilt.items():
        line = next(line for line in lines if line.startswith(f"  {world.key(course)} ("))
        assert UNREADABLE[spoiler] in line, line


def not_a_report(status: int, headers: dict, body: bytes):
    """Valid JSON, cached as it came, that is not an array of records at all."""
    return status, headers, b'{"error": "not a report"}'


@sqlite_only  # what differs from the tests above is the client's side
def test_a_next_link_to_another_origin_and_a_report_of_the_wrong_shape_cost_their_course(
    world: World, proxy: HostileProxy
) -> None:
    """A next link naming another origin on loopback is not requested (no request, so no
    token, reaches it); a report that is JSON but not an array fails in parsing. Both courses fail
    alone, and their cached pages are forgotten: the next night, with the API right again (the
    same ETags), both are applied rather than fail again on a 304 of what was kept."""
    runs = _busy_runs(world)
    wrong_shape, linking, *_ = sorted(runs)
    with scripted() as elsewhere:
        next_link = f'<{elsewhere.base_url}{_report(runs[linking])}?page=2>; rel="next"'

        def link_elsewhere(status: int, headers: dict, body: bytes):
            return status, {**headers, "Link": next_link}, body

        proxy.spoilers[_report(runs[linking])] = link_elsewhere
        proxy.spoilers[_report(runs[wrong_shape])] = not_a_report

        result = world.sync()

        _assert_courses_failed_alone(
            result,
            {
                wrong_shape: f"report of run {runs[wrong_shape]}: "
                "course_enrolments_report for "
                f"{runs[wrong_shape]}: expected a JSON array, got dict",
                linking: f"report of run {runs[linking]}: Partners API course_enrolments_report "
                f"{runs[linking]}: next link points to another origin "
                f"(http://127.0.0.1:{elsewhere.server_address[1]}), not requested",
            },
            world,
            {},
        )
        assert elsewhere.seen == []
        assert not _cached(proxy.base_url + _report(runs[wrong_shape]))
        assert not _cached(proxy.base_url + _report(runs[linking]))

        proxy.spoilers.clear()
        again = world.sync()

        assert again.exit_code == 0, again.output
        assert world.achievements() == expected_achievements(world.dataset)
        assert elsewhere.seen == []


@sqlite_only
@pytest.mark.parametrize("spoiler", [huge_integer, not_a_report], ids=["decoding", "parsing"])
def test_an_unreadable_course_runs_fails_the_night_in_one_line(
    world: World, proxy: HostileProxy, spoiler: Spoiler
) -> None:
    """No course to blame: the night fails at its first step, in one line, nothing applied."""
    proxy.spoilers["/partners/course_runs"] = spoiler

    result = world.sync()

    assert result.exit_code == 1
    assert "Traceback" not in result.output and "Stack Trace" not in result.output
    errors = [line for line in result.output.splitlines() if "Partners API course_runs" in line]
    assert len(errors) == 1, result.output
    assert world.achievements() == {}
    assert not _cached(proxy.base_url + "/partners/course_runs")


# --- records of the wrong type are quarantined, counted and shown -------------------------------

HOSTILE_VALUES = [
    ("steps_completed_ratio", "0.7"),  # a string, not a JSON number
    ("steps_completed_ratio", "abc"),
    ("steps_completed_ratio", -1),
    ("steps_completed_ratio", 1.5),
    ("steps_completed_ratio", "__raw:1e309"),
    ("steps_completed_ratio", "__raw:NaN"),
    ("activated_at", "yesterday"),
    ("organisation_membership", {"uuid": "c0ffee00-0000-4000-8000-00000000\x00000"}),
]


def _hostile_records(memberships: list[str]) -> Spoiler:
    """Spoil the records of these memberships, one hostile value each."""
    value_of = dict(zip(memberships, HOSTILE_VALUES, strict=True))

    def spoiler(status: int, headers: dict, body: bytes):
        if status != 200:
            return None
        records = json.loads(body)
        for record in records:
            spoil = value_of.get(record["organisation_membership"]["uuid"])
            if spoil:
                record[spoil[0]] = spoil[1]
        text = json.dumps(records)
        for raw in ("1e309", "NaN"):
            text = text.replace(f'"__raw:{raw}"', raw)
        return status, {**headers, "ETag": 'W/"hostile"'}, text.encode()

    return spoiler


def test_a_report_mostly_of_bad_records_is_refused_then_applied_from_the_rest_when_allowed(
    world: World, proxy: HostileProxy
) -> None:
    course, title, run = _course_and_run(world)
    spoilt = world.dataset.enrolments.filter(pl.col("run_uuid") == run).head(len(HOSTILE_VALUES))
    assert spoilt.height == len(HOSTILE_VALUES)
    proxy.spoilers[_report(run)] = _hostile_records(spoilt["membership_uuid"].to_list())

    refused = world.sync()
    _assert_one_course_failed_alone(refused, course, title, world, {})
    assert "records of its report quarantined" in refused.output
    row = next(line for line in refused.output.splitlines() if line.startswith(world.key(course)))
    assert row.split()[-1] == str(len(HOSTILE_VALUES))  # the summary's quarantined column

    allowed = world.sync("--allow-quarantine", course)

    assert allowed.exit_code == 0, allowed.output
    # Synced at last: materialised again, no longer failed.
    assert set(world.partition_status("activity_progress").values()) == {"MATERIALIZED"}
    # Applied from the records left: the spoilt ones count for nothing.
    dataset = world.dataset
    kept = dataset.enrolments.join(spoilt, on=["run_uuid", "membership_uuid"], how="anti")
    dataset.enrolments, full = kept, dataset.enrolments
    try:
        expected = expected_achievements(dataset)
    finally:
        dataset.enrolments = full
    assert world.achievements() == expected
    assert not [
        m for m in world.table("future_learn_memberships") if "\x00" in m["membership_uuid"]
    ]


def test_a_membership_with_a_huge_external_id_is_quarantined_not_stored(
    world: World, proxy: HostileProxy
) -> None:
    membership = world.dataset.memberships["membership_uuid"][0]

    def huge(status: int, headers: dict, body: bytes):
        answer = json.loads(body)
        answer["external_learner_id"] = "x" * 1_000_000 + "@example.org"
        return status, headers, json.dumps(answer).encode()

    proxy.spoilers[f"/partners/organisation_memberships/{membership}"] = huge

    result = world.sync()

    assert result.exit_code == 0, result.output
    stored = {m["membership_uuid"]: m for m in world.table("future_learn_memberships")}
    assert membership not in stored or stored[membership]["external_learner_id"] is None
    assert max(len(m["external_learner_id"] or "") for m in stored.values()) <= 320


@sqlite_only  # the run's step failure and partition statuses are Dagster's, on either database
def test_a_run_of_the_first_steps_only_fails_with_the_course(
    world: World, proxy: HostileProxy
) -> None:
    """A rerun from the UI may select `enrolments` alone: its failed course still fails the run."""
    course, _, run = _course_and_run(world)
    assert world.sync().exit_code == 0
    proxy.spoilers[_report(run)] = server_error
    keys = sorted(world.partitions())
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def("futurelearn_sync").execute_in_process(
            instance=instance,
            tags=all_partitions_tags(keys),
            asset_selection=[dg.AssetKey("course_runs"), dg.AssetKey("enrolments")],
            raise_on_error=False,
        )
    assert not result.success
    [failure] = [event for event in result.all_events if event.is_step_failure]
    assert failure.step_key == "enrolments"
    assert world.key(course) in failure.step_failure_data.user_failure_data.description
    status = world.partition_status("enrolments")
    assert status.pop(course) == "FAILED"
    assert set(status.values()) == {"MATERIALIZED"}
    assert set(world.partition_status("activity_progress").values()) == {"MATERIALIZED"}
