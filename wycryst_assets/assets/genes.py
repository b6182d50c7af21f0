"""``wyckoff_genes``: every snapshot material -> a Wyckoff gene row or a rejection row."""


import os
import time

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from ml.gene_table import GENE_COLUMNS, REJECTION_COLUMNS, build_gene_table
from ml.genes import MP_ANGLE_TOLERANCE, MP_SYMPREC
from wycryst_assets.assets.snapshot import mp_snapshot
from wycryst_assets.plots import bar_chart_markdown, markdown_table
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
    processes: int = 0  # 0 = every core of this machine
    symprec: float = MP_SYMPREC  # MP's SpacegroupAnalyzer tolerance
    angle_tolerance: float = MP_ANGLE_TOLERANCE
    engine: str = "moyo"  # "moyo": moyopy with a per-row spglib fallback; "spglib": spglib on every row


def genes_frames(genes: list[dict], rejections: list[dict]) -> tuple[pl.DataFrame, pl.DataFrame]:
    assert tuple(_GENE_SCHEMA) == GENE_COLUMNS and tuple(_REJECTION_SCHEMA) == REJECTION_COLUMNS
    return (
        pl.DataFrame(genes, schema=_GENE_SCHEMA),
        pl.DataFrame(rejections, schema=_REJECTION_SCHEMA),
    )


@dg.asset(
    group_name="genes",
    kinds={"duckdb", "polars"},
    deps=[mp_snapshot],
    pool="duckdb_writer",
    code_version="1",
    description="Wyckoff genes (composition + space group + Wyckoff occupancy, DoF, encoded "
    "features, MP properties) in DuckDB `wyckoff_genes`; rows that are not a valid gene in "
    "`wyckoff_gene_rejections` with a reason. Every material ends in exactly one of the two.",
)
def wyckoff_genes(context: dg.AssetExecutionContext, config: WyckoffGenesConfig, warehouse: DuckDBResource):
    with warehouse.get_connection() as conn:
        materials = read_table(
            conn,
            "SELECT material_id, cif, symmetry_number, database_version, "
            + ", ".join(PROPERTY_COLUMNS)
            + " FROM materials ORDER BY material_id",
        )
    if materials.is_empty():
        raise dg.Failure("the `materials` table is empty: materialize mp_snapshot first")
    version = materials["database_version"][0]
    processes = config.processes or os.cpu_count() or 1
    n = materials.height
    context.log.info(f"building genes for {n} materials of {version} on {processes} processes")
    marks = {int(n * k / 10) for k in range(1, 11)}
    last = [0]

    def progress(done: int, total: int, seconds: float) -> None:
        if any(last[0] < m <= done for m in marks) or done == total:
            context.log.info(f"genes: {done}/{total} rows, {done / max(seconds, 1e-9):.0f} rows/s")
        last[0] = done

    start = time.perf_counter()
    engine_stats: dict = {}
    genes, rejections = build_gene_table(
        materials["material_id"].to_list(),
        materials["cif"].to_list(),
        processes=processes,
        symprec=config.symprec,
        angle_tolerance=config.angle_tolerance,
        progress=progress,
        engine=config.engine,
        space_groups=materials["symmetry_number"].to_list(),  # MP's label confirms moyo's group
        stats=engine_stats,
    )
    build_seconds = time.perf_counter() - start
    gene_df, rejection_df = genes_frames(genes, rejections)
    gene_df = gene_df.join(
        materials.select("material_id", "symmetry_number", *PROPERTY_COLUMNS), on="material_id", how="left"
    ).with_columns(pl.lit(version).alias("database_version"))
    rejection_df = rejection_df.with_columns(pl.lit(version).alias("database_version"))
    with warehouse.get_connection() as conn:
        replace_tables(conn, {"wyckoff_genes": gene_df, "wyckoff_gene_rejections": rejection_df})
    total_seconds = time.perf_counter() - start

    reasons = rejection_df.group_by("reason").len().sort("len", descending=True)
    by_sg = gene_df.group_by("space_group").len().sort("len", descending=True).head(40)
    ternaries = gene_df.filter(pl.col("n_elements") == 3)
    sg_agree = float((gene_df["space_group"] == gene_df["symmetry_number"]).mean() or 0.0)
    context.log.info(
        f"{gene_df.height} genes ({ternaries.height} ternary), {rejection_df.height} rejections, "
        f"{n / total_seconds:.0f} rows/s"
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(f"{version}"),
        metadata={
            "database_version": version,
            "genes": dg.MetadataValue.int(gene_df.height),
            "ternary_genes": dg.MetadataValue.int(ternaries.height),
            "unique_ternary_gene_keys": dg.MetadataValue.int(ternaries["gene_key"].n_unique()),
            "rejections": dg.MetadataValue.int(rejection_df.height),
            "rejections_by_reason": dg.MetadataValue.md(
                markdown_table([{"reason": r, "rows": c} for r, c in reasons.iter_rows()])
            ),
            "space_group_agreement_with_mp": dg.MetadataValue.float(round(sg_agree, 5)),
            "rows_per_second": dg.MetadataValue.float(round(n / total_seconds, 1)),
            "build_seconds": dg.MetadataValue.float(round(build_seconds, 2)),
            "processes": dg.MetadataValue.int(processes),
            "symmetry_engine": config.engine,
            "spglib_fallback_rows": dg.MetadataValue.int(engine_stats.get("fallback_rows", 0)),
            "spglib_fallbacks_by_reason": dg.MetadataValue.md(
                markdown_table([{"reason": r, "rows": c} for r, c in engine_stats.get("fallbacks_by_reason", {}).items()])
            ),
            "top_space_groups": dg.MetadataValue.md(
                bar_chart_markdown(
                    by_sg["space_group"].to_list(), by_sg["len"].to_list(),
                    title="Genes per space group (top 40)", xlabel="space group", ylabel="genes",
                )
            ),
        },
    )
