"""The `sync-assets` command line (SPEC §7)."""

from __future__ import annotations

import atexit
import gc
import os
import signal

import click
import sqlalchemy as sa

from sync_assets import failpoints
from sync_assets.error_text import error_line
from sync_assets.partners_api.client import PartnersApiError
from sync_assets.platform import migrate
from sync_assets.platform.database import check_connection, create_platform_engine, describe
from sync_assets.platform.demo_catalogue import (
    seed_demo_catalogue,
    seed_demo_progress,
    seed_users,
)
from sync_assets.settings import (
    MAX_RETENTION_DAYS,
    ConfigurationError,
    check_settings,
    data_dir,
    is_deployment,
    partners_api_settings,
)
from sync_assets.simulator.app import (
    SIMULATOR_CONSUMER_KEY,
    SIMULATOR_CONSUMER_SECRET,
    PartnersApiSimulator,
)
from sync_assets.simulator.datasets import DATASETS, GeneratedDataset, load
from sync_assets.simulator.faults import FaultPlan, FaultSpecError
from sync_assets.simulator.transports import SimulatorServer


class _Commands(click.Group):
    """Turns an expected failure into one line saying what failed and what to do.

    A setting that cannot be used names the setting; the Partners API or the platform database
    failing for good says which and why; anything else is one line too, with `--verbose` for
    the trace. Failures inside a Dagster run keep their full trace in the run's log (the UI).
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except ConfigurationError as error:
            raise click.ClickException(str(error)) from None
        except PartnersApiError as error:
            hint = "" if "(401)" in str(error) else _API_HINT
            raise click.ClickException(f"{error}{hint}") from None
        except sa.exc.DBAPIError as error:
            # The terminal's output is often kept (cron mail, CI logs): no email in it.
            reason = error_line(error.orig) if error.orig else error_line(error)
            raise click.ClickException(
                f"PLATFORM_DATABASE_URL: the platform database failed: {reason}; "
                "nothing after the last committed course was written, run the command again"
            ) from None
        except Exception as error:
            if ctx.find_root().params.get("verbose"):
                raise
            raise click.ClickException(
                f"{error_line(error)} (run with --verbose for the trace)"
            ) from None


_API_HINT = "; check FL_PARTNERS_URL and that the Partners API answers, then run the command again"


@click.group(cls=_Commands)
@click.option("--verbose", is_flag=True, help="On an unexpected failure, show the whole trace")
def main(verbose: bool) -> None:
    """Keep the platform's teacher progress in step with FutureLearn's Partners API."""
    # At exit, Python's last garbage collection walks every object a sync leaves (Dagster's
    # definitions, polars, SQLAlchemy): ~0.6 s of a night's command, measured. Frozen objects
    # are skipped; the process's memory goes back to the system whole. Finalisation still
    # runs: atexit handlers, streams flushed, objects freed by reference count.
    atexit.register(gc.freeze)


@main.group()
def db() -> None:
    """The platform database at PLATFORM_DATABASE_URL."""


def _connected_engine():
    engine = create_platform_engine()
    check_connection(engine)
    return engine


def _migrated_engine():
    engine = _connected_engine()
    if migrate.current_revision(engine) != migrate.head_revision():
        raise click.ClickException(
            f"{describe(engine.url)} is not at the latest schema: run `sync-assets db upgrade`"
        )
    return engine


@db.command()
def upgrade() -> None:
    """Create or migrate the platform schema; a database already up to date is left as it is."""
    engine = _connected_engine()
    result = migrate.upgrade(engine)
    where = describe(engine.url)
    if result.changed:
        click.echo(
            f"{where}: migrated from {result.before or 'an empty database'} to {result.after}"
        )
    else:
        click.echo(f"{where}: already at {result.after} (latest); nothing to do")


@db.command("seed-catalogue")
def seed_catalogue() -> None:
    """Load the demo catalogue: 33 FutureLearn courses, 3 programmes and their groupings."""
    engine = _migrated_engine()
    with engine.begin() as connection:
        seeded = seed_demo_catalogue(connection)
    click.echo(
        f"{describe(engine.url)}: catalogue of {seeded.future_learn_courses} FutureLearn courses "
        f"and {seeded.activities - seeded.future_learn_courses} platform activities, "
        f"{seeded.programmes} programmes with {seeded.groupings} groupings"
    )


@main.group()
def simulator() -> None:
    """The Partners API simulator (SPEC §2), for demos, tests and benchmarks."""


@simulator.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--dataset", type=click.Choice(DATASETS), default="demo", show_default=True)
@click.option("--seed", default=1, show_default=True, type=int)
@click.option(
    "--latency-ms", default=0.0, show_default=True, type=float, help="Added to every answer"
)
@click.option("--page-size", default=None, type=int, help="Paginate reports with Link: rel=next")
@click.option(
    "--fault",
    "faults",
    multiple=True,
    help="ENDPOINT:KIND[:key=value,…], e.g. course_enrolments_report:503:rate=0.1 (repeatable)",
)
@click.option(
    "--consumer-key",
    envvar="FL_PARTNERS_CONSUMER_KEY",
    default=SIMULATOR_CONSUMER_KEY,
    show_default=True,
)
@click.option(
    "--consumer-secret",
    envvar="FL_PARTNERS_CONSUMER_SECRET",
    default=SIMULATOR_CONSUMER_SECRET,
    show_default=False,
    help="JWT secret (default: the simulator's own; also FL_PARTNERS_CONSUMER_SECRET)",
)
def serve(
    host: str,
    port: int,
    dataset: str,
    seed: int,
    latency_ms: float,
    page_size: int | None,
    faults: tuple[str, ...],
    consumer_key: str,
    consumer_secret: str,
) -> None:
    """Serve the Partners API over HTTP until interrupted.

    POST /_simulator/advance_day moves the data on a day; GET /_simulator/counts reads what
    was asked.
    """
    try:
        plan = FaultPlan.parse(faults, seed=seed)
    except FaultSpecError as error:
        raise click.BadParameter(str(error), param_hint="--fault") from None
    data = load(dataset, seed)
    app = PartnersApiSimulator(
        data,
        consumer_key=consumer_key,
        consumer_secret=consumer_secret,
        page_size=page_size,
        faults=plan,
        latency_ms=latency_ms,
    )
    server = SimulatorServer(app, host, port)
    if hasattr(data, "describe"):  # generated a course at a time (simulator/streamed.py)
        size = data.describe()
    elif isinstance(data, GeneratedDataset):
        size = (
            f"{data.runs.height} runs, {data.enrolments.height} enrolments, "
            f"{data.memberships.height} memberships"
        )
    else:
        size = "the recorded sandbox responses"
    # Stop when asked, whatever the parent left: a process started by one that ignores SIGTERM
    # inherits the ignore (seen under pytest-xdist: terminate() then had no effect at all).
    # Installed before the banner: a parent that reads "Serving at" may signal at once.
    signal.signal(signal.SIGTERM, _stop_serving)
    click.echo(f"Partners API simulator: dataset {dataset} ({size})")
    click.echo(f"Serving at {server.base_url}; set FL_PARTNERS_URL={server.base_url}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _stop_serving(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds serve_forever, so the socket is closed on the way


def _sync_and_report(
    courses: tuple[str, ...],
    dry_run: bool,
    allow_shrink: tuple[str, ...],
    allow_quarantine: tuple[str, ...] = (),
    submit: bool = False,
    recompute_unchanged: bool = False,
) -> None:
    # Imported here: loading the Dagster definitions takes a moment the db commands don't need.
    from sync_assets.runs.execution import code_location_runs
    from sync_assets.runs.instance import open_instance
    from sync_assets.runs.launch import launch_sync, prepare_partitions, run_certificate_work
    from sync_assets.runs.report import format_report

    check_settings()  # a bad (or, deployed, missing) setting fails here, before any request
    _migrated_engine().dispose()
    with open_instance(say=click.echo) as instance, code_location_runs(instance) as runs:
        home = instance.root_directory
        partitions = prepare_partitions(instance, list(courses) or None, say=click.echo)
        if not partitions:
            raise click.ClickException("no known course has runs on FutureLearn: nothing to sync")
        report = launch_sync(
            runs,
            partitions,
            all_courses=not courses,
            dry_run=dry_run,
            allow_shrink=list(allow_shrink),
            allow_quarantine=list(allow_quarantine),
            submit=submit,
            recompute_unchanged=recompute_unchanged,
            say=click.echo,
        )
        if not dry_run:
            failpoints.reached("sync.before_certificates")
            run_certificate_work(runs, report, submit=submit, say=click.echo)
    click.echo(format_report(report))
    click.echo(f"Dagster instance: {home}")
    if not report.success:
        for failure in report.failures:
            click.echo(f"error: {failure}", err=True)
        raise click.ClickException(_what_was_committed(report))


def _what_was_committed(report) -> str:
    """The honest last line of a sync that failed somewhere."""
    # Withdrawn or no longer known (R1): nothing to apply, no failure.
    fine = ("applied", "unchanged", "withdrawn", "no longer known")
    applied = [line for line in report.courses if line.status in fine]
    others = [line for line in report.courses if line.status not in fine]
    if not report.courses:
        return "the sync failed before any course was applied: nothing was committed"
    if report.dry_run:
        return f"{len(others)} of {len(report.courses)} courses failed (dry run: nothing written)"
    return (
        f"{len(others)} of {len(report.courses)} courses not applied (see above); "
        f"the other {len(applied)} were applied and committed"
    )


_SUBMIT = click.option(
    "--submit",
    is_flag=True,
    help="Queue the runs through the instance's run coordinator for the daemon to launch "
    "(as the schedule does) and follow them, instead of executing them in this process",
)


@main.command()
@click.option(
    "--course",
    "courses",
    multiple=True,
    help="Sync only this course: its uuid or its partition key (repeatable)",
)
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing (S3)")
@click.option(
    "--allow-shrink",
    multiple=True,
    metavar="COURSE",
    help="Apply progress for this course (uuid or partition key) even if its enrolment report "
    "shrank sharply",
)
@click.option(
    "--allow-quarantine",
    multiple=True,
    metavar="COURSE",
    help="Apply this course (uuid or partition key) from its valid records even if many of its "
    "report's were quarantined",
)
@click.option(
    "--recompute-unchanged",
    is_flag=True,
    help="Recompute every course, also those whose reports and platform side are unchanged "
    "since their last successful sync (skipped by default)",
)
@_SUBMIT
def sync(
    courses: tuple[str, ...],
    dry_run: bool,
    allow_shrink: tuple[str, ...],
    allow_quarantine: tuple[str, ...],
    recompute_unchanged: bool,
    submit: bool,
) -> None:
    """Both steps of the sync for all known courses (or the given ones), recorded in Dagster.

    All courses run in chunks of SYNC_ASSETS_COURSES_PER_RUN (default: one run for all, or up
    to 4 for a night of 100 changed courses or more). Runs so cut overlap, each in a process of
    its own: one links and writes while the next one reads its reports; the ranges of a few
    scattered changed courses run one after another in this process.
    """
    _sync_and_report(courses, dry_run, allow_shrink, allow_quarantine, submit, recompute_unchanged)


@main.command()
def demo() -> None:
    """The embedded default end to end: simulator, fresh SQLite platform, full sync."""
    if is_deployment():
        raise click.ClickException(
            "the demo is the embedded default, not a deployment: unset SYNC_ASSETS_PROFILE"
        )
    if partners_api_settings().url is not None:
        raise click.ClickException("the demo runs on the embedded simulator: unset FL_PARTNERS_URL")
    from sync_assets.simulator.embedded import embedded_simulator

    if os.environ.get("PLATFORM_DATABASE_URL"):
        click.echo(
            "Using PLATFORM_DATABASE_URL as it is (the demo only wipes its own default file)."
        )
    else:
        platform_file = data_dir() / "platform.sqlite3"
        for leftover in platform_file.parent.glob(platform_file.name + "*"):
            leftover.unlink()
        click.echo(f"Fresh platform database: {platform_file}")
    engine = _connected_engine()
    migrate.upgrade(engine)
    with engine.begin() as connection:
        seed_demo_catalogue(connection)
        demo_users = embedded_simulator("demo").dataset.users
        people = seed_users(connection, demo_users)
        enrolled = seed_demo_progress(connection, demo_users)
    engine.dispose()
    click.echo(
        f"Seeded the catalogue (33 FutureLearn courses, 3 programmes), {people} users, "
        f"{enrolled} of them enrolled on a programme with platform-side progress"
    )
    _sync_and_report((), dry_run=False, allow_shrink=())
    click.echo(
        "\nSee it in the Dagster UI: `make ui` (or `DAGSTER_HOME=data/dagster_home "
        ".venv/bin/dg dev`), then open http://127.0.0.1:3000 → Assets → "
        "futurelearn_sync for the lineage, one partition per course, checks and metadata."
    )


@main.command()
@click.option("--course", "course", required=True, help="The course: its uuid or its partition key")
@click.option(
    "--user", "user_ids", required=True, multiple=True, help="Platform user id (repeatable)"
)
@_SUBMIT
def resync(course: str, user_ids: tuple[str, ...], submit: bool) -> None:
    """Resync chosen learners of one course now (S2); nobody else is touched."""
    from sync_assets.runs.execution import code_location_runs
    from sync_assets.runs.instance import open_instance
    from sync_assets.runs.launch import course_uuid_argument, launch_resync, run_certificate_work
    from sync_assets.runs.report import format_certificates
    from sync_assets.sync.resync import ResyncRequestError, validate_request

    check_settings()
    engine = _migrated_engine()
    with open_instance(say=click.echo) as instance:
        try:
            course_uuid = course_uuid_argument(instance, engine, course)
            validate_request(engine, course_uuid, list(user_ids))  # before any request
        except ResyncRequestError as error:
            raise click.ClickException(str(error)) from None
        finally:
            engine.dispose()
    with open_instance(say=click.echo) as instance, code_location_runs(instance) as runs:
        report, outcomes = launch_resync(
            runs, course_uuid, list(user_ids), submit=submit, say=click.echo
        )
        if report.success:
            run_certificate_work(runs, report, submit=submit, say=click.echo)
    if not report.success:
        raise click.ClickException("; ".join(report.failures) or "the resync failed")
    width = max(len(user) for user in outcomes)
    for user, outcome in outcomes.items():
        click.echo(f"  {user.ljust(width)}  {outcome}")
    if report.certificates:
        click.echo(format_certificates(report.certificates))
    click.echo(f"Dagster run(s): {', '.join(report.run_ids)}")


@main.command()
@_SUBMIT
def certificates(submit: bool) -> None:
    """The certificate work the daemon does: pending completion events (C1, C3), then C2.

    For deployments driven by cron without the Dagster daemon; safe to run at any time and as
    often as you like (each event is handled once, each certificate numbered once).
    """
    from sync_assets.runs.execution import code_location_runs
    from sync_assets.runs.instance import open_instance
    from sync_assets.runs.launch import run_certificate_work
    from sync_assets.runs.report import SyncReport, format_certificates

    check_settings()
    _migrated_engine().dispose()
    report = SyncReport(run_ids=[], success=True, dry_run=False, seconds=0.0)
    with open_instance(say=click.echo) as instance, code_location_runs(instance) as runs:
        # Always a run, work or not: this is the cron stand-in for the `daily_certificates`
        # schedule, which always runs too, and its run is the record that C2 was looked at.
        run_certificate_work(runs, report, submit=submit, always=True, say=click.echo)
    if not report.success:
        raise click.ClickException("; ".join(report.failures) or "the certificate work failed")
    click.echo(format_certificates(report.certificates))
    figures = report.certificates
    if figures.get("refused"):
        click.echo(f"Not completed (C4): {len(figures['refused'])} enrolments, e.g. flagged")
    click.echo(f"Dagster run: {', '.join(report.run_ids)}")


@main.command()
@click.option("--course", "course", required=True, help="The course: its uuid or its partition key")
@click.option("--user", "user_id", required=True, help="The learner's platform user id")
@click.option(
    "--fresh",
    is_flag=True,
    help="Fetch the course's reports (conditional requests) and its memberships never looked up "
    "first; nothing is written",
)
@click.option("--json", "as_json", is_flag=True, help="The same explanation as a JSON document")
def explain(course: str, user_id: str, fresh: bool, as_json: bool) -> None:
    """Why the platform shows what it shows for one learner on one course, and what would fix it.

    From what is stored (the last stored enrolment reports, the platform database); no request
    unless --fresh. Writes nothing.
    """
    import json

    import dagster as dg

    from sync_assets.definitions import defs
    from sync_assets.explain.load import ExplainError, explain_learner
    from sync_assets.explain.render import as_text
    from sync_assets.runs.instance import open_instance

    check_settings()
    engine = _migrated_engine()
    resources = dict(defs.resources or {})
    try:
        # Notices (a dead run reaped …) go to stderr: stdout is the explanation, or JSON.
        with (
            open_instance(say=lambda line: click.echo(line, err=True)) as instance,
            dg.build_resources(
                {name: resources[name] for name in ("partners_api", "io_manager")}
            ) as built,
        ):
            explanation = explain_learner(
                instance,
                engine,
                built.io_manager,
                course,
                user_id,
                client=built.partners_api.client if fresh else None,
            )
    except ExplainError as error:
        raise click.ClickException(str(error)) from None
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(explanation.to_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo(as_text(explanation))


@main.command()
@click.option(
    "--older-than",
    "days",
    required=True,
    type=click.IntRange(min=0, max=MAX_RETENTION_DAYS),
    help="Delete the history of runs that finished more than DAYS days ago",
    metavar="DAYS",
)
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing")
def prune(days: int, dry_run: bool) -> None:
    """Delete run history (runs, event logs, compute logs, op outputs) older than DAYS days.

    Never a queued or running run, nor one holding the latest materialisation of an asset
    partition, a partition's latest failed attempt or an asset check's latest evaluation. Asset
    values stay. Idempotent; the weekly schedule does the same with SYNC_ASSETS_RETENTION_DAYS.
    """
    from datetime import UTC, datetime, timedelta

    from sync_assets.defs.retention.jobs import sync_check_keys
    from sync_assets.retention import prune as prune_history
    from sync_assets.runs.instance import open_instance

    check_settings()
    with open_instance(say=click.echo) as instance:
        report = prune_history(
            instance, timedelta(days=days), datetime.now(UTC), sync_check_keys(), dry_run=dry_run
        )
    click.echo(report.summary())
