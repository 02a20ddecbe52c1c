"""A failed HTTP cache write (another sync holding the cache file) is one line, not a traceback."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from sync_assets.partners_api import cache


def test_a_failed_cache_write_is_logged_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger(cache.CACHE_LOGGERS[0])
    with caplog.at_level(logging.ERROR, logger=logger.name):
        try:
            raise sqlite3.OperationalError("database is locked")
        except sqlite3.OperationalError:
            logger.exception("hishel: cache write failed")

    [record] = caplog.records
    text = caplog.text
    assert record.exc_info is None and "Traceback" not in text
    assert "cache write failed (OperationalError: database is locked)" in record.getMessage()
    assert "the request was served" in record.getMessage()
