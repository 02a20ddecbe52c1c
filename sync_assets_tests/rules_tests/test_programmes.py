"""R11: a new achievement's programme. R12: CS Accelerator auto-enrolment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from sync_assets.rules.programmes import assign_programmes, csa_auto_enrolments

T = datetime(2026, 1, 1, tzinfo=UTC)
ACTIVITY_PROGRAMMES = pl.DataFrame(
    {
        "activity_id": ["solo", "shared", "shared", "csa-course", "csa-shared", "csa-shared"],
        "programme_id": [
            "primary",
            "primary",
            "secondary",
            "cs-accelerator",
            "cs-accelerator",
            "secondary",
        ],
    }
)


def enrolments(*rows: tuple[str, str, str, int]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            (i, user, programme, state, T + timedelta(days=day))
            for i, (user, programme, state, day) in enumerate(rows)
        ],
        schema={
            "id": pl.Int64,
            "user_id": pl.String,
            "programme_id": pl.String,
            "state": pl.String,
            "created_at": pl.Datetime("us", "UTC"),
        },
        orient="row",
    )


def changes(*rows: tuple[str, str, str | None, str | None]) -> pl.DataFrame:
    return pl.DataFrame(
        rows, schema=["user_id", "activity_id", "programme_id", "previous_state"], orient="row"
    )


def programme_of(frame: pl.DataFrame, user: str, activity: str) -> str | None:
    return frame.filter((pl.col("user_id") == user) & (pl.col("activity_id") == activity))[
        "programme_id"
    ].item()


def test_the_only_programme() -> None:
    result = assign_programmes(
        changes(("u1", "solo", None, None)), ACTIVITY_PROGRAMMES, enrolments()
    )
    assert programme_of(result, "u1", "solo") == "primary"


def test_several_programmes_take_the_latest_active_enrolment() -> None:
    mine = enrolments(
        ("u1", "primary", "enrolled", 1),
        ("u1", "secondary", "pending", 5),
        ("u2", "secondary", "unenrolled", 9),
        ("u2", "primary", "enrolled", 2),
    )
    result = assign_programmes(
        changes(
            ("u1", "shared", None, None), ("u2", "shared", None, None), ("u3", "shared", None, None)
        ),
        ACTIVITY_PROGRAMMES,
        mine,
    )
    assert programme_of(result, "u1", "shared") == "secondary"
    assert programme_of(result, "u2", "shared") == "primary"  # unenrolled does not count
    assert programme_of(result, "u3", "shared") is None


def test_existing_achievements_keep_their_programme() -> None:
    result = assign_programmes(
        changes(("u1", "solo", "secondary", "in_progress")), ACTIVITY_PROGRAMMES, enrolments()
    )
    assert programme_of(result, "u1", "solo") == "secondary"


def saved(*rows: tuple[str, str, str | None]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["user_id", "activity_id", "programme_id"], orient="row")


def test_csa_auto_enrolment() -> None:
    result = csa_auto_enrolments(
        saved(("u1", "csa-course", "cs-accelerator"), ("u2", "solo", "primary")),
        ACTIVITY_PROGRAMMES,
        enrolments(),
        "cs-accelerator",
    )
    assert result.rows() == [("u1", "cs-accelerator", True)]


def test_no_auto_enrolment_when_already_enrolled_on_csa() -> None:
    result = csa_auto_enrolments(
        saved(("u1", "csa-course", "cs-accelerator")),
        ACTIVITY_PROGRAMMES,
        enrolments(("u1", "cs-accelerator", "unenrolled", 1)),
        "cs-accelerator",
    )
    assert result.is_empty()


def test_the_exception_another_active_programme_of_the_activity() -> None:
    busy = enrolments(
        ("u1", "secondary", "enrolled", 1),
        ("u2", "secondary", "complete", 1),
        ("u3", "secondary", "unenrolled", 1),
    )
    result = csa_auto_enrolments(
        saved(
            ("u1", "csa-shared", "cs-accelerator"),
            ("u2", "csa-shared", "cs-accelerator"),
            ("u3", "csa-shared", "cs-accelerator"),
        ),
        ACTIVITY_PROGRAMMES,
        busy,
        "cs-accelerator",
    )
    assert sorted(result["user_id"]) == ["u2", "u3"]
