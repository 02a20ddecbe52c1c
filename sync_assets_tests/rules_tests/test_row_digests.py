"""Which learners a changed report makes the sync plan again (sync/row_digests.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from sync_assets.partners_api.contract import ENROLMENT_SCHEMA
from sync_assets.sync.row_digests import affected_users, decode, encode, membership_digests

RUNS = pl.DataFrame(
    {
        "run_uuid": ["r1", "r2"],
        "start_time": [datetime(2026, 1, 5, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)],
    }
)


def _report(*rows: tuple[str, str, int]) -> pl.DataFrame:
    """(run, membership, steps completed) rows of a course's report."""
    return pl.DataFrame(
        [
            {
                "run_uuid": run,
                "membership_uuid": membership,
                "status": "active",
                "activated_at": datetime(2026, 1, 6, tzinfo=UTC),
                "deactivated_at": None,
                "steps_completed_count": steps,
                "steps_completed_ratio": steps / 50,
            }
            for run, membership, steps in rows
        ],
        schema=ENROLMENT_SCHEMA,
    )


def _links(**users: str | None) -> pl.DataFrame:
    return pl.DataFrame(
        {"membership_uuid": list(users), "user_id": list(users.values())},
        schema={"membership_uuid": pl.String, "user_id": pl.String},
    )


LINKS = _links(m1="ada", m2="ada", m3="bob", m4=None)
TODAY = _report(("r1", "m1", 5), ("r2", "m2", 9), ("r1", "m3", 20), ("r1", "m4", 3))


def test_an_unchanged_report_in_another_order_affects_no_one() -> None:
    stored = membership_digests(TODAY, LINKS, RUNS)
    again = membership_digests(TODAY.reverse(), LINKS.reverse(), RUNS)
    assert affected_users(again, decode(encode(stored))) == []


def test_each_kind_of_row_change_affects_the_users_linked_to_it() -> None:
    stored = membership_digests(TODAY, LINKS, RUNS)

    def affected(report: pl.DataFrame, links: pl.DataFrame = LINKS) -> list[str]:
        return affected_users(membership_digests(report, links, RUNS), stored)

    progressed = _report(("r1", "m1", 5), ("r2", "m2", 10), ("r1", "m3", 20), ("r1", "m4", 3))
    assert affected(progressed) == ["ada"]
    without_bob = TODAY.filter(pl.col("membership_uuid") != "m3")
    assert affected(without_bob) == ["bob"]  # removed: the user it was linked to
    duplicated = pl.concat([TODAY, TODAY.filter(pl.col("membership_uuid") == "m3")])
    assert affected(duplicated) == ["bob"]
    # An unlinked membership linked since: its new user, though no row of it changed.
    assert affected(TODAY, _links(m1="ada", m2="ada", m3="bob", m4="cy")) == ["cy"]
    # An unlinked membership's rows change no one's latest enrolment.
    unlinked_moved = _report(("r1", "m1", 5), ("r2", "m2", 9), ("r1", "m3", 20), ("r1", "m4", 7))
    assert affected(unlinked_moved) == []
    # A run's start time decides ties (R6): every user with a row in it.
    moved = RUNS.with_columns(
        start_time=pl.when(pl.col("run_uuid") == "r2")
        .then(pl.lit(datetime(2026, 4, 1, tzinfo=UTC)))
        .otherwise("start_time")
    )
    assert affected_users(membership_digests(TODAY, LINKS, moved), stored) == ["ada"]
