"""The README and docs/ say what the code does: every setting, every command, no dead link.

The README is the short way in (what it is, quick start, commands, settings, layout); the rest
lives in docs/ and benchmarks/README.md. These tests keep the two from drifting apart: a setting
added to settings.py without a row in the README's table fails, so does a command or option the
CLI no longer has, a Makefile target that is gone, and a relative link or #anchor that names
nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from sync_assets.cli import main

PROJECT = Path(__file__).resolve().parents[1]
README = PROJECT / "README.md"
DOCS = [
    PROJECT / "docs" / "operations.md",
    PROJECT / "docs" / "design.md",
    PROJECT / "docs" / "security.md",
    PROJECT / "docs" / "development.md",
    PROJECT / "benchmarks" / "README.md",
]
MARKDOWN = [README, *DOCS, PROJECT / "deploy" / "README.md", *PROJECT.glob("benchmarks/*.md")]

_SETTING = re.compile(r'"((?:FL_PARTNERS|SYNC_ASSETS|PLATFORM|DAGSTER)_[A-Z0-9_]+)"')
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def section(path: Path, title: str) -> str:
    """The text under `## title`, up to the next heading of that level."""
    text = path.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"{path.name} has no section '## {title}'"
    return match.group(1)


def first_cells(table_text: str) -> list[str]:
    """The first cell of each body row of the Markdown tables in the text."""
    rows = [line for line in table_text.splitlines() if line.startswith("| ")]
    return [row.split(" | ")[0].removeprefix("| ") for row in rows[2:]]


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text())
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}


def test_the_readme_is_the_short_way_in() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, (
        f"README.md has {len(lines)} lines: keep it to what it is, quick start, commands, "
        "settings and layout; operations, design notes and the rest go to docs/"
    )
    architecture = "course_runs ─▶ enrolments ─▶ linked_memberships ─▶ latest_enrolments ─▶"
    assert any(architecture in line for line in lines[:40]), "the asset graph on the first screen"
    for heading in ("Quick start", "Commands", "Settings", "Layout"):
        section(README, heading)


def test_the_readme_links_every_doc() -> None:
    linked = {
        (README.parent / target.split("#")[0]).resolve()
        for target in _LINK.findall(README.read_text())
    }
    for doc in DOCS:
        assert doc.is_file(), f"{doc.relative_to(PROJECT)} is missing"
        assert doc in linked, f"README.md does not link {doc.relative_to(PROJECT)}"


def test_the_security_and_privacy_section_is_whole() -> None:
    security = (PROJECT / "docs" / "security.md").read_text()
    assert security.startswith("# Security and privacy\n")
    parts = ("**Trusted:**", "**Not trusted:**", "**Personal data**", "What Dagster's event log")
    for part in parts:
        assert part in security


def test_every_setting_is_in_the_readme_settings_table() -> None:
    read = set(_SETTING.findall((PROJECT / "sync_assets" / "settings.py").read_text()))
    assert read, "no setting found in settings.py: has the pattern changed?"
    documented = set()
    for cell in first_cells(section(README, "Settings")):
        documented |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", cell))
    assert read - documented == set(), "settings missing from the README's Settings table"
    source = "".join(p.read_text() for p in (PROJECT / "sync_assets").rglob("*.py"))
    stale = {name for name in documented if f'"{name}"' not in source}
    assert stale == set(), "settings documented in the README that no code reads"


def _command(words: list[str]) -> tuple[list[click.Command], list[str]]:
    """The `sync-assets` command (and the groups on the way) that the first words name."""
    path: list[click.Command] = [main]
    rest = list(words)
    while rest and isinstance(path[-1], click.Group):
        sub = path[-1].get_command(click.Context(path[-1]), rest[0])
        if sub is None:
            break
        path.append(sub)
        rest.pop(0)
    return path, rest


def _options(command: click.Command) -> set[str]:
    return {opt for param in command.params for opt in getattr(param, "opts", [])}


def test_every_command_in_the_readme_exists_with_its_options() -> None:
    cells = first_cells(section(README, "Commands"))
    makefile = (PROJECT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.MULTILINE))
    checked = 0
    for cell in cells:
        usage = re.findall(r"`([^`]+)`", cell)
        if cell.startswith("`make "):
            for target in (word.removeprefix("make ") for word in usage):
                assert target in targets, f"make {target}: no such target in the Makefile"
            continue
        if cell.startswith("`… --"):
            # `… --submit` (on `sync`, `resync`, `certificates`)
            option, *names = usage
            for name in names:
                path, _ = _command([name])
                assert option.removeprefix("… ") in _options(path[-1]), f"{name}: {option}"
            continue
        assert usage and usage[0].startswith("sync-assets "), cell
        words = usage[0].removeprefix("sync-assets ").split()
        path, _ = _command(words)
        named = [w for w in words if not w.startswith(("-", "[", "…"))]
        known = set().union(*(_options(c) for c in path))
        options = {re.sub(r"[\[\]]", "", w) for w in words if w.lstrip("[").startswith("--")}
        assert len(path) > 1 or options, f"{cell}: no such command"
        assert options <= known, f"{usage[0]}: options the CLI does not have: {options - known}"
        assert named[: len(path) - 1] == [c.name for c in path[1:]], cell
        checked += 1
    assert checked >= 8
    for target in ("demo", "test"):
        assert f"make {target}" in section(README, "Quick start")
        assert target in targets


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(PROJECT)))
def test_relative_links_and_anchors_name_something(path: Path) -> None:
    text = _FENCE.sub("", path.read_text())
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.is_relative_to(PROJECT):
            continue  # the SPEC, next to the checkout
        if not linked.exists() or (anchor and anchor not in anchors(linked)):
            broken.append(target)
    assert broken == [], f"{path.relative_to(PROJECT)}: links that name nothing"
