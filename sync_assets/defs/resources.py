"""Resources shared by the sync's assets and jobs."""

from __future__ import annotations

import dagster as dg
from pydantic import PrivateAttr
from sqlalchemy.engine import Engine

from sync_assets.platform.database import check_connection, create_platform_engine


class PlatformDatabase(dg.ConfigurableResource):
    """The platform database at PLATFORM_DATABASE_URL.

    The URL is read from the environment when a step starts, never from run config, so a
    password in it cannot reach the run's stored configuration or the UI.
    """

    _engine: Engine | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._engine = create_platform_engine()
        check_connection(self._engine)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.dispose()

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("PlatformDatabase is used outside a Dagster step")
        return self._engine
