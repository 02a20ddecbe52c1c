"""The Partners API contract (SPEC §2) as polars schemas, and parsers that quarantine bad records.

Every parser takes decoded JSON and returns the valid records as a frame with an explicit schema
(UTC timestamps, floats, strings) plus a quarantine frame naming each rejected record and why.
The rest of a report is still used. Quarantine rows carry uuids and reasons only, never personal
data such as an `external_learner_id`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import polars as pl

UTC_TIME = pl.Datetime("us", "UTC")

# The four endpoints of SPEC §2, by path; the group is the uuid the request is about.
ROUTES = (
    ("course_runs", re.compile(r"^/partners/course_runs/?$")),
    (
        "course_enrolments_report",
        re.compile(r"^/partners/course_runs/([^/]+)/course_enrolments_report/?$"),
    ),
    ("course_run", re.compile(r"^/partners/course_runs/([^/]+)/?$")),
    ("organisation_membership", re.compile(r"^/partners/organisation_memberships/([^/]+)/?$")),
)

COURSE_RUN_SCHEMA = {
    "run_uuid": pl.String,
    "course_uuid": pl.String,
    "title": pl.String,
    "full_code": pl.String,
    "code": pl.String,
    "start_time": UTC_TIME,
    "weeks_count": pl.Int64,
}
ENROLMENT_SCHEMA = {
    "run_uuid": pl.String,
    "membership_uuid": pl.String,
    "status": pl.String,
    "activated_at": UTC_TIME,
    "deactivated_at": UTC_TIME,
    "steps_completed_count": pl.Int64,
    "steps_completed_ratio": pl.Float64,
}
MEMBERSHIP_SCHEMA = {
    "membership_uuid": pl.String,
    "learner_uuid": pl.String,
    "external_learner_id": pl.String,
}
QUARANTINE_SCHEMA = {
    "endpoint": pl.String,
    "source": pl.String,  # the run or membership the request was about
    "record_index": pl.Int64,
    "record_uuid": pl.String,
    "reason": pl.String,
}
ENROLMENT_STATUSES = ("active", "deactivated")
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_UUID = re.compile(UUID_PATTERN)
# Longer than any email (254) or platform id; anything longer is not one.
MAX_EXTERNAL_ID = 320
MAX_TITLE = 500
CONTROL_CHARACTERS = r"[\x00-\x1f\x7f]"
_CONTROL = re.compile(CONTROL_CHARACTERS)

_REF = pl.Struct({"uuid": pl.String})
# Every scalar is read as a string first, so a wrong type becomes a reason, not a crash.
_RAW_COURSE_RUN = {
    "uuid": pl.String,
    "title": pl.String,
    "full_code": pl.String,
    "code": pl.String,
    "start_time": pl.String,
    "weeks_count": pl.String,
    "course": _REF,
}
_RAW_ENROLMENT = {
    "run": _REF,
    "organisation_membership": _REF,
    "status": pl.String,
    "activated_at": pl.String,
    "deactivated_at": pl.String,
    "steps_completed_count": pl.String,
    "steps_completed_ratio": pl.String,
}


@dataclass(frozen=True)
class Parsed:
    """Valid records and the quarantined ones, with their reasons."""

    records: pl.DataFrame
    quarantine: pl.DataFrame
    # Sources whose whole body could not be used (not one record's problem) → why; look-ups only.
    unreadable: dict[str, str] = field(default_factory=dict)


class ContractError(ValueError):
    """A response whose shape is not the contract's at all (not a record-level problem)."""


def decode_report(content: bytes) -> Any:
    """An enrolment report's page decoded: by orjson (a third of json's time on a report page,
    read twice a night when it changed: by the check, then by the sync), and by json when orjson
    refuses it, so that what json reads leniently (NaN, 1e309, a lone surrogate) is read, or
    refused with the reason `unreadable_body` gives, as it always was. A report's numbers are
    read as floats (`parse_enrolments`): orjson's float for an integer past 64 bits, where json
    gives an int that polars cannot hold (the whole page unreadable), quarantines its record.
    (json's, or orjson's, integer from 2^63 to 2^64 still makes a page unreadable: a known
    limit of polars' frame from Python values.)"""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return json.loads(content)


def unreadable_body(error: BaseException) -> str:
    """Why a body could not be decoded or validated, in one line that never quotes it.

    Only our own ContractError's text is kept: other errors (json's, polars') may show the values
    they choked on, and a body holds emails.
    """
    if isinstance(error, ContractError):
        return str(error)
    if isinstance(error, UnicodeDecodeError):
        return "body is not UTF-8"
    if isinstance(error, json.JSONDecodeError):
        return "body is not JSON"
    if isinstance(error, RecursionError):
        return "body nested too deeply to read"
    if isinstance(error, ValueError) and "integer string conversion" in str(error):
        return "body holds an integer too long to read (over 4,300 digits)"
    return f"body could not be read ({type(error).__name__})"


def route(path: str) -> tuple[str, str | None]:
    """The endpoint a path belongs to, and the uuid in it; ("unknown", None) for anything else."""
    for endpoint, pattern in ROUTES:
        match = pattern.match(path)
        if match:
            return endpoint, (match.group(1) if match.groups() else None)
    return "unknown", None


def empty_quarantine() -> pl.DataFrame:
    return pl.DataFrame(schema=QUARANTINE_SCHEMA)


def parse_timestamp(column: pl.Expr) -> pl.Expr:
    """ISO 8601 with milliseconds and `Z`, as the API sends it; an explicit offset is accepted."""
    zulu = column.str.to_datetime("%Y-%m-%dT%H:%M:%S%.fZ", time_zone="UTC", strict=False)
    offset = column.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%:z", strict=False)
    return pl.coalesce(zulu, offset.dt.convert_time_zone("UTC")).cast(UTC_TIME)


def _first_reason(checks: list[tuple[pl.Expr, str | pl.Expr]]) -> pl.Expr:
    expression = pl.lit(None, pl.String)
    for failed, reason in reversed(checks):
        value = reason if isinstance(reason, pl.Expr) else pl.lit(reason)
        expression = pl.when(failed).then(value).otherwise(expression)
    return expression


def _objects(body: Any, endpoint: str, source: str) -> tuple[list[dict], pl.DataFrame]:
    """Split an array body into its objects and quarantine rows for non-objects."""
    if not isinstance(body, list):
        about = f"{endpoint} for {source}" if source else endpoint
        raise ContractError(f"{about}: expected a JSON array, got {type(body).__name__}")
    objects, rejected = [], []
    for index, record in enumerate(body):
        if isinstance(record, dict):
            objects.append((index, record))
        else:
            rejected.append((endpoint, source, index, None, "record is not a JSON object"))
    quarantine = pl.DataFrame(rejected, schema=QUARANTINE_SCHEMA, orient="row")
    return objects, quarantine


def _split(
    frame: pl.DataFrame,
    reason: pl.Expr,
    uuid_column: str,
    endpoint: str,
    source: pl.Expr,
    keep: Sequence[str] = (),
) -> tuple[pl.DataFrame, pl.DataFrame]:
    checked = frame.with_columns(reason.alias("_reason"))
    quarantine = checked.filter(pl.col("_reason").is_not_null()).select(
        pl.lit(endpoint).alias("endpoint"),
        source.alias("source"),
        pl.col("_index").alias("record_index"),
        pl.col(uuid_column).alias("record_uuid"),
        pl.col("_reason").alias("reason"),
        *keep,
    )
    return checked.filter(pl.col("_reason").is_null()), quarantine


def _raw_frame(objects: list[tuple[int, dict]], schema: dict) -> pl.DataFrame:
    return pl.from_dicts(
        [record for _, record in objects], schema=schema, strict=False
    ).with_columns(pl.Series("_index", [index for index, _ in objects], pl.Int64))


def _is_json_number(value: Any) -> bool:
    """A JSON number, as json.loads gives it: int or float, not a string, not true/false."""
    return type(value) in (int, float)


def _not_uuid(column: pl.Expr) -> pl.Expr:
    return column.is_null() | ~column.str.contains(UUID_PATTERN)


def parse_enrolments(body: Any, run_uuid: str) -> Parsed:
    """An enrolment report of one run (SPEC §2)."""
    return parse_enrolment_pages([(body, run_uuid)])


def parse_enrolment_pages(pages: Sequence[tuple[Any, str]]) -> Parsed:
    """Enrolment report pages, each decoded with its run's uuid, read in one pass: what
    `parse_enrolments` gives page by page, concatenated in the pages' order.

    A pass costs ~5 ms however few its records (polars plans a dozen checks each time): a
    course's reports read together pay it once, not once a run (3,922 changed reports on a next
    day of `large`). Raises ContractError for the first page that is not an array.
    """
    endpoint = "course_enrolments_report"
    objects: list[tuple[int, dict]] = []
    rejected: list[pl.DataFrame] = []
    counts: list[int] = []
    for body, run_uuid in pages:
        found, refused = _objects(body, endpoint, run_uuid)
        objects += found
        rejected.append(refused)
        counts.append(len(found))
    if not objects:
        return Parsed(
            pl.DataFrame(schema=ENROLMENT_SCHEMA), pl.concat([empty_quarantine(), *rejected])
        )
    # Types are checked on the decoded JSON: the frame reads every scalar as a string.
    ratio_numbers = [_is_json_number(r.get("steps_completed_ratio")) for _, r in objects]
    count_numbers = [
        r.get("steps_completed_count") is None or _is_json_number(r.get("steps_completed_count"))
        for _, r in objects
    ]
    raw = _raw_frame(objects, _RAW_ENROLMENT).with_columns(
        pl.Series("_page", np.repeat(np.arange(len(pages), dtype=np.int32), counts)),
        pl.Series("_ratio_is_number", ratio_numbers, pl.Boolean),
        pl.Series("_count_is_number", count_numbers, pl.Boolean),
        pl.col("run").struct.field("uuid").alias("run_uuid"),
        pl.col("organisation_membership").struct.field("uuid").alias("membership_uuid"),
        parse_timestamp(pl.col("activated_at")).alias("_activated_at"),
        parse_timestamp(pl.col("deactivated_at")).alias("_deactivated_at"),
        pl.col("steps_completed_ratio").cast(pl.Float64, strict=False).alias("_ratio"),
        pl.col("steps_completed_count").cast(pl.Float64, strict=False).alias("_count"),
    )
    ratio = pl.col("_ratio")
    reason = _first_reason(
        [
            (
                pl.col("membership_uuid").is_null() | (pl.col("membership_uuid") == ""),
                "no membership uuid",
            ),
            (_not_uuid(pl.col("membership_uuid")), "membership uuid is not a UUID"),
            (pl.col("run_uuid").is_null(), "no run uuid"),
            (_not_uuid(pl.col("run_uuid")), "run uuid is not a UUID"),
            (
                ~pl.col("status").is_in(ENROLMENT_STATUSES) | pl.col("status").is_null(),
                # Quoted only when it is a plain word: the reason goes to the event log, and a
                # hostile value could carry an email, control characters or a megabyte of text.
                pl.when(pl.col("status").str.contains(r"^[A-Za-z_-]{1,30}$"))
                .then(pl.format("unknown status '{}'", pl.col("status")))
                .when(pl.col("status").is_null())
                .then(pl.lit("unknown status 'null'"))
                .otherwise(pl.lit("unknown status (not a status word: not shown)")),
            ),
            (pl.col("_activated_at").is_null(), "activated_at missing or not an ISO 8601 time"),
            (
                pl.col("deactivated_at").is_not_null() & pl.col("_deactivated_at").is_null(),
                "deactivated_at not an ISO 8601 time",
            ),
            (
                pl.col("steps_completed_ratio").is_not_null() & ~pl.col("_ratio_is_number"),
                "steps_completed_ratio is not a JSON number",
            ),
            (ratio.is_null() | ratio.is_nan(), "steps_completed_ratio missing or not a number"),
            ((ratio < 0) | (ratio > 1), pl.format("steps_completed_ratio {} outside 0-1", ratio)),
            (
                pl.col("steps_completed_count").is_not_null()
                & (
                    ~pl.col("_count_is_number")
                    | pl.col("_count").is_null()
                    | (pl.col("_count") != pl.col("_count").floor())
                ),
                "steps_completed_count not an integer",
            ),
            (
                # Past Int64 (a float from orjson, for an integer past 64 bits): the record's,
                # not the page's, problem.
                pl.col("_count").abs() >= 2.0**63,
                "steps_completed_count out of range",
            ),
        ]
    )
    sources = [run_uuid for _, run_uuid in pages]
    source = pl.col("_page").replace_strict(range(len(pages)), sources, return_dtype=pl.String)
    valid, quarantine = _split(raw, reason, "membership_uuid", endpoint, source, keep=["_page"])
    records = valid.select(
        "run_uuid",
        "membership_uuid",
        "status",
        pl.col("_activated_at").alias("activated_at"),
        pl.col("_deactivated_at").alias("deactivated_at"),
        pl.col("_count").cast(pl.Int64).alias("steps_completed_count"),
        pl.col("_ratio").alias("steps_completed_ratio"),
    )
    return Parsed(records, _page_by_page(rejected, quarantine))


def _page_by_page(rejected: list[pl.DataFrame], quarantined: pl.DataFrame) -> pl.DataFrame:
    """Each page's non-objects, then its records quarantined: the order page by page gave."""
    if quarantined.is_empty():
        return pl.concat(rejected).select(list(QUARANTINE_SCHEMA))
    by_page = quarantined.partition_by("_page", as_dict=True, include_key=False)
    parts: list[pl.DataFrame] = []
    for page, refused in enumerate(rejected):
        parts += [refused, by_page.get((page,), refused.clear())]
    return pl.concat(parts).select(list(QUARANTINE_SCHEMA))


def parse_course_runs(body: Any) -> Parsed:
    """The list of course runs (or a one-element list built from a single run)."""
    endpoint = "course_runs"
    objects, rejected = _objects(body, endpoint, "")
    if not objects:
        return Parsed(pl.DataFrame(schema=COURSE_RUN_SCHEMA), rejected)
    raw = _raw_frame(objects, _RAW_COURSE_RUN).with_columns(
        pl.col("uuid").alias("run_uuid"),
        pl.col("course").struct.field("uuid").alias("course_uuid"),
        parse_timestamp(pl.col("start_time")).alias("_start_time"),
        pl.col("weeks_count").cast(pl.Int64, strict=False).alias("_weeks"),
    )
    reason = _first_reason(
        [
            (pl.col("run_uuid").is_null(), "no run uuid"),
            (_not_uuid(pl.col("run_uuid")), "run uuid is not a UUID"),
            (pl.col("course_uuid").is_null(), "no course uuid"),
            (_not_uuid(pl.col("course_uuid")), "course uuid is not a UUID"),
            (
                pl.col("title").str.len_chars() > MAX_TITLE,
                f"title longer than {MAX_TITLE} characters",
            ),
            (
                pl.col("title").str.contains(CONTROL_CHARACTERS),
                "title holds control characters",
            ),
            (pl.col("_start_time").is_null(), "start_time missing or not an ISO 8601 time"),
            (
                pl.col("weeks_count").is_not_null() & pl.col("_weeks").is_null(),
                "weeks_count not an integer",
            ),
        ]
    )
    valid, quarantine = _split(raw, reason, "run_uuid", endpoint, pl.lit(""))
    records = valid.select(
        "run_uuid",
        "course_uuid",
        "title",
        "full_code",
        "code",
        pl.col("_start_time").alias("start_time"),
        pl.col("_weeks").alias("weeks_count"),
    )
    return Parsed(records, pl.concat([rejected, quarantine]))


def membership_record(body: Any, membership_uuid: str) -> tuple[dict | None, tuple | None]:
    """One organisation membership as a record, or a quarantine row with its reason."""
    endpoint = "organisation_membership"
    if not isinstance(body, dict):
        raise ContractError(f"{endpoint} {membership_uuid}: expected a JSON object")
    learner = body.get("learner") if isinstance(body.get("learner"), dict) else {}
    external = body.get("external_learner_id")
    uuid = body.get("uuid")
    learner_uuid = learner.get("uuid")
    reason = None
    if not isinstance(uuid, str) or not uuid:
        reason = "no membership uuid"
    elif uuid != membership_uuid:
        reason = "the answer is about another membership"
    elif learner_uuid is not None and not (
        isinstance(learner_uuid, str) and _UUID.match(learner_uuid)
    ):
        reason = "learner uuid is not a UUID"
    elif external is not None and (
        isinstance(external, bool) or not isinstance(external, (str, int))
    ):
        reason = "external_learner_id is not a string"
    elif external is not None and len(str(external)) > MAX_EXTERNAL_ID:
        reason = f"external_learner_id longer than {MAX_EXTERNAL_ID} characters"
    elif external is not None and _CONTROL.search(str(external)):
        reason = "external_learner_id holds control characters"
    if reason:
        return None, (endpoint, membership_uuid, 0, membership_uuid, reason)
    record = {
        "membership_uuid": uuid,
        "learner_uuid": learner_uuid,
        "external_learner_id": None if external is None else str(external),
    }
    return record, None


def parse_memberships(answers: list[tuple[str, Any]]) -> Parsed:
    """Many memberships at once: one frame for all (a frame each would cost far more).

    A body that cannot be read at all is named in `unreadable`, not raised: it costs the courses
    holding its membership, not the batch.
    """
    records, rejected = [], []
    unreadable: dict[str, str] = {}
    for membership_uuid, body in answers:
        try:
            record, quarantined = membership_record(body, membership_uuid)
        except Exception as error:  # any body, however hostile, costs its own membership only
            unreadable[membership_uuid] = unreadable_body(error)
            continue
        if record is not None:
            records.append(record)
        if quarantined is not None:
            rejected.append(quarantined)
    return Parsed(
        pl.DataFrame(records, schema=MEMBERSHIP_SCHEMA),
        pl.DataFrame(rejected, schema=QUARANTINE_SCHEMA, orient="row"),
        unreadable,
    )
