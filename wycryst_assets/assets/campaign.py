"""``sun_report``: stable, unique, novel candidates of a partition (the paper's discovery list),
with the whole funnel from sampled genes to phonon-stable structures, exported as CSV + CIFs."""

import json

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from wycryst_assets import settings
from wycryst_assets.assets.refinement import refined_structures
from wycryst_assets.assets.structures import phonon_verdicts
from wycryst_assets.automation import REPORT_AUTOMATION
from wycryst_assets.io import count, frame
from wycryst_assets.partitions import current_registry, targets_partitions
from wycryst_assets.plots import bar_chart_markdown, markdown_table, rounded_rows
from wycryst_assets.versions import source_version
from wycryst_assets.warehouse import read_table, replace_partition, table_exists

SUN_SCHEMA = {
    "target": pl.String, "formula": pl.String, "space_group": pl.Int32, "wyckoff": pl.String, "gene_key": pl.String,
    "formation_energy_per_atom": pl.Float64, "e_above_hull": pl.Float64, "symmetry_kept": pl.Boolean,
    "phonon_verdict": pl.String, "min_frequency_thz": pl.Float64, "dft_engine": pl.String, "dft_verdict": pl.String,
    "dft_formation_energy_per_atom": pl.Float64, "cif": pl.String,
}
_DFT_SCHEMA = {"gene_key": pl.String, "dft_engine": pl.String, "dft_verdict": pl.String,
               "dft_formation_energy_per_atom": pl.Float64}
# the funnel before the S.U.N. selection: (stage, count query over one partition)
_FUNNEL_SQL = (
    ("sampled genes", "SELECT count(*) FROM filtered_genes WHERE target = ?"),
    ("passed filters", "SELECT count(*) FROM filtered_genes WHERE target = ? AND passed"),
    ("genes with trials", "SELECT count(DISTINCT gene_key) FROM trial_structures WHERE target = ? AND verdict = 'ok'"),
    ("trials relaxed (converged)", "SELECT count(*) FROM relaxed_structures WHERE target = ? AND verdict = 'converged'"),
    ("genes relaxed, SG kept", "SELECT count(*) FROM relaxed_structures WHERE target = ? AND best_trial AND symmetry_kept"),
)


class SunReportConfig(dg.Config):
    max_e_above_hull: float = 0.1  # eV/atom: "stable" for S.U.N. (the phonon cascade's threshold too)
    require_phonon_stable: bool = False  # True: only phonon-stable candidates are listed


@dg.asset(
    group_name="report",
    kinds={"duckdb", "csv"},
    partitions_def=targets_partitions,
    deps=[phonon_verdicts, refined_structures],
    pool="duckdb_writer",
    code_version=source_version(__name__),
    automation_condition=REPORT_AUTOMATION,
    description="Stable (E_hull <= threshold), unique (one per distinct crystal: dft.matching.same_crystal) and "
    "novel (not in the snapshot) candidates with E_f, E_hull, SG kept, phonon verdict and CIF; the funnel "
    "from sampled genes on; comparison with the paper's phonon-stable list for its campaign. "
    "DuckDB `sun_candidates`, CSV + CIFs under artifacts/sun_report/<target>/.",
)
def sun_report(context: dg.AssetExecutionContext, config: SunReportConfig, warehouse: DuckDBResource):
    from dft.refinement import ENERGY_VERDICTS
    from dft.sun import export_candidates, select_sun

    key = context.partition_key
    with warehouse.get_connection() as conn:
        best = read_table(conn, "SELECT * FROM relaxed_structures WHERE target = ? AND best_trial", [key])
        phonons = read_table(conn, "SELECT gene_key, verdict AS phonon_verdict, min_frequency_thz FROM phonon_verdicts "
                             "WHERE target = ?", [key])
        dft = read_table(conn, "SELECT gene_key, engine AS dft_engine, verdict AS dft_verdict, formation_energy_per_atom "
                         "AS dft_formation_energy_per_atom FROM refined_structures WHERE target = ?", [key]).cast(
            _DFT_SCHEMA) if table_exists(conn, "refined_structures") else pl.DataFrame(schema=_DFT_SCHEMA)
        funnel = [(stage, count(conn, sql, key)) for stage, sql in _FUNNEL_SQL]
        passed = dict(read_table(conn, "SELECT formula, bool_or(passed) AS passed FROM filtered_genes WHERE target = ? "
                                 "GROUP BY formula", [key]).iter_rows())
    sun = select_sun(best, phonons, dft, max_e_above_hull=config.max_e_above_hull,
                     require_phonon_stable=config.require_phonon_stable)
    funnel += [(f"E_hull <= {config.max_e_above_hull}", sun.stable.height), ("novel", sun.novel.height),
               ("unique", sun.unique.height), ("phonon-stable", sun.phonon_stable.height),
               ("DFT-refined (of the unique)", sun.unique.filter(pl.col("dft_verdict").is_in(ENERGY_VERDICTS)).height)]
    out_dir = settings.artifacts_dir() / "sun_report" / key
    df = frame(export_candidates(sun.listed, out_dir, SUN_SCHEMA, target=key), SUN_SCHEMA)
    df.write_csv(out_dir / "sun_candidates.csv")
    with warehouse.get_connection() as conn:
        replace_partition(conn, "sun_candidates", key, df)
    return dg.MaterializeResult(metadata=_metadata(df, sun, funnel, passed, key, out_dir))


def _metadata(df: pl.DataFrame, sun, funnel: list, passed: dict, key: str, out_dir) -> dict:
    from dft.sun import paper_comparison

    meta = {
        "candidates": dg.MetadataValue.int(df.height),
        "phonon_stable": dg.MetadataValue.int(sun.phonon_stable.height),
        "funnel": dg.MetadataValue.md(markdown_table([{"stage": s, "count": n} for s, n in funnel]) + "\n\n" +
                                      bar_chart_markdown([s for s, _ in funnel], [n for _, n in funnel],
                                                         title=f"{key}: discovery funnel", xlabel="stage",
                                                         ylabel="count")),
        "candidates_table": dg.MetadataValue.md(markdown_table(rounded_rows(df.to_dicts(), drop=("target", "gene_key")))),
        "csv": dg.MetadataValue.path(str(out_dir / "sun_candidates.csv")),
    }
    target = current_registry().get(key)
    published = target.raw.get("published_phonon_stable") or []
    if published:
        table = paper_comparison(published, sun.candidates, passed, df["formula"].to_list())
        meta["paper_comparison"] = dg.MetadataValue.md(markdown_table(table))
        meta["paper_formulas_generated"] = dg.MetadataValue.int(sum(t["generated"] for t in table))
        meta["paper_funnel"] = json.dumps(target.raw.get("published_funnel"))
    return meta
