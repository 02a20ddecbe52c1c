"""Titles from the Partners API show as text in the Markdown the Dagster UI renders: no link, no
image, no extra table column (issue 30, SPEC §8). Rendered with a CommonMark parser with tables,
as the UI's Markdown is."""

from __future__ import annotations

import html
import re
from dataclasses import replace

import polars as pl
from markdown_it import MarkdownIt

from sync_assets.explain.explanation import explain
from sync_assets.explain.render import as_markdown
from sync_assets.markdown import markdown_text
from sync_assets_tests.conftest import sqlite_only
from sync_assets_tests.explain_tests.test_explanation import (
    COURSE,
    PRIMARY,
    RUNS,
    achievement,
    enrolment,
    frame,
    inputs,
    membership,
)

from .conftest import World
from .test_sync_definitions import _check, _run_events

HOSTILE = "x | y ![i](http://evil/i.png) [a](http://evil) <b>*bold*</b> _u_ `code`"
ROW = re.compile(r"<tr>(.*?)</tr>", re.S)


def rendered(markdown: str) -> str:
    return MarkdownIt("commonmark").enable("table").render(markdown)


def assert_only_text(page: str) -> None:
    assert "<a " not in page and "<img" not in page and "<b>" not in page
    assert "<strong>" not in page and "<em>" not in page


def test_a_hostile_title_is_one_cell_of_text() -> None:
    title = markdown_text(HOSTILE + "\n| 1 | 2 |")
    table = f"| title | n |\n| --- | --- |\n| {title} | 3 |"
    page = rendered(table)
    assert_only_text(page)
    rows = ROW.findall(page)
    assert len(rows) == 2  # the header and one row: the line break did not start another
    assert all(len(re.findall(r"<t[hd]", row)) == 2 for row in rows)
    assert HOSTILE in html.unescape(page)
    assert "<code>" not in page


@sqlite_only
def test_course_titles_in_the_sync_metadata_render_as_text(world: World) -> None:
    world.dataset.runs = world.dataset.runs.with_columns(title=pl.lit(HOSTILE))
    assert world.sync().exit_code == 0
    events = _run_events(world)

    [course_runs] = [
        entry.asset_materialization
        for entry in events
        if entry.asset_materialization
        and entry.asset_materialization.asset_key.to_user_string() == "course_runs"
    ]
    table = rendered(course_runs.metadata["course_partitions"].value)
    assert_only_text(table)
    rows = ROW.findall(table)
    assert len(rows) == 1 + len(world.partitions())
    for row in rows:
        assert len(re.findall(r"<t[hd]", row)) == 3  # title, partition key, course uuid
    assert html.unescape(table).count(HOSTILE) == len(world.partitions())

    unknown = rendered(_check(events, "unknown_courses_reported").metadata["unknown_courses"].value)
    assert_only_text(unknown)
    items = re.findall(r"<li>(.*?)</li>", unknown, re.S)
    assert items and all(HOSTILE in html.unescape(item) for item in items)
    assert unknown.count("<code>") == len(items)  # the uuid's, and only it


def test_titles_in_an_explanation_render_as_text() -> None:
    scenario = replace(
        inputs(
            [membership("m-1")],
            [enrolment("m-1", "run-a", 10, 0.2)],
            [achievement("in_progress", 20, PRIMARY)],
        ),
        course=replace(COURSE, title=HOSTILE),
        runs=frame(
            "runs",
            [
                {"run_uuid": run, "course_uuid": COURSE.uuid, "title": HOSTILE, "start_time": at}
                for run, at in RUNS.items()
            ],
        ),
    )
    page = rendered(as_markdown(explain(scenario)))
    assert_only_text(page.replace("<strong>", "", 1))  # the heading's own bold
    assert html.unescape(page).count(HOSTILE) >= 2  # the course's title and the run's


def test_bare_urls_and_emails_in_a_title_are_not_autolinked() -> None:
    """The UI renders metadata with GFM, which links bare `https://…`, `www.…` and emails (its
    autolink literals need those characters unescaped, as written); they render as the text."""
    title = "Renew at https://evil.example/login or www.evil.org, ask jane@example.org"
    escaped = markdown_text(title)
    assert not re.search(r"(?<!\\):(?=//)|www(?<!\\)\.|(?<!\\)@", escaped)
    rendered = MarkdownIt("commonmark").render(escaped)
    assert html.unescape(re.sub(r"<[^>]+>", "", rendered)).strip() == title
