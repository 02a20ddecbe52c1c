"""Alembic environment: runs on the connection handed over by sync_assets.platform.migrate."""

from __future__ import annotations

from alembic import context

from sync_assets.platform.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things in place; batch mode rebuilds tables for later revisions.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
