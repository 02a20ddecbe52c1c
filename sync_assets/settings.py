"""Configuration read from the environment (SPEC §7).

Secrets live only in the environment: nothing here is copied into run config, logs or metadata.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


class ConfigurationError(Exception):
    """A setting that cannot be used; the message names the setting and says why in one line."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


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
    return project_dir() / "data"


def default_platform_database_url() -> str:
    return f"sqlite:///{data_dir() / 'platform.sqlite3'}"


def platform_database_url() -> str:
    return os.environ.get("PLATFORM_DATABASE_URL", "").strip() or default_platform_database_url()
