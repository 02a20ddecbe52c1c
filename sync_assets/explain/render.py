"""An explanation as an operator reads it: text for the terminal, Markdown for the Dagster UI.

Both are built from the same `Explanation`, which holds no email and no external learner id.
"""

from __future__ import annotations

from collections.abc import Callable

from sync_assets.explain.explanation import Explanation, when
from sync_assets.markdown import markdown_text


def _ratio(value: float) -> str:
    return f"{value:.4g}"


def sections(
    explanation: Explanation, api_text: Callable[[str], str] = str
) -> list[tuple[str, list[str]]]:
    """(heading, lines) in the order the issue asks: memberships … verdict.

    `api_text` is applied to the strings the Partners API gave (titles): Markdown escapes them.
    """
    e = explanation
    memberships = [
        f"{m.membership_uuid}: {m.how}"
        + (f", linked {when(m.linked_at)}" if m.linked_at else "")
        + ("" if m.on_course else " (no enrolment on this course)")
        for m in e.memberships
    ] or ["none linked to this user"]
    memberships += [f"{m.membership_uuid}: {m.how}" for m in e.other_memberships]
    if e.unknown_memberships:
        memberships.append(
            f"{e.unknown_memberships} membership(s) on the course's reports never looked up "
            "(R2): whose they are is not known yet"
        )
    enrolments = [
        f"{'▶ latest' if x.latest else ' ' * 8} run {x.run_uuid} "
        f"({api_text(x.run_title) if x.run_title else 'unknown run'}, starts {when(x.run_start)}), "
        f"membership {x.membership_uuid}: {x.status}, activated {when(x.activated_at)}"
        + (f", deactivated {when(x.deactivated_at)}" if x.deactivated_at else "")
        + f", ratio {_ratio(x.steps_completed_ratio)}"
        for x in e.enrolments
    ] or ["none"]
    if e.latest_rule:
        enrolments.append(f"latest chosen by: {e.latest_rule}")
    rules: list[str] = []
    if e.rules:
        r = e.rules
        rules = [
            f"progress floor(ratio × 100) = {r.enrolment_progress} (R7); target state "
            f"{r.target_state} (R9)",
            f"transition: {r.transition}",
            f"leads to: {r.state}, {r.progress}%, programme {r.programme or 'none'}"
            + (" (R11: a new achievement's)" if e.stored is None else " (kept)")
            + ("; R12 would enrol the user on CS Accelerator" if r.csa_auto_enrolment else ""),
        ]
    stored = e.stored
    rules.append(
        f"stored: {stored.state}, {stored.progress}%, programme {stored.programme or 'none'}"
        + (f", completed {when(stored.completed_at)}" if stored.completed_at else "")
        + f", updated {when(stored.updated_at)}"
        if stored
        else "stored: no achievement"
    )
    if e.rules:
        rules.append("agree" if e.agrees else "disagree")
    rules += [f"because {why}" for why in e.why]
    history = [
        f"{when(t.at)}: {t.from_state or '(new)'} → {t.to_state}; cause: {t.cause}"
        for t in e.transitions
    ] or ["no transitions"]
    history += [
        f"completion event {c.id} ({when(c.at)}, {c.programme or 'no programme'}): {c.meaning}"
        + (f"; certificate: {c.certificate}" if c.certificate else "")
        for c in e.completion_events
    ]
    verdict = e.verdict + (f" → run `{e.fix}`" if e.fix else "")
    return [
        ("Memberships (R2–R4)", memberships),
        ("Enrolments (R5–R6)", enrolments),
        ("Rules (R7–R12) against the stored achievement", rules),
        ("Transitions (R10) and completion events (C1–C4)", history),
        ("Verdict", [verdict]),
    ]


def _title(e: Explanation, api_text: Callable[[str], str] = str) -> str:
    return (
        f"User {e.user_id} on {api_text(e.course_title)} ({e.course_key or e.course_uuid}, "
        f"course {e.course_uuid}); {e.reports}"
    )


def as_text(explanation: Explanation) -> str:
    lines = [_title(explanation)]
    for heading, items in sections(explanation):
        lines += ["", f"{heading}:", *(f"  {item}" for item in items)]
    return "\n".join(lines)


def as_markdown(explanation: Explanation) -> str:
    lines = [f"**{_title(explanation, markdown_text)}**"]
    for heading, items in sections(explanation, markdown_text):
        lines += ["", f"### {heading}", *(f"- {item}" for item in items)]
    return "\n".join(lines)
