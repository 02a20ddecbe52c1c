"""Configuration read from the environment (SPEC §7).

Secrets live only in the environment: nothing here is copied into run config, logs or metadata.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

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
    "SYNC_ASSETS_PSEUDONYM_KEY",
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
    alert_queued_minutes()
    courses_per_run()
    retention_days()
    partition_previews()
    course_lock_timeout_seconds()
    http_cache_url()
    pseudonym_key()
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
# The Partners API client's retry backoff unit (FL_PARTNERS_BACKOFF_SECONDS): enough to let a
# struggling API breathe between attempts. Tests that fail every attempt on purpose shorten it.
DEFAULT_BACKOFF_SECONDS = 0.5


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
    # The retries' backoff unit: the n-th retry waits a random time of up to this × 2^(n-1) s.
    backoff_seconds: float = DEFAULT_BACKOFF_SECONDS


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
        require_https_in_deployment(url, "FL_PARTNERS_URL")
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
        backoff_seconds=_positive("FL_PARTNERS_BACKOFF_SECONDS", float, DEFAULT_BACKOFF_SECONDS),
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


MAX_RETENTION_DAYS = 36_500  # a century: beyond it the cutoff date cannot be computed


def retention_days() -> int:
    """SYNC_ASSETS_RETENTION_DAYS: run history older than this many days is pruned weekly."""
    days = _positive("SYNC_ASSETS_RETENTION_DAYS", int, 90)
    if days > MAX_RETENTION_DAYS:
        raise ConfigurationError(
            "SYNC_ASSETS_RETENTION_DAYS", f"at most {MAX_RETENTION_DAYS:,} days, got {days:,}"
        )
    return days


PARTITION_PREVIEWS = "SYNC_ASSETS_PARTITION_PREVIEWS"


def partition_previews() -> bool:
    """SYNC_ASSETS_PARTITION_PREVIEWS: each computed course partition's event carries a preview
    of its first rows (off by default: it is most of a night's event log)."""
    raw = os.environ.get(PARTITION_PREVIEWS, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigurationError(PARTITION_PREVIEWS, f"expected 1 or 0 (true or false), got {raw!r}")


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


PSEUDONYM_KEY = "SYNC_ASSETS_PSEUDONYM_KEY"
# 32 characters: a key short enough to guess would let anyone holding the event log hash every
# platform user id under each guess, as a plain digest let them (issue 30).
PSEUDONYM_KEY_MIN_CHARS = 32
PSEUDONYM_KEY_FILE = "pseudonym.key"


def pseudonym_key() -> bytes:
    """SYNC_ASSETS_PSEUDONYM_KEY: the HMAC key user pseudonyms are made with (metadata, logs).

    Required in a deployment (every container must name a user alike, and a key on one
    container's disk would not be shared). Locally, when unset, a key is made once and kept in
    the data folder, so pseudonyms stay the same across runs and processes. Never logged.
    """
    raw = os.environ.get(PSEUDONYM_KEY, "").strip()
    if raw:
        if len(raw) < PSEUDONYM_KEY_MIN_CHARS:
            raise ConfigurationError(
                PSEUDONYM_KEY,
                f"at least {PSEUDONYM_KEY_MIN_CHARS} characters (e.g. `openssl rand -hex 32`)",
            )
        return raw.encode()
    if is_deployment():
        raise ConfigurationError(PSEUDONYM_KEY, f"required with {PROFILE_SETTING}=deployment")
    return local_pseudonym_key(data_dir() / PSEUDONYM_KEY_FILE)


def local_pseudonym_key(path: Path) -> bytes:
    """The key kept at `path`, made there first if there is none.

    Made in a private temporary file, then hard-linked into place: linking never replaces an
    existing file, so when processes race, the first link wins and every process reads that key,
    and no process can read a half-written one.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".pseudonym-")  # 0600
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_hex(32))
            # Another process made it first: its key is the key.
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
    key = path.read_text().strip()
    if len(key) < PSEUDONYM_KEY_MIN_CHARS:
        raise ConfigurationError(PSEUDONYM_KEY, f"the key in {path} is too short: delete the file")
    return key.encode()


HTTP_CACHE_URL = "SYNC_ASSETS_HTTP_CACHE_URL"
# The Redis password apart from the URL: the URL can then sit in a ConfigMap, the password in a
# Secret. A password in the URL, if any, wins (redis-py's rule for URL options).
HTTP_CACHE_PASSWORD = "SYNC_ASSETS_HTTP_CACHE_PASSWORD"
_FALSE_WORDS = ("0", "F", "FALSE", "N", "NO")  # redis-py's to_bool


def http_cache_password() -> str | None:
    """SYNC_ASSETS_HTTP_CACHE_PASSWORD: the Redis password, or None. Read when the cache
    connects, never logged."""
    return os.environ.get(HTTP_CACHE_PASSWORD) or None


def turns_off_certificate_checks(query: str) -> bool:
    """Whether a redis-py URL's query disables verifying the server's certificate or host name
    (`ssl_cert_reqs` other than `required`, `ssl_check_hostname` false), in any of its values."""
    options = parse_qs(query)
    return any(value != "required" for value in options.get("ssl_cert_reqs", [])) or any(
        value.upper() in _FALSE_WORDS for value in options.get("ssl_check_hostname", [])
    )


def http_cache_url() -> str:
    """SYNC_ASSETS_HTTP_CACHE_URL: a SQLite file path (default `http_cache_path()`), or
    `redis://[:password@]host:port/db` (`rediss://` for TLS) to share the cache between the
    containers of a deployment. Read when a client is made: the URL may carry a password, though
    a deployment gives it apart, in SYNC_ASSETS_HTTP_CACHE_PASSWORD (a Secret; the URL in a
    ConfigMap). A deployment's Redis must have a password (but on a loopback host) and its TLS
    certificate checks on."""
    raw = os.environ.get(HTTP_CACHE_URL, "").strip()
    return check_http_cache_url(raw, HTTP_CACHE_URL) if raw else str(http_cache_path())


def check_http_cache_url(url: str, setting: str) -> str:
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
    if (
        is_deployment()
        and not parts.password
        and not http_cache_password()
        and not is_loopback_host(parts.hostname)
    ):
        raise ConfigurationError(
            setting,
            f"a Redis without a password with {PROFILE_SETTING}=deployment: set "
            f"{HTTP_CACHE_PASSWORD} (from a Secret) to the password it requires",
        )
    if parts.scheme == "rediss" and is_deployment() and turns_off_certificate_checks(parts.query):
        raise ConfigurationError(
            setting,
            f"certificate checks cannot be turned off with {PROFILE_SETTING}=deployment "
            "(ssl_cert_reqs must be required, ssl_check_hostname true): give the CA with "
            "ssl_ca_certs instead",
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
    require_https_in_deployment(webhook, ALERT_WEBHOOK_SETTING)
    return AlertSettings(webhook, ui_url)


def alert_queued_minutes() -> float:
    """SYNC_ASSETS_ALERT_QUEUED_MINUTES: how long a run may wait in the queue before it is
    alerted. An hour: the nightly sync's chunks queue behind each other for minutes, not hours."""
    return _positive("SYNC_ASSETS_ALERT_QUEUED_MINUTES", float, 60.0)


def is_loopback_host(host: str | None) -> bool:
    """localhost, 127.0.0.0/8 or ::1: a connection that never leaves the machine."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_https_in_deployment(url: str, setting: str) -> None:
    """In a deployment the bearer token and webhook tokens travel over TLS only: an http URL is
    refused unless its host is loopback (tests, a local proxy). The error never repeats the
    URL (a webhook carries its token in it)."""
    parts = urlsplit(url)
    if is_deployment() and parts.scheme != "https" and not is_loopback_host(parts.hostname):
        raise ConfigurationError(
            setting,
            f"must be an https:// URL with {PROFILE_SETTING}=deployment "
            "(http:// only for a loopback host: localhost, 127.0.0.0/8, ::1)",
        )
