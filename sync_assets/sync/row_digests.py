"""Which learners of a changed course need planning again: work per changed row (issue 33).

A course's plan for one user depends on the user's rows in its reports (all of them: R6 picks
the latest across runs and memberships, with the runs' start times), on which memberships are
linked to the user, and on the user's stored achievement. When a course is written, one digest
per membership is stored with it (`course_sync_state.row_digests`): the membership's rows, its
runs' start times and the user it is linked to. The next write of the course compares: a user
any of whose memberships was added, removed or changed (rows or link) is *affected*; the others
have exactly the inputs their stored achievement was computed from.

That holds only while the platform side is as the last write left it (the platform
fingerprint: the activity's achievements and the linking generation, change_tracking); the caller
checks that under the course's lock and otherwise plans the whole course. Pure functions only.
"""

from __future__ import annotations

import io

import polars as pl

from sync_assets.partners_api.contract import ENROLMENT_SCHEMA

DIGESTS_SCHEMA = {"membership_uuid": pl.String, "user_id": pl.String, "digest": pl.UInt64}
_SEED = 33  # any fixed seed: digests are only compared with digests made by the same code


def membership_digests(
    enrolments: pl.DataFrame, linked: pl.DataFrame, runs: pl.DataFrame
) -> pl.DataFrame:
    """One row per membership of the report (DIGESTS_SCHEMA): its usable link and one digest of
    everything R5–R6 read of it (its rows, their runs' start times, the user it is linked to).

    A membership's rows are hashed one by one and the sorted hashes hashed again, so the digest
    does not depend on the report's order, and a duplicated row changes it.
    """
    rows = (
        enrolments.select(list(ENROLMENT_SCHEMA))
        .join(runs.select("run_uuid", "start_time"), on="run_uuid", how="left")
        .join(
            linked.filter(pl.col("user_id").is_not_null()).select("membership_uuid", "user_id"),
            on="membership_uuid",
            how="left",
        )
    )
    return (
        rows.with_columns(_row=pl.struct(pl.exclude("membership_uuid")).hash(seed=_SEED))
        .group_by("membership_uuid")
        .agg(pl.col("user_id").first(), pl.col("_row").sort())
        .select(
            "membership_uuid",
            "user_id",
            pl.struct("user_id", "_row").hash(seed=_SEED).alias("digest"),
        )
        .sort("membership_uuid")
    )


def affected_users(current: pl.DataFrame, stored: pl.DataFrame) -> list[str]:
    """The users whose (user, course) group differs between two sets of digests: linked, before
    or now, to a membership added, removed or changed. Sorted."""
    joined = current.join(stored, on="membership_uuid", how="full", coalesce=True, suffix="_stored")
    changed = joined.filter(
        pl.col("digest").is_null()
        | pl.col("digest_stored").is_null()
        | (pl.col("digest") != pl.col("digest_stored"))
    )
    users = pl.concat([changed["user_id"], changed["user_id_stored"]]).drop_nulls().unique()
    return sorted(users.to_list())


def encode(digests: pl.DataFrame) -> bytes:
    """Digests as stored: Arrow IPC, compressed (~20 bytes a membership)."""
    buffer = io.BytesIO()
    digests.select(list(DIGESTS_SCHEMA)).write_ipc(buffer, compression="zstd")
    return buffer.getvalue()


def decode(stored: bytes) -> pl.DataFrame:
    return pl.read_ipc(io.BytesIO(stored)).cast(DIGESTS_SCHEMA)  # type: ignore[arg-type]
