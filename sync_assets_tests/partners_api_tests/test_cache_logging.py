"""A failed HTTP cache write (another sync holding the cache file, Redis out of memory) is one
line, not a traceback."""

from __future__ import annotations

import logging
import sqlite3

import pytest
import redis

from sync_assets.partners_api import cache


@pytest.mark.parametrize(
    ("logger_name", "error"),
    [
        (cache.CACHE_LOGGERS[0], sqlite3.OperationalError("database is locked")),
        ("hishel._core._storages._async_redis", redis.ResponseError("OOM command not allowed")),
    ],
)
def test_a_failed_cache_write_is_logged_in_one_line(
    caplog: pytest.LogCaptureFixture, logger_name: str, error: Exception
) -> None:
    logger = logging.getLogger(logger_name)
    with caplog.at_level(logging.ERROR, logger=logger.name):
        try:
            raise error
        except type(error):
            logger.exception("hishel: cache write failed")

    [record] = caplog.records
    text = caplog.text
    assert record.exc_info is None and "Traceback" not in text
    assert f"cache write failed ({type(error).__name__}: {error})" in record.getMessage()
    assert "the request was served" in record.getMessage()
