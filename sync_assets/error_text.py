"""Error text that may be stored or sent: one line, and no learner's email in it.

A failure's reason goes to the event log, the stored failure record of its course and the run
failure alert, all kept or read far from the platform database. Database errors are the risk:
their later lines quote the statement, its bound values (emails, when linking) and, on
PostgreSQL, the failing row (DETAIL); their first line can still quote a value. So a reason is
the error's type and first line, with anything shaped like an email replaced.
"""

from __future__ import annotations

import re

# Anything@anything, stopped by the characters that delimit values in error messages (quotes,
# brackets, commas, spaces): an address in `('a@b.org', …)` or `"a@b.org"` is caught whole. An
# apostrophe inside the local part (o'neil@…) is part of it.
_PART = r"""[^\s@'"`()<>\[\]{},;:]+"""
_EMAIL = re.compile(rf"{_PART}(?:'{_PART})*@{_PART}")
EMAIL_REPLACEMENT = "[email]"


def redact(text: str) -> str:
    """`text` with every email-looking string replaced by `[email]`."""
    return _EMAIL.sub(EMAIL_REPLACEMENT, text)


def error_line(error: BaseException) -> str:
    """`Type: first line of the message`, redacted: the reason a failure is stored and sent with."""
    lines = str(error).strip().splitlines()
    return redact(f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__)
