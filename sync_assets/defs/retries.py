"""Step retries: a step that touches the platform database is retried after a transient
database error (platform/transient.py), and after nothing else.

Applied by raising `RetryRequested` for such an error only, not as an op's `retry_policy`: Dagster
retries every exception under a policy, and a run's cancellation too (the interrupt that stops a
step becomes a retry request, and the step runs again). A data failure fails its step at once;
the run-level retry (deploy/dagster.yaml) is for a run worker that crashed.

A retry is safe: each course commits in a transaction of its own and a write that finds nothing
changed writes nothing (R13), certificate events are handled once, and memberships looked up are
kept (R2). A course's own write is written again after a transient error within the step
(`sync.steps.progress`); per-course failures (a write that failed otherwise, refused, busy) are
recorded as the course's outcome and raised at the end of the run's last step, never retried.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from sync_assets.error_text import error_line
from sync_assets.platform.transient import is_transient

# The daemon's run retry (run_retries in deploy/dagster.yaml) re-executes a run whose process died;
# a run that failed at a step (a refused course, a failure that is no crash) would fail the same
# way again, and alert twice. The instance says so too (retry_on_asset_or_op_failure: false),
# for the UI's ad hoc asset runs; the tag keeps it on the jobs whatever the instance says.
NO_RUN_RETRY_ON_STEP_FAILURE = {"dagster/retry_on_asset_or_op_failure": "false"}

# 2 s, then about 6 s, then about 14 s (± 2 s each): a database restart or failover is over
# within the half minute, and a deadlock or busy lock clears at the first retry.
DATABASE_RETRIES = dg.RetryPolicy(
    max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


def retry_if_transient(
    context: dg.OpExecutionContext | dg.AssetExecutionContext, error: Exception
) -> None:
    """Ask Dagster to run the step again if `error` is a transient database error and the step
    has retries left; else return, for the caller to fail as it would have."""
    attempt = context.retry_number + 1
    if not is_transient(error) or attempt > DATABASE_RETRIES.max_retries:
        return
    wait = DATABASE_RETRIES.calculate_delay(attempt)
    context.log.warning(
        f"transient platform database error; retry {attempt} of {DATABASE_RETRIES.max_retries} "
        f"in {wait:.1f} s: {error_line(error)}"
    )
    # The event log keeps the one line above, not the driver's text (it may quote statements).
    raise dg.RetryRequested(
        max_retries=DATABASE_RETRIES.max_retries, seconds_to_wait=wait
    ) from None


@contextmanager
def transient_errors_retried(
    context: dg.OpExecutionContext | dg.AssetExecutionContext,
) -> Iterator[None]:
    """The block's transient database errors retry the step; anything else propagates."""
    try:
        yield
    except Exception as error:
        retry_if_transient(context, error)
        raise
