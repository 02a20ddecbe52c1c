"""Text from the Partners API (course and run titles) in Markdown that the Dagster UI renders.

The API is not trusted (SPEC §8): a title must show as the title, not as a link, an image, a
code span or an extra table column. Every Markdown special character is backslash-escaped (a
table cell takes `\\|` as a literal bar) and line breaks, which would end a table row or a list
item, become spaces.
"""

from __future__ import annotations

import re

# `:`, `@` and `.` too: the UI's GFM turns bare `https://…`, `www.…` and emails into links.
_SPECIAL = re.compile(r"([\\`*_\[\]()!<>|#~&:@.])")
_LINE_BREAK = re.compile(r"[\r\n\u2028\u2029\x0b\x0c\x85]+")


def markdown_text(value: str) -> str:
    """`value` as literal text inside Markdown: no markup of its own takes effect."""
    return _SPECIAL.sub(r"\\\1", _LINE_BREAK.sub(" ", value))
