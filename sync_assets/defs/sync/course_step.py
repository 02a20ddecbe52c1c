"""The one adapter between the sync's per-course steps (sync/steps/) and Dagster.

A step works on course uuids and returns an `Outcome` per course (sync/outcomes.py). Dagster
sees course partitions: this module turns partition keys into uuids and back (here only), skips
what an earlier step failed or left unchanged, shows each course's outcome as its partition's
metadata, stores the outcomes, marks failed courses' partitions failed, and fails the run at the
last step it executes. Every use of Dagster's internals by a sync step is here, pinned by
sync_assets_tests/defs_tests/test_course_step.py, checked on Dagster 1.13.27:

- `add_partition_metadata` feeds the step's metadata accumulator directly (Dagster's own call
  lists every dynamic partition on each call: courses² a step);
- `record_failed_partitions` reports the events a failed step would have left for a partition,
  because one step serves every course of its run (upstream issue 21072); the open-source event
  log storages keep the planned event and drop the failure event (the reason is in the
  partition's metadata instead);
- `_runs_a_later_step` reads the run's asset graph from the job (`job_def.asset_layer`).

Why failed courses' partitions are reported this way: one step serves every course partition of
its run, and Dagster records a materialisation for each of them as soon as the step's output is
stored, whatever happened to each course (and a step that raises after its output still counts as
all materialised). So after the output, each failed course's partition gets what a failed step
would have left: a planned materialisation with none after it, then a failure event with the
reason (which the open-source storages drop). The run then ends failed (the last step of the sync
that the run executes raises, naming the courses), and Dagster's partition status counts those
partitions as failed and the asset's health as degraded; a later successful sync of the course
makes it materialised again. The last step yields no output at all when its run applied no
course (`output_unless_none_applied`): a materialisation would make the asset look fresh.
"""

# No `from __future__ import annotations`: Dagster reads the `context` annotations at runtime.
import os
import resource
import tempfile
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import dagster as dg
import polars as pl
from dagster._core.definitions.events import (
    AssetMaterializationFailure,
    AssetMaterializationFailureReason,
    AssetMaterializationFailureType,
)
from dagster._core.events import AssetMaterializationPlannedData, DagsterEvent

from sync_assets.defs.storage import OutcomeSpool, StoredOutcomes
from sync_assets.defs.sync.metadata import frame_metadata
from sync_assets.defs.sync.partitions import CourseKeys
from sync_assets.defs.sync.provenance import report_stale_inputs
from sync_assets.markdown import markdown_text
from sync_assets.partners_api.metrics import ApiMetrics
from sync_assets.settings import partition_previews
from sync_assets.sync import fact_names
from sync_assets.sync.outcomes import Computed, Failed, Outcome, Unchanged
from sync_assets.sync.steps import COURSE_UUID, course_titles
from sync_assets.wording import counted

UNCHANGED_NOTE = (
    "skipped as unchanged: its reports and the platform side are those of its last successful "
    "sync (nothing read, parsed or written for it)"
)
UNSTAMPED = (
    "its stored report names no course (stored by an earlier version): sync the course with "
    "fresh data (the job futurelearn_sync for its partition)"
)
WITHDRAWN = (
    "withdrawn: FutureLearn lists no runs for it; nothing synced, achievements left as they are"
)
NOT_KNOWN = (
    "no course the platform knows has a uuid starting with this key's suffix (the course stopped "
    "being known: its partition is retired at the next check of the course partitions; or its "
    "digits are ambiguous)"
)
NO_LONGER_KNOWN = (
    "no longer known: no activity has its uuid any more (R1); not synced, achievements left as "
    "they are; its partition is retired at the next check of the course partitions"
)

# Courses with nothing to sync, by design (R1): recorded as unchanged (their last data stays,
# no later step reads them) and shown with why; never a failure.
WITHDRAWN_FACTS = {fact_names.STATUS: fact_names.STATUS_WITHDRAWN, fact_names.NOTE: WITHDRAWN}
NO_LONGER_KNOWN_FACTS = {
    fact_names.STATUS: fact_names.STATUS_NO_LONGER_KNOWN,
    fact_names.NOTE: NO_LONGER_KNOWN,
}


class CourseStep:
    """One sync step over the course partitions of its run, as Dagster sees it.

    Build it with the step's partitioned inputs (as the IO manager loads them, by partition
    key); hand `courses` and `inputs` (by course uuid) to the step; `record` the outcomes it
    returns, yield `output()`, then call `finish`.
    """

    def __init__(
        self,
        context: dg.AssetExecutionContext,
        course_runs: pl.DataFrame | None,
        inputs: Mapping[str, StoredOutcomes] | None = None,
        *,
        known: Mapping[str, str] | None = None,
        stale_inputs: tuple[str, ...] = (),
    ) -> None:
        """`course_runs` None: for a step that needs no more of a course than its report (linking
        matches memberships, whichever course they are in): each key's course is the one its
        stored report is stamped with, and its partitions show no course uuid or title.

        `known`: every course the platform knows (uuid → title, `steps.known_courses`), with
        `course_runs`: a known course FutureLearn lists no runs for is withdrawn, not synced
        and not failed (R1)."""
        self._context = context
        partition_keys = _partition_keys(context)
        remember_step_partitions(context, partition_keys)
        for key, notes in report_stale_inputs(context, stale_inputs, partition_keys).items():
            add_partition_metadata(context, notes, key)
        inputs = inputs or {}
        named = (
            _named_by_stamps(partition_keys, next(iter(inputs.values())))
            if course_runs is None
            else named_partitions(partition_keys, course_runs, known or {})
        )
        self._uuid_of, self._key_of, self._titles = named.uuid_of, named.key_of, named.titles
        self._named_by_uuid, self._unresolved = named.shown, named.unresolved
        self._not_synced = dict.fromkeys(named.withdrawn, WITHDRAWN_FACTS) | dict.fromkeys(
            named.no_longer_known, NO_LONGER_KNOWN_FACTS
        )
        # What an earlier step failed or left unchanged is passed on, not given to this step.
        self._upstream_failed: dict[str, str] = {}
        for stored in inputs.values():
            for key, why in stored.failures().items():
                self._upstream_failed.setdefault(key, why)
        self._upstream_unchanged = {
            key
            for stored in inputs.values()
            for key in stored.unchanged()
            if key not in self._upstream_failed
        }
        passed_on = (
            self._upstream_failed.keys() | self._upstream_unchanged | self._not_synced.keys()
        )
        # In partition key order (by title), as the courses are shown and written.
        self.courses = list(
            dict.fromkeys(
                uuid for key, uuid in self._uuid_of.items() if uuid and key not in passed_on
            )
        )
        uuid_of_key = {key: uuid for key, uuid in self._uuid_of.items() if uuid is not None}
        self.inputs = {name: stored.renamed(uuid_of_key) for name, stored in inputs.items()}
        self._spool_dir = tempfile.TemporaryDirectory(prefix=f"{context.asset_key.path[-1]}-")
        self._spool = OutcomeSpool(Path(self._spool_dir.name))
        self.failed: dict[str, str] = {}  # partition key → why, failed by this step
        self.facts: dict[str, Mapping[str, Any]] = {}  # partition key → its outcome's facts
        self._shown: dict[str, dict[str, Any]] = {}  # partition key → its outcome, as shown
        self._unchanged: set[str] = set()
        self._previews = partition_previews()

    @property
    def course_count(self) -> int:
        return len(self._uuid_of)

    @property
    def upstream_failed(self) -> dict[str, str]:
        return dict(self._upstream_failed)

    @property
    def unchanged_count(self) -> int:
        """Courses skipped as unchanged, by this step or an earlier one (after `record`)."""
        return len(self._unchanged)

    def facts_named(self, name: str) -> dict[str, Any]:
        """Each partition whose outcome has the fact `name`, and its value (after `record`)."""
        return {key: facts[name] for key, facts in self.facts.items() if name in facts}

    def course_uuids(self, names: Iterable[str]) -> frozenset[str]:
        """The courses `names` give as uuids or partition keys (config lists either)."""
        return frozenset(self._uuid_of.get(name) or name.lower() for name in names)

    def record(self, outcomes: Iterable[tuple[str, Outcome]], *, one_by_one: bool) -> None:
        """Record each course's outcome as it comes: stored, and shown on its partition. Then
        what the step did not compute: failed or unchanged upstream, or a key naming no course.

        `one_by_one`: the step computes its courses one after another, so the memory after each
        is worth showing on its partition (not for a step that computes every course at once).
        """
        for course, outcome in outcomes:
            self.record_course(course, outcome, one_by_one=one_by_one)
        self.record_passed_on()

    def record_course(self, course: str, outcome: Outcome, *, one_by_one: bool = False) -> None:
        """Record one course's outcome, as `record` does: for a step that hands its outcomes on
        as it makes them (a callback), then calls `record_passed_on`."""
        self._record(self._key_of[course], outcome, per_course_memory=one_by_one)

    def record_passed_on(self) -> None:
        """What the step did not compute: failed or unchanged upstream, or a key naming no
        course (after its own courses' outcomes)."""
        for key, uuid in sorted(self._uuid_of.items()):
            if key in self._upstream_failed:
                self._record(key, Failed(self._upstream_failed[key]))
            elif key in self._not_synced:
                self._record(key, Unchanged(self._not_synced[key]))
            elif key in self._upstream_unchanged:
                self._record(key, Unchanged())
            elif uuid is None:
                self._record(key, Failed(self._unresolved))

    def output(self, metadata: Mapping[str, Any] | None = None) -> dg.Output:
        """The step's output (every course, as recorded), with the step's own figures."""
        return dg.Output(
            self._spool, metadata={**_as_metadata(metadata or {}), **run_peak_memory_metadata()}
        )

    def output_unless_none_applied(
        self, metadata: Mapping[str, Any] | None = None, *, wrote: bool = True
    ) -> Iterator[dg.Output | dg.AssetObservation]:
        """The step's output if the run applied a course (or skipped one as unchanged: nothing
        to apply); if every course failed, or the step wrote nothing (`wrote` False: a dry
        run), no output, so no materialisation is recorded, and each course's outcome goes on
        its partition as an observation (the UI's partition view and the summary show it);
        `finish` then fails the run if a course failed.

        For the last step: its asset's freshness policy reads the last materialisation, and
        an output records one for every course of the run, failed or not (upstream 21072), so a
        night on which every course failed would look fresh.
        """
        failed = self._upstream_failed.keys() | self.failed.keys()
        if wrote and any(key not in failed for key in self._shown):
            yield self.output(metadata)
            return
        for key, shown in sorted(self._shown.items()):
            yield dg.AssetObservation(self._context.asset_key, partition=key, metadata=shown)

    def fail_every_course(self, why: str) -> NoReturn:
        """Fail the step for every course of the run, with one line (a step-wide error such as
        the database refusing the linking writes: its later lines may quote learners' rows)."""
        computed = sorted(self._key_of[course] for course in self.courses)
        raise dg.Failure(
            description=f"{counted(len(computed), 'course')} not linked: {why}",
            metadata={
                fact_names.FAILED_COURSES: dg.MetadataValue.json(
                    {**self._upstream_failed, **dict.fromkeys(computed, why)}
                )
            },
        ) from None

    def _record(self, key: str, outcome: Outcome, *, per_course_memory: bool = False) -> None:
        uuid = self._uuid_of[key]
        shown: dict[str, Any] = (
            {fact_names.COURSE_UUID: uuid, fact_names.COURSE_TITLE: self._titles.get(uuid, "")}
            if uuid is not None and self._named_by_uuid
            else {}
        )
        if isinstance(outcome, Computed):
            shown |= frame_metadata(outcome.frame, with_preview=self._previews)
        elif isinstance(outcome, Failed):
            shown |= {fact_names.STATUS: fact_names.STATUS_FAILED, fact_names.ERROR: outcome.reason}
            if key not in self._upstream_failed:
                self.failed[key] = outcome.reason
                log = self._context.log.warning if outcome.expected else self._context.log.error
                log(f"course {key}: {outcome.reason}")
        elif key not in self._not_synced:
            shown |= {
                fact_names.STATUS: fact_names.STATUS_UNCHANGED,
                fact_names.NOTE: UNCHANGED_NOTE,
            }
            self._unchanged.add(key)
        shown |= outcome.facts
        if per_course_memory:
            shown |= rss_after_course()
        self.facts[key] = outcome.facts
        self._shown[key] = _as_metadata(shown)
        add_partition_metadata(self._context, self._shown[key], key)
        self._spool.add(key, outcome)

    def finish(self) -> None:
        """After the output is stored: failed partitions, and the run failed if this is the last
        step of the sync it executes (naming every course that failed in it)."""
        self._spool_dir.cleanup()
        record_failed_partitions(self._context, self.failed, self._upstream_failed)
        failed = {**self._upstream_failed, **self.failed}
        if failed and not _runs_a_later_step(self._context):
            raise dg.Failure(
                description=f"{len(failed)} course(s) not synced: "
                + "; ".join(f"{key}: {why}" for key, why in sorted(failed.items())),
                metadata={fact_names.FAILED_COURSES: dg.MetadataValue.json(dict(failed))},
            )


def _partition_keys(context: dg.AssetExecutionContext) -> list[str]:
    """The run's course partitions; a run queued before one of them was retired (its course no
    longer known, R1) fails here, saying so."""
    try:
        return sorted(context.partition_keys)
    except dg.DagsterInvalidInvocationError as error:
        raise dg.Failure(
            description=" ".join(str(error).split())
            + " A course partition of this run was retired after the run was queued: its course "
            "is no longer known to the platform (R1), so there is nothing to sync for it."
        ) from None


@dataclass(frozen=True)
class NamedPartitions:
    """Which course each partition key of a step names, and how that is shown."""

    uuid_of: dict[str, str | None]  # partition key → course uuid (None: names no course)
    key_of: dict[str, str]  # course uuid → partition key
    titles: dict[str, str]  # course uuid → title now
    shown: bool  # the uuid and title go on each partition's metadata
    unresolved: str  # why a key that names no course fails
    withdrawn: frozenset[str] = frozenset()  # keys of known courses FutureLearn lists no runs for
    no_longer_known: frozenset[str] = frozenset()  # keys of courses the platform stopped knowing


def named_partitions(
    partition_keys: list[str], course_runs: pl.DataFrame, known: Mapping[str, str]
) -> NamedPartitions:
    """Each key's course among those FutureLearn lists or the platform knows (see
    `partitions`); a key naming a course the platform does not know names none."""
    listed = set(course_runs["course_uuid"])
    known_uuids = set(course_runs.filter("known")["course_uuid"]) | set(known)
    keys = CourseKeys.resolve(partition_keys, listed | known_uuids, known_uuids)
    uuid_of = {
        key: uuid if uuid in known_uuids else None
        for key in partition_keys
        for uuid in [keys.uuid(key)]
    }
    withdrawn = frozenset(key for key, uuid in uuid_of.items() if uuid and uuid not in listed)
    # Unmapped since the partitions were last checked; not when the platform knows no course at
    # all (a wrong database, more likely than every course unmapped at once): those fail.
    no_longer_known = frozenset(
        key for key, uuid in uuid_of.items() if uuid is None and known_uuids
    )
    key_of = {uuid: key for uuid, key in keys.key_of_uuid.items() if uuid in known_uuids}
    titles = {**known, **course_titles(course_runs)}  # a withdrawn course: its activity's title
    return NamedPartitions(uuid_of, key_of, titles, True, NOT_KNOWN, withdrawn, no_longer_known)


def _named_by_stamps(partition_keys: list[str], reports: StoredOutcomes) -> NamedPartitions:
    """Each key's course as its stored report is stamped with (failed or unchanged: none)."""
    uuid_of = {key: reports.stamps(key).get(COURSE_UUID) for key in partition_keys}
    key_of = {uuid: key for key, uuid in uuid_of.items() if uuid}
    return NamedPartitions(uuid_of, key_of, {}, False, UNSTAMPED)


def partition_table(
    partition_keys: list[str], course_runs: pl.DataFrame, known: Mapping[str, str]
) -> str:
    """Markdown: each course partition's key, course uuid and title now, by title."""
    named = named_partitions(partition_keys, course_runs, known)
    rows = sorted(
        (
            named.titles.get(uuid or "", ""),
            key,
            f"{uuid} (withdrawn)" if key in named.withdrawn else uuid or "(no such course now)",
        )
        for key, uuid in named.uuid_of.items()
    )
    lines = ["| title | partition key | course uuid |", "| --- | --- | --- |"]
    # The title is the API's: escaped, so it cannot add a column, a link or an image.
    lines += [f"| {markdown_text(title)} | `{key}` | `{uuid}` |" for title, key, uuid in rows]
    return "\n".join(lines)


def _as_metadata(values: Mapping[str, Any]) -> dict[str, Any]:
    """Facts as Dagster metadata: lists and dicts as JSON, the rest as they are."""
    return {
        name: dg.MetadataValue.json(value) if isinstance(value, list | dict) else value
        for name, value in values.items()
    }


def api_metadata(metrics: ApiMetrics, seconds: float | None = None) -> dict[str, Any]:
    """A step's Partners API figures (once per step, on each of its partitions)."""
    figures = metrics.as_dict()
    return {
        fact_names.API_REQUESTS: figures["requests"],
        fact_names.API_NOT_MODIFIED: figures["not_modified_304"],
        fact_names.API_RETRIES: figures["retries"],
        fact_names.API_BYTES: figures["bytes_received"],
        fact_names.API_REQUESTS_BY_STATUS: dg.MetadataValue.json(figures["by_endpoint_and_status"]),
        **({fact_names.API_SECONDS: round(seconds, 3)} if seconds is not None else {}),
    }


def run_peak_memory_metadata() -> dict[str, float]:
    """The run's peak resident memory so far, on the step's output (so on each of its courses).

    The sync's steps serve every course of the run at once, so this is a figure of the run, the
    same on all its partitions: compare it across runs (a command executing several runs starts
    the count afresh for each, see runs/execution.py). Per course, see `rss_after_course`.
    """
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {fact_names.RUN_PEAK_RSS: round(peak_kib / 1024, 1)}


def rss_after_course() -> dict[str, float]:
    """Resident memory now, just after a course was processed: plotted by partition in the UI,
    it shows memory growing (or not) as a run works through its courses. Linux only."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return {}
    size = resident_pages * os.sysconf("SC_PAGE_SIZE")
    return {fact_names.RSS_AFTER_COURSE: round(size / 2**20, 1)}


# --- Dagster internals (pinned by test_course_step.py) ----------------------------------------

# Each step's partition keys, computed once per step (see add_partition_metadata).
_STEP_PARTITIONS: weakref.WeakKeyDictionary[Any, frozenset[str]] = weakref.WeakKeyDictionary()


def _step_execution_context(context: dg.AssetExecutionContext) -> Any:
    return context.op_execution_context._step_execution_context


def remember_step_partitions(context: dg.AssetExecutionContext, keys: Iterable[str]) -> None:
    """The step's partition keys, as `context.partition_keys` gave them, for
    `add_partition_metadata`: listing them again costs as many instance queries."""
    _STEP_PARTITIONS[_step_execution_context(context)] = frozenset(keys)


def add_partition_metadata(
    context: dg.AssetExecutionContext, metadata: dict[str, Any], partition_key: str
) -> None:
    """`context.add_asset_metadata(metadata, partition_key=…)`, with its check done once a step.

    Dagster's own call checks the key against the step's partitions by listing every dynamic
    partition from the instance, on each call: a step that adds metadata to each of its courses
    pays courses² (measured in benchmarks/analysis.md). Here the step's keys are listed once and
    the metadata goes to the same accumulator Dagster's call feeds (a private attribute).
    """
    step = _step_execution_context(context)
    keys = _STEP_PARTITIONS.get(step)
    if keys is None:
        keys = _STEP_PARTITIONS[step] = frozenset(context.partition_keys)
    if partition_key not in keys:
        raise dg.DagsterInvariantViolationError(
            f"Attempted to add metadata for partition key '{partition_key}' that is not being "
            "targeted."
        )
    step._metadata_accumulator = step._metadata_accumulator.with_additional_asset_metadata(
        asset_key=context.assets_def.key, partition_key=partition_key, metadata=metadata
    )


def record_failed_partitions(
    context: dg.AssetExecutionContext, failed: Mapping[str, str], upstream_failed: Mapping[str, str]
) -> None:
    """Mark each failed course's partition of this step's asset as failed in this run.

    Call after the step's output is stored. `failed` are the courses this step failed (why);
    `upstream_failed` those an earlier step failed, recorded here as failed upstream.
    """
    run = context.run
    step_key = str(context.op_execution_context.node_handle)  # an asset step is keyed by its op
    for partition, why in sorted({**upstream_failed, **failed}.items()):
        planned = DagsterEvent.build_asset_materialization_planned_event(
            run.job_name,
            step_key,
            AssetMaterializationPlannedData(context.asset_key, partition=partition),
        )
        context.instance.report_dagster_event(planned, run_id=run.run_id)
        failure = DagsterEvent.build_asset_failed_to_materialize_event(
            run.job_name,
            step_key,
            AssetMaterializationFailure(
                asset_key=context.asset_key,
                partition=partition,
                failure_type=AssetMaterializationFailureType.FAILED,
                reason=(
                    AssetMaterializationFailureReason.FAILED_TO_MATERIALIZE
                    if partition in failed
                    else AssetMaterializationFailureReason.UPSTREAM_FAILED_TO_MATERIALIZE
                ),
                description=why,
                metadata={fact_names.STATUS: fact_names.STATUS_FAILED, fact_names.ERROR: why},
            ),
        )
        context.instance.report_dagster_event(failure, run_id=run.run_id)


def _runs_a_later_step(context: dg.AssetExecutionContext) -> bool:
    """Whether this run executes an asset downstream of this step's (a run may select some
    assets only), read from the job's own asset graph."""
    layer = context.job_def.asset_layer
    selected = set(context.run.asset_selection or layer.selected_asset_keys)
    seen: set[dg.AssetKey] = set()
    to_visit = [context.asset_key]
    while to_visit:
        for child in layer.get(to_visit.pop()).child_keys:
            if child in selected:
                return True
            if child not in seen and layer.has(child):
                seen.add(child)
                to_visit.append(child)
    return False
