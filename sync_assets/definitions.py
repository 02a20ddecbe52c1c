"""The `sync_assets` code location: what `dagster dev` and `dagster definitions validate` load."""

from __future__ import annotations

import dagster as dg

from sync_assets.defs.resources import PartnersApi, PlatformDatabase

defs = dg.Definitions(
    resources={"platform_database": PlatformDatabase(), "partners_api": PartnersApi()},
)
