"""Configuration read from the environment (SPEC §7).

Secrets live only in the environment: nothing here is copied into run config, logs or metadata.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

PACKAGE_DIR = Path(__file__).resolve().parent


class ConfigurationError(Exception):
    """A setting that cannot be used; the message names the setting and says why in one line."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


PROFILE_SETTING = "SYNC_ASSETS_PROFILE"
LOCAL, DEPLOYMENT = "local", "deployment"

# The settings whose defaults (the embedded simulator, SQLite and files under ./data) suit a
# laptop, a demo and the tests only. A deployment must give every one: falling back to the
# simulator there would "sync" invented data, and local files are not shared between runs.
DEPLOYMENT_REQUIRED = (
    "FL_PARTNERS_URL",
    "FL_PARTNERS_CONSUMER_KEY",
    "FL_PARTNERS_CONSUMER_SECRET",
    "PLATFORM_DATABASE_URL",
    "SYNC_ASSETS_STORAGE_URL",
    "SYNC_ASSETS_HTTP_CACHE_URL",
)


def profile() -> str:
    """SYNC_ASSETS_PROFILE: `local` (default: demo, tests, a laptop) or `deployment`."""
    raw = os.environ.get(PROFILE_SETTING, "").strip().lower() or LOCAL
    if raw not in (LOCAL, DEPLOYMENT):
        raise ConfigurationError(PROFILE_SETTING, f"expected local or deployment, got {raw!r}")
    return raw


def is_deployment() -> bool:
    return profile() == DEPLOYMENT


def missing_deployment_settings() -> list[str]:
    return [name for name in DEPLOYMENT_REQUIRED if not os.environ.get(name, "").strip()]


def check_settings() -> None:
    """Validate every setting now, so a bad one fails at load in one line, not mid-run.

    In a deployment, every setting with a local default is required.
    """
    if is_deployment():
        missing = missing_deployment_settings()
        if missing:
            raise ConfigurationError(
                ", ".join(missing),
                f"required with {PROFILE_SETTING}=deployment (the simulator, SQLite and local "
                "files are local defaults only); set them in the code location's environment",
            )
    partners_api_settings()
    git_code_references()
    alert_settings()
    courses_per_run()
    course_lock_timeout_seconds()
    http_cache_url()
    # They import this module.
    from sync_assets.object_storage import check_storage_url
    from sync_assets.platform.database import parse_database_url

    check_storage_url(storage_url())
    parse_database_url(platform_database_url())


def project_dir() -> Path:
    """The source checkout when running from one (editable install), else the working directory.

    The default SQLite platform database and Dagster home live under it, so that the README's
    commands, `dagster dev` and the CLI all find the same files wherever they are started from.
    """
    checkout = PACKAGE_DIR.parent
    if (checkout / "pyproject.toml").is_file():
        return checkout
    return Path.cwd()


def data_dir() -> Path:
    """Where the embedded default keeps its files: SYNC_ASSETS_DATA_DIR, else ./data."""
    override = os.environ.get("SYNC_ASSETS_DATA_DIR", "").strip()
    return Path(override) if override else project_dir() / "data"


def default_platform_database_url() -> str:
    return f"sqlite:///{data_dir() / 'platform.sqlite3'}"


def platform_database_url() -> str:
    return os.environ.get("PLATFORM_DATABASE_URL", "").strip() or default_platform_database_url()


# The largest response body read from the Partners API (FL_PARTNERS_MAX_BODY_BYTES). A report of
# 100,000 enrolments is ~45 MB; a body past the cap costs its own course, not the process's memory.
DEFAULT_MAX_BODY_BYTES = 64 * 1024**2


@dataclass(frozen=True)
class PartnersApiSettings:
    """FL_PARTNERS_* from the environment. `url` None means the embedded simulator."""

    url: str | None
    consumer_key: str | None
    consumer_secret: str | None = field(repr=False)
    ignored_course_uuids: frozenset[str] = frozenset()
    concurrency: int = 8
    max_requests_per_second: float | None = None
    timeout_seconds: float = 60.0  # one attempt, connect to the last byte of the body
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


def partners_api_settings() -> PartnersApiSettings:
    url = os.environ.get("FL_PARTNERS_URL", "").strip() or None
    key = os.environ.get("FL_PARTNERS_CONSUMER_KEY", "").strip() or None
    secret = os.environ.get("FL_PARTNERS_CONSUMER_SECRET", "") or None
    ignored = frozenset(
        uuid.strip()
        for uuid in os.environ.get("FL_PARTNERS_IGNORED_COURSE_UUIDS", "").split(",")
        if uuid.strip()
    )
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(
                "FL_PARTNERS_URL", "expected an http(s) URL such as https://api.example.org"
            )
        if key is None:
            raise ConfigurationError(
                "FL_PARTNERS_CONSUMER_KEY", "required when FL_PARTNERS_URL is set"
            )
        if secret is None:
            raise ConfigurationError(
                "FL_PARTNERS_CONSUMER_SECRET", "required when FL_PARTNERS_URL is set"
            )
    return PartnersApiSettings(
        url,
        key,
        secret,
        ignored,
        concurrency=_positive("FL_PARTNERS_CONCURRENCY", int, 8),
        max_requests_per_second=_positive("FL_PARTNERS_MAX_REQUESTS_PER_SECOND", float, None),
        timeout_seconds=_positive("FL_PARTNERS_TIMEOUT_SECONDS", float, 60.0),
        max_body_bytes=_positive("FL_PARTNERS_MAX_BODY_BYTES", int, DEFAULT_MAX_BODY_BYTES),
    )


def _positive(name: str, kind: type, default):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigurationError(name, f"expected a number, got {raw!r}") from None
    if value <= 0:
        raise ConfigurationError(name, "must be positive")
    return value


def courses_per_run() -> int | None:
    """SYNC_ASSETS_COURSES_PER_RUN: the most course partitions one sync run takes (None: all).

    Bounds a run's memory by the chunk, not the catalogue; the runs queue and share the pools.
    """
    return _positive("SYNC_ASSETS_COURSES_PER_RUN", int, None)


def course_lock_timeout_seconds() -> float:
    """How long a sync waits for a course another writer holds before giving up on it."""
    return _positive("SYNC_ASSETS_COURSE_LOCK_TIMEOUT_SECONDS", float, 120.0)


# The cache file of the releases that stored each request's Authorization header; removed.
LEGACY_HTTP_CACHE_NAMES = ("partners_api.sqlite3",)


def http_cache_path() -> Path:
    """The Partners API response cache (v2: requests kept without their credentials)."""
    return data_dir() / "http_cache" / "partners_api-v2.sqlite3"


def default_storage_dir() -> Path:
    """The embedded default's asset storage: beside the Dagster instance, else under ./data."""
    home = os.environ.get("DAGSTER_HOME")
    return (Path(home) / "storage" if home else data_dir() / "dagster_storage") / "sync_assets"


def storage_url() -> str:
    """SYNC_ASSETS_STORAGE_URL: a folder or an fsspec URL (s3://bucket/prefix) for asset values."""
    return os.environ.get("SYNC_ASSETS_STORAGE_URL", "").strip() or str(default_storage_dir())


HTTP_CACHE_URL = "SYNC_ASSETS_HTTP_CACHE_URL"


def http_cache_url() -> str:
    """SYNC_ASSETS_HTTP_CACHE_URL: a SQLite file path (default `http_cache_path()`), or
    `redis://[:password@]host:port/db` (`rediss://` for TLS) to share the cache between the
    containers of a deployment. Read when a client is made: the URL may carry a password."""
    raw = os.environ.get(HTTP_CACHE_URL, "").strip()
    return check_http_cache_url(raw, HTTP_CACHE_URL) if raw else str(http_cache_path())


def check_http_cache_url(url: str, setting: str, *, password_allowed: bool = True) -> str:
    """`url` if it names a cache; the error never repeats it, as it may hold a password."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        if "://" in url:
            raise ConfigurationError(setting, "expected a file path or a redis:// URL")
        return url
    try:
        parts.port  # noqa: B018 (parsing it is the check)
    except ValueError:
        raise ConfigurationError(setting, "the port is not a number") from None
    if not parts.hostname or not (parts.path in ("", "/") or parts.path[1:].isdigit()):
        raise ConfigurationError(setting, "expected redis://host:port/db, db a number")
    if parts.password and not password_allowed:
        raise ConfigurationError(
            setting, f"run config is stored: put the Redis password in {HTTP_CACHE_URL} instead"
        )
    return url


@dataclass(frozen=True)
class GitCodeReferences:
    """Where the UI's code references point: the repository's web URL and branch."""

    url: str
    branch: str


def git_code_references() -> GitCodeReferences | None:
    """SYNC_ASSETS_GIT_URL and SYNC_ASSETS_GIT_BRANCH, both or neither (None: local files).

    Dagster builds links for GitHub and GitLab only (`<url>/tree/<branch>/<path>` and
    `<url>/-/tree/…`), so another host is refused here rather than at load inside Dagster.
    """
    url = os.environ.get("SYNC_ASSETS_GIT_URL", "").strip().rstrip("/")
    branch = os.environ.get("SYNC_ASSETS_GIT_BRANCH", "").strip()
    if not url and not branch:
        return None
    if not url or not branch:
        missing = "SYNC_ASSETS_GIT_URL" if not url else "SYNC_ASSETS_GIT_BRANCH"
        raise ConfigurationError(missing, "required when the other SYNC_ASSETS_GIT_* is set")
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
        raise ConfigurationError(
            "SYNC_ASSETS_GIT_URL", "expected https://github.com/org/repo (no credentials)"
        )
    if "github" not in parts.hostname and "gitlab" not in parts.hostname:
        raise ConfigurationError(
            "SYNC_ASSETS_GIT_URL", "Dagster links code on GitHub or GitLab hosts only"
        )
    return GitCodeReferences(url, branch)


ALERT_WEBHOOK_SETTING = "SYNC_ASSETS_ALERT_WEBHOOK_URL"


@dataclass(frozen=True)
class AlertSettings:
    """Run failure alerts: the webhook (a secret: it often carries a token) and the UI's URL."""

    webhook_url: str = field(repr=False)
    ui_url: str | None = None


def alert_settings() -> AlertSettings | None:
    """SYNC_ASSETS_ALERT_WEBHOOK_URL (None: no alerts) and SYNC_ASSETS_UI_URL for run links.

    Errors never repeat the webhook URL: Slack-style webhooks carry their token in the path.
    """
    webhook = os.environ.get(ALERT_WEBHOOK_SETTING, "").strip()
    ui_url = os.environ.get("SYNC_ASSETS_UI_URL", "").strip().rstrip("/") or None
    if ui_url is not None:
        parts = urlsplit(ui_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(
                "SYNC_ASSETS_UI_URL", "expected the Dagster UI's http(s) URL, e.g. https://dagster"
            )
    if not webhook:
        return None
    parts = urlsplit(webhook)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(ALERT_WEBHOOK_SETTING, "expected an http(s) URL")
    return AlertSettings(webhook, ui_url)
