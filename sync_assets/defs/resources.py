"""Resources shared by the sync's assets and jobs."""

from __future__ import annotations

import dagster as dg
from pydantic import Field, PrivateAttr
from sqlalchemy.engine import Engine

from sync_assets.partners_api.client import ClientSettings, PartnersApiClient
from sync_assets.platform.database import check_connection, create_platform_engine
from sync_assets.settings import check_http_cache_url, http_cache_url, partners_api_settings
from sync_assets.simulator.app import SIMULATOR_CONSUMER_KEY, SIMULATOR_CONSUMER_SECRET
from sync_assets.simulator.embedded import embedded_simulator
from sync_assets.simulator.transports import IN_PROCESS_BASE_URL, SimulatorTransport


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


class PartnersApi(dg.ConfigurableResource):
    """FutureLearn's Partners API, at FL_PARTNERS_URL with FL_PARTNERS_CONSUMER_KEY / _SECRET.

    Credentials are read from the environment when a client is made, never stored in config.
    With FL_PARTNERS_URL unset, the in-process simulator answers with `simulator_dataset`.
    """

    concurrency: int | None = Field(
        default=None, description="Requests in flight at once (default FL_PARTNERS_CONCURRENCY, 8)"
    )
    max_requests_per_second: float | None = Field(
        default=None, description="Ceiling (default FL_PARTNERS_MAX_REQUESTS_PER_SECOND, none)"
    )
    max_attempts: int = Field(default=5, description="Attempts per request before failing")
    max_retry_seconds: float = Field(default=120.0, description="Time budget per request")
    cache_url: str | None = Field(
        default=None,
        description="Where ETags and bodies are kept: a SQLite file or a passwordless redis:// URL "
        "(default SYNC_ASSETS_HTTP_CACHE_URL, else data/http_cache)",
    )
    simulator_dataset: str = Field(default="demo", description="Used only without FL_PARTNERS_URL")

    def client_settings(self) -> ClientSettings:
        settings = partners_api_settings()
        return ClientSettings(
            base_url=settings.url or IN_PROCESS_BASE_URL,
            consumer_key=settings.consumer_key or SIMULATOR_CONSUMER_KEY,
            consumer_secret=settings.consumer_secret or SIMULATOR_CONSUMER_SECRET,
            concurrency=self.concurrency or settings.concurrency,
            max_requests_per_second=self.max_requests_per_second
            or settings.max_requests_per_second,
            max_attempts=self.max_attempts,
            max_retry_seconds=self.max_retry_seconds,
            timeout_seconds=settings.timeout_seconds,
            cache_url=check_http_cache_url(
                self.cache_url, "PartnersApi.cache_url", password_allowed=False
            )
            if self.cache_url
            else http_cache_url(),
        )

    def ignored_course_uuids(self) -> frozenset[str]:
        return partners_api_settings().ignored_course_uuids

    def uses_simulator(self) -> bool:
        return partners_api_settings().url is None

    def client(self) -> PartnersApiClient:
        """A new client; use it as `async with resource.client() as api: …`."""
        settings = self.client_settings()
        transport = (
            SimulatorTransport(embedded_simulator(self.simulator_dataset))
            if self.uses_simulator()
            else None
        )
        return PartnersApiClient(settings, transport)
