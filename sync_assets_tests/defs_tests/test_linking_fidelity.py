"""Linking fidelity end to end through `sync-assets sync`, on SQLite and PostgreSQL (SPEC R2–R4).

Links the platform made are never asked about again nor moved; letter case is Unicode case
folding on both databases; what was fetched is kept even when its course is not applied; an email
several users share is reported, not guessed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa

from sync_assets.platform.demo_catalogue import load_catalogue
from sync_assets.pseudonyms import pseudonym
from sync_assets.simulator.datasets import GeneratedDataset, generate
from sync_assets.sync.steps import linking

from .conftest import MEMBERSHIP, World, make_world
from .test_sync_end_to_end import (
    expected_achievements,
    expected_owners,
    memberships_in_known_reports,
)

CATALOGUE = {c["future_learn_course_uuid"]: c["slug"] for c in load_catalogue()}


def links(world: World) -> dict[str, str | None]:
    return {
        row["membership_uuid"]: row["user_id"] for row in world.table("future_learn_memberships")
    }


def insert_memberships(world: World, rows: list[dict]) -> None:
    with world.engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO future_learn_memberships (membership_uuid, user_id, "
                "external_learner_id) VALUES (:membership_uuid, :user_id, :external_learner_id)"
            ),
            rows,
        )


# --- 1. links the platform made ------------------------------------------------------------------


# Matched one external id at a time too: a membership's match and a stored link's check must
# read every user its own external id names, whatever else is in its chunk.
BY_ONE_EXTERNAL_ID = pytest.mark.parametrize("match_chunk", [linking.MATCH_CHUNK, 1])


@BY_ONE_EXTERNAL_ID
def test_links_the_platform_made_are_never_asked_about_nor_moved(
    world: World, match_chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(linking, "MATCH_CHUNK", match_chunk)
    owners = expected_owners(world.dataset)
    in_reports = sorted(memberships_in_known_reports(world.dataset) & owners.keys())
    lti, invited = in_reports[0], in_reports[1]
    # Users with no membership of their own: whatever they get, they get through these links.
    spare = ["platform-user-1", "platform-user-2"]
    with world.engine.begin() as connection:
        connection.execute(
            sa.text("INSERT INTO users (id, email, forgotten) VALUES (:id, :email, false)"),
            [{"id": user, "email": f"{user}@example.org"} for user in spare],
        )
    insert_memberships(
        world,
        [
            # An LTI launch linked it, nothing else known (no fetched_at, no external id).
            {"membership_uuid": lti, "user_id": spare[0], "external_learner_id": None},
            # Migrated from the old system with the external id, which names someone else.
            {
                "membership_uuid": invited,
                "user_id": spare[1],
                "external_learner_id": owners[invited],
            },
        ],
    )

    result = world.sync()

    assert result.exit_code == 0, result.output
    assert (
        world.simulator.requests(MEMBERSHIP) == len(memberships_in_known_reports(world.dataset)) - 2
    )
    stored = links(world)
    assert (stored[lti], stored[invited]) == (spare[0], spare[1])
    # Each enrolment counts for the linked user only (R4), never for the one R3 would pick.
    owner = owners | {lti: spare[0], invited: spare[1]}
    assert world.achievements() == expected_achievements(world.dataset, owner=owner)
    # The disagreement is reported, by pseudonym, and not applied.
    assert "Stored links kept although their external id names another user: 1" in result.output
    assert f"{pseudonym(spare[1])} (external id names {pseudonym(owners[invited])})" in (
        result.output
    )
    assert owners[invited] not in result.output and spare[1] not in result.output

    again = world.sync()
    assert again.exit_code == 0 and links(world) == stored


# --- 2. letter case is Unicode case folding, the same on both databases --------------------------

# (how the platform stores the email, how the API spells the external id), by learner
SPELLINGS = [
    ("JOSÉ.{n}@ÉCOLE{n}.EXAMPLE.ORG", "josé.{n}@école{n}.example.org"),  # upper stored
    ("maría.{n}@escuela{n}.example.org", "MARÍA.{n}@ESCUELA{n}.EXAMPLE.ORG"),  # lower stored
    ("STRASSE.{n}@schule{n}.example.org", "straße.{n}@Schule{n}.example.org"),  # ß folds to ss
    ("ΣΊΣΥΦΟΣ.{n}@school{n}.example.org", "σίσυφος.{n}@school{n}.example.org"),  # final sigma
    ("zoë.{n}@school{n}.example.org", "ZOE\u0308.{n}@SCHOOL{n}.EXAMPLE.ORG"),  # decomposed
]


def unicode_dataset() -> tuple[GeneratedDataset, dict[str, str]]:
    """The tiny dataset with its email links respelt in non-ASCII letters; membership → user."""
    dataset = generate("tiny", seed=11)
    owners = expected_owners(dataset)
    by_email = dataset.memberships.filter(
        pl.col("external_learner_id").str.contains("@")
        & pl.col("membership_uuid").is_in(list(owners))
    )
    learner_user = {}
    for row in by_email.iter_rows(named=True):
        learner_user[row["learner"]] = owners[row["membership_uuid"]]
    spelling = {
        learner: SPELLINGS[i % len(SPELLINGS)] for i, learner in enumerate(sorted(learner_user))
    }
    stored = {learner_user[n]: spelling[n][0].format(n=n) for n in learner_user}
    dataset.users = dataset.users.with_columns(
        email=pl.col("id").replace_strict(stored, default=pl.col("email"))
    )
    api = {
        row["membership_uuid"]: spelling[row["learner"]][1].format(n=row["learner"])
        for row in by_email.iter_rows(named=True)
    }
    dataset.memberships = dataset.memberships.with_columns(
        external_learner_id=pl.col("membership_uuid").replace_strict(
            api, default=pl.col("external_learner_id")
        )
    )
    expected = {
        row["membership_uuid"]: learner_user[row["learner"]]
        for row in by_email.iter_rows(named=True)
    }
    return dataset, expected


@pytest.fixture
def unicode_world(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[World, dict[str, str]]]:
    dataset, expected = unicode_dataset()
    for world in make_world(database_url, tmp_path, monkeypatch, dataset=dataset):
        yield world, expected


def test_non_ascii_letter_case_links_in_both_directions(
    unicode_world: tuple[World, dict[str, str]],
) -> None:
    world, expected = unicode_world
    in_reports = memberships_in_known_reports(world.dataset)
    expected = {m: user for m, user in expected.items() if m in in_reports}
    assert len(expected) >= len(SPELLINGS)

    result = world.sync()

    assert result.exit_code == 0, result.output
    stored = links(world)
    assert {m: stored.get(m) for m in expected} == expected
    assert world.achievements() == expected_achievements(world.dataset)


# --- 3. what was fetched is kept, whatever becomes of its course --------------------------------


def test_memberships_of_a_refused_course_are_kept_and_never_fetched_again(world: World) -> None:
    course = sorted(set(world.dataset.runs["course_uuid"]) & CATALOGUE.keys())[0]
    with world.engine.begin() as connection:  # as if its report had been far larger last time
        connection.execute(
            sa.text(
                "INSERT INTO course_sync_state (course_uuid, enrolment_count, synced_at)"
                " VALUES (:course, 100000, CURRENT_TIMESTAMP)"
            ),
            {"course": course},
        )

    refused = world.sync()

    assert (
        refused.exit_code != 0 and f"{world.key(course)}: enrolment report shrank" in refused.output
    )
    assert set(links(world)) == memberships_in_known_reports(world.dataset)
    world.simulator.reset_counts()
    allowed = world.sync("--allow-shrink", course)
    assert allowed.exit_code == 0, allowed.output
    assert world.simulator.requests(MEMBERSHIP) == 0
    assert world.achievements() == expected_achievements(world.dataset)


# A failed course's memberships kept and never fetched again, and a dry run's kept and not asked
# for by the real run after it: test_sync_end_to_end.py, in its failing-course and dry-run
# scenarios (the same syncs, checked there).


# --- 4. ambiguous emails are reported ------------------------------------------------------------


@BY_ONE_EXTERNAL_ID
def test_an_email_two_users_share_links_no_one_and_is_reported(
    world: World, match_chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(linking, "MATCH_CHUNK", match_chunk)
    owners = expected_owners(world.dataset)
    by_email = world.dataset.memberships.filter(
        pl.col("external_learner_id").str.contains("@")
        & pl.col("membership_uuid").is_in(list(memberships_in_known_reports(world.dataset)))
    )
    membership = by_email["membership_uuid"][0]
    user = owners[membership]
    email = world.dataset.users.filter(pl.col("id") == user)["email"].item()
    with world.engine.begin() as connection:
        connection.execute(
            sa.text("INSERT INTO users (id, email, forgotten) VALUES ('twin-1', :email, false)"),
            {"email": email.upper()},
        )

    result = world.sync()

    assert result.exit_code == 0, result.output
    ambiguous = [
        m for m, u in owners.items() if u == user and m in set(by_email["membership_uuid"])
    ]
    assert all(links(world)[m] is None for m in ambiguous)
    assert "Ambiguous emails, not linked" in result.output
    assert " = ".join(pseudonym(u) for u in sorted([user, "twin-1"])) in result.output
    assert email not in result.output and email.upper() not in result.output
