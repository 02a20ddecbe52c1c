"""`sync-assets` as a user runs it: the installed console script, in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from sync_assets.partners_api.auth import PartnersJwtAuth
from sync_assets.platform.database import create_platform_engine
from sync_assets.platform.demo_catalogue import seed_demo_catalogue
from sync_assets.platform.migrate import head_revision
from sync_assets.simulator.app import (
    SIMULATOR_CONSUMER_KEY,
    SIMULATOR_CONSUMER_SECRET,
    PartnersApiSimulator,
)
from sync_assets.simulator.datasets import load
from sync_assets.simulator.transports import serving
from sync_assets_tests.conftest import migrated
from sync_assets_tests.processes import free_port

SCRIPT = Path(sys.executable).with_name("sync-assets")


def run(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PLATFORM_DATABASE_URL": database_url}
    return subprocess.run(
        [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_db_upgrade_twice_then_seed(database_url: str) -> None:
    first = run("db", "upgrade", database_url=database_url)
    second = run("db", "upgrade", database_url=database_url)
    seeded = run("db", "seed-catalogue", database_url=database_url)

    assert first.returncode == 0, first.stderr
    assert f"migrated from an empty database to {head_revision()}" in first.stdout
    assert second.returncode == 0 and "nothing to do" in second.stdout
    assert seeded.returncode == 0 and "33 FutureLearn courses" in seeded.stdout
    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg2://"))
    with engine.connect() as connection:
        count = "SELECT count(*) FROM activities WHERE future_learn_course_uuid IS NOT NULL"
        assert connection.execute(sa.text(count)).scalar_one() == 33
    engine.dispose()


def test_seed_before_upgrade_says_what_to_do(tmp_path: Path) -> None:
    result = run("db", "seed-catalogue", database_url=f"sqlite:///{tmp_path / 'p.sqlite3'}")
    assert result.returncode != 0
    assert "run `sync-assets db upgrade`" in result.stderr


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url", "not a valid SQLAlchemy URL"),
        ("mysql://root@localhost/platform", "unsupported database 'mysql'"),
        ("sqlite://", "in-memory SQLite database"),
        ("postgresql://postgres:s3cret@127.0.0.1:1/platform", "cannot connect to"),
    ],
    ids=["malformed", "unsupported", "in-memory", "unreachable"],
)
def test_bad_configuration_is_one_clear_line(url: str, expected: str) -> None:
    result = run("db", "upgrade", database_url=url)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "PLATFORM_DATABASE_URL" in lines[0] and expected in lines[0]
    assert "Traceback" not in result.stderr and "s3cret" not in result.stderr


def stop(server: subprocess.Popen) -> None:
    """SIGTERM, and the server must be gone within 10 s (killed anyway, not left behind)."""
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=10)
        raise


def test_simulator_serve_stops_on_sigterm_even_when_its_parent_ignored_it() -> None:
    # A process started by one that ignores SIGTERM inherits the ignore: under pytest-xdist a
    # worker did, and `terminate()` left the simulator running for good.
    port = free_port()
    server = subprocess.Popen(
        [str(SCRIPT), "simulator", "serve", "--port", str(port), "--dataset", "sandbox"],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN),
    )
    assert "Serving at" in server.stdout.readline() + server.stdout.readline()
    stop(server)
    assert server.returncode == 128 + signal.SIGTERM


def test_simulator_serve_answers_over_http() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FL_PARTNERS_")}
    server = subprocess.Popen(
        [
            str(SCRIPT),
            "simulator",
            "serve",
            "--port",
            str(port),
            "--dataset",
            "sandbox",
            "--fault",
            "course_runs:503:nth=1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        banner = server.stdout.readline() + server.stdout.readline()
        assert f"FL_PARTNERS_URL=http://127.0.0.1:{port}" in banner
        auth = PartnersJwtAuth(SIMULATOR_CONSUMER_KEY, SIMULATOR_CONSUMER_SECRET)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=auth) as client:
            for _ in range(50):  # the banner is printed just before the server accepts
                try:
                    first = client.get("/partners/course_runs")
                    break
                except httpx.ConnectError:
                    time.sleep(0.1)
            second = client.get("/partners/course_runs")
            counts = client.get("/_simulator/counts").json()["requests"]
    finally:
        stop(server)
    assert first.status_code == 503 and second.status_code == 200
    assert len(second.json()) == 126
    assert {"endpoint": "course_runs", "status": 200, "count": 1} in counts


def test_simulator_serve_refuses_a_bad_fault() -> None:
    result = subprocess.run(
        [str(SCRIPT), "simulator", "serve", "--fault", "nowhere:503"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "unknown endpoint 'nowhere'" in result.stderr


def _sync_with(env: dict[str, str], database_url: str) -> subprocess.CompletedProcess[str]:
    full = os.environ | {"PLATFORM_DATABASE_URL": database_url} | env
    return subprocess.run(
        [str(SCRIPT), "sync"], env=full, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def seeded_sqlite(tmp_path: Path) -> str:
    """A migrated platform database with the demo catalogue, made in this process: the commands
    that make it are tested above, and two processes more per test cost seconds."""
    url = f"sqlite:///{tmp_path / 'platform.sqlite3'}"
    engine = migrated(create_platform_engine(url))
    with engine.begin() as connection:
        seed_demo_catalogue(connection)
    engine.dispose()
    return url


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "Stack Trace" not in result.stderr
    return lines[0]


def test_a_refused_secret_is_one_line_naming_the_settings(
    seeded_sqlite: str, tmp_path: Path
) -> None:
    with serving(PartnersApiSimulator(load("sandbox"))) as server:
        line = _one_line(
            _sync_with(
                {
                    "FL_PARTNERS_URL": server.base_url,
                    "FL_PARTNERS_CONSUMER_KEY": SIMULATOR_CONSUMER_KEY,
                    "FL_PARTNERS_CONSUMER_SECRET": "not-the-secret-not-the-secret-not-the-secret",
                    "DAGSTER_HOME": str(tmp_path / "home"),
                    "SYNC_ASSETS_DATA_DIR": str(tmp_path / "data"),
                },
                seeded_sqlite,
            )
        )
    assert "token refused (401)" in line and "FL_PARTNERS_CONSUMER_KEY" in line
    assert "not-the-secret" not in line


def _sync_unreachable(
    database_url: str, tmp_path: Path, secret: str
) -> subprocess.CompletedProcess[str]:
    """`sync-assets sync` against a port nothing listens on, signing with `secret`."""
    return _sync_with(
        {
            "FL_PARTNERS_URL": "http://127.0.0.1:1",
            "FL_PARTNERS_CONSUMER_KEY": "key",
            "FL_PARTNERS_CONSUMER_SECRET": secret,
            # Its retries 10 ms apart: what is refused, and how it is said, is the same.
            "FL_PARTNERS_BACKOFF_SECONDS": "0.01",
            "DAGSTER_HOME": str(tmp_path / "home"),
            "SYNC_ASSETS_DATA_DIR": str(tmp_path / "data"),
        },
        database_url,
    )


def test_an_unreachable_api_is_one_line(seeded_sqlite: str, tmp_path: Path) -> None:
    line = _one_line(
        _sync_unreachable(seeded_sqlite, tmp_path, "a-secret-of-at-least-thirty-two-bytes!!")
    )
    assert line.startswith("Error: Partners API course_runs: ConnectError")
    assert "check FL_PARTNERS_URL" in line


def test_a_short_consumer_secret_is_warned_about(seeded_sqlite: str, tmp_path: Path) -> None:
    """PyJWT's warning is the operator's only sign that the HMAC key is weak: not silenced."""
    result = _sync_unreachable(seeded_sqlite, tmp_path, "sixteen-bytes!!!")
    assert result.returncode == 1
    assert "The HMAC key is 16 bytes long" in result.stderr


def test_the_simulator_secret_is_long_enough_for_hs256() -> None:
    """The demo signs with the simulator's secret: it must not trip the warning above."""
    assert len(SIMULATOR_CONSUMER_SECRET.encode()) >= 32


@pytest.mark.parametrize("problem", ["a file", "a broken dagster.yaml"])
def test_an_unusable_dagster_home_is_one_line(
    seeded_sqlite: str, tmp_path: Path, problem: str
) -> None:
    home = tmp_path / "home"
    if problem == "a file":
        home.write_text("not a folder")
    else:
        home.mkdir()
        (home / "dagster.yaml").write_text("storage: [unclosed\n")
    line = _one_line(
        _sync_with(
            {"DAGSTER_HOME": str(home), "SYNC_ASSETS_DATA_DIR": str(tmp_path / "data")},
            seeded_sqlite,
        )
    )
    assert line.startswith("Error: DAGSTER_HOME: ") and str(home) in line
