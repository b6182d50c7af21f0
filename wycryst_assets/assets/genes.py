"""``wyckoff_genes``: every snapshot material -> a Wyckoff gene row or a rejection row."""


import time
from typing import Literal, Optional

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from ml.gene_table import GENE_COLUMNS, REJECTION_COLUMNS, build_gene_table
from ml.genes import MP_ANGLE_TOLERANCE, MP_SYMPREC
from wycryst_assets.assets.snapshot import mp_snapshot
from wycryst_assets.cpu import cpu_budget
from wycryst_assets.plots import bar_chart_markdown, markdown_table
from wycryst_assets.versions import source_version
from wycryst_assets.warehouse import read_table, replace_tables

PROPERTY_COLUMNS = ("formation_energy_per_atom", "band_gap", "energy_above_hull", "theoretical")

_GENE_SCHEMA = {
    "material_id": pl.String,
    "formula": pl.String,
    "space_group": pl.Int32,
    "wyckoff": pl.String,
    "gene_key": pl.String,
    "multiplicities": pl.String,
    "total_dof": pl.Int32,
    "atoms_per_cell": pl.Int32,
    "n_elements": pl.Int32,
    "slot_elements": pl.List(pl.String),
    "element_index": pl.List(pl.Int32),
    "element_count": pl.List(pl.Int32),
    "element_fraction": pl.List(pl.Float32),
    "element_descriptors": pl.List(pl.Float32),
    "wyckoff_letter_counts": pl.List(pl.Int32),
    "sg_index": pl.Int32,
}
_REJECTION_SCHEMA = {"material_id": pl.String, "reason": pl.String, "detail": pl.String}


class WyckoffGenesConfig(dg.Config):
    processes: Optional[int] = None  # None: this run's CPU budget (wycryst_assets.cpu)
    symprec: float = MP_SYMPREC  # MP's SpacegroupAnalyzer tolerance
    angle_tolerance: float = MP_ANGLE_TOLERANCE
    engine: Literal["moyo", "spglib"] = "moyo"  # moyo: moyopy with a per-row spglib fallback; spglib: every row


def genes_frames(genes: list[dict], rejections: list[dict]) -> tuple[pl.DataFrame, pl.DataFrame]:
    assert tuple(_GENE_SCHEMA) == GENE_COLUMNS and tuple(_REJECTION_SCHEMA) == REJECTION_COLUMNS
    return (
        pl.DataFrame(genes, schema=_GENE_SCHEMA),
        pl.DataFrame(rejections, schema=_REJECTION_SCHEMA),
    )


def _progress(log, n: int):
    """A build_gene_table progress callback that logs at every tenth of ``n`` rows."""
    marks, last = {int(n * k / 10) for k in range(1, 11)}, [0]

    def progress(done: int, total: int, seconds: float) -> None:
        if any(last[0] < m <= done for m in marks) or done == total:
            log(f"genes: {done}/{total} rows, {done / max(seconds, 1e-9):.0f} rows/s")
        last[0] = done

    return progress


@dg.asset(
    group_name="genes",
    kinds={"duckdb", "polars"},
    deps=[mp_snapshot],
    pool="duckdb_writer",
    code_version=source_version(__name__),
    description="Wyckoff genes (composition + space group + Wyckoff occupancy, DoF, encoded "
    "features, MP properties) in DuckDB `wyckoff_genes`; rows that are not a valid gene in "
    "`wyckoff_gene_rejections` with a reason. Every material ends in exactly one of the two.",
)
def wyckoff_genes(context: dg.AssetExecutionContext, config: WyckoffGenesConfig, warehouse: DuckDBResource):
    with warehouse.get_connection() as conn:
        materials = read_table(conn, "SELECT material_id, cif, symmetry_number, database_version, "
                               + ", ".join(PROPERTY_COLUMNS) + " FROM materials ORDER BY material_id")
    if materials.is_empty():
        raise dg.Failure("the `materials` table is empty: materialize mp_snapshot first")
    version, n = materials["database_version"][0], materials.height
    start = time.perf_counter()
    with cpu_budget(context) as threads:
        processes, engine_stats = config.processes or threads, {}
        context.log.info(f"building genes for {n} materials of {version} on {processes} processes ({config.engine})")
        genes, rejections = build_gene_table(
            materials["material_id"].to_list(), materials["cif"].to_list(), processes=processes,
            symprec=config.symprec, angle_tolerance=config.angle_tolerance, progress=_progress(context.log.info, n),
            engine=config.engine, space_groups=materials["symmetry_number"].to_list(),  # MP's label confirms moyo's
            stats=engine_stats)
    build_seconds = time.perf_counter() - start
    gene_df, rejection_df = genes_frames(genes, rejections)
    gene_df = gene_df.join(materials.select("material_id", "symmetry_number", *PROPERTY_COLUMNS),
                           on="material_id", how="left").with_columns(pl.lit(version).alias("database_version"))
    rejection_df = rejection_df.with_columns(pl.lit(version).alias("database_version"))
    with warehouse.get_connection() as conn:
        replace_tables(conn, {"wyckoff_genes": gene_df, "wyckoff_gene_rejections": rejection_df})
    total_seconds = time.perf_counter() - start
    context.log.info(f"{gene_df.height} genes, {rejection_df.height} rejections, {n / total_seconds:.0f} rows/s")
    return dg.MaterializeResult(metadata=_metadata(gene_df, rejection_df, version, processes, n / total_seconds,
                                                   build_seconds, config.engine, engine_stats))


def _metadata(gene_df: pl.DataFrame, rejection_df: pl.DataFrame, version: str, processes: int,
              rows_per_second: float, build_seconds: float, engine: str, engine_stats: dict) -> dict:
    reasons = rejection_df.group_by("reason").len().sort("len", descending=True)
    by_sg = gene_df.group_by("space_group").len().sort("len", descending=True).head(40)
    ternaries = gene_df.filter(pl.col("n_elements") == 3)
    sg_agree = float((gene_df["space_group"] == gene_df["symmetry_number"]).mean() or 0.0)
    return {
        "database_version": version,
        "genes": dg.MetadataValue.int(gene_df.height),
        "ternary_genes": dg.MetadataValue.int(ternaries.height),
        "unique_ternary_gene_keys": dg.MetadataValue.int(ternaries["gene_key"].n_unique()),
        "rejections": dg.MetadataValue.int(rejection_df.height),
        "rejections_by_reason": dg.MetadataValue.md(
            markdown_table([{"reason": r, "rows": c} for r, c in reasons.iter_rows()])),
        "space_group_agreement_with_mp": dg.MetadataValue.float(round(sg_agree, 5)),
        "rows_per_second": dg.MetadataValue.float(round(rows_per_second, 1)),
        "build_seconds": dg.MetadataValue.float(round(build_seconds, 2)),
        "processes": dg.MetadataValue.int(processes),
        "symmetry_engine": engine,
        "spglib_fallback_rows": dg.MetadataValue.int(engine_stats.get("fallback_rows", 0)),
        "spglib_fallbacks_by_reason": dg.MetadataValue.md(markdown_table(
            [{"reason": r, "rows": c} for r, c in engine_stats.get("fallbacks_by_reason", {}).items()])),
        "top_space_groups": dg.MetadataValue.md(bar_chart_markdown(
            by_sg["space_group"].to_list(), by_sg["len"].to_list(),
            title="Genes per space group (top 40)", xlabel="space group", ylabel="genes")),
    }
