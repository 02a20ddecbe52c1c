"""Which course a `--course` argument names, from what is stored: no request, no definitions.

Kept apart from `launch` (which loads the code location) so that the code location's own jobs
can resolve a course argument too.
"""

from __future__ import annotations

import dagster as dg
from sqlalchemy.engine import Engine

from sync_assets.defs.sync.partitions import CourseKeys, course_partitions, is_bare_uuid
from sync_assets.platform import sync_store
from sync_assets.settings import ConfigurationError


def course_uuid_argument(instance: dg.DagsterInstance, engine: Engine, argument: str) -> str:
    """The course uuid a `--course` argument names: a uuid, or a course partition's key.

    From what is stored (the instance's partitions, the platform's known courses): no request.
    """
    if is_bare_uuid(argument):
        return argument.lower()
    with engine.connect() as connection:
        known = list(sync_store.known_courses(connection)["course_uuid"])
    partitions = list(instance.get_dynamic_partitions(course_partitions.name))
    course = CourseKeys.resolve(partitions, known, known).uuid(argument)
    if course is None:
        raise ConfigurationError(
            "--course", f"{argument}: neither a course uuid nor a course partition's key"
        )
    return course
