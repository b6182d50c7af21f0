"""``mp_snapshot``: one Materials Project release, copied (offline) or pulled (mp-api)."""

import tempfile
from typing import Literal, Optional

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from ml import snapshot as snap
from wycryst_assets import settings
from wycryst_assets.plots import markdown_table
from wycryst_assets.versions import source_version
from wycryst_assets.warehouse import replace_tables


class MPSnapshotConfig(dg.Config):
    """Where the release comes from. ``auto``: the live MP API when ``MP_API_KEY`` is set, else
    the directory in ``WYCRYST_SNAPSHOT``."""

    source: Literal["auto", "offline", "mp_api"] = "auto"
    snapshot_dir: Optional[str] = None  # offline source; None: $WYCRYST_SNAPSHOT
    max_elements: int = 3  # live path: ternary and below, as the paper trains on


def _release(context, config: MPSnapshotConfig, source: str) -> snap.SnapshotInfo:
    if source == "offline":
        src = config.snapshot_dir or str(settings.snapshot_source())
        context.log.info(f"copying offline snapshot {src}")
        return snap.copy_snapshot(src, settings.snapshots_dir())
    from ml.mp_source import export_snapshot

    context.log.info("MP_API_KEY is set: exporting the live release through mp-api")
    with tempfile.TemporaryDirectory(dir=settings.wycryst_home()) as tmp:
        info = export_snapshot(tmp, max_elements=config.max_elements, log=context.log.info)
        return snap.copy_snapshot(info.path, settings.snapshots_dir())


@dg.asset(
    group_name="snapshot",
    kinds={"duckdb", "parquet"},
    pool="duckdb_writer",
    code_version=source_version(__name__),
    description="One Materials Project release as materials.parquet + manifest.json under "
    "$WYCRYST_HOME/snapshots/<database_version>/ and DuckDB table `materials`; the data "
    "version is MP's database_version.",
)
def mp_snapshot(context: dg.AssetExecutionContext, config: MPSnapshotConfig, warehouse: DuckDBResource):
    settings.wycryst_home().mkdir(parents=True, exist_ok=True)
    source = snap.resolve_source(config.source, settings.mp_api_key_present())
    info = _release(context, config, source)
    try:
        materials = snap.load_materials(info)
    except snap.SnapshotError as exc:
        raise dg.Failure(str(exc)) from exc
    with warehouse.get_connection() as conn:
        replace_tables(conn, {"materials": materials})
    context.log.info(f"snapshot {info.database_version}: {materials.height} materials")
    by_n = materials.group_by("nelements").len().sort("nelements")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(info.database_version),  # the release: data from outside
        metadata={
            "database_version": info.database_version,
            "source": source,
            "rows": dg.MetadataValue.int(materials.height),
            "ternaries": dg.MetadataValue.int(int(materials.filter(pl.col("nelements") == 3).height)),
            "elements": dg.MetadataValue.int(materials["elements"].explode().n_unique()),
            "materials_by_nelements": dg.MetadataValue.md(
                markdown_table([{"elements": n, "materials": c} for n, c in by_n.iter_rows()])),
            "sha256": info.sha256,
            "path": dg.MetadataValue.path(str(info.path)),
            "license": str(info.manifest.get("license", "")),
        },
    )
