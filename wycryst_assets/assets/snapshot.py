"""``mp_snapshot``: one Materials Project release, copied (offline) or pulled (mp-api)."""


import tempfile

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from ml import snapshot as snap
from wycryst_assets import settings
from wycryst_assets.plots import markdown_table
from wycryst_assets.warehouse import replace_tables


class MPSnapshotConfig(dg.Config):
    """Where the release comes from.

    ``auto``: the live MP API when ``MP_API_KEY`` is set, else the directory in ``WYCRYST_SNAPSHOT``.
    """

    source: str = "auto"  # auto | offline | mp_api
    snapshot_dir: str = ""  # offline source; empty = $WYCRYST_SNAPSHOT
    max_elements: int = 3  # live path: ternary and below, as the paper trains on


def _live_snapshot(context, max_elements: int) -> snap.SnapshotInfo:
    from ml.mp_source import export_snapshot

    with tempfile.TemporaryDirectory(dir=settings.wycryst_home()) as tmp:
        info = export_snapshot(tmp, max_elements=max_elements, log=context.log.info)
        return snap.copy_snapshot(info.path, settings.snapshots_dir())


@dg.asset(
    group_name="snapshot",
    kinds={"duckdb", "parquet"},
    pool="duckdb_writer",
    code_version="1",
    description="One Materials Project release as materials.parquet + manifest.json under "
    "$WYCRYST_HOME/snapshots/<database_version>/ and DuckDB table `materials`; the data "
    "version is MP's database_version.",
)
def mp_snapshot(context: dg.AssetExecutionContext, config: MPSnapshotConfig, warehouse: DuckDBResource):
    settings.wycryst_home().mkdir(parents=True, exist_ok=True)
    source = config.source
    if source == "auto":
        source = "mp_api" if settings.mp_api_key_present() else "offline"
    if source == "mp_api":
        context.log.info("MP_API_KEY is set: exporting the live release through mp-api")
        info = _live_snapshot(context, config.max_elements)
    elif source == "offline":
        src = config.snapshot_dir or str(settings.snapshot_source())
        context.log.info(f"copying offline snapshot {src}")
        info = snap.copy_snapshot(src, settings.snapshots_dir())
    else:
        raise dg.Failure(f"unknown snapshot source {config.source!r} (auto | offline | mp_api)")
    materials = pl.read_parquet(info.path / snap.MATERIALS_FILE)
    if materials["material_id"].is_duplicated().any():
        dupes = materials.filter(pl.col("material_id").is_duplicated())["material_id"].unique().to_list()
        raise dg.Failure(f"snapshot {info.database_version} repeats material_id(s) {dupes[:10]}")
    materials = materials.with_columns(pl.lit(info.database_version).alias("database_version"))
    with warehouse.get_connection() as conn:
        replace_tables(conn, {"materials": materials})
    by_n = materials.group_by("nelements").len().sort("nelements")
    context.log.info(f"snapshot {info.database_version}: {materials.height} materials")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(info.database_version),
        metadata={
            "database_version": info.database_version,
            "source": source,
            "rows": dg.MetadataValue.int(materials.height),
            "ternaries": dg.MetadataValue.int(int(materials.filter(pl.col("nelements") == 3).height)),
            "elements": dg.MetadataValue.int(materials["elements"].explode().n_unique()),
            "materials_by_nelements": dg.MetadataValue.md(
                markdown_table([{"elements": n, "materials": c} for n, c in by_n.iter_rows()])
            ),
            "sha256": info.sha256,
            "path": dg.MetadataValue.path(str(info.path)),
            "license": str(info.manifest.get("license", "")),
        },
    )
