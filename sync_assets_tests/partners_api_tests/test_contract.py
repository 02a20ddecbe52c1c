"""The client's parsers against every recorded sandbox response, and bad records quarantined."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import polars as pl
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sync_assets.partners_api import contract
from sync_assets.simulator.datasets import SANDBOX_DIR


def recorded(name: str) -> dict:
    return json.loads((SANDBOX_DIR / f"{name}.json").read_text())


def recorded_body(name: str):
    return recorded(name)["response"]["body"]


def test_course_runs_fixture() -> None:
    parsed = contract.parse_course_runs(recorded_body("course_runs"))
    assert parsed.quarantine.is_empty()
    assert parsed.records.schema == pl.Schema(contract.COURSE_RUN_SCHEMA)
    assert parsed.records.height == 126
    assert parsed.records["course_uuid"].n_unique() == 31
    first = parsed.records.row(0, named=True)
    assert first["run_uuid"] == "545ba924-9e73-4a30-bd54-4fb7dee8b913"
    assert first["start_time"] == datetime(2019, 3, 4, tzinfo=UTC)
    assert first["weeks_count"] == 4


def test_enrolments_report_fixture() -> None:
    body = recorded_body("course_enrolments_report")
    parsed = contract.parse_enrolments(body, "545ba924-9e73-4a30-bd54-4fb7dee8b913")
    records = parsed.records
    assert parsed.quarantine.is_empty()
    assert records.schema == pl.Schema(contract.ENROLMENT_SCHEMA)
    assert records.height == len(body) == 31
    # Ratios stay the exact doubles the API sent: R7 floors them.
    assert records["steps_completed_ratio"].to_list() == [r["steps_completed_ratio"] for r in body]
    deactivated = records.filter(pl.col("status") == "deactivated").row(0, named=True)
    assert deactivated["membership_uuid"] == "18e16a64-dc25-4a44-85aa-d8541fe060f0"
    assert deactivated["deactivated_at"] == datetime(2019, 4, 29, 14, 17, 55, tzinfo=UTC)
    assert records.filter(pl.col("status") == "active")["deactivated_at"].null_count() == 30


# Values a hostile report may hold where a number, a time or a uuid belongs: JSON numbers json
# reads leniently (NaN, 1e309) and orjson does not, integers past 64 bits (orjson: floats), a
# lone surrogate, a string that is not a number, null.
_SPOILT_VALUES = [
    "NaN",
    "1e309",
    "-Infinity",
    "18446744073709551616",
    "123456789012345678901234567890",
    "9223372036854775807",
    "0.5",
    "7",
    '"0.7"',
    '"\\ud800"',
    "null",
    "true",
    '"2019-03-04T10:00:00Z"',
    '{"uuid": 12345678901234567890123}',
]
_SPOILT_FIELDS = [
    "steps_completed_ratio",
    "steps_completed_count",
    "activated_at",
    "status",
    "organisation_membership",
]


@settings(max_examples=60, deadline=None)
@given(
    spoils=st.lists(
        st.tuples(
            st.integers(0, 30), st.sampled_from(_SPOILT_FIELDS), st.sampled_from(_SPOILT_VALUES)
        ),
        max_size=6,
    )
)
@example(spoils=[(0, "steps_completed_count", "18446744073709551616")])
@example(spoils=[(3, "steps_completed_ratio", "NaN"), (4, "activated_at", "1e309")])
def test_a_report_page_reads_the_same_through_the_fast_decoder_as_through_json(
    spoils: list[tuple[int, str, str]],
) -> None:
    """Reports are decoded by orjson (json when it refuses): every record is kept or
    quarantined, with the same values and reasons, as when json decoded the page; a page
    json's integer past 64 bits made unreadable as a whole is read, the record quarantined."""
    records = recorded_body("course_enrolments_report")
    marker = "__spoilt_{}__"
    for number, (index, name, _) in enumerate(spoils):
        records[index][name] = marker.format(number)
    page = json.dumps(records)
    for number, (_, _, raw) in enumerate(spoils):
        page = page.replace(json.dumps(marker.format(number)), raw)
    run = "545ba924-9e73-4a30-bd54-4fb7dee8b913"

    def parsed(decode) -> contract.Parsed | str:
        try:
            return contract.parse_enrolments(decode(page.encode()), run)
        except Exception as error:  # the page as a whole unreadable: the same reason, then
            return contract.unreadable_body(error)

    fast, plain = parsed(contract.decode_report), parsed(json.loads)
    if isinstance(plain, str) and isinstance(fast, str):
        assert fast == plain
    elif isinstance(plain, str):
        # polars cannot hold json's int past 64 bits; orjson reads it as a float, out of range.
        past_64_bits = [raw for *_, raw in spoils if raw.lstrip("-").isdigit() and len(raw) > 19]
        assert plain == "body could not be read (ComputeError)" and past_64_bits
        assert isinstance(fast, contract.Parsed) and not fast.quarantine.is_empty()
    else:
        assert isinstance(fast, contract.Parsed)
        assert fast.records.equals(plain.records)
        # The same records quarantined for the same reasons; the value named as a record's
        # uuid may read otherwise when it is not one (a number past 64 bits: "1.2e22").
        shown = ["endpoint", "source", "record_index", "reason"]
        assert fast.quarantine.select(shown).equals(plain.quarantine.select(shown))


def test_membership_fixture() -> None:
    parsed = contract.parse_memberships(
        [("8e89c1b4-d5c0-4208-b4ad-52928f37ab3f", recorded_body("organisation_membership"))]
    )
    assert parsed.records.row(0, named=True) == {
        "membership_uuid": "8e89c1b4-d5c0-4208-b4ad-52928f37ab3f",
        "learner_uuid": "4c9edfc0-eb9f-44dd-bc30-a239bbd1e840",
        "external_learner_id": "sanitized_id_0b050e9f2d557f414b9c3d445d271f14c96f6519",
    }


def test_not_found_fixture_shape() -> None:
    response = recorded("organisation_membership_404")["response"]
    assert (response["status"], response["body"]) == (404, {"error": "not_found"})


RUN = "545ba924-9e73-4a30-bd54-4fb7dee8b913"
M_GOOD = "0b1c2d3e-0000-4000-8000-000000000001"
M_BAD = "0b1c2d3e-0000-4000-8000-000000000002"
GOOD = {
    "run": {"uuid": RUN, "href": "h"},
    "organisation_membership": {"uuid": M_GOOD, "href": "h"},
    "status": "active",
    "activated_at": "2019-03-07T18:55:11.000Z",
    "deactivated_at": None,
    "steps_completed_count": 21,
    "steps_completed_ratio": 0.58,
}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"steps_completed_ratio": 1.5}, "steps_completed_ratio 1.5 outside 0-1"),
        # What orjson makes of an integer past 64 bits: a float, whole, past Int64.
        ({"steps_completed_count": 2.0**64}, "steps_completed_count out of range"),
        ({"steps_completed_ratio": -0.1}, "steps_completed_ratio -0.1 outside 0-1"),
        ({"steps_completed_ratio": "lots"}, "steps_completed_ratio is not a JSON number"),
        ({"steps_completed_ratio": "0.7"}, "steps_completed_ratio is not a JSON number"),
        ({"steps_completed_ratio": True}, "steps_completed_ratio is not a JSON number"),
        ({"steps_completed_ratio": float("nan")}, "steps_completed_ratio missing or not a number"),
        ({"steps_completed_ratio": float("inf")}, "steps_completed_ratio inf outside 0-1"),
        ({"steps_completed_ratio": None}, "steps_completed_ratio missing or not a number"),
        ({"organisation_membership": None}, "no membership uuid"),
        ({"organisation_membership": {"href": "h"}}, "no membership uuid"),
        (
            {"organisation_membership": {"uuid": M_BAD[:-3] + "\x00ab"}},
            "membership uuid is not a UUID",
        ),
        ({"run": {"uuid": "run-1"}}, "run uuid is not a UUID"),
        ({"activated_at": "yesterday"}, "activated_at missing or not an ISO 8601 time"),
        ({"deactivated_at": "31/02/2019"}, "deactivated_at not an ISO 8601 time"),
        ({"status": "paused"}, "unknown status 'paused'"),
        # The reason reaches the event log: a value that is no status word is not quoted there.
        (
            {"status": "jane.doe@example.org \u202e" + "x" * 100_000},
            "unknown status (not a status word: not shown)",
        ),
        ({"steps_completed_count": 2.5}, "steps_completed_count not an integer"),
        ({"steps_completed_count": "21"}, "steps_completed_count not an integer"),
    ],
)
def test_bad_enrolment_is_quarantined_and_the_rest_used(change: dict, reason: str) -> None:
    bad = (
        GOOD
        | change
        | (
            {}
            if "organisation_membership" in change
            else {"organisation_membership": {"uuid": M_BAD}}
        )
    )
    parsed = contract.parse_enrolments([GOOD, bad, "junk"], RUN)
    assert parsed.records["membership_uuid"].to_list() == [M_GOOD]
    reasons = dict(zip(parsed.quarantine["record_index"], parsed.quarantine["reason"], strict=True))
    assert reasons == {1: reason, 2: "record is not a JSON object"}
    assert set(parsed.quarantine["source"]) == {RUN}


def test_offset_timestamps_are_converted_to_utc() -> None:
    parsed = contract.parse_enrolments(
        [GOOD | {"activated_at": "2019-03-07T19:55:11.5+01:00"}], "r"
    )
    assert parsed.records["activated_at"].item() == datetime(
        2019, 3, 7, 18, 55, 11, 500000, tzinfo=UTC
    )


def test_not_an_array_is_a_contract_error() -> None:
    with pytest.raises(contract.ContractError, match="expected a JSON array"):
        contract.parse_enrolments({"error": "oops"}, RUN)


def test_membership_without_uuid_is_quarantined() -> None:
    parsed = contract.parse_memberships([("m-1", {"external_learner_id": "a@b.c"})])
    assert parsed.records.is_empty()
    assert parsed.quarantine.select("record_uuid", "reason").row(0) == ("m-1", "no membership uuid")
    # Quarantine never carries the learner's external id.
    assert "a@b.c" not in str(parsed.quarantine.to_dicts())


def test_membership_with_numeric_external_id() -> None:
    parsed = contract.parse_memberships([(M_GOOD, {"uuid": M_GOOD, "external_learner_id": 123})])
    assert parsed.records["external_learner_id"].item() == "123"


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"uuid": M_BAD}, "the answer is about another membership"),
        ({"uuid": M_GOOD, "learner": {"uuid": "x\x00y"}}, "learner uuid is not a UUID"),
        ({"uuid": M_GOOD, "external_learner_id": True}, "external_learner_id is not a string"),
        (
            {"uuid": M_GOOD, "external_learner_id": "x" * 1_000_000},
            "external_learner_id longer than 320 characters",
        ),
        (
            {"uuid": M_GOOD, "external_learner_id": "a\x00b@example.org"},
            "external_learner_id holds control characters",
        ),
    ],
)
def test_hostile_membership_answers_are_quarantined(answer: dict, reason: str) -> None:
    parsed = contract.parse_memberships([(M_GOOD, answer)])
    assert parsed.records.is_empty()
    assert parsed.quarantine["reason"].to_list() == [reason]
    assert "x" * 50 not in str(parsed.quarantine.to_dicts())


def test_pages_read_in_one_pass_are_what_reading_them_one_by_one_gives() -> None:
    """A course's reports are read together (`parse_enrolment_pages`): the same records, and the
    same quarantine in the same order, each record named by its own page's run and index."""
    recorded_run = "545ba924-9e73-4a30-bd54-4fb7dee8b913"
    pages = [
        ([GOOD, GOOD | {"status": "paused"}, "junk"], "run-a"),
        ([], "run-b"),
        (["junk", GOOD | {"steps_completed_ratio": 2}, GOOD], "run-c"),
        (recorded_body("course_enrolments_report"), recorded_run),
        ([7, GOOD | {"activated_at": "yesterday"}], "run-d"),
    ]
    together = contract.parse_enrolment_pages(pages)
    one_by_one = [contract.parse_enrolments(body, run) for body, run in pages]

    assert together.records.equals(pl.concat([parsed.records for parsed in one_by_one]))
    assert together.quarantine.equals(pl.concat([parsed.quarantine for parsed in one_by_one]))
    assert together.quarantine.select("source", "record_index").rows() == [
        ("run-a", 2),
        ("run-a", 1),
        ("run-c", 0),
        ("run-c", 1),
        ("run-d", 0),
        ("run-d", 1),
    ]


def test_a_page_that_is_not_an_array_among_others_is_named() -> None:
    with pytest.raises(contract.ContractError, match="for run-b: expected a JSON array"):
        contract.parse_enrolment_pages([([GOOD], "run-a"), ({"error": "oops"}, "run-b")])
