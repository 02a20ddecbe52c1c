"""R3–R4: linking memberships to users."""

from __future__ import annotations

import polars as pl

from sync_assets.rules.linking import ambiguous_emails, email_key, link_conflicts, match_memberships


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


def test_letter_case_is_unicode_case_folding() -> None:
    people = users(
        ("1", "JOSÉ@Example.org", False),
        ("2", "strasse@example.org", False),
        ("3", "ΣΊΣΥΦΟΣ@example.org", False),
        ("4", "zoë@example.org", False),  # composed ë
    )
    found = match_memberships(
        memberships(
            ("m1", "josé@example.org"),
            ("m2", "STRAẞE@EXAMPLE.ORG"),
            ("m3", "σίσυφος@example.org"),
            ("m4", "ZOE\u0308@example.org"),  # E + combining diaeresis
        ),
        people,
    )
    assert links(found) == {
        "m1": ("1", "email"),
        "m2": ("2", "email"),
        "m3": ("3", "email"),
        "m4": ("4", "email"),
    }


def test_email_key_is_the_same_for_every_spelling_of_one_address() -> None:
    spellings = [
        "Zoë@Example.org",
        "ZOË@EXAMPLE.ORG",
        "zoe\u0308@example.org",
        "ZOE\u0308@example.ORG",
    ]
    assert len({email_key(spelling) for spelling in spellings}) == 1
    assert email_key("a_b@x.org") != email_key("axb@x.org")


def test_ambiguous_emails_name_every_user_sharing_the_address() -> None:
    people = users(
        ("1", "twin@example.org", False),
        ("2", "TWIN@example.org", False),
        ("3", "Twin@Example.org", True),  # forgotten: never a candidate
        ("4", "solo@example.org", False),
    )
    found = ambiguous_emails(
        memberships(("m1", "twin@EXAMPLE.org"), ("m2", "solo@example.org"), ("m3", "1")), people
    )
    assert found.to_dicts() == [{"membership_uuid": "m1", "user_ids": ["1", "2"]}]


def test_link_conflicts_report_stored_links_r3_disagrees_with() -> None:
    people = users(("1", "one@example.org", False), ("2", "two@example.org", False))
    stored = pl.DataFrame(
        {
            "membership_uuid": ["agrees", "disagrees", "unknown"],
            "user_id": ["1", "1", "2"],
            "external_learner_id": ["ONE@example.org", "2", "stranger@example.org"],
        }
    )
    assert link_conflicts(stored, people).to_dicts() == [
        {"membership_uuid": "disagrees", "linked_user_id": "1", "matching_user_id": "2"}
    ]
