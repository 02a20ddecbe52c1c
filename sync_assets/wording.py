"""Counts in log lines and skip reasons, in words a person reads without stopping."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """`1 course`, `25 courses`, `0 courses`: the noun agrees with the count."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"
