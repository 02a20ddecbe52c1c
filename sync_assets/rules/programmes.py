"""Which programme a new achievement belongs to (R11), and CS Accelerator auto-enrolment (R12)."""

from __future__ import annotations

import polars as pl

CSA = "cs-accelerator"
INACTIVE_FOR_R11 = ("unenrolled",)
INACTIVE_FOR_R12 = ("unenrolled", "complete")


def assign_programmes(
    changes: pl.DataFrame, activity_programmes: pl.DataFrame, enrolments: pl.DataFrame
) -> pl.DataFrame:
    """R11: a new achievement's programme; existing achievements keep theirs.

    The activity's only programme; if it has several, the programme of the user's most recently
    created enrolment among them that is not unenrolled; else none. `activity_programmes`:
    activity_id, programme_id. `enrolments`: user_id, programme_id, state, created_at, id.
    """
    programmes = activity_programmes.select("activity_id", "programme_id").unique()
    only = (
        programmes.group_by("activity_id")
        .agg(pl.col("programme_id").first(), pl.len().alias("_count"))
        .filter(pl.col("_count") == 1)
        .select("activity_id", pl.col("programme_id").alias("_only"))
    )
    chosen = (
        enrolments.filter(~pl.col("state").is_in(INACTIVE_FOR_R11))
        .join(programmes, on="programme_id")
        .sort(["created_at", "id"], descending=True)
        .unique(subset=["user_id", "activity_id"], keep="first", maintain_order=True)
        .select("user_id", "activity_id", pl.col("programme_id").alias("_enrolled"))
    )
    is_new = pl.col("previous_state").is_null()
    return (
        changes.join(only, on="activity_id", how="left")
        .join(chosen, on=["user_id", "activity_id"], how="left")
        .with_columns(
            programme_id=pl.when(is_new)
            .then(pl.coalesce("_only", "_enrolled"))
            .otherwise("programme_id")
        )
        .drop("_only", "_enrolled")
    )


def csa_auto_enrolments(
    saved: pl.DataFrame,
    activity_programmes: pl.DataFrame,
    enrolments: pl.DataFrame,
    csa_programme_id: str,
) -> pl.DataFrame:
    """R12: users to enrol on CS Accelerator because an achievement of theirs was saved under it.

    Not when the user has a CSA enrolment already, nor when they have an enrolment, neither
    unenrolled nor complete, on another programme of the same activity.
    Returns user_id, programme_id, auto_enrolled.
    """
    csa_saved = saved.filter(pl.col("programme_id") == csa_programme_id).select(
        "user_id", "activity_id"
    )
    already = enrolments.filter(pl.col("programme_id") == csa_programme_id).select("user_id")
    other_programmes = activity_programmes.filter(pl.col("programme_id") != csa_programme_id)
    busy_elsewhere = (
        enrolments.filter(~pl.col("state").is_in(INACTIVE_FOR_R12))
        .join(other_programmes.select("activity_id", "programme_id"), on="programme_id")
        .select("user_id", "activity_id")
    )
    return (
        csa_saved.join(already, on="user_id", how="anti")
        .join(busy_elsewhere, on=["user_id", "activity_id"], how="anti")
        .select(
            "user_id",
            pl.lit(csa_programme_id).alias("programme_id"),
            pl.lit(True).alias("auto_enrolled"),
        )
        .unique(subset="user_id", maintain_order=True)
    )
