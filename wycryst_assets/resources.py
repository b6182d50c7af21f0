"""Resources: the DuckDB warehouse (path from ``WYCRYST_HOME``)."""

from __future__ import annotations

from dagster_duckdb import DuckDBResource

from wycryst_assets import settings


def warehouse_resource() -> DuckDBResource:
    """The warehouse at ``$WYCRYST_HOME/warehouse.duckdb`` (directory created on demand)."""
    path = settings.warehouse_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return DuckDBResource(database=str(path))
