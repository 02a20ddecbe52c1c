"""The Dagster UI an operator meets after `sync-assets demo`, driven in a real browser.

The real demo in a folder of its own, then its instance served by the real `dagster-webserver`
and `dagster-daemon` (the demo's dagster.yaml queues runs: the daemon launches them), with the
Partners API simulator's demo dataset over loopback HTTP behind a proxy that can spoil answers.
Playwright drives the system Chromium through what docs/operations.md tells an operator to do,
and the platform tables say whether it did what it should. A screenshot of every check goes to
SYNC_ASSETS_SCREENSHOT_DIR (default artifacts/ui-screenshots/), and one of the page a check
failed on, so CI keeps what the browser saw.

One test, the checks in order: they share one demo, one webserver and one browser (starting
them is most of the time), and the later checks build on the earlier ones' state.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import httpx
import polars as pl
import pytest
import sqlalchemy as sa

from sync_assets.defs.sync.partitions import CourseKeys, course_partitions
from sync_assets.platform.database import create_platform_engine
from sync_assets.platform.demo_catalogue import load_catalogue
from sync_assets.simulator.app import (
    SIMULATOR_CONSUMER_KEY,
    SIMULATOR_CONSUMER_SECRET,
    PartnersApiSimulator,
)
from sync_assets.simulator.datasets import GeneratedDataset, generate
from sync_assets.simulator.transports import serving
from sync_assets_tests.defs_tests.test_hostile_upstream import HostileProxy
from sync_assets_tests.defs_tests.test_sync_end_to_end import expected_achievements
from sync_assets_tests.processes import free_port, start, stop

pytestmark = pytest.mark.browser

PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STARTUP_SECONDS = 120
RUN_SECONDS = 180  # a run queued from the UI: the daemon's dequeue, a run process, five steps
UI_SECONDS = 60  # a page of a loaded machine's UI; every expect waits at most this long
Achievements = dict[int, dict]


def screenshot_dir() -> Path:
    folder = Path(
        os.environ.get("SYNC_ASSETS_SCREENSHOT_DIR") or PROJECT / "artifacts" / "ui-screenshots"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class Demo:
    """The demo's folder, its instance served on `url`, and the Partners API it reads."""

    folder: Path
    env: dict[str, str]
    url: str
    dataset: GeneratedDataset
    proxy: HostileProxy

    @property
    def engine(self) -> sa.Engine:
        return create_platform_engine(f"sqlite:///{self.folder / 'data' / 'platform.sqlite3'}")

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(self.env["DAGSTER_HOME"])

    def partitions(self) -> dict[str, str]:
        """Course partition key → course uuid, as the demo's instance has them."""
        with self.instance() as instance:
            keys = instance.get_dynamic_partitions(course_partitions.name)
        return dict(CourseKeys.resolve(keys, self.dataset.runs["course_uuid"]).uuid_of_key)

    def achievements(self) -> Achievements:
        engine = self.engine
        try:
            with engine.connect() as connection:
                rows = connection.execute(sa.text("SELECT * FROM achievements")).mappings()
                return {row["id"]: dict(row) for row in rows}
        finally:
            engine.dispose()

    def courses_with_enrolments(self) -> list[str]:
        """Courses whose last sync had a report with enrolments (the shrink check's reference)."""
        engine = self.engine
        try:
            with engine.connect() as connection:
                return sorted(
                    connection.execute(
                        sa.text(
                            "SELECT course_uuid FROM course_sync_state WHERE enrolment_count > 0"
                        )
                    ).scalars()
                )
        finally:
            engine.dispose()

    def sync_assets(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "sync-assets"), *args],
            env=self.env,
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=RUN_SECONDS,
        )


def _environment() -> dict[str, str]:
    """This environment without any setting of the project's: the demo's defaults apply."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("FL_PARTNERS_", "SYNC_ASSETS_", "DAGSTER_"))
        and name != "PLATFORM_DATABASE_URL"
    }


def _wait_for_ui(url: str, processes: dict[str, tuple[subprocess.Popen, Path]]) -> None:
    """Until the webserver answers with the code location loaded."""
    query = {"query": "{ assetNodes { assetKey { path } } }"}
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        for name, (process, log) in processes.items():
            if process.poll() is not None:
                pytest.fail(f"{name} exited: {log.read_text()[-3000:]}")
        try:
            answer = httpx.post(f"{url}/graphql", json=query, timeout=5)
            if answer.status_code == 200 and answer.json()["data"]["assetNodes"]:
                return
        except (httpx.TransportError, ValueError, KeyError, TypeError):
            pass
        time.sleep(0.5)
    log = processes["dagster-webserver"][1]
    pytest.fail(f"the UI did not load the code location in {STARTUP_SECONDS} s: {log.read_text()}")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    """`sync-assets demo` in a folder of its own, then its instance served and its daemon on."""
    base = _environment() | {"SYNC_ASSETS_DATA_DIR": str(tmp_path / "data")}
    made = subprocess.run(
        [str(BIN / "sync-assets"), "demo"],
        env=base,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_SECONDS,
    )
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]

    # From here the instance's runs read the demo dataset over HTTP, so that a day can pass on it
    # and a course's answers can be spoilt: the embedded simulator lives in each run's process.
    dataset = generate("demo", seed=1)  # the embedded simulator's data (simulator/embedded.py)
    with serving(PartnersApiSimulator(dataset)) as server:
        proxy = HostileProxy(server.base_url)
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        port = free_port()
        env = base | {
            "DAGSTER_HOME": str(tmp_path / "data" / "dagster_home"),
            "FL_PARTNERS_URL": proxy.base_url,
            "FL_PARTNERS_CONSUMER_KEY": SIMULATOR_CONSUMER_KEY,
            "FL_PARTNERS_CONSUMER_SECRET": SIMULATOR_CONSUMER_SECRET,
            "PYTHONUNBUFFERED": "1",
        }
        workspace = str(PROJECT / "workspace.yaml")
        commands = {
            "dagster-webserver": ["-w", workspace, "-h", "127.0.0.1", "-p", str(port)],
            "dagster-daemon": ["run", "-w", workspace],
        }
        processes = {}
        try:
            for name, args in commands.items():
                log = tmp_path / f"{name}.log"
                processes[name] = (start([str(BIN / name), *args], env, PROJECT, log), log)
            url = f"http://127.0.0.1:{port}"
            _wait_for_ui(url, processes)
            # The community sign-up shown once on a local instance would cover the pages: seen.
            httpx.post(f"{url}/graphql", json={"query": "mutation { setNuxSeen }"}, timeout=10)
            yield Demo(tmp_path, env, url, dataset, proxy)
        finally:
            stop(*(process for process, _ in processes.values()))
            proxy.shutdown()
            proxy.server_close()
            proxy.client.close()


@pytest.fixture
def page(chromium_executable: str, demo: Demo):  # no Chromium: skipped before the demo runs
    from playwright.sync_api import expect, sync_playwright

    # Actions and expectations alike wait as long as a loaded machine's UI may take (expect's
    # own default is 5 s: the first page shows "Loading sync_assets…" for longer than that).
    expect.set_options(timeout=UI_SECONDS * 1000)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_executable)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000}, base_url=demo.url)
            page.set_default_timeout(UI_SECONDS * 1000)
            yield page
        finally:
            browser.close()


class Checks:
    """Each check's screenshot; on failure, the page it failed on, which check it was, and the
    webserver's and daemon's logs beside the screenshots (CI keeps that folder)."""

    def __init__(self, page, demo: Demo) -> None:
        self.page = page
        self.demo = demo
        self.folder = screenshot_dir()
        for old in [*self.folder.glob("*.png"), *self.folder.glob("*.log")]:
            old.unlink()

    @contextmanager
    def check(self, name: str) -> Iterator[None]:
        try:
            yield
        except Exception as error:  # a failed expect or assert; an interrupt stays one
            shot = self.folder / f"FAILED-{name}.png"
            self.page.screenshot(path=shot, full_page=True)
            for log in self.demo.folder.glob("*.log"):
                shutil.copy(log, self.folder / log.name)
            raise AssertionError(
                f"UI check {name!r} failed on {self.page.url} (screenshot {shot}): {error}"
            ) from error
        self.page.screenshot(path=self.folder / f"{name}.png", full_page=True)


def _open(page, path: str) -> None:
    """Go to a page of the UI. Only until the server answers: the UI then routes on its own (and
    may replace the address while loading), and each check waits for what it looks for."""
    page.goto(path, wait_until="commit")


def _distinctive_word(key: str, keys: list[str]) -> str:
    """A word of the course's title (its key's slug) that no other course partition contains."""
    words = sorted(key.rsplit("-", 1)[0].split("-"), key=len, reverse=True)
    for word in words:
        if len(word) >= 5 and [k for k in keys if word in k] == [key]:
            return word
    raise AssertionError(f"no word of {key} is in its key alone")


def _course_of(activity: str) -> str:
    return next(c["future_learn_course_uuid"] for c in load_catalogue() if c["slug"] == activity)


def _progress(rows: Achievements) -> dict[tuple[str, str], tuple[int, str]]:
    """(user, activity) → (progress, state), as the sync's rules would have them."""
    return {(r["user_id"], r["activity_id"]): (r["progress"], r["state"]) for r in rows.values()}


def _activity(row: dict) -> str:
    return row["activity_id"]


def test_an_operator_finds_reruns_and_sees_failed_courses_in_the_ui(page, demo: Demo) -> None:
    from playwright.sync_api import expect

    checks = Checks(page, demo)
    partitions = demo.partitions()
    key_of = {uuid: key for key, uuid in partitions.items()}
    keys = sorted(partitions)

    with checks.check("a-lineage"):
        _open(page, "/locations/sync_assets/asset-groups/futurelearn_sync/lineage")
        for asset in (
            "course_runs",
            "enrolments",
            "linked_memberships",
            "latest_enrolments",
            "activity_progress",
        ):
            expect(page.get_by_text(asset, exact=True).filter(visible=True).first).to_be_visible()

    with checks.check("b-job-runs"):
        with demo.instance() as instance:
            [demo_run] = instance.get_runs(dg.RunsFilter(job_name="futurelearn_sync"))
        _open(page, "/locations/sync_assets/jobs/futurelearn_sync/runs")
        link = page.get_by_role("link", name=f"run {demo_run.run_id[:8]}")
        expect(link).to_be_visible()
        # The innermost block holding the run's link and a status: its row.
        row = page.locator("div").filter(has=link).filter(has_text="Success").last
        expect(row).to_contain_text("Manually launched")
        expect(row).to_contain_text("sync_assets/launched_by: cli")
        expect(page.get_by_text("No runs found")).to_have_count(0)

    with checks.check("b-reexecute-menu"):
        # The CLI's run re-executes as one the UI launched would. Were its code location or job
        # snapshot not the ones served now, the button would carry a warning icon, its tooltip
        # "may be a different version" or the like (Dagster's useJobAvailabilityErrorForRun).
        _open(page, f"/runs/{demo_run.run_id}")
        button = page.get_by_role("button", name="Re-execute all (*)")
        expect(button).to_be_enabled()  # disabled, with an error icon, until the workspace loads
        button.hover()  # a failure's screenshot then shows the warning's tooltip
        expect(button.get_by_role("img")).to_have_count(0)
        arrow = page.get_by_role("img", name="arrow_drop_down")
        page.get_by_role("button").filter(has=arrow).click()  # the menu of re-execution options
        menu = page.get_by_role("menu")
        expect(menu.get_by_role("menuitem", name="From failure")).to_be_disabled()  # it succeeded
        all_steps = menu.get_by_role("menuitem", name="All steps in root run")
        expect(all_steps).to_be_enabled()
        all_steps.hover()
        expect(page.get_by_role("tooltip")).to_contain_text("Re-execute the pipeline run")

    # A day passes at FutureLearn: learners of several courses progress. The course to rerun is
    # one of them, so a rerun that touched it alone shows in the platform tables.
    before = demo.achievements()
    by_key = _progress(before)
    demo.dataset.advance_day()
    expected = expected_achievements(demo.dataset, by_key)
    changed = sorted({key[1] for key, value in expected.items() if by_key.get(key) != value})
    assert len(changed) >= 2, f"a day changed too few courses to tell one from all: {changed}"
    course = _course_of(changed[0])
    key = key_of[course]
    word = _distinctive_word(key, keys)

    with checks.check("c-partition-filter"):
        _open(page, "/assets/activity_progress?view=partitions")
        page.get_by_placeholder("Filter by name").fill(word)
        expect(page.get_by_title(key, exact=True)).to_be_visible()
        for other in keys:
            if other != key:
                expect(page.get_by_title(other, exact=True)).to_have_count(0)

    with checks.check("d-rerun-launched"):
        # docs/operations.md, S1: Jobs → futurelearn_sync → Materialize all…, find the course by
        # a word of its title, select its partition, Launch run.
        _open(page, "/locations/sync_assets/jobs/futurelearn_sync")
        page.get_by_role("button", name="Materialize all…").click()
        dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize 5 assets")
        dialog.get_by_text("Select a partition or create one").click()
        page.keyboard.type(word)
        expect(page.get_by_text("Select all (1)")).to_be_visible()
        page.get_by_text(key, exact=True).filter(visible=True).click()
        page.keyboard.press("Escape")
        expect(dialog).to_contain_text("1 partition")
        dialog.get_by_role("button", name="Launch 1 run").click()
        expect(dialog).to_have_count(0)

    with checks.check("d-rerun-succeeded"):
        with demo.instance() as instance:
            [rerun] = instance.get_runs(
                dg.RunsFilter(job_name="futurelearn_sync", tags={"dagster/partition": key})
            )
        _open(page, f"/runs/{rerun.run_id}")
        expect(page.get_by_text("Success", exact=True).first).to_be_visible(
            timeout=RUN_SECONDS * 1000
        )
    with demo.instance() as instance:
        finished = instance.get_run_by_id(rerun.run_id)
        assert finished is not None and finished.status == dg.DagsterRunStatus.SUCCESS
    after = demo.achievements()
    activity = changed[0]
    # That course now has the day's progress; every other course's rows are as they were.
    assert {k: v for k, v in _progress(after).items() if k[1] == activity} == {
        k: v for k, v in expected.items() if k[1] == activity
    }
    assert {i: r for i, r in after.items() if _activity(r) != activity} == {
        i: r for i, r in before.items() if _activity(r) != activity
    }

    # Another course's reports come back empty: its sync is refused (the report shrank).
    failing = next(uuid for uuid in demo.courses_with_enrolments() if uuid != course)
    runs = demo.dataset.runs.filter(pl.col("course_uuid") == failing)["run_uuid"]
    for run in runs:
        demo.proxy.spoilers[f"/partners/course_runs/{run}/course_enrolments_report"] = (
            lambda status, headers, body: (200, {**headers, "ETag": 'W/"emptied"'}, b"[]")
        )
    failed = demo.sync_assets("sync", "--course", key_of[failing])
    assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-3000:]
    assert key_of[failing] in failed.stdout + failed.stderr

    with checks.check("e-failed-partition"):
        _open(page, "/assets/activity_progress?view=partitions")
        failed_box = page.get_by_text(re.compile(r"^Failed \(1\)$"))
        expect(failed_box).to_be_visible()
        page.get_by_text(re.compile(r"^Materialized \(\d+\)$")).click()  # show the failed only
        expect(page.get_by_title(key_of[failing], exact=True)).to_be_visible()
        for other in keys:
            if other != key_of[failing]:
                expect(page.get_by_title(other, exact=True)).to_have_count(0)
        page.get_by_title(key_of[failing], exact=True).click()
        expect(page.get_by_text("shrank").first).to_be_visible()
