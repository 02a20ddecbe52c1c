"""R3–R4: linking memberships to users."""

from __future__ import annotations

import polars as pl

from sync_assets.rules.linking import match_memberships


def users(*rows: tuple[str, str, bool]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["id", "email", "forgotten"], orient="row")


def memberships(*rows: tuple[str, str | None]) -> pl.DataFrame:
    return pl.DataFrame(
        rows, schema={"membership_uuid": pl.String, "external_learner_id": pl.String}, orient="row"
    )


def links(frame: pl.DataFrame) -> dict[str, tuple[str, str]]:
    return {m: (u, how) for m, u, how in frame.iter_rows()}


def test_id_before_email() -> None:
    # User 2's email is literally user 1's id: the id wins.
    people = users(("1001", "a@example.org", False), ("2", "1001", False))
    assert links(match_memberships(memberships(("m", "1001")), people)) == {"m": ("1001", "id")}


def test_email_ignores_letter_case() -> None:
    people = users(("1", "Ada.Lovelace@Example.org", False))
    found = match_memberships(memberships(("m1", "ADA.LOVELACE@example.ORG")), people)
    assert links(found) == {"m1": ("1", "email")}


def test_percent_and_underscore_are_literal() -> None:
    people = users(("1", "a_b@example.org", False), ("2", "100%@example.org", False))
    found = match_memberships(
        memberships(
            ("m1", "axb@example.org"), ("m2", "1000@example.org"), ("m3", "A_B@example.org")
        ),
        people,
    )
    assert links(found) == {"m3": ("1", "email")}


def test_forgotten_users_are_never_linked() -> None:
    people = users(("1", "gone@example.org", True), ("2", "kept@example.org", False))
    found = match_memberships(
        memberships(("m1", "1"), ("m2", "GONE@example.org"), ("m3", "2")), people
    )
    assert links(found) == {"m3": ("2", "id")}


def test_an_email_shared_by_two_users_links_no_one() -> None:
    people = users(("1", "twin@example.org", False), ("2", "Twin@Example.org", False))
    assert match_memberships(memberships(("m", "twin@example.org")), people).is_empty()


def test_unknown_and_missing_external_ids_do_not_link() -> None:
    people = users(("1", "a@example.org", False))
    assert match_memberships(memberships(("m1", "stranger@x.org"), ("m2", None)), people).is_empty()


def test_a_user_may_have_several_memberships() -> None:
    people = users(("7", "seven@example.org", False))
    found = match_memberships(memberships(("m1", "7"), ("m2", "Seven@example.org")), people)
    assert links(found) == {"m1": ("7", "id"), "m2": ("7", "email")}
