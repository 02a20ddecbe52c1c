"""Step one: link FutureLearn memberships to platform users (R3, R4)."""

from __future__ import annotations

import unicodedata

import polars as pl

LINK_SCHEMA = {"membership_uuid": pl.String, "user_id": pl.String, "matched_by": pl.String}
AMBIGUOUS_SCHEMA = {"membership_uuid": pl.String, "user_ids": pl.List(pl.String)}
CONFLICT_SCHEMA = {
    "membership_uuid": pl.String,
    "linked_user_id": pl.String,  # the stored link, kept
    "matching_user_id": pl.String,  # whom its external id names (R3)
}


def email_key(email: str) -> str:
    """R3's "equal ignoring letter case" as one key: Unicode canonical caseless form.

    Case folding, not lower-casing: `STRASSE` and `straße`, `ΣΊΣΥΦΟΣ` and `σίσυφος` are equal;
    composed and decomposed accents (é and e + ◌́) too. Python computes it for both databases,
    so SQLite and PostgreSQL give the same links.
    """
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", email).casefold())


def email_keys(emails: pl.Series) -> pl.Series:
    return pl.Series(
        emails.name, [None if e is None else email_key(e) for e in emails.to_list()], pl.String
    )


def _external(memberships: pl.DataFrame) -> pl.DataFrame:
    return memberships.select("membership_uuid", "external_learner_id").filter(
        pl.col("external_learner_id").is_not_null()
    )


def _by_id(external: pl.DataFrame, candidates: pl.DataFrame) -> pl.DataFrame:
    return external.join(
        candidates.select(pl.col("id").alias("external_learner_id"), pl.col("id").alias("user_id")),
        on="external_learner_id",
        how="inner",
    ).select("membership_uuid", "user_id", pl.lit("id").alias("matched_by"))


def _email_matches(external: pl.DataFrame, candidates: pl.DataFrame) -> pl.DataFrame:
    """Every (membership, user) whose email equals the external id ignoring case, not by id."""
    users_by_key = candidates.select(
        pl.col("email").map_batches(email_keys, return_dtype=pl.String).alias("email_key"),
        pl.col("id").alias("user_id"),
    )
    return (
        external.join(_by_id(external, candidates), on="membership_uuid", how="anti")
        .with_columns(
            email_key=pl.col("external_learner_id").map_batches(email_keys, return_dtype=pl.String)
        )
        .join(users_by_key, on="email_key", how="inner")
        .select("membership_uuid", "user_id")
    )


def match_memberships(memberships: pl.DataFrame, users: pl.DataFrame) -> pl.DataFrame:
    """R3: the user each membership belongs to, by id first, else by email ignoring letter case.

    `memberships`: membership_uuid, external_learner_id. `users`: id, email, forgotten.
    Comparison is exact (no LIKE: `%` and `_` are ordinary characters); letter case is Unicode
    case folding (`email_key`). Forgotten users are never linked. An email shared by several users
    (ignoring case) is ambiguous and links no one, so a membership never belongs to more than one
    user (R4): `ambiguous_emails` lists them. Returns one row per linked membership.
    """
    candidates = users.filter(~pl.col("forgotten"))
    external = _external(memberships)
    by_id = _by_id(external, candidates)
    by_email = (
        _email_matches(external, candidates)
        .filter(pl.len().over("membership_uuid") == 1)
        .with_columns(matched_by=pl.lit("email"))
    )
    return pl.concat([by_id, by_email]).cast(LINK_SCHEMA)


def ambiguous_emails(memberships: pl.DataFrame, users: pl.DataFrame) -> pl.DataFrame:
    """Memberships left unlinked because their external id is the email of several users."""
    candidates = users.filter(~pl.col("forgotten"))
    return (
        _email_matches(_external(memberships), candidates)
        .group_by("membership_uuid")
        .agg(pl.col("user_id").sort().alias("user_ids"))
        .filter(pl.col("user_ids").list.len() > 1)
        .sort("membership_uuid")
        .cast(AMBIGUOUS_SCHEMA)
    )


def link_conflicts(linked: pl.DataFrame, users: pl.DataFrame) -> pl.DataFrame:
    """Stored links whose membership's external id names another user (R3), to report.

    `linked`: membership_uuid, user_id (the stored link), external_learner_id. The stored link
    stands (R2: a membership already linked is never re-pointed); this says where R3 disagrees.
    """
    matched = match_memberships(linked, users)
    return (
        linked.select("membership_uuid", pl.col("user_id").alias("linked_user_id"))
        .join(
            matched.select("membership_uuid", pl.col("user_id").alias("matching_user_id")),
            on="membership_uuid",
        )
        .filter(pl.col("linked_user_id") != pl.col("matching_user_id"))
        .sort("membership_uuid")
        .cast(CONFLICT_SCHEMA)
    )
