"""One partition per known FutureLearn course (R1), added as courses appear in the API."""

from __future__ import annotations

import dagster as dg

course_partitions = dg.DynamicPartitionsDefinition(name="course")
