"""The simulator answers as SPEC §2 says, over loopback HTTP and in process alike."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import jwt
import polars as pl
import pytest

from sync_assets.platform.demo_catalogue import load_catalogue
from sync_assets.simulator.app import (
    SIMULATOR_CONSUMER_KEY,
    SIMULATOR_CONSUMER_SECRET,
    PartnersApiSimulator,
)
from sync_assets.simulator.datasets import SANDBOX_DIR, GeneratedDataset, generate, load
from sync_assets.simulator.faults import FaultPlan, FaultRule, FaultSpecError
from sync_assets.simulator.transports import IN_PROCESS_BASE_URL, SimulatorTransport, serving

RUN = "545ba924-9e73-4a30-bd54-4fb7dee8b913"
RECORDED = {
    "/partners/course_runs": "course_runs",
    f"/partners/course_runs/{RUN}": "course_run_one",
    f"/partners/course_runs/{RUN}/course_enrolments_report": "course_enrolments_report",
    "/partners/organisation_memberships/8e89c1b4-d5c0-4208-b4ad-52928f37ab3f": (
        "organisation_membership"
    ),
}


def token(
    key: str = SIMULATOR_CONSUMER_KEY,
    secret: str = SIMULATOR_CONSUMER_SECRET,
    lifetime: int = 90,
    issued: float | None = None,
) -> dict[str, str]:
    now = int(issued if issued is not None else time.time())
    claims = {"iss": key, "iat": now, "exp": now + lifetime}
    return {"Authorization": f"Bearer {jwt.encode(claims, secret, algorithm='HS256')}"}


@pytest.fixture
def sandbox_http():
    simulator = PartnersApiSimulator(load("sandbox"))
    with serving(simulator) as server, httpx.Client(base_url=server.base_url) as client:
        yield simulator, client


@pytest.mark.parametrize("path", sorted(RECORDED))
def test_sandbox_answers_the_recorded_bodies(sandbox_http, path: str) -> None:
    _, client = sandbox_http
    recorded = json.loads((SANDBOX_DIR / f"{RECORDED[path]}.json").read_text())["response"]
    response = client.get(path, headers=token())
    assert response.status_code == recorded["status"]
    assert response.json() == recorded["body"]
    assert response.content == json.dumps(recorded["body"], separators=(",", ":")).encode()
    assert response.headers["ETag"] == recorded["headers"]["Etag"]
    assert response.headers["Cache-Control"] == "max-age=0, private, must-revalidate"


def test_unknown_membership_is_the_recorded_404(sandbox_http) -> None:
    _, client = sandbox_http
    recorded = json.loads((SANDBOX_DIR / "organisation_membership_404.json").read_text())
    response = client.get(recorded["request"]["path"], headers=token())
    assert response.status_code == 404
    assert response.json() == {"error": "not_found"}


def test_if_none_match_gets_304_without_body(sandbox_http) -> None:
    simulator, client = sandbox_http
    first = client.get("/partners/course_runs", headers=token())
    second = client.get(
        "/partners/course_runs", headers=token() | {"If-None-Match": first.headers["ETag"]}
    )
    assert second.status_code == 304 and second.content == b""
    assert second.headers["ETag"] == first.headers["ETag"]
    assert simulator.requests("course_runs", 304) == 1


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic abc"},
        token(secret="a-wrong-secret-long-enough-for-hs256-keys"),
        token(key="someone-else"),
        token(issued=time.time() - 200),
    ],
    ids=["none", "not-bearer", "wrong-signature", "wrong-issuer", "expired"],
)
def test_refused_tokens_get_401(sandbox_http, headers: dict) -> None:
    _, client = sandbox_http
    assert client.get("/partners/course_runs", headers=headers).status_code == 401


def test_a_token_accepted_once_is_refused_when_it_expires(sandbox_http) -> None:
    # The simulator verifies a token's signature once; its expiry still counts on every request.
    _, client = sandbox_http
    headers = token(lifetime=2)
    expires = int(time.time()) + 2
    assert client.get("/partners/course_runs", headers=headers).status_code == 200
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    assert client.get("/partners/course_runs", headers=headers).status_code == 401


def in_process_gets(
    simulator: PartnersApiSimulator, base_url: str, path: str, times: int = 1
) -> list[httpx.Response]:
    """`path` asked `times` in turn through the in-process transport, as the client asks it
    (asynchronously: the transport answers nothing else)."""

    async def get() -> list[httpx.Response]:
        transport = SimulatorTransport(simulator)
        async with httpx.AsyncClient(base_url=base_url, transport=transport) as client:
            return [await client.get(path, headers=token()) for _ in range(times)]

    return asyncio.run(get())


def test_in_process_transport_is_the_same_simulator() -> None:
    simulator = PartnersApiSimulator(generate("demo"))
    [answer] = in_process_gets(simulator, IN_PROCESS_BASE_URL, "/partners/course_runs")
    runs = answer.json()
    # hrefs are built from the base URL the request came to.
    assert runs[0]["href"] == f"{IN_PROCESS_BASE_URL}/partners/course_runs/{runs[0]['uuid']}"
    assert simulator.requests("course_runs", 200) == 1


def test_reports_paginate_with_link_headers() -> None:
    dataset = generate("demo")
    run = dataset.enrolments.group_by("run_uuid").len().sort("len", descending=True)["run_uuid"][0]
    everything = dataset.enrolments.filter(pl.col("run_uuid") == run).height
    simulator = PartnersApiSimulator(dataset, page_size=3)
    with serving(simulator) as server, httpx.Client() as client:
        url = f"{server.base_url}/partners/course_runs/{run}/course_enrolments_report"
        records = []
        while url:
            response = client.get(url, headers=token())
            records += response.json()
            url = response.links.get("next", {}).get("url")
            assert len(response.json()) <= 3
    assert len(records) == everything
    assert (
        len({r["organisation_membership"]["uuid"] + r["activated_at"] for r in records})
        == everything
    )


def test_faults_are_deterministic_and_counted() -> None:
    plan = FaultPlan.parse(
        ["course_runs:503:rate=0.5", "course_runs:429:nth=2,retry_after=7"], seed=3
    )
    outcomes = []
    for _ in range(2):
        simulator = PartnersApiSimulator(load("sandbox"), faults=plan)
        statuses = in_process_gets(simulator, "http://sim", "/partners/course_runs", times=20)
        outcomes.append([r.status_code for r in statuses])
        assert statuses[1].status_code == 429 and statuses[1].headers["Retry-After"] == "7"
        assert simulator.requests("course_runs", 503) == outcomes[-1].count(503)
    assert outcomes[0] == outcomes[1]
    assert 3 <= outcomes[0].count(503) <= 16


@pytest.mark.parametrize(
    "spec", ["nowhere:503", "*:teapot", "*:503:rate=2", "*:latency", "course_runs"]
)
def test_bad_fault_specs_are_refused(spec: str) -> None:
    with pytest.raises(FaultSpecError):
        FaultRule.parse(spec)


def test_wire_faults_over_http() -> None:
    simulator = PartnersApiSimulator(
        load("sandbox"),
        faults=FaultPlan.parse(["course_runs:drop:nth=1", "course_runs:truncate:nth=2"]),
    )
    with serving(simulator) as server, httpx.Client(base_url=server.base_url) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.get("/partners/course_runs", headers=token())
        with pytest.raises(httpx.RemoteProtocolError):
            client.get("/partners/course_runs", headers=token())
        assert client.get("/partners/course_runs", headers=token()).status_code == 200
    assert simulator.requests("course_runs", "drop") == 1
    assert simulator.requests("course_runs", "truncate") == 1


def test_control_endpoints_drive_a_separate_simulator() -> None:
    simulator = PartnersApiSimulator(generate("demo"))
    with serving(simulator) as server, httpx.Client(base_url=server.base_url) as client:
        client.get("/partners/course_runs", headers=token())
        counts = client.get("/_simulator/counts").json()
        moved = client.post("/_simulator/advance_day").json()
    assert counts["requests"] == [{"endpoint": "course_runs", "status": 200, "count": 1}]
    assert moved["changed_reports"] > 0 and simulator.dataset.day == 1


def test_demo_dataset_matches_the_catalogue() -> None:
    dataset = generate("demo")
    catalogue = {course["future_learn_course_uuid"] for course in load_catalogue()}
    known = dataset.courses.filter("known")
    unknown = dataset.courses.filter(~pl.col("known"))
    assert set(known["course_uuid"]) <= catalogue
    assert unknown.height == 6 and not set(unknown["course_uuid"]) & catalogue
    # Every course has runs, several for most; learners have one to three memberships.
    runs_per_course = dataset.runs.group_by("course_uuid").len()
    assert runs_per_course.height == dataset.courses.height
    assert runs_per_course["len"].max() >= 3
    per_learner = dataset.memberships.group_by("learner").len()["len"]
    assert set(per_learner.unique()) == {1, 2, 3}
    # Re-enrolments: some learners have two enrolments on one course, through different runs.
    with_course = dataset.enrolments.join(dataset.runs, on="run_uuid")
    repeated = with_course.group_by("learner", "course_uuid").agg(pl.col("run_uuid").n_unique())
    assert repeated.filter(pl.col("run_uuid") > 1).height > 0
    assert dataset.enrolments.filter(pl.col("status") == "deactivated").height > 0
    # External ids: user ids, emails in mixed case, and ids that match nobody.
    users = dataset.users
    external = dataset.memberships["external_learner_id"]
    assert external.is_in(users["id"].implode()).any()
    lowered = external.str.to_lowercase()
    assert (lowered.is_in(users["email"].implode()) & (lowered != external)).any()
    assert (~external.is_in(users["id"].implode()) & ~lowered.is_in(users["email"].implode())).any()


def test_generation_is_deterministic() -> None:
    first, second = generate("demo", seed=7), generate("demo", seed=7)
    assert first.enrolments.equals(second.enrolments)
    assert first.memberships.equals(second.memberships)
    assert not first.enrolments.equals(generate("demo", seed=8).enrolments)


def test_a_day_moves_the_same_learners_every_time() -> None:
    # The harness moves its own copy of the data a day on to count the minimum requests, and
    # two processes serving one seed must serve the same bodies after a day as before it.
    days = [generate("teachcomputing") for _ in range(3)]
    for dataset in days:
        dataset.advance_day()
    assert all(day.enrolments.equals(days[0].enrolments) for day in days[1:])


def test_teachcomputing_has_its_size() -> None:
    dataset = generate("teachcomputing")
    assert dataset.courses.height == 33
    assert dataset.runs.height == 130
    assert 90_000 <= dataset.enrolments.height <= 110_000
    assert 50_000 <= dataset.enrolments["learner"].n_unique() <= 60_000


def test_a_day_moves_only_what_changed() -> None:
    dataset = generate("demo")
    simulator = PartnersApiSimulator(dataset)
    base = "http://sim"
    before = {run: dataset.enrolments_report(run, base).etag for run in dataset.runs["run_uuid"]}
    old_ratio = dataset.enrolments.select(pl.col("steps_completed_ratio").sum()).item()
    moved = simulator.advance_day()
    after = {run: dataset.enrolments_report(run, base).etag for run in dataset.runs["run_uuid"]}
    changed = {run for run in before if before[run] != after[run]}
    assert 0 < len(changed) == moved["changed_reports"] < len(before)
    assert dataset.enrolments.select(pl.col("steps_completed_ratio").sum()).item() > old_ratio
    assert moved["new_memberships"] > 0
    assert (
        dataset.enrolments["membership_uuid"]
        .is_in(dataset.memberships["membership_uuid"].implode())
        .all()
    )


def _as_generated(dataset: GeneratedDataset) -> GeneratedDataset:
    """The same data in a dataset that has served nothing: what serving it must answer."""
    return GeneratedDataset(
        dataset.name,
        dataset.seed,
        dataset.today,
        dataset.courses,
        dataset.runs,
        dataset.memberships,
        dataset.enrolments,
        dataset.users,
        dataset.day,
        dict(dataset.versions),
    )


def _served(dataset: GeneratedDataset, runs: list[str], memberships: list[str]) -> list[object]:
    base = "http://sim"
    answers = [dataset.course_runs(base)] + [
        resource
        for run in runs
        for resource in (dataset.course_run(run, base), dataset.enrolments_report(run, base))
    ]
    answers += [dataset.membership(uuid, base) for uuid in memberships]
    return [None if answer is None else (answer.body, answer.etag) for answer in answers]


def test_what_is_served_follows_every_change_of_the_data() -> None:
    # Reports by run and the membership index are kept between requests: each change must be
    # served at once, whether made by a method or by replacing a frame.
    dataset = generate("demo")
    runs = dataset.runs["run_uuid"].to_list()
    course = dataset.courses["course_uuid"][0]

    def check() -> None:
        memberships = dataset.memberships["membership_uuid"].to_list()
        assert _served(dataset, runs, memberships) == _served(
            _as_generated(dataset), runs, memberships
        )

    check()
    dataset.advance_day()
    check()
    withdrawn = dataset.withdraw_course(course)
    check()
    assert dataset.enrolments_report(withdrawn["run_uuid"][0], "http://sim") is None
    dataset.list_runs(withdrawn)
    check()
    dataset.rename_course(course, "Renamed")
    new_course = dataset.add_course("New", 30)
    runs.append(dataset.runs.filter(pl.col("course_uuid") == new_course)["run_uuid"].item())
    check()
    dataset.enrolments = dataset.enrolments.head(dataset.enrolments.height // 2)
    dataset.memberships = dataset.memberships.head(dataset.memberships.height // 2)
    check()


def test_each_answer_over_http_takes_its_latency_from_its_own_request() -> None:
    # The latency runs from each request's arrival (the simulator's own work is within it, as a
    # real API's): a request on a kept-alive connection, sent long after the first, still waits
    # its whole latency, not what is left of it since the connection opened or the last one.
    simulator = PartnersApiSimulator(load("sandbox"), latency_ms=150)
    with serving(simulator) as server, httpx.Client(base_url=server.base_url) as client:
        took = []
        for _ in range(2):
            started = time.monotonic()
            assert client.get("/partners/course_runs", headers=token()).status_code == 200
            took.append(time.monotonic() - started)
            time.sleep(0.2)
    assert server.connections_accepted == 1
    assert min(took) >= 0.15
