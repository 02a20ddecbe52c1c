"""What each column of the sync's stored frames means: the UI's column descriptions.

One description per column name: a name means the same thing in every asset that has it (a
`user_id` is a platform user wherever it appears). The frames' schemas are the real ones the
steps build (`ASSET_SCHEMAS`), so a column added to a step without a description here fails
`test_every_definition_describes_itself` (definitions) and the end-to-end metadata test (what a
run actually stores).
"""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg
import polars as pl

from sync_assets.partners_api import contract
from sync_assets.platform import sync_store
from sync_assets.sync import steps

# latest_enrolments: each linked user's chosen enrolment (contract.ENROLMENT_SCHEMA), with the
# user it belongs to, its run's start (an R6 tie-break) and its course.
LATEST_ENROLMENTS_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    **contract.ENROLMENT_SCHEMA,
    "user_id": pl.String,
    "start_time": contract.UTC_TIME,
    "course_uuid": pl.String,
}

# Each asset's stored frame (one per course partition; course_runs: one for all).
ASSET_SCHEMAS: dict[str, Mapping[str, pl.DataType | type[pl.DataType]]] = {
    "course_runs": steps.COURSE_RUNS_SCHEMA,
    "enrolments": contract.ENROLMENT_SCHEMA,
    "linked_memberships": steps.LINKED_SCHEMA,
    "latest_enrolments": LATEST_ENROLMENTS_SCHEMA,
    "activity_progress": sync_store.ACHIEVEMENT_CHANGE_SCHEMA,
}

DESCRIPTIONS: dict[str, str] = {
    # FutureLearn course runs (R1)
    "run_uuid": "FutureLearn course run uuid (a course has several runs): the run the row is about",
    "course_uuid": "FutureLearn course uuid; a course partition's key ends with its first digits",
    "title": "The run's title on FutureLearn; a course is called by its latest run's title",
    "full_code": "The run's full code on FutureLearn (course code and run number)",
    "code": "The course's code on FutureLearn",
    "start_time": "When the run starts (UTC); between two enrolments otherwise equal, the later "
    "run's wins (R6)",
    "weeks_count": "The run's length in weeks",
    "known": "Whether a platform activity has this course's uuid (R1): only known courses are "
    "synced, unknown ones are reported by the unknown_courses_reported check",
    "activity_id": "The platform activity for the course (activities.future_learn_course_uuid); "
    "null for a course the platform does not know",
    "report_digest": "SHA-256 of the run's enrolment report as this run's check of the courses "
    "was served it (null: not checked); the step that reads the report takes it from the HTTP "
    "cache by this digest instead of asking again",
    "report_not_modified": "Whether the check's request for the run's report answered 304",
    "report_error": "Why the check could not have the course's reports (after every retry); "
    "the course's sync fails with it, without asking again",
    # Enrolment reports
    "membership_uuid": "FutureLearn organisation membership uuid: a learner's membership of the "
    "partner organisation, linked to at most one platform user (R4)",
    "status": "The enrolment's status in the report: active or deactivated",
    "activated_at": "When the learner enrolled on the run (UTC); the greatest is the user's "
    "latest enrolment (R6)",
    "deactivated_at": "When the learner left the run (UTC), null unless deactivated; a "
    "deactivated enrolment under 60% progress drops the achievement (R9)",
    "steps_completed_count": "How many of the run's steps the learner has completed",
    "steps_completed_ratio": "Share of the run's steps completed, 0.0 to 1.0; progress is "
    "floor(ratio × 100) (R7)",
    # Linking (R2–R4)
    "user_id": "The platform user (shown as a digest, user:…, because an id can be a learner's "
    "external id); null when the membership is linked to no usable user",
    "new_link": "Whether this sync linked the membership to its user",
    "write": "Whether this sync writes the membership's row with its course (a new link); "
    "false for what was already stored",
    "fetched_at": "When FutureLearn was asked about the membership (once ever, R2); null for a "
    "membership the platform linked itself",
    "linked_at": "When the membership was linked to its user",
    "gone_at": "When FutureLearn answered 404 for the membership: kept as gone, not asked again",
    # Achievement changes (R7–R12)
    "programme_id": "The programme the achievement counts towards (R11); null when none applies",
    "progress": "The achievement's progress to write, 0 to 100; never lower than stored (R7)",
    "state": "The achievement's state to write: enrolled, in_progress, complete or dropped (R9)",
    "completed_at": "When the achievement became complete (UTC); null unless complete",
    "previous_state": "The stored state the change was planned from (null: a new achievement); "
    "not written if another writer changed it since",
    "previous_progress": "The stored progress the change was planned from (null: a new "
    "achievement)",
    "cause": "JSON: what caused the change (R10): source, run uuid, membership uuid, ratio, "
    "progress and the Dagster run id",
}

# Columns never stored or shown: personal data (see metadata.safe).
PERSONAL = ("external_learner_id", "email")

_TYPES: dict[type[pl.DataType], str] = {
    pl.String: "string",
    pl.Boolean: "boolean",
    pl.Int64: "integer",
    pl.Float64: "float",
}


def type_name(dtype: pl.DataType | type[pl.DataType]) -> str:
    if isinstance(dtype, pl.Datetime) and dtype.time_zone:
        return f"datetime ({dtype.time_zone})"
    return _TYPES.get(dtype.base_type(), str(dtype))


def table_schema(schema: Mapping[str, pl.DataType | type[pl.DataType]]) -> dg.TableSchema:
    """The UI's column schema of a frame with `schema`: types and descriptions, no personal data.

    A column without a description gets none (not a placeholder), so the tests see it.
    """
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, type_name(dtype), description=DESCRIPTIONS.get(name))
            for name, dtype in schema.items()
            if name not in PERSONAL
        ]
    )


def asset_column_schema(asset: str) -> dict[str, dg.TableSchema]:
    """Definition metadata: the asset's columns, shown in the UI before anything is materialised."""
    return {"dagster/column_schema": table_schema(ASSET_SCHEMAS[asset])}
