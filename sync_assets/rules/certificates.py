"""Certificate rules (SPEC §5) as pure functions over polars frames: C1, C3 and C4.

Each completion event gets exactly one outcome code; the codes say why an event needed nothing,
which the certificate job reports.
"""

from __future__ import annotations

import polars as pl

CERTIFICATES = ("primary-certificate", "secondary-certificate")
CSA = "cs-accelerator"
CSA_NOTIFICATION = "csa_assessment_eligibility"

# C4: the programme enrolment state machine, in one place.
ENROLMENT_TRANSITIONS: dict[str, frozenset[str]] = {
    "enrolled": frozenset({"unenrolled", "pending", "complete"}),
    "unenrolled": frozenset({"enrolled"}),
    "pending": frozenset({"complete", "enrolled"}),
    "complete": frozenset({"pending", "enrolled"}),
}


def enrolment_refusal(source: str, target: str, flagged: bool) -> str | None:
    """Why C4 refuses moving an enrolment from `source` to `target`, or None when allowed."""
    if target not in ENROLMENT_TRANSITIONS.get(source, frozenset()):
        return f"{source} → {target} is not an allowed transition (C4)"
    if target == "complete" and flagged:
        return "flagged enrolments cannot complete (C4)"
    return None


# Outcome codes written on each handled completion event.
MOVED_TO_PENDING = "moved_to_pending"
REQUIREMENT_NOT_MET = "requirement_not_met"
ENROLMENT_NOT_ENROLLED = "enrolment_not_enrolled"
NOTIFIED = "notified"
ALREADY_NOTIFIED = "already_notified"
NOT_ENOUGH_CREDIT = "not_enough_credit"
CSA_ENROLMENT_INACTIVE = "csa_enrolment_inactive"
NO_CERTIFICATE_RULE = "no_certificate_rule"
EFFECTS = (MOVED_TO_PENDING, NOTIFIED)


def requirements_met(
    pairs: pl.DataFrame, structure: pl.DataFrame, complete: pl.DataFrame
) -> pl.DataFrame:
    """C1's requirement for each (user_id, programme_id) of `pairs`.

    For every grouping of the programme, at least `required_for_completion` of its activities
    have a complete achievement of the user *for that programme*. `structure`: programme_id,
    grouping_id, required_for_completion, activity_id (programme_structure). `complete`: the
    users' complete achievements (user_id, activity_id, programme_id).
    Returns pairs with `met` and `short_groupings` (how many groupings fall short).
    """
    groupings = structure.filter(pl.col("grouping_id").is_not_null())
    needed = groupings.select("programme_id", "grouping_id", "required_for_completion").unique()
    done = (
        complete.join(groupings, on=["programme_id", "activity_id"])
        .group_by("user_id", "programme_id", "grouping_id")
        .agg(pl.col("activity_id").n_unique().alias("done"))
    )
    per_grouping = (
        pairs.select("user_id", "programme_id")
        .unique()
        .join(needed, on="programme_id", how="left")
        .join(done, on=["user_id", "programme_id", "grouping_id"], how="left")
        .with_columns(
            short=pl.col("grouping_id").is_not_null()
            & (pl.col("done").fill_null(0) < pl.col("required_for_completion"))
        )
    )
    return per_grouping.group_by("user_id", "programme_id").agg(
        (~pl.col("short").any()).alias("met"), pl.col("short").sum().alias("short_groupings")
    )


def csa_credit(complete: pl.DataFrame, csa_programme_id: str) -> pl.DataFrame:
    """Face-to-face and online credit of each user's completed CSA achievements.

    `complete`: user_id, programme_id, category, credit. Returns user_id, face_to_face, online.
    """
    csa = complete.filter(pl.col("programme_id") == csa_programme_id)
    return csa.group_by("user_id").agg(
        pl.col("credit").filter(pl.col("category") == "face-to-face").sum().alias("face_to_face"),
        pl.col("credit").filter(pl.col("category") == "online").sum().alias("online"),
    )


def enough_csa_credit(face_to_face: pl.Expr, online: pl.Expr) -> pl.Expr:
    """C3: face-to-face ≥ 20, or face-to-face ≥ 10 and online ≥ 20."""
    return (face_to_face >= 20) | ((face_to_face >= 10) & (online >= 20))


def certificate_outcomes(
    events: pl.DataFrame,
    programmes: pl.DataFrame,
    structure: pl.DataFrame,
    complete: pl.DataFrame,
    enrolments: pl.DataFrame,
    notifications: pl.DataFrame,
) -> pl.DataFrame:
    """C1 and C3 for a batch of completion events: one outcome per event.

    `events`: id, user_id, programme_id. `programmes`: id, slug. `enrolments`: id, user_id,
    programme_id, state, flagged. `notifications`: user_id, kind. Returns the events with
    `outcome`, `enrolment_id` (to move to pending, for C1) and `detail`.
    Several events of one user and programme in a batch move the enrolment once: the first event
    (smallest id) carries the effect; the rest find it done.
    """
    slugs = programmes.select(pl.col("id").alias("programme_id"), pl.col("slug"))
    csa_ids = programmes.filter(pl.col("slug") == CSA)["id"].to_list()
    frame = (
        events.select("id", "user_id", "programme_id")
        .join(slugs, on="programme_id", how="left")
        .join(
            enrolments.select(
                pl.col("id").alias("enrolment_id"), "user_id", "programme_id", "state", "flagged"
            ),
            on=["user_id", "programme_id"],
            how="left",
        )
        .join(
            requirements_met(events, structure, complete),
            on=["user_id", "programme_id"],
            how="left",
        )
        .join(
            csa_credit(complete, csa_ids[0] if csa_ids else "")
            if csa_ids
            else pl.DataFrame(
                schema={"user_id": pl.String, "face_to_face": pl.Float64, "online": pl.Float64}
            ),
            on="user_id",
            how="left",
        )
        .join(
            notifications.filter(pl.col("kind") == CSA_NOTIFICATION)
            .select("user_id", pl.lit(True).alias("notified"))
            .unique(),
            on="user_id",
            how="left",
        )
        .with_columns(
            pl.col("face_to_face").fill_null(0.0),
            pl.col("online").fill_null(0.0),
            pl.col("notified").fill_null(False),
        )
    )
    certificate = pl.col("slug").is_in(CERTIFICATES)
    csa = pl.col("slug") == CSA
    outcome = (
        pl.when(certificate & pl.col("met").not_())
        .then(pl.lit(REQUIREMENT_NOT_MET))
        .when(certificate & (pl.col("state") != "enrolled").fill_null(True))
        .then(pl.lit(ENROLMENT_NOT_ENROLLED))
        .when(certificate)
        .then(pl.lit(MOVED_TO_PENDING))
        .when(csa & ~pl.col("state").is_in(["enrolled", "pending"]).fill_null(False))
        .then(pl.lit(CSA_ENROLMENT_INACTIVE))
        .when(csa & ~enough_csa_credit(pl.col("face_to_face"), pl.col("online")))
        .then(pl.lit(NOT_ENOUGH_CREDIT))
        .when(csa & pl.col("notified"))
        .then(pl.lit(ALREADY_NOTIFIED))
        .when(csa)
        .then(pl.lit(NOTIFIED))
        .otherwise(pl.lit(NO_CERTIFICATE_RULE))
    )
    detail = (
        pl.when(pl.col("outcome") == REQUIREMENT_NOT_MET)
        .then(pl.format("{} grouping(s) short", pl.col("short_groupings")))
        .when(pl.col("outcome") == ENROLMENT_NOT_ENROLLED)
        .then(pl.format("enrolment is {}", pl.col("state").fill_null("missing")))
        .when(pl.col("outcome") == CSA_ENROLMENT_INACTIVE)
        .then(pl.format("CSA enrolment is {}", pl.col("state").fill_null("missing")))
        .when(pl.col("outcome") == NOT_ENOUGH_CREDIT)
        .then(pl.format("credit face-to-face {}, online {}", "face_to_face", "online"))
        .otherwise(pl.lit(None, pl.String))
    )
    decided = frame.with_columns(outcome=outcome).with_columns(detail=detail).sort("id")
    # One effect per user and programme within the batch; later duplicates find it done.
    first = pl.col("id") == pl.col("id").min().over("user_id", "programme_id", "outcome")
    return decided.with_columns(
        outcome=pl.when(pl.col("outcome").is_in(EFFECTS) & ~first)
        .then(
            pl.when(pl.col("outcome") == NOTIFIED)
            .then(pl.lit(ALREADY_NOTIFIED))
            .otherwise(pl.lit(ENROLMENT_NOT_ENROLLED))
        )
        .otherwise("outcome")
    ).select("id", "user_id", "programme_id", "slug", "enrolment_id", "outcome", "detail")
