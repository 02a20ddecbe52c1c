"""Resources shared by the sync's assets and jobs."""

from __future__ import annotations

import dagster as dg
from pydantic import Field, PrivateAttr
from sqlalchemy.engine import Engine

from sync_assets.partners_api.client import ClientSettings, PartnersApiClient
from sync_assets.platform.database import check_connection, create_platform_engine
from sync_assets.settings import (
    ConfigurationError,
    check_http_cache_url,
    http_cache_url,
    is_deployment,
    partners_api_settings,
)
from sync_assets.simulator.app import SIMULATOR_CONSUMER_KEY, SIMULATOR_CONSUMER_SECRET
from sync_assets.simulator.embedded import embedded_simulator
from sync_assets.simulator.transports import IN_PROCESS_BASE_URL, SimulatorTransport


class PlatformDatabase(dg.ConfigurableResource):
    """The platform database at PLATFORM_DATABASE_URL.

    In a deployment `url` is `EnvVar("PLATFORM_DATABASE_URL")`: Dagster stores the variable's
    name, never its value, so a password in it cannot reach run config or the UI. Locally it is
    unset and the environment (or the SQLite default) is read when a step starts.
    """

    url: str | None = Field(
        default=None,
        description="SQLAlchemy URL (default: PLATFORM_DATABASE_URL, else data/platform.sqlite3)",
    )
    _engine: Engine | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._engine = create_platform_engine(self.url)
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

    In a deployment the three are `EnvVar`s (names stored, values read when a step starts).
    Locally they may be unset: the environment is read when a client is made, and without
    FL_PARTNERS_URL the in-process simulator answers with `simulator_dataset`.
    """

    url: str | None = Field(default=None, description="Base URL (default: FL_PARTNERS_URL)")
    consumer_key: str | None = Field(
        default=None, description="JWT issuer (default: FL_PARTNERS_CONSUMER_KEY)"
    )
    consumer_secret: str | None = Field(
        default=None, description="JWT secret (default: FL_PARTNERS_CONSUMER_SECRET)"
    )

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

    def _endpoint(self) -> tuple[str | None, str | None, str | None]:
        settings = partners_api_settings()
        url = self.url or settings.url
        if url is None and is_deployment():  # never invented data in production
            raise ConfigurationError(
                "FL_PARTNERS_URL", "required with SYNC_ASSETS_PROFILE=deployment"
            )
        return (
            url,
            self.consumer_key or settings.consumer_key,
            self.consumer_secret or settings.consumer_secret,
        )

    def client_settings(self) -> ClientSettings:
        settings = partners_api_settings()
        url, key, secret = self._endpoint()
        return ClientSettings(
            base_url=url or IN_PROCESS_BASE_URL,
            consumer_key=key or SIMULATOR_CONSUMER_KEY,
            consumer_secret=secret or SIMULATOR_CONSUMER_SECRET,
            concurrency=self.concurrency or settings.concurrency,
            max_requests_per_second=self.max_requests_per_second
            or settings.max_requests_per_second,
            max_attempts=self.max_attempts,
            max_retry_seconds=self.max_retry_seconds,
            timeout_seconds=settings.timeout_seconds,
            max_body_bytes=settings.max_body_bytes,
            cache_url=check_http_cache_url(
                self.cache_url, "PartnersApi.cache_url", password_allowed=False
            )
            if self.cache_url
            else http_cache_url(),
        )

    def ignored_course_uuids(self) -> frozenset[str]:
        return partners_api_settings().ignored_course_uuids

    def uses_simulator(self) -> bool:
        return self._endpoint()[0] is None

    def client(self) -> PartnersApiClient:
        """A new client; use it as `async with resource.client() as api: …`."""
        settings = self.client_settings()
        transport = (
            SimulatorTransport(embedded_simulator(self.simulator_dataset))
            if self.uses_simulator()
            else None
        )
        return PartnersApiClient(settings, transport)
