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
    """`email_key` of each text (a null stays null).

    An ASCII text's key is its lower case (case folding lower-cases ASCII letters, and both
    normal forms leave ASCII as it is), made by polars; only the others go through Python. Every
    text through Python cost linking on `large` two million Python strings at once, a memory
    CPython kept for the rest of the step.
    """
    emails = emails.cast(pl.String)
    keys = emails.str.to_lowercase()
    unusual = (emails.str.len_bytes() != emails.str.len_chars()).fill_null(False)
    if not unusual.any():
        return keys
    folded = [email_key(email) for email in emails.filter(unusual).to_list()]
    return keys.scatter(unusual.arg_true(), pl.Series(folded, dtype=pl.String))


def _external(memberships: pl.DataFrame) -> pl.DataFrame:
    return memberships.select("membership_uuid", "external_learner_id").filter(
        pl.col("external_learner_id").is_not_null()
    )


def _by_id(external: pl.DataFrame, candidates: pl.DataFrame) -> pl.DataFrame:
    """Memberships whose external id is a candidate's id. A filter, not a join (user ids are
    unique): on `large`'s million memberships the join's hash table cost twice the memory."""
    return external.filter(pl.col("external_learner_id").is_in(candidates["id"].implode())).select(
        "membership_uuid",
        pl.col("external_learner_id").alias("user_id"),
        pl.lit("id").alias("matched_by"),
    )


def _email_matches(
    external: pl.DataFrame, candidates: pl.DataFrame, by_id: pl.DataFrame
) -> pl.DataFrame:
    """Every (membership, user) whose email equals the external id ignoring case, of the
    memberships not matched by id (`by_id`)."""
    rest = external.filter(~pl.col("membership_uuid").is_in(by_id["membership_uuid"].implode()))
    rest = rest.with_columns(
        email_key=pl.col("external_learner_id").map_batches(email_keys, return_dtype=pl.String)
    )
    # Narrowed to the keys asked about before the join: the join's table is then of the users
    # that can match, not of every candidate.
    users_by_key = candidates.select(
        pl.col("email").map_batches(email_keys, return_dtype=pl.String).alias("email_key"),
        pl.col("id").alias("user_id"),
    ).filter(pl.col("email_key").is_in(rest["email_key"].implode()))
    return rest.join(users_by_key, on="email_key", how="inner").select("membership_uuid", "user_id")


def _matches(memberships: pl.DataFrame, users: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The memberships matched by id, and every email match of the others."""
    candidates = users.filter(~pl.col("forgotten"))
    external = _external(memberships)
    by_id = _by_id(external, candidates)
    return by_id, _email_matches(external, candidates, by_id)


def _links(by_id: pl.DataFrame, by_email: pl.DataFrame) -> pl.DataFrame:
    one_user = by_email.filter(pl.len().over("membership_uuid") == 1)
    return pl.concat([by_id, one_user.with_columns(matched_by=pl.lit("email"))]).cast(LINK_SCHEMA)


def _ambiguous(by_email: pl.DataFrame) -> pl.DataFrame:
    return (
        by_email.group_by("membership_uuid")
        .agg(pl.col("user_id").sort().alias("user_ids"))
        .filter(pl.col("user_ids").list.len() > 1)
        .sort("membership_uuid")
        .cast(AMBIGUOUS_SCHEMA)
    )


def match_memberships(memberships: pl.DataFrame, users: pl.DataFrame) -> pl.DataFrame:
    """R3: the user each membership belongs to, by id first, else by email ignoring letter case.

    `memberships`: membership_uuid, external_learner_id. `users`: id, email, forgotten (one row
    per user). Comparison is exact (no LIKE: `%` and `_` are ordinary characters); letter case is
    Unicode case folding (`email_key`). Forgotten users are never linked. An email shared by
    several users (ignoring case) is ambiguous and links no one, so a membership never belongs to
    more than one user (R4): `ambiguous_emails` lists them. Returns one row per linked membership.
    """
    return _links(*_matches(memberships, users))


def ambiguous_emails(memberships: pl.DataFrame, users: pl.DataFrame) -> pl.DataFrame:
    """Memberships left unlinked because their external id is the email of several users."""
    return _ambiguous(_matches(memberships, users)[1])


def links_and_ambiguous(
    memberships: pl.DataFrame, users: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`match_memberships` and `ambiguous_emails` of the same memberships, matched once (a run's
    million memberships on `large`)."""
    by_id, by_email = _matches(memberships, users)
    return _links(by_id, by_email), _ambiguous(by_email)


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
