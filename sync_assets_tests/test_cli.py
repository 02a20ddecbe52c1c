"""`sync-assets` as a user runs it: the installed console script, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from sync_assets.platform.migrate import head_revision

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
