"""One learner on one course: what the sync's rules make of the reports, against what is stored.

A pure function of `ExplainInputs`. It runs the sync's own rule functions (linking R3–R4, latest
enrolment R5–R6, achievements R7–R10, programmes R11–R12, certificates C4) on the learner's rows,
so an explanation can never disagree with what a sync would do. The result holds no email and no
external learner id: only how a membership matched (by id, by email), never what it matched on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from sync_assets.explain.inputs import ExplainInputs
from sync_assets.platform.certificate_store import PENDING_DAYS
from sync_assets.rules import certificates as certificate_rules
from sync_assets.rules.achievements import (
    INITIAL_STATE,
    achievement_changes,
    can_transition,
    floored_progress,
    target_state,
)
from sync_assets.rules.latest_enrolment import DECIDED_BY, deciding_step, latest_enrolments
from sync_assets.rules.linking import ambiguous_emails, match_memberships
from sync_assets.rules.programmes import CSA, assign_programmes, csa_auto_enrolments

# What each completion event outcome (certificate_rules codes) means, for C1 and C3.
OUTCOMES = {
    certificate_rules.MOVED_TO_PENDING: "C1: requirement met, enrolment moved to pending",
    certificate_rules.REQUIREMENT_NOT_MET: "C1: the programme's requirement is not met yet",
    certificate_rules.ENROLMENT_NOT_ENROLLED: "C1: the enrolment was not `enrolled`, not moved",
    certificate_rules.NOTIFIED: "C3: enough credit, CSA assessment notification written",
    certificate_rules.ALREADY_NOTIFIED: "C3: already notified",
    certificate_rules.NOT_ENOUGH_CREDIT: "C3: not enough credit yet",
    certificate_rules.CSA_ENROLMENT_INACTIVE: "C3: the CSA enrolment is complete or unenrolled",
    certificate_rules.NO_CERTIFICATE_RULE: "no certificate rule for this programme",
}


@dataclass
class Membership:
    membership_uuid: str
    how: str  # how it came to be this user's, or why it is not
    linked_at: datetime | None
    fetched_at: datetime | None
    on_course: bool  # it has an enrolment on one of the course's runs
    used: bool  # the sync uses it for this user (R5)


@dataclass
class Enrolment:
    run_uuid: str
    run_title: str | None
    run_start: datetime | None
    membership_uuid: str
    status: str
    activated_at: datetime | None
    deactivated_at: datetime | None
    steps_completed_ratio: float
    latest: bool


@dataclass
class Rules:
    """What R7–R12 make of the latest enrolment, and the achievement they lead to."""

    enrolment_progress: int  # R7: floor(ratio × 100)
    target_state: str  # R9, before the transition check
    from_state: str  # the stored state (enrolled for a new achievement)
    transition: str  # allowed, refused, or none and why
    state: str  # the achievement's state the rules lead to
    progress: int  # and its progress (never decreasing, R7)
    programme: str | None  # R11 (new) or the stored one
    csa_auto_enrolment: bool  # R12 would enrol the user on CS Accelerator


@dataclass
class Stored:
    state: str
    progress: int
    programme: str | None
    completed_at: datetime | None
    updated_at: datetime | None


@dataclass
class Transition:
    at: datetime | None
    from_state: str | None
    to_state: str
    cause: str  # R10's metadata, as a sentence


@dataclass
class CompletionEvent:
    id: int
    at: datetime | None
    programme: str | None
    handled_at: datetime | None
    outcome: str | None
    meaning: str
    certificate: str | None  # where the programme enrolment stands (C1, C2, C4)


@dataclass
class Explanation:
    course_uuid: str
    course_key: str | None
    course_title: str
    user_id: str
    forgotten: bool
    reports: str  # where the reports came from and as of when
    reports_as_of: datetime | None
    memberships: list[Membership] = field(default_factory=list)
    other_memberships: list[Membership] = field(default_factory=list)
    unknown_memberships: int = 0
    enrolments: list[Enrolment] = field(default_factory=list)
    latest_rule: str | None = None  # R5–R6: which step decided
    rules: Rules | None = None
    stored: Stored | None = None
    agrees: bool = True
    why: list[str] = field(default_factory=list)  # why the stored values are what they are
    transitions: list[Transition] = field(default_factory=list)
    completion_events: list[CompletionEvent] = field(default_factory=list)
    verdict: str = ""
    fix: str | None = None  # the command that would fix it

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "an unknown time"


def resync_command(inputs: ExplainInputs) -> str:
    course = inputs.course.key or inputs.course.uuid
    return f"sync-assets resync --course {course} --user {inputs.user_id}"


# --- memberships (R2–R4) -----------------------------------------------------------------------


def _memberships(
    inputs: ExplainInputs, forgotten: bool, other_user: Callable[[str], str]
) -> tuple[list[Membership], list[Membership], pl.DataFrame]:
    """The user's memberships, the others that concern them, and the links the sync would use."""
    rows = inputs.memberships
    user = inputs.user_id
    matched = match_memberships(
        rows.filter(pl.col("external_learner_id").is_not_null()), inputs.users
    )
    match_of = {m: (u, how) for m, u, how in matched.iter_rows()}
    ambiguous = {
        m: users for m, users in ambiguous_emails(rows, inputs.users).iter_rows() if user in users
    }
    on_course = set(inputs.enrolments["membership_uuid"])
    own: list[Membership] = []
    others: list[Membership] = []
    used: list[str] = []
    for row in rows.sort("membership_uuid").iter_rows(named=True):
        uuid = row["membership_uuid"]
        matches, how = match_of.get(uuid, (None, None))
        entry = Membership(uuid, "", row["linked_at"], row["fetched_at"], uuid in on_course, False)
        if row["user_id"] == user:
            if row["fetched_at"] is None and row["stored"]:
                entry.how = "linked by the platform (invitation link, LTI launch or migration)"
            elif matches == user:
                entry.how = f"linked by {how} (R3)"
            elif matches is not None:
                entry.how = (
                    f"linked by the platform; R3 would match user {other_user(matches)}: "
                    "the stored link is kept (R2)"
                )
            else:
                entry.how = "linked by the platform; its external id matches no user now"
            entry.used = not forgotten
            if forgotten:
                entry.how += "; not used: the user is forgotten (R3)"
            own.append(entry)
        elif uuid in ambiguous:
            entry.how = (
                f"ambiguous: its external id is the email of {len(ambiguous[uuid])} users, "
                "so it links no one (R4)"
            )
            others.append(entry)
        elif matches == user and row["user_id"] is not None:
            entry.how = (
                f"R3 matches this user by {how}, but it is linked to user "
                f"{other_user(row['user_id'])}: a link is never re-pointed (R2)"
            )
            others.append(entry)
        elif matches == user:
            where = "stored, not linked yet" if row["stored"] else "looked up now, not stored"
            entry.how = f"{where}: the next sync links it by {how} (R3)"
            entry.used = not forgotten
            others.append(entry)
        if entry.used:
            used.append(uuid)
    links = pl.DataFrame(
        {"membership_uuid": used, "user_id": [user] * len(used)},
        schema={"membership_uuid": pl.String, "user_id": pl.String},
    )
    return own, others, links


# --- enrolments (R5–R6) and what R7–R12 make of the latest ---------------------------------


def _enrolments(
    inputs: ExplainInputs, links: pl.DataFrame
) -> tuple[list[Enrolment], pl.DataFrame, str | None]:
    runs = inputs.runs.select("run_uuid", "title", "start_time")
    mine = inputs.enrolments.join(links, on="membership_uuid").join(runs, on="run_uuid", how="left")
    latest = latest_enrolments(inputs.enrolments, links, inputs.runs)
    winner = latest.select("run_uuid", "membership_uuid").rows()
    step = deciding_step(mine)
    rule = DECIDED_BY[step] if step else ("the only enrolment" if latest.height else None)
    listed = [
        Enrolment(
            run_uuid=row["run_uuid"],
            run_title=row["title"],
            run_start=row["start_time"],
            membership_uuid=row["membership_uuid"],
            status=row["status"],
            activated_at=row["activated_at"],
            deactivated_at=row["deactivated_at"],
            steps_completed_ratio=row["steps_completed_ratio"],
            latest=(row["run_uuid"], row["membership_uuid"]) in winner,
        )
        for row in mine.sort(
            "activated_at", "run_uuid", descending=True, nulls_last=True
        ).iter_rows(named=True)
    ]
    return listed, latest, rule


def _rules(inputs: ExplainInputs, latest: pl.DataFrame) -> tuple[Rules, pl.DataFrame]:
    current = inputs.achievement
    changes = achievement_changes(
        latest, current, activity_id=inputs.course.activity_id, now=inputs.now
    )
    changes = assign_programmes(changes, inputs.activity_programmes, inputs.programme_enrolments)
    csa_ids = inputs.activity_programmes.filter(pl.col("programme_slug") == CSA)["programme_id"]
    csa = (
        csa_auto_enrolments(
            changes, inputs.activity_programmes, inputs.programme_enrolments, csa_ids[0]
        ).height
        > 0
        if len(csa_ids)
        else False
    )
    progress = floored_progress(pl.col("steps_completed_ratio"))
    enrolment_progress, target = latest.select(
        progress.alias("progress"), target_state(progress, pl.col("deactivated_at")).alias("to")
    ).row(0)
    stored = current.row(0, named=True) if current.height else None
    from_state = stored["state"] if stored else INITIAL_STATE
    if from_state == "complete":
        transition = "none: complete is terminal, nothing changes (R8)"
    elif target == from_state:
        transition = f"none: already {from_state}"
    elif can_transition(from_state, target):
        transition = f"allowed: {from_state} → {target} (R9)"
    else:
        transition = f"refused: {from_state} → {target} is not allowed (R9); stays {from_state}"
    change = changes.row(0, named=True) if changes.height else None
    planned = change or stored or {}
    programme = planned.get("programme_id")
    return (
        Rules(
            enrolment_progress=enrolment_progress,
            target_state=target,
            from_state=from_state,
            transition=transition,
            state=planned.get("state", from_state),
            progress=planned.get("progress", 0),
            programme=inputs.programme_slugs.get(programme, programme) if programme else None,
            csa_auto_enrolment=csa,
        ),
        changes,
    )


def _kept_because(rules: Rules, stored: Stored) -> list[str]:
    """Why an achievement that agrees with the rules differs from the enrolment's own figures."""
    why = []
    if stored.state == "complete" and (
        rules.target_state != "complete" or rules.enrolment_progress < stored.progress
    ):
        why.append(
            f"complete is terminal: the latest enrolment says {rules.enrolment_progress}% "
            f"({rules.target_state}), the achievement stays complete (R8)"
        )
    elif rules.enrolment_progress < stored.progress:
        why.append(
            f"progress never decreases: the latest enrolment says {rules.enrolment_progress}%, "
            f"{stored.progress}% is kept (R7)"
        )
    if rules.transition.startswith("refused"):
        why.append(rules.transition)
    return why


def _not_applied_because(
    inputs: ExplainInputs, stored: Stored | None, links: list[Membership]
) -> list[str]:
    """Why the stored achievement is not what the rules make of the reports: what changed since."""
    applied = inputs.last_applied
    if applied is None:
        return ["no sync has applied this course's progress yet"]
    why = []
    if inputs.reports_fresh:
        why.append(
            f"FutureLearn's report now differs from what the last sync applied "
            f"({when(applied.at)}, run {applied.run_id[:8]})"
        )
    elif inputs.reports_as_of and inputs.reports_as_of > applied.at:
        why.append(
            f"not synced since: the stored report ({when(inputs.reports_as_of)}) is newer than "
            f"the last applied sync ({when(applied.at)}, run {applied.run_id[:8]}); the course "
            "failed, was refused or was a dry run since"
        )
    for membership in links:
        if membership.linked_at is None or membership.linked_at > applied.at:
            linked = f"at {when(membership.linked_at)}" if membership.linked_at else "not yet"
            why.append(
                f"membership {membership.membership_uuid} was linked {linked}, after the last "
                f"applied sync ({when(applied.at)})"
            )
    if stored and stored.updated_at and stored.updated_at > applied.at:
        why.append(
            f"the achievement was changed at {when(stored.updated_at)}, after the last applied "
            "sync: by the platform or by hand, or by a resync"
            + (
                ", which read FutureLearn afresh: add --fresh to compare with FutureLearn now"
                if not inputs.reports_fresh
                else ""
            )
        )
    return why or [
        f"the last applied sync ({when(applied.at)}, run {applied.run_id[:8]}) did not write it"
    ]


# --- R10 and C1–C4 ------------------------------------------------------------------------------


def _cause(metadata: str | None) -> str:
    """R10's metadata as a sentence; only the keys the sync writes (nothing personal)."""
    cause = json.loads(metadata) if metadata else {}
    if not isinstance(cause, dict) or not cause:
        return "no cause recorded"
    parts = [str(cause.get("source", "unknown source"))]
    if cause.get("dagster_run_id"):
        parts.append(f"Dagster run {str(cause['dagster_run_id'])[:8]}")
    if cause.get("run_uuid"):
        parts.append(f"course run {cause['run_uuid']}")
    if cause.get("membership_uuid"):
        parts.append(f"membership {cause['membership_uuid']}")
    if "steps_completed_ratio" in cause:
        parts.append(f"ratio {cause['steps_completed_ratio']} → progress {cause.get('progress')}")
    if cause.get("deactivated"):
        parts.append("deactivated")
    return ", ".join(parts)


def _certificate(enrolment: dict | None, slug: str | None, now: datetime) -> str | None:
    """Where the user's enrolment on the event's programme stands (C1, C2, C4)."""
    if slug not in certificate_rules.CERTIFICATES:
        return None
    if enrolment is None:
        return "no enrolment on this programme"
    state = enrolment["state"]
    if state == "complete":
        return f"complete: certificate number {enrolment['certificate_number']} (C2)"
    if state != "pending":
        return f"enrolment is {state}"
    refusal = certificate_rules.enrolment_refusal(state, "complete", enrolment["flagged"])
    if refusal:
        return f"pending since {when(enrolment['pending_since'])}; refused: {refusal}"
    due = enrolment["pending_since"] + timedelta(days=PENDING_DAYS)
    if due > now:
        return f"pending since {when(enrolment['pending_since'])}: completes on {when(due)} (C2)"
    return "pending for seven days: the next certificate run completes it (C2)"


def _events(inputs: ExplainInputs) -> list[CompletionEvent]:
    enrolments = {
        row["programme_id"]: row for row in inputs.programme_enrolments.iter_rows(named=True)
    }
    events = []
    for row in inputs.completion_events.sort("id").iter_rows(named=True):
        slug = inputs.programme_slugs.get(row["programme_id"]) if row["programme_id"] else None
        outcome = row["outcome"]
        meaning = (
            OUTCOMES.get(outcome, outcome)
            if row["handled_at"]
            else "pending: no certificate run has handled it yet"
        )
        events.append(
            CompletionEvent(
                id=row["id"],
                at=row["created_at"],
                programme=slug,
                handled_at=row["handled_at"],
                outcome=outcome,
                meaning=meaning,
                certificate=_certificate(enrolments.get(row["programme_id"]), slug, inputs.now),
            )
        )
    return events


# --- the whole explanation --------------------------------------------------------------------


def explain(inputs: ExplainInputs, *, other_user: Callable[[str], str] = str) -> Explanation:
    """The explanation of `inputs.user_id` on `inputs.course`.

    `other_user` names any other user the explanation mentions (a link held by someone else):
    their id by default, a pseudonym where the explanation is kept (Dagster metadata).
    """
    user_rows = inputs.users.filter(pl.col("id") == inputs.user_id)
    forgotten = bool(user_rows["forgotten"][0]) if user_rows.height else False
    source = "fetched now" if inputs.reports_fresh else "last stored"
    result = Explanation(
        course_uuid=inputs.course.uuid,
        course_key=inputs.course.key,
        course_title=inputs.course.title,
        user_id=inputs.user_id,
        forgotten=forgotten,
        reports=f"enrolment reports {source}, as of {when(inputs.reports_as_of)}"
        + (f" (run {inputs.reports_run_id[:8]})" if inputs.reports_run_id else ""),
        reports_as_of=inputs.reports_as_of,
        unknown_memberships=inputs.unknown_memberships,
    )
    own, others, links = _memberships(inputs, forgotten, other_user)
    result.memberships, result.other_memberships = own, others
    if inputs.achievement.height:
        row = inputs.achievement.row(0, named=True)
        programme = row["programme_id"]
        result.stored = Stored(
            state=row["state"],
            progress=row["progress"],
            programme=inputs.programme_slugs.get(programme, programme) if programme else None,
            completed_at=row["completed_at"],
            updated_at=row["updated_at"],
        )
        result.transitions = [
            Transition(t["created_at"], t["from_state"], t["to_state"], _cause(t["metadata"]))
            for t in inputs.transitions.sort("created_at", "id").iter_rows(named=True)
        ]
        result.completion_events = _events(inputs)
    as_of = f"as of {when(inputs.reports_as_of)}"
    result.enrolments, latest, result.latest_rule = _enrolments(inputs, links)
    if forgotten:
        result.verdict = (
            f"user {inputs.user_id} is forgotten: the sync never uses links to them (R3) and "
            "leaves their achievement as it is"
        )
    elif links.is_empty():
        result.verdict = _not_linked(inputs, result)
    elif latest.is_empty():
        result.verdict = (
            f"not enrolled on this course {as_of}: no enrolment of their "
            f"{len(links)} membership(s) on its runs; the sync leaves "
            + ("their achievement as it is" if result.stored else "them without an achievement")
        )
    else:
        result.rules, changes = _rules(inputs, latest)
        would_link = [m for m in others if m.used]
        if changes.is_empty() and not would_link and result.stored is not None:
            result.why = _kept_because(result.rules, result.stored)
            result.verdict = f"consistent with FutureLearn {as_of}"
        else:
            result.agrees = False
            result.why = _not_applied_because(inputs, result.stored, own + would_link)
            shows = (
                f"{result.stored.state} {result.stored.progress}%"
                if result.stored
                else "no achievement"
            )
            result.verdict = (
                f"off: the platform shows {shows}; FutureLearn's reports {as_of} make it "
                f"{result.rules.state} {result.rules.progress}%"
            )
            result.fix = resync_command(inputs)
    _certificate_verdict(result)
    return result


def _not_linked(inputs: ExplainInputs, result: Explanation) -> str:
    if inputs.unknown_memberships and not inputs.reports_fresh:
        result.fix = (
            f"sync-assets explain --course {inputs.course.key or inputs.course.uuid} "
            f"--user {inputs.user_id} --fresh"
        )
        return (
            f"not linked: no membership is this user's; {inputs.unknown_memberships} "
            "membership(s) on the course's reports were never looked up: look them up"
        )
    return (
        "not linked: no FutureLearn membership on this course is this user's, so the sync "
        "does not write their progress"
    )


def _certificate_verdict(result: Explanation) -> None:
    """A completion event still pending, or a certificate refused, is part of the answer."""
    pending = [event for event in result.completion_events if event.handled_at is None]
    refused = [
        event
        for event in result.completion_events
        if event.certificate and "refused" in event.certificate
    ]
    if pending:
        result.verdict += f"; completion event {pending[0].id} not handled yet"
        result.fix = result.fix or "sync-assets certificates"
    for event in refused:
        result.verdict += f"; {event.programme} certificate {event.certificate.split('; ')[-1]}"
