"""A code location of two jobs for test_dagster_internals: one succeeds, one fails at its step.
Both execute in process, as the project's jobs do.

No `from __future__ import annotations`: Dagster reads the op's context type hint as a class.
"""

import os

import dagster as dg


@dg.op
def say_which_process(context: dg.OpExecutionContext) -> None:
    context.log.info(f"executed in process {os.getpid()}")


@dg.op
def fail() -> None:
    raise RuntimeError("the step fails")


@dg.job(
    name="succeeds",
    tags={"from_the_job": "a tag of the job's own"},
    executor_def=dg.in_process_executor,
)
def succeeds() -> None:
    say_which_process()


@dg.job(name="fails", executor_def=dg.in_process_executor)
def fails() -> None:
    fail()


defs = dg.Definitions(jobs=[succeeds, fails])
