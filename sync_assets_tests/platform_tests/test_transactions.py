"""One writer per course: the lock every course writer takes, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy.engine import Engine

from sync_assets.platform.transactions import CourseBusyError, course_write_transaction

COURSE, OTHER = "c9fb59cc-6393-4a29-8136-7020128ca879", "0b8b1e70-0e3a-4b4b-8c53-8e3a1f1b2a11"


def test_a_second_writer_of_a_course_gives_up_after_its_timeout_naming_it(
    platform_engine: Engine,
) -> None:
    with course_write_transaction(platform_engine, COURSE, timeout_seconds=5):
        started = time.monotonic()
        with (
            pytest.raises(CourseBusyError, match=f"held course {COURSE} for more than 0.5 s"),
            course_write_transaction(platform_engine, COURSE, timeout_seconds=0.5),
        ):
            pass
        waited = time.monotonic() - started
    assert 0.4 < waited < 5
    with course_write_transaction(platform_engine, COURSE, timeout_seconds=0.5):
        pass  # released with the first transaction


def test_a_second_writer_waits_for_the_first_to_commit(platform_engine: Engine) -> None:
    order: list[str] = []
    holding = threading.Event()

    def first() -> None:
        with course_write_transaction(platform_engine, COURSE, timeout_seconds=5):
            holding.set()
            time.sleep(0.5)
            order.append("first commits")

    thread = threading.Thread(target=first)
    thread.start()
    holding.wait(5)
    with course_write_transaction(platform_engine, COURSE, timeout_seconds=5):
        order.append("second writes")
    thread.join()
    assert order == ["first commits", "second writes"]


@pytest.mark.postgres
def test_on_postgresql_other_courses_are_not_held_up(postgres_schema_url) -> None:
    from sync_assets.platform.database import create_platform_engine

    engine = create_platform_engine(postgres_schema_url.render_as_string(hide_password=False))
    try:
        with (
            course_write_transaction(engine, COURSE, timeout_seconds=5),
            course_write_transaction(engine, OTHER, timeout_seconds=0.5),
        ):
            pass
    finally:
        engine.dispose()
