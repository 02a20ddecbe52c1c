"""Step two, second half: what each latest enrolment does to an achievement (R7–R10, R13)."""

from __future__ import annotations

import json
from datetime import datetime

import polars as pl

INITIAL_STATE = "enrolled"
COMPLETE_AT = 60
# R9: the only transitions there are. Complete is terminal; no transition to the same state.
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    "enrolled": frozenset({"in_progress", "complete", "dropped"}),
    "in_progress": frozenset({"complete", "dropped"}),
    "dropped": frozenset({"enrolled", "in_progress", "complete"}),
    "complete": frozenset(),
}
ALLOWED_PAIRS = pl.DataFrame(
    [(source, target) for source, targets in ALLOWED_TRANSITIONS.items() for target in targets],
    schema={"_from": pl.String, "_to": pl.String},
    orient="row",
)


def can_transition(source: str, target: str) -> bool:
    return target in ALLOWED_TRANSITIONS[source]


def floored_progress(ratio: pl.Expr) -> pl.Expr:
    """R7: floor(ratio × 100) in IEEE doubles: 0.58 → 57, 0.29 → 28."""
    return (ratio.cast(pl.Float64) * 100).floor().cast(pl.Int64)


def target_state(progress: pl.Expr, deactivated_at: pl.Expr) -> pl.Expr:
    """R9: the state a latest enrolment points to (before the allowed-transition check)."""
    return (
        pl.when(deactivated_at.is_not_null() & (progress < COMPLETE_AT))
        .then(pl.lit("dropped"))
        .when(progress == 0)
        .then(pl.lit("enrolled"))
        .when(progress < COMPLETE_AT)
        .then(pl.lit("in_progress"))
        .otherwise(pl.lit("complete"))
    )


def achievement_changes(
    latest: pl.DataFrame,
    current: pl.DataFrame,
    *,
    activity_id: str,
    now: datetime,
    source: str = "futurelearn_sync",
) -> pl.DataFrame:
    """R7–R10: the achievements to create or change, and nothing for anyone unchanged (R13).

    `latest`: one latest enrolment per user (latest_enrolments). `current`: the activity's
    achievements (user_id, state, progress, programme_id, completed_at). Returns rows in
    sync_store.ACHIEVEMENT_CHANGE_SCHEMA order: `previous_state` and `previous_progress` (what the
    write is conditional on) null for a new achievement, `cause` saying what caused it (R10), and
    `programme_id` null for a new achievement (filled by R11).
    """
    frame = (
        latest.join(
            current.select(
                "user_id",
                pl.col("state").alias("previous_state"),
                pl.col("progress").alias("previous_progress"),
                pl.col("programme_id").alias("previous_programme_id"),
                pl.col("completed_at").alias("previous_completed_at"),
            ),
            on="user_id",
            how="left",
        )
        .with_columns(
            is_new=pl.col("previous_state").is_null(),
            _from=pl.col("previous_state").fill_null(INITIAL_STATE),
            _enrolment_progress=floored_progress(pl.col("steps_completed_ratio")),
        )
        # R8: a complete achievement changes in nothing.
        .filter(pl.col("_from") != "complete")
        .with_columns(
            _to=target_state(pl.col("_enrolment_progress"), pl.col("deactivated_at")),
            # R7: stored progress never decreases.
            progress=pl.max_horizontal(
                pl.col("_enrolment_progress"), pl.col("previous_progress").fill_null(0)
            ),
        )
        .join(ALLOWED_PAIRS.with_columns(_allowed=pl.lit(True)), on=["_from", "_to"], how="left")
        .with_columns(state=pl.when(pl.col("_allowed")).then("_to").otherwise("_from"))
        .with_columns(
            completed_at=pl.when((pl.col("state") == "complete") & (pl.col("_from") != "complete"))
            .then(pl.lit(now).cast(pl.Datetime("us", "UTC")))
            .otherwise(pl.col("previous_completed_at"))
        )
    )
    changed = frame.filter(
        pl.col("is_new")
        | (pl.col("state") != pl.col("_from"))
        | (pl.col("progress") != pl.col("previous_progress"))
    )
    causes = [
        json.dumps(
            {
                "source": source,
                "run_uuid": row["run_uuid"],
                "membership_uuid": row["membership_uuid"],
                "steps_completed_ratio": row["steps_completed_ratio"],
                "progress": row["_enrolment_progress"],
                "deactivated": row["deactivated_at"] is not None,
            }
        )
        for row in changed.select(
            "run_uuid",
            "membership_uuid",
            "steps_completed_ratio",
            "_enrolment_progress",
            "deactivated_at",
        ).iter_rows(named=True)
    ]
    return changed.select(
        "user_id",
        pl.lit(activity_id).alias("activity_id"),
        pl.col("previous_programme_id").alias("programme_id"),
        "progress",
        "state",
        "completed_at",
        "previous_state",
        "previous_progress",
        pl.Series("cause", causes, dtype=pl.String),
    )
