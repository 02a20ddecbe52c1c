"""Apply the Alembic migrations to the platform database (`sync-assets db upgrade`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


@dataclass(frozen=True)
class UpgradeResult:
    before: str | None
    after: str | None

    @property
    def changed(self) -> bool:
        return self.before != self.after


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> UpgradeResult:
    """Migrate to `revision`; a database already there is left untouched."""
    before = current_revision(engine)
    with engine.begin() as connection:
        command.upgrade(_config(connection), revision)
    return UpgradeResult(before=before, after=current_revision(engine))


def autogenerate_revision(engine: Engine, message: str) -> None:
    """Developer helper: write a new revision from the difference between tables.py and `engine`."""
    with engine.begin() as connection:
        command.revision(_config(connection), message=message, autogenerate=True)
