"""Users are named by keyed pseudonyms: no store holds a digest anyone can recompute from user ids
(issue 30: `sha256(user_id)[:10]` let 241 of 368 demo users be found by hashing every id)."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import dagster as dg
import pytest
from dagster._serdes import serialize_value

from sync_assets.pseudonyms import pseudonym
from sync_assets.settings import (
    PSEUDONYM_KEY,
    PSEUDONYM_KEY_FILE,
    ConfigurationError,
    check_settings,
)
from sync_assets_tests.conftest import sqlite_only

from .conftest import World
from .test_nothing_secret_at_rest import _stored_values

SHORTEST_PREFIX = 8  # hex characters: any plain digest this long or longer counts as found
PSEUDONYM = re.compile(r"user:([0-9a-f]+)")
HEX_RUN = re.compile(r"[0-9a-f]{8,}")


def plain_hash_prefixes(user_ids: Iterable[str]) -> dict[str, str]:
    """The first 8 hex characters of sha256(id) → id: any longer prefix starts with them."""
    return {hashlib.sha256(user.encode()).hexdigest()[:SHORTEST_PREFIX]: user for user in user_ids}


def users_found_by_hashing(text: str, prefixes: dict[str, str]) -> set[str]:
    """The user ids whose plain sha256 (8 hex characters or more of it) occurs in `text`."""
    found = set()
    for run in HEX_RUN.findall(text.lower()):
        for start in range(len(run) - SHORTEST_PREFIX + 1):
            window = run[start : start + SHORTEST_PREFIX]
            if window in prefixes:
                found.add(prefixes[window])
    return found


def everything_stored(home: Path, data: Path) -> str:
    """The Dagster home (run and event log databases, compute logs, asset storage) and the data
    folder (HTTP cache) as text, parquet cells decoded, and every event record of the instance.
    The pseudonym key's own file is left out: it is where the key is meant to be."""
    parts = [
        path.read_bytes().decode("utf-8", "replace")
        for root in (home, data)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != PSEUDONYM_KEY_FILE
    ]
    parts += sorted(_stored_values(home))
    with dg.DagsterInstance.get() as instance:
        for run in instance.get_runs():
            parts += [serialize_value(entry) for entry in instance.all_logs(run.run_id)]
    return "\n".join(parts)


def pseudonyms_by_run() -> list[set[str]]:
    """The pseudonyms (their hex part) each run's events name."""
    with dg.DagsterInstance.get() as instance:
        return [
            set(PSEUDONYM.findall(" ".join(map(serialize_value, instance.all_logs(run.run_id)))))
            for run in instance.get_runs()
        ]


@sqlite_only
def test_after_two_syncs_no_store_holds_a_plain_hash_of_a_user_id_nor_the_key(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the per-partition previews (opt-in), which name users: by pseudonym only.
    monkeypatch.setenv("SYNC_ASSETS_PARTITION_PREVIEWS", "1")
    assert world.sync().exit_code == 0
    world.simulator.advance_day()  # the reports change: the courses are synced again
    assert world.sync().exit_code == 0

    home = Path(os.environ["DAGSTER_HOME"])
    data = Path(os.environ["SYNC_ASSETS_DATA_DIR"])
    stored = everything_stored(home, data)
    user_ids = world.dataset.users["id"].to_list()
    assert not users_found_by_hashing(stored, plain_hash_prefixes(user_ids))
    assert (data / PSEUDONYM_KEY_FILE).read_text().strip() not in stored

    # Users are still told apart, each by the one pseudonym this process computes for them too:
    # the same in both syncs' runs, 16 hex characters (64 bits).
    named = [found for found in pseudonyms_by_run() if found]
    assert len(named) >= 2
    expected = {pseudonym(user)[len("user:") :] for user in user_ids}
    assert all(len(digest) == 16 for digest in expected)
    assert all(found <= expected for found in named)


def test_a_local_key_is_made_once_private_and_the_same_in_every_process(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k != PSEUDONYM_KEY}
    env |= {"SYNC_ASSETS_DATA_DIR": str(data), "SYNC_ASSETS_PROFILE": "local"}
    code = "from sync_assets.pseudonyms import pseudonym; print(pseudonym('100042'))"
    # Started together on an empty folder: they race to make the key, and must all use one.
    processes = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    said = {process.communicate(timeout=120)[0].strip() for process in processes}
    assert all(process.returncode == 0 for process in processes)
    assert len(said) == 1
    [name] = said
    assert re.fullmatch(r"user:[0-9a-f]{16}", name)
    assert name != "user:" + hashlib.sha256(b"100042").hexdigest()[:16]
    key_file = data / PSEUDONYM_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert [path.name for path in data.iterdir()] == [PSEUDONYM_KEY_FILE]  # no temporary left
    # A later process reuses it.
    again = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert again.stdout.strip() == name


def test_a_given_key_is_used_and_a_short_one_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PSEUDONYM_KEY, "k" * 32)
    one = pseudonym("100042")
    monkeypatch.setenv(PSEUDONYM_KEY, "j" * 32)
    assert pseudonym("100042") != one  # the key, not the id alone, makes the pseudonym
    monkeypatch.setenv(PSEUDONYM_KEY, "short-key")
    with pytest.raises(ConfigurationError) as raised:
        check_settings()
    assert raised.value.setting == PSEUDONYM_KEY
    assert "short-key" not in str(raised.value)  # a key is never repeated


def test_a_deployment_without_a_pseudonym_key_fails_at_load_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "SYNC_ASSETS_PROFILE": "deployment",
        "FL_PARTNERS_URL": "https://partners.example.org",
        "FL_PARTNERS_CONSUMER_KEY": "key",
        "FL_PARTNERS_CONSUMER_SECRET": "a-secret-of-32-bytes-or-more-for-the-jwt",
        "PLATFORM_DATABASE_URL": "postgresql://platform@db.example.org/platform",
        "SYNC_ASSETS_STORAGE_URL": "s3://sync-assets/storage",
        "SYNC_ASSETS_HTTP_CACHE_URL": "redis://cache.example.org:6379/0",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(PSEUDONYM_KEY, raising=False)
    with pytest.raises(ConfigurationError) as raised:
        check_settings()
    assert raised.value.setting == PSEUDONYM_KEY
    assert "SYNC_ASSETS_PROFILE=deployment" in str(raised.value)
