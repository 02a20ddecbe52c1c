"""Step one: link FutureLearn memberships to platform users (R3, R4)."""

from __future__ import annotations

import polars as pl

LINK_SCHEMA = {"membership_uuid": pl.String, "user_id": pl.String, "matched_by": pl.String}


def match_memberships(memberships: pl.DataFrame, users: pl.DataFrame) -> pl.DataFrame:
    """R3: the user each membership belongs to, by id first, else by email ignoring letter case.

    `memberships`: membership_uuid, external_learner_id. `users`: id, email, forgotten.
    Comparison is exact (no LIKE: `%` and `_` are ordinary characters). Forgotten users are never
    linked. An email shared by several users (ignoring case) is ambiguous and links no one, so a
    membership never belongs to more than one user (R4). Returns one row per linked membership.
    """
    candidates = users.filter(~pl.col("forgotten"))
    external = memberships.select("membership_uuid", "external_learner_id").filter(
        pl.col("external_learner_id").is_not_null()
    )
    by_id = external.join(
        candidates.select(pl.col("id").alias("external_learner_id"), pl.col("id").alias("user_id")),
        on="external_learner_id",
        how="inner",
    ).select("membership_uuid", "user_id", pl.lit("id").alias("matched_by"))

    unique_emails = (
        candidates.with_columns(email_key=pl.col("email").str.to_lowercase())
        .filter(pl.col("email_key").is_unique())
        .select("email_key", pl.col("id").alias("user_id"))
    )
    by_email = (
        external.join(by_id.select("membership_uuid"), on="membership_uuid", how="anti")
        .with_columns(email_key=pl.col("external_learner_id").str.to_lowercase())
        .join(unique_emails, on="email_key", how="inner")
        .select("membership_uuid", "user_id", pl.lit("email").alias("matched_by"))
    )
    return pl.concat([by_id, by_email]).cast(LINK_SCHEMA)
