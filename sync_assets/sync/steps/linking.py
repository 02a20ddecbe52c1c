"""Step one (R2–R4): memberships linked to platform users, each unknown membership fetched once,
ever, for every course of a run at once."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, NamedTuple

import polars as pl
from sqlalchemy.engine import Engine

from sync_assets import failpoints
from sync_assets.partners_api import contract
from sync_assets.partners_api.client import (
    Memberships,
    PartnersApiClient,
)
from sync_assets.platform import change_tracking, sync_store, transactions
from sync_assets.pseudonyms import pseudonym
from sync_assets.rules.linking import (
    AMBIGUOUS_SCHEMA,
    CONFLICT_SCHEMA,
    LINK_SCHEMA,
    link_conflicts,
    links_and_ambiguous,
)
from sync_assets.settings import pseudonym_key
from sync_assets.sync import fact_names
from sync_assets.sync.outcomes import Computed, Failed
from sync_assets.wording import counted

UTC_TIME = pl.Datetime("us", "UTC")
# Stamped on a course's links: the linking generation they were made under (change_tracking).
LINKING_GENERATION = "linking_generation"
# The linking step's output, stored between steps: links only. External learner ids (emails) are
# personal data; what the API said is written to the platform database by the linking step itself
# (keep_fetched_memberships) and never reaches asset storage.
LINKED_SCHEMA = {
    "membership_uuid": pl.String,
    "user_id": pl.String,  # a usable link (user not forgotten), or null
    "new_link": pl.Boolean,  # linked by this sync
    "write": pl.Boolean,  # a row for future_learn_memberships
    "fetched_at": UTC_TIME,
    "linked_at": UTC_TIME,
    "gone_at": UTC_TIME,
}
# External ids whose platform users are read and matched at a time (`_match_in_chunks`).
MATCH_CHUNK = 100_000
MEMBERSHIP_ROW_COLUMNS = ["membership_uuid", "user_id", "fetched_at", "linked_at", "gone_at"]


@dataclass
class LinkingStats:
    memberships: int = 0
    already_linked: int = 0
    looked_up: int = 0
    found: int = 0
    gone: int = 0
    linked_by_id: int = 0
    linked_by_email: int = 0
    relinked_locally: int = 0
    unlinked: int = 0
    kept_unlinked: int = 0  # memberships fetched now, kept before any course is applied
    quarantine: pl.DataFrame = field(default_factory=contract.empty_quarantine)
    # Left unlinked: one external id, the email of several users (rules.linking.AMBIGUOUS_SCHEMA).
    ambiguous: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=AMBIGUOUS_SCHEMA))
    # Stored links R3 disagrees with, kept as they are (rules.linking.CONFLICT_SCHEMA).
    conflicts: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=CONFLICT_SCHEMA))
    # The generation of what linking read (change_tracking): the links are as of it.
    linking_generation: int = 0

    def summary(self) -> str:
        return (
            f"{counted(self.memberships, 'membership')}: {self.already_linked} linked before, "
            f"{self.looked_up} looked up ({self.gone} gone), "
            f"{self.linked_by_id} linked by id, {self.linked_by_email} by email, "
            f"{self.relinked_locally} relinked without a request"
        )


async def link_memberships(
    client: PartnersApiClient,
    engine: Engine,
    enrolments_by_course: Mapping[str, pl.DataFrame],
    now: datetime,
    *,
    checked_tonight: bool = False,
    lookups_stored: Callable[[], None] | None = None,
) -> tuple[dict[str, Computed | Failed], LinkingStats]:
    """Step one for many courses at once: each unknown membership is fetched once, ever (R2).

    Memberships fetched before and still unlinked are matched again locally (a teacher may have
    joined the platform since), without another request. A course with a membership whose
    look-up failed for good fails; the others come back stamped with the linking generation.

    `checked_tonight`: the night's check that launched this run has just refreshed the linking
    state, so its generation is used as it is (`change_tracking.checked_generation`).
    `lookups_stored` is called once every look-up succeeded and what it fetched is stored: from
    then on another run reads every membership this one asked about as answered (R2).
    """
    if not enrolments_by_course:
        # Every course was skipped as unchanged (or failed): nothing to link, so the platform
        # check is not made again. On `large` it reads ~1M links; the enrolments step has just
        # made it, and a change since is seen by the next night's check, as any later change is.
        return {}, LinkingStats()
    # Each report is read once (a stored input is read from storage each time it is asked for):
    # linking needs its memberships only.
    memberships_of = {
        course: frame["membership_uuid"].unique().sort()
        for course, frame in enrolments_by_course.items()
    }
    # The bulk pass returns before the rows are split by course: what it read, fetched and
    # matched for the whole run is freed first (on `large`, a million look-up answers and the
    # users they name).
    every, failed_courses, stats = await _link_run(
        client, engine, memberships_of, now, checked_tonight, lookups_stored
    )
    by_course = _rows_by_course(every, memberships_of, failed_courses)
    stamps = {LINKING_GENERATION: str(stats.linking_generation)}
    outcomes: dict[str, Computed | Failed] = {
        course: Computed(frame, stamps, _linking_facts(frame, stats.ambiguous, stats.conflicts))
        for course, frame in by_course.items()
    }
    return outcomes | {course: Failed(why) for course, why in failed_courses.items()}, stats


async def _link_run(
    client: PartnersApiClient,
    engine: Engine,
    memberships_of: Mapping[str, pl.Series],
    now: datetime,
    checked_tonight: bool,
    lookups_stored: Callable[[], None] | None,
) -> tuple[pl.DataFrame, dict[str, str], LinkingStats]:
    """The run's memberships as LINKED_SCHEMA rows, the courses failed by a look-up, and the
    figures: one bulk pass in a fixed order (read what is stored, look up, keep what was fetched
    before anything can fail, then match).

    Over fifty lines on purpose: its frames each serve two or three of its parts; split
    further, the order R2 depends on would be spread over functions.
    """
    # In polars: a Python set of each course's first, all alive at once, cost `large` ~5× the
    # memory (benchmarks/linking_uuids_memory.py), which the process keeps for the whole step.
    # Kept a Series down to each SQL chunk and look-up batch: as a Python list, 1M texts alone.
    all_uuids = pl.concat(list(memberships_of.values())).unique().sort()
    with engine.connect() as connection:
        states = sync_store.membership_states(connection, all_uuids)
    existing = sync_store.usable_links(states)
    to_fetch = sync_store.never_answered(states, all_uuids)
    unlinked_before = sync_store.unlinked_answered(states)
    stored_links = sync_store.links_with_external_ids(states)
    memberships, looked_up = len(all_uuids), len(to_fetch)
    del states, all_uuids  # counted: not held through the look-ups and matching
    fetched = await client.memberships(to_fetch)
    del to_fetch
    failpoints.reached("linking.after_lookups")
    kept = keep_fetched_memberships(engine, fetched, now)
    # A failed look-up is not stored: a retry of this step would ask it again, so the next run
    # waits for the step's end instead (it may ask the same membership).
    if lookups_stored is not None and not fetched.failed:
        lookups_stored()
    # Kept in the platform database: the learners' uuids serve nothing further in this step, and
    # their column (a million uuids on `large`) is freed before matching, where the step peaks.
    fetched = replace(fetched, found=fetched.found.drop("learner_uuid"))
    candidates = pl.concat(
        [
            fetched.found.select("membership_uuid", "external_learner_id"),
            unlinked_before.select("membership_uuid", "external_learner_id"),
        ]
    )
    generation = change_tracking.checked_generation(engine) if checked_tonight else None
    if generation is None:
        generation = change_tracking.refresh_linking_state(engine)
    matched = _match_in_chunks(engine, candidates, stored_links)
    # Matched: the external ids serve nothing further, and on a next day of `large` the stored
    # links alone are a million rows of three texts.
    del candidates, stored_links
    fetched = replace(fetched, found=fetched.found.select("membership_uuid"))
    new_links = matched.links
    linked_now = new_links.select("membership_uuid", "user_id")
    every, relinked = _membership_rows(fetched, unlinked_before, existing, linked_now, now)
    # Links made now of memberships fetched now: the candidates were those and the unlinked ones
    # fetched before, so the few of the latter are filtered out, not the million found joined in.
    relinked_uuids = unlinked_before["membership_uuid"].implode()
    first_time = new_links.filter(~pl.col("membership_uuid").is_in(relinked_uuids))
    by_method = dict(first_time.group_by("matched_by").len().iter_rows())
    stats = LinkingStats(
        memberships=memberships,
        already_linked=existing.height,
        looked_up=looked_up,
        found=fetched.found.height,
        gone=len(fetched.gone),
        linked_by_id=by_method.get("id", 0),
        linked_by_email=by_method.get("email", 0),
        relinked_locally=relinked,
        unlinked=memberships - existing.height - new_links.height,
        kept_unlinked=kept,
        quarantine=fetched.quarantine,
        ambiguous=matched.ambiguous,
        conflicts=matched.conflicts,
        linking_generation=generation,
    )
    return every, _courses_with_failed_lookups(memberships_of, fetched.failed), stats


class _Matched(NamedTuple):
    links: pl.DataFrame  # rules.linking.LINK_SCHEMA
    ambiguous: pl.DataFrame  # AMBIGUOUS_SCHEMA, by membership
    conflicts: pl.DataFrame  # CONFLICT_SCHEMA, by membership


def _match_in_chunks(
    engine: Engine, candidates: pl.DataFrame, stored_links: pl.DataFrame
) -> _Matched:
    """R3 for the memberships to link (`candidates`) and the stored links to check, reading the
    platform users their external ids may name `MATCH_CHUNK` external ids at a time.

    A membership's match depends only on the users its own external id names (by id or by
    caseless email, every such user read with its chunk), so matching chunk by chunk gives what
    one pass over every user gave. One pass held the users of a whole run and their folded
    emails at once: on `large`, 1.07M external ids and ~920k users, linking's peak on a first
    sync and on a next day alike (every stored link of a changed course is checked).
    """
    external_ids = pl.concat(
        [candidates["external_learner_id"], stored_links["external_learner_id"]]
    ).drop_nulls()
    external_ids = external_ids.unique().sort()
    parts: list[_Matched] = []
    with engine.connect() as connection:
        for start in range(0, len(external_ids), MATCH_CHUNK):
            chunk = external_ids.slice(start, MATCH_CHUNK)
            users = sync_store.users_matching(connection, chunk)
            named = pl.col("external_learner_id").is_in(chunk.implode())
            links, ambiguous = links_and_ambiguous(candidates.filter(named), users)
            conflicts = link_conflicts(stored_links.filter(named), users)
            parts.append(_Matched(links, ambiguous, conflicts))
    if not parts:
        return _Matched(
            pl.DataFrame(schema=LINK_SCHEMA),
            pl.DataFrame(schema=AMBIGUOUS_SCHEMA),
            pl.DataFrame(schema=CONFLICT_SCHEMA),
        )
    return _Matched(
        pl.concat([part.links for part in parts]),
        pl.concat([part.ambiguous for part in parts]).sort("membership_uuid"),
        pl.concat([part.conflicts for part in parts]).sort("membership_uuid"),
    )


def _membership_rows(
    fetched: Memberships,
    unlinked_before: pl.DataFrame,
    existing: pl.DataFrame,
    linked_now: pl.DataFrame,
    now: datetime,
) -> tuple[pl.DataFrame, int]:
    """Every membership of the run as LINKED_SCHEMA rows, and how many were relinked locally.

    Only new links are left to write with their course: what was fetched is already stored.
    """
    # The uuids alone: the other columns of what was fetched are not rows of LINKED_SCHEMA, and
    # joined they would be copied for a million rows only to be dropped by _conform.
    found = fetched.found.select("membership_uuid")
    fetched_rows = found.join(linked_now, on="membership_uuid", how="left").with_columns(
        fetched_at=pl.lit(now, UTC_TIME),
        linked_at=pl.when(pl.col("user_id").is_not_null()).then(pl.lit(now, UTC_TIME)),
    )
    gone_rows = pl.DataFrame(
        {"membership_uuid": fetched.gone, "gone_at": [now] * len(fetched.gone)},
        schema={"membership_uuid": pl.String, "gone_at": UTC_TIME},
    )
    relinked = unlinked_before.select("membership_uuid").join(linked_now, on="membership_uuid")
    relinked = relinked.with_columns(linked_at=pl.lit(now, UTC_TIME))
    is_linked = pl.col("user_id").is_not_null()
    every = pl.concat(
        [
            _conform(fetched_rows.filter(is_linked), write=True),
            _conform(relinked, write=True),
            _conform(fetched_rows.filter(~is_linked), write=False),
            _conform(gone_rows, write=False),
            _conform(existing, write=False),
        ]
    )
    return every, relinked.height


def _rows_by_course(
    every: pl.DataFrame,
    memberships_of: Mapping[str, pl.Series],
    failed_courses: Mapping[str, str],
) -> dict[str, pl.DataFrame]:
    """Each course's memberships' rows (failed courses aside), in the order of its uuids.

    Where each course's memberships are in `every` is found by one join of positions, then each
    course's rows are gathered from `every` (on `large` the step peaks here, at the 1.77M rows
    it returns; the join of the rows with a course column it replaced peaked the same,
    benchmarks/linking_memory.py). A membership with no row (linked to a forgotten user: not a
    usable link) is left out.
    """
    courses = [course for course in memberships_of if course not in failed_courses]
    if not courses:
        return {}
    uuids = pl.concat([memberships_of[course] for course in courses]).to_frame("membership_uuid")
    where = every.select("membership_uuid").with_row_index("position")
    # The positions alone: the joined uuids (1.77M on `large`) are not kept through the gathers.
    positions = uuids.join(where, on="membership_uuid", how="left", maintain_order="left")[
        "position"
    ]
    del uuids, where
    by_course: dict[str, pl.DataFrame] = {}
    offset = 0
    for course in courses:
        length = len(memberships_of[course])
        found = positions.slice(offset, length).drop_nulls()
        by_course[course] = every[found]
        offset += length
    return by_course


def _linking_facts(
    frame: pl.DataFrame, ambiguous: pl.DataFrame, conflicts: pl.DataFrame
) -> dict[str, Any]:
    """One course's links, and what linking left for the platform team in it, users as
    pseudonyms. `ambiguous`: memberships whose external id is the email of several users (not
    linked); `conflicts`: stored links the external id disagrees with (kept, not re-pointed)."""
    memberships = frame.select("membership_uuid")
    ambiguous = ambiguous.join(memberships, on="membership_uuid")
    conflicts = conflicts.join(memberships, on="membership_uuid")
    key = pseudonym_key()
    return {
        fact_names.LINKED: frame.filter(pl.col("user_id").is_not_null()).height,
        fact_names.LINKS_MADE: frame.filter(pl.col("new_link")).height,
        fact_names.UNLINKED: frame.filter(pl.col("user_id").is_null()).height,
        fact_names.AMBIGUOUS_EMAILS: ambiguous.height,
        fact_names.AMBIGUOUS_EMAIL_USERS: [
            [pseudonym(user, key) for user in users] for users in ambiguous["user_ids"].to_list()
        ],
        fact_names.LINK_CONFLICTS: conflicts.height,
        fact_names.LINK_CONFLICT_USERS: [
            {"linked": pseudonym(linked, key), "external_id_names": pseudonym(matching, key)}
            for linked, matching in conflicts.select(
                "linked_user_id", "matching_user_id"
            ).iter_rows()
        ],
    }


def _courses_with_failed_lookups(
    memberships_of: Mapping[str, pl.Series], failed: Mapping[str, str]
) -> dict[str, str]:
    """Each course with a membership whose look-up failed for good, and the first such failure."""
    if not failed:
        return {}
    courses = {}
    for course, uuids in memberships_of.items():
        hit = sorted(set(uuids) & failed.keys())
        if hit:
            courses[course] = (
                f"look-up of {len(hit)} membership(s) failed, e.g. {hit[0]}: {failed[hit[0]]}"
            )
    return courses


def keep_fetched_memberships(engine: Engine, fetched: Memberships, now: datetime) -> int:
    """Store what the API said of each membership looked up, before anything else can fail.

    Fetched, not linked: links are written with the course they serve, in its transaction. A
    course refused by the circuit breaker, a failed course or a dry run still keeps what was
    fetched, so no membership is ever asked about twice (R2).
    """
    rows = pl.concat(
        [
            fetched.found.select(
                "membership_uuid",
                "external_learner_id",
                "learner_uuid",
                pl.lit(now, UTC_TIME).alias("fetched_at"),
            ),
            pl.DataFrame(
                {"membership_uuid": fetched.gone, "gone_at": [now] * len(fetched.gone)},
                schema={"membership_uuid": pl.String, "gone_at": UTC_TIME},
            ),
        ],
        how="diagonal",
    )
    if rows.is_empty():
        return 0
    with transactions.write_transaction(engine) as connection:
        return sync_store.upsert_memberships(connection, rows)


def _conform(frame: pl.DataFrame, *, write: bool) -> pl.DataFrame:
    """Any subset of LINKED_SCHEMA's columns, as the whole schema (missing columns null)."""
    return (
        frame.with_columns(
            [
                pl.lit(None, dtype).alias(name)
                for name, dtype in LINKED_SCHEMA.items()
                if name not in frame.columns
            ]
        )
        .with_columns(
            write=pl.lit(write),
            new_link=pl.lit(write) & pl.col("user_id").is_not_null(),
        )
        .select([pl.col(name).cast(dtype) for name, dtype in LINKED_SCHEMA.items()])
    )
