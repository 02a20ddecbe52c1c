"""No secret and no personal data at rest outside the platform database (issue: hostile input)."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import sqlalchemy as sa

from sync_assets_tests.conftest import sqlite_only

from .conftest import SECRET, World


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(path for path in root.rglob(pattern) if path.is_file())


def _stored_values(home: Path) -> set[str]:
    """Every string cell of every asset output stored under the Dagster home."""
    values: set[str] = set()
    for path in _files(home / "storage", "*.parquet"):
        frame = pl.read_parquet(path)
        for name, dtype in frame.schema.items():
            if dtype == pl.String:
                values.update(frame[name].drop_nulls().to_list())
    return values


@sqlite_only  # the HTTP cache and asset storage, not the platform database
def test_a_sync_leaves_no_credentials_in_the_http_cache_nor_personal_data_in_asset_storage(
    world: World,
) -> None:
    """Two checks of what one sync left on disk (each was a world and a sync of its own)."""
    folder = Path(os.environ["SYNC_ASSETS_DATA_DIR"]) / "http_cache"
    folder.mkdir(parents=True)
    legacy = folder / "partners_api.sqlite3"  # an earlier release's cache, with its tokens
    legacy.write_bytes(b"Authorization: Bearer eyJ...")
    assert world.sync().exit_code == 0

    # The HTTP cache: no credentials.
    assert not legacy.exists()
    cache = folder / "partners_api-v2.sqlite3"
    engine = sa.create_engine(f"sqlite:///{cache}")
    with engine.connect() as connection:
        blobs = [bytes(row[0]) for row in connection.execute(sa.text("SELECT data FROM entries"))]
    engine.dispose()
    assert blobs  # reports are cached, for their 304s
    for blob in blobs:
        assert b"Bearer" not in blob and b"uthorization" not in blob
        assert SECRET.encode() not in blob

    # The asset storage: no email, no external id.
    home = Path(os.environ["DAGSTER_HOME"])
    stored = _stored_values(home)
    assert stored  # the outputs are there
    external_ids = set(world.dataset.memberships["external_learner_id"].drop_nulls())
    emails = set(world.dataset.users["email"])
    personal = {value for value in external_ids | emails if not value.isdigit()}  # ids are user ids
    assert personal and not (stored & personal)


def _email_keys(world: World) -> dict[str, str]:
    return {row["user_id"]: row["email"] for row in world.table("user_email_keys")}


def test_deleted_and_forgotten_users_leave_no_trace_in_the_sync_s_tables_nor_asset_storage(
    world: World,
) -> None:
    """Erasure on the platform reaches the sync's copy of emails (`user_email_keys`) on the next
    sync, including a night on which every course is skipped as unchanged; a forgotten learner
    leaves the asset storage too (that was a world and two syncs of its own)."""
    with world.engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO users (id, email, forgotten) VALUES "
                "('leaver', 'leaver@example.org', false), "
                "('forgotten-before', 'forgotten-before@example.org', true)"
            )
        )
    assert world.sync().exit_code == 0
    keys = _email_keys(world)
    assert keys["leaver"] == "leaver@example.org"
    assert "forgotten-before" not in keys  # never copied
    assert "forgotten-before@example.org" not in keys.values()

    # The leaver is deleted on the platform; nothing any course depends on changed.
    with world.engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM users WHERE id = 'leaver'"))
    quiet = world.sync()
    assert quiet.exit_code == 0, quiet.output
    assert f"{len(world.partitions())} skipped as unchanged" in quiet.output
    keys = _email_keys(world)
    assert "leaver" not in keys and "leaver@example.org" not in keys.values()

    # A linked learner is forgotten: the platform keeps the row, the sync drops its copy, and
    # the next sync's outputs in the asset storage no longer name them.
    home = Path(os.environ["DAGSTER_HOME"])
    user = next(row["user_id"] for row in world.table("future_learn_memberships") if row["user_id"])
    email = _email_keys(world)[user]
    assert user in _stored_values(home)
    with world.engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE users SET forgotten = true WHERE id = :id"), {"id": user}
        )
    assert world.sync().exit_code == 0
    keys = _email_keys(world)
    assert user not in keys and email not in keys.values()
    assert user not in _stored_values(home)
