"""``loo_report``: did the leave-one-out partition rediscover its held-out material?"""

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from wycryst_assets.assets.refinement import refined_structures
from wycryst_assets.assets.sampling import filtered_genes
from wycryst_assets.assets.structures import relaxed_structures
from wycryst_assets.automation import REPORT_AUTOMATION
from wycryst_assets.io import frame
from wycryst_assets.partitions import current_registry, targets_partitions
from wycryst_assets.plots import markdown_table
from wycryst_assets.versions import source_version
from wycryst_assets.warehouse import read_table, replace_partition, table_exists

REPORT_SCHEMA = {
    "target": pl.String, "task": pl.String, "recovered": pl.Boolean, "sampled": pl.Boolean, "passed": pl.Boolean,
    "relaxed": pl.Boolean, "sg_kept": pl.Boolean, "lattice_within_tolerance": pl.Boolean,
    "lattice_max_error": pl.Float64, "lattice_reference": pl.String, "relaxed_lattice": pl.String,
    "reference_lattice": pl.String, "ground_state_rank": pl.Int32, "genes_of_formula_relaxed": pl.Int32,
    "crystals_of_formula_relaxed": pl.Int32,
    "formation_energy_per_atom": pl.Float64, "e_above_hull": pl.Float64, "why_not": pl.String,
    "dft_engine": pl.String, "dft_genes_of_formula": pl.Int32, "dft_ground_state_rank": pl.Int32,
    "dft_relative_energy_per_atom": pl.Float64, "dft_lattice_max_error": pl.Float64, "dft_relaxed_lattice": pl.String,
    "ground_state_rank_source": pl.String, "lattice_source": pl.String,
}


class LooReportConfig(dg.Config):
    lattice_tolerance: float = 0.03  # relative, per parameter (paper: within 3 %)


@dg.asset(
    group_name="report",
    kinds={"duckdb"},
    partitions_def=targets_partitions,
    deps=[filtered_genes, relaxed_structures, refined_structures],
    pool="duckdb_writer",
    code_version=source_version(__name__),
    automation_condition=REPORT_AUTOMATION,
    description="One row per leave-one-out partition: held-out gene sampled / passed / relaxed, SG kept, "
    "relaxed lattice vs the registry's (experimental preferred), ground-state rank by E_f, `recovered`; "
    "DFT (refined_structures) decides rank and lattice where it covers the held-out gene; "
    "plus a markdown summary across all partitions.",
)
def loo_report(context: dg.AssetExecutionContext, config: LooReportConfig, warehouse: DuckDBResource):
    from dft.loo import loo_verdict

    key = context.partition_key
    target = current_registry().get(key)
    if not target.gene_keys():
        return dg.MaterializeResult(metadata={"report": f"{key} is a {target.task} partition: no held-out gene"})
    with warehouse.get_connection() as conn:
        filt = read_table(conn, "SELECT gene_key, passed FROM filtered_genes WHERE target = ?", [key])
        best = read_table(conn, "SELECT * FROM relaxed_structures WHERE target = ? AND best_trial", [key])
        refined = read_table(conn, "SELECT * FROM refined_structures WHERE target = ? AND energy_per_atom IS NOT NULL",
                             [key]) if table_exists(conn, "refined_structures") else None
    row = loo_verdict(target, filt, best, refined, lattice_tolerance=config.lattice_tolerance)
    with warehouse.get_connection() as conn:
        replace_partition(conn, "loo_report", key, frame([row], REPORT_SCHEMA))
        everything = read_table(conn, "SELECT target, task, recovered, sampled, passed, relaxed, sg_kept, "
                                "round(lattice_max_error, 4) AS lattice_err, lattice_source, ground_state_rank AS gs_rank, "
                                "ground_state_rank_source AS gs_source, why_not FROM loo_report ORDER BY target")
    return dg.MaterializeResult(metadata={
        "recovered": dg.MetadataValue.bool(row["recovered"]),
        "why_not": row["why_not"] or "-",
        "this_partition": dg.MetadataValue.json({k: v for k, v in row.items() if v is not None}),
        "summary": dg.MetadataValue.md(
            f"**{int(everything['recovered'].sum())} of {everything.height} leave-one-out partitions recovered**\n\n"
            + markdown_table(everything.to_dicts())),
    })
