"""The worlds' Dagster home is a copy of one initialised once per test process
(`initialised_dagster_home` in conftest.py): it must be what Dagster writes into an empty home,
file for file, or the worlds would test another instance than a user's first sync makes."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import dagster as dg

from .conftest import initialised_dagster_home

# When Dagster wrote a row (its migrations' bookkeeping): differs between any two homes.
CLOCK_TYPES = {"TIMESTAMP", "DATETIME"}


def _contents(home: Path) -> dict[str, dict[str, object]]:
    """Each database file under `home`: its schema, and every table's rows without clocks."""
    contents: dict[str, dict[str, object]] = {}
    for path in sorted(home.rglob("*")):
        if path.is_dir():
            continue
        assert path.suffix == ".db", path  # nothing else Dagster wrote, so nothing else to compare
        with sqlite3.connect(path) as connection:
            schema = sorted(
                connection.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")
            )
            rows: dict[str, object] = {}
            for _, table, _, _ in (entry for entry in schema if entry[0] == "table"):
                columns = [
                    f'"{name}"'
                    for _, name, kind, *_ in connection.execute(f'PRAGMA table_info("{table}")')
                    if kind.upper() not in CLOCK_TYPES
                ]
                select = f'SELECT {", ".join(columns)} FROM "{table}"'
                rows[table] = sorted(connection.execute(select))
        contents[str(path.relative_to(home))] = {"schema": schema, "rows": rows}
    return contents


def test_a_copied_home_holds_what_dagster_writes_into_an_empty_one(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with dg.DagsterInstance.from_config(str(fresh)) as instance:
        instance.get_runs(limit=1)
    copy = tmp_path / "copy"
    shutil.copytree(initialised_dagster_home(), copy)

    expected = _contents(fresh)
    assert expected  # the storage was written, so the comparison compares something
    assert _contents(copy) == expected
    # And it works as a home: empty, and what is written is read back.
    with dg.DagsterInstance.from_config(str(copy)) as instance:
        assert instance.get_runs() == []
        instance.add_dynamic_partitions("courses", ["a-course"])
        assert instance.get_dynamic_partitions("courses") == ["a-course"]
