"""Resources shared by the sync's assets and jobs."""

from __future__ import annotations

import dagster as dg
from pydantic import Field, PrivateAttr
from sqlalchemy.engine import Engine

from sync_assets.partners_api.client import ClientSettings, PartnersApiClient
from sync_assets.platform.database import check_connection, create_platform_engine
from sync_assets.settings import (
    ConfigurationError,
    http_cache_url,
    is_deployment,
    partners_api_settings,
)
from sync_assets.simulator.app import SIMULATOR_CONSUMER_KEY, SIMULATOR_CONSUMER_SECRET
from sync_assets.simulator.datasets import DATASETS
from sync_assets.simulator.embedded import embedded_simulator
from sync_assets.simulator.transports import IN_PROCESS_BASE_URL, SimulatorTransport


class PlatformDatabase(dg.ConfigurableResource):
    """The platform database at PLATFORM_DATABASE_URL (locally, else data/platform.sqlite3).

    The URL is read from the environment when a step starts and is no config field: run config
    (the Launchpad, GraphQL, `dagster job execute -c`) cannot point the sync at another database.
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
    """FutureLearn's Partners API at FL_PARTNERS_URL, signed with FL_PARTNERS_CONSUMER_KEY and
    FL_PARTNERS_CONSUMER_SECRET, its responses cached at SYNC_ASSETS_HTTP_CACHE_URL.

    The four are read from the environment when a client is made and are no config fields: run
    config cannot send the signed token, or take the cache, elsewhere. Locally, without
    FL_PARTNERS_URL, the in-process simulator answers with `simulator_dataset`.
    """

    concurrency: int | None = Field(
        default=None, description="Requests in flight at once (default FL_PARTNERS_CONCURRENCY, 8)"
    )
    max_requests_per_second: float | None = Field(
        default=None, description="Ceiling (default FL_PARTNERS_MAX_REQUESTS_PER_SECOND, none)"
    )
    max_attempts: int = Field(default=5, description="Attempts per request before failing")
    max_retry_seconds: float = Field(default=120.0, description="Time budget per request")
    simulator_dataset: str = Field(default="demo", description="Used only without FL_PARTNERS_URL")

    @staticmethod
    def _url() -> str | None:
        url = partners_api_settings().url
        if url is None and is_deployment():  # never invented data in production
            raise ConfigurationError(
                "FL_PARTNERS_URL", "required with SYNC_ASSETS_PROFILE=deployment"
            )
        return url

    def client_settings(self) -> ClientSettings:
        settings = partners_api_settings()
        url = self._url()
        return ClientSettings(
            base_url=url or IN_PROCESS_BASE_URL,
            consumer_key=settings.consumer_key or SIMULATOR_CONSUMER_KEY,
            consumer_secret=settings.consumer_secret or SIMULATOR_CONSUMER_SECRET,
            concurrency=self.concurrency or settings.concurrency,
            max_requests_per_second=self.max_requests_per_second
            or settings.max_requests_per_second,
            max_attempts=self.max_attempts,
            max_retry_seconds=self.max_retry_seconds,
            timeout_seconds=settings.timeout_seconds,
            max_body_bytes=settings.max_body_bytes,
            backoff_seconds=settings.backoff_seconds,
            cache_url=http_cache_url(),
        )

    def ignored_course_uuids(self) -> frozenset[str]:
        return partners_api_settings().ignored_course_uuids

    def uses_simulator(self) -> bool:
        return self._url() is None

    def client(self) -> PartnersApiClient:
        """A new client; use it as `async with resource.client() as api: …`."""
        settings = self.client_settings()
        if self.uses_simulator() and self.simulator_dataset not in DATASETS:
            # Not repeated: run config may have filled it from any variable ({env: …}).
            raise ConfigurationError(
                "PartnersApi.simulator_dataset", f"expected one of {', '.join(DATASETS)}"
            )
        transport = (
            SimulatorTransport(embedded_simulator(self.simulator_dataset))
            if self.uses_simulator()
            else None
        )
        return PartnersApiClient(settings, transport)
