"""The `sync-assets` command line (SPEC §7)."""

from __future__ import annotations

import click

from sync_assets.platform import migrate
from sync_assets.platform.database import check_connection, create_platform_engine, describe
from sync_assets.platform.demo_catalogue import seed_demo_catalogue
from sync_assets.settings import ConfigurationError


class _Commands(click.Group):
    """Turns a configuration problem into one line naming the setting, not a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ConfigurationError as error:
            raise click.ClickException(str(error)) from None


@click.group(cls=_Commands)
def main() -> None:
    """Keep the platform's teacher progress in step with FutureLearn's Partners API."""


@main.group()
def db() -> None:
    """The platform database at PLATFORM_DATABASE_URL."""


def _connected_engine():
    engine = create_platform_engine()
    check_connection(engine)
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
    engine = _connected_engine()
    if migrate.current_revision(engine) != migrate.head_revision():
        raise click.ClickException(
            f"{describe(engine.url)} is not at the latest schema: run `sync-assets db upgrade`"
        )
    with engine.begin() as connection:
        seeded = seed_demo_catalogue(connection)
    click.echo(
        f"{describe(engine.url)}: catalogue of {seeded.future_learn_courses} FutureLearn courses "
        f"and {seeded.activities - seeded.future_learn_courses} platform activities, "
        f"{seeded.programmes} programmes with {seeded.groupings} groupings"
    )
