"""``sun_report``: stable, unique, novel candidates of a partition (the paper's discovery list),
with the whole funnel from sampled genes to phonon-stable structures, exported as CSV + CIFs."""

import json
import shutil

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from wycryst_assets import settings
from wycryst_assets.assets.refinement import refined_structures
from wycryst_assets.assets.structures import phonon_verdicts
from wycryst_assets.partitions import current_registry, targets_partitions
from wycryst_assets.plots import bar_chart_markdown, markdown_table, rounded_rows
from wycryst_assets.warehouse import read_table, replace_partition, table_exists

SUN_SCHEMA = {
    "target": pl.String, "formula": pl.String, "space_group": pl.Int32, "wyckoff": pl.String, "gene_key": pl.String,
    "formation_energy_per_atom": pl.Float64, "e_above_hull": pl.Float64, "symmetry_kept": pl.Boolean,
    "phonon_verdict": pl.String, "min_frequency_thz": pl.Float64, "dft_engine": pl.String, "dft_verdict": pl.String,
    "dft_formation_energy_per_atom": pl.Float64, "cif": pl.String,
}


class SunReportConfig(dg.Config):
    max_e_above_hull: float = 0.1  # eV/atom: "stable" for S.U.N. (the phonon cascade's threshold too)
    require_phonon_stable: bool = False  # True: only phonon-stable candidates are listed


def _refined(conn, key: str) -> pl.DataFrame:
    schema = {"gene_key": pl.String, "dft_engine": pl.String, "dft_verdict": pl.String,
              "dft_formation_energy_per_atom": pl.Float64}
    if not table_exists(conn, "refined_structures"):
        return pl.DataFrame(schema=schema)
    return read_table(conn, "SELECT gene_key, engine AS dft_engine, verdict AS dft_verdict, formation_energy_per_atom "
                      "AS dft_formation_energy_per_atom FROM refined_structures WHERE target = ?", [key]).cast(schema)


def _count(conn, sql: str, key: str) -> int:
    return int(conn.execute(sql, [key]).fetchone()[0])


@dg.asset(
    group_name="report",
    kinds={"duckdb", "csv"},
    partitions_def=targets_partitions,
    deps=[phonon_verdicts, refined_structures],
    pool="duckdb_writer",
    code_version="1",
    description="Stable (E_hull <= threshold), unique (one per gene, StructureMatcher-deduplicated) and "
    "novel (not in the snapshot) candidates with E_f, E_hull, SG kept, phonon verdict and CIF; the funnel "
    "from sampled genes on; comparison with the paper's phonon-stable list for its campaign. "
    "DuckDB `sun_candidates`, CSV + CIFs under artifacts/sun_report/<target>/.",
)
def sun_report(context: dg.AssetExecutionContext, config: SunReportConfig, warehouse: DuckDBResource):
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    from dft.pipeline import gene_hash
    from dft.refinement import ENERGY_VERDICTS

    key = context.partition_key
    target = current_registry().get(key)
    thr = config.max_e_above_hull
    with warehouse.get_connection() as conn:
        best = read_table(conn, "SELECT * FROM relaxed_structures WHERE target = ? AND best_trial", [key])
        phon = read_table(conn, "SELECT gene_key, verdict AS phonon_verdict, min_frequency_thz FROM phonon_verdicts "
                          "WHERE target = ?", [key])
        dft = _refined(conn, key)
        funnel = [
            ("sampled genes", _count(conn, "SELECT count(*) FROM filtered_genes WHERE target = ?", key)),
            ("passed filters", _count(conn, "SELECT count(*) FROM filtered_genes WHERE target = ? AND passed", key)),
            ("genes with trials", _count(conn, "SELECT count(DISTINCT gene_key) FROM trial_structures "
                                         "WHERE target = ? AND verdict = 'ok'", key)),
            ("trials relaxed (converged)", _count(conn, "SELECT count(*) FROM relaxed_structures "
                                                  "WHERE target = ? AND verdict = 'converged'", key)),
            ("genes relaxed, SG kept", _count(conn, "SELECT count(*) FROM relaxed_structures "
                                              "WHERE target = ? AND best_trial AND symmetry_kept", key)),
        ]
    cand = best.join(phon, on="gene_key", how="left").join(dft, on="gene_key", how="left").filter(pl.col("symmetry_kept"))
    stable = cand.filter(pl.col("e_above_hull").is_not_null() & (pl.col("e_above_hull") <= thr))
    novel = stable.filter(pl.col("is_novel").fill_null(False))
    # unique: one per gene already; distinct genes relaxing to the same crystal collapse (lowest E_f kept)
    matcher, kept, structures = StructureMatcher(), [], []
    for row in novel.sort("formation_energy_per_atom").iter_rows(named=True):
        s = Structure.from_file(row["relaxed_cif"])
        if any(o.composition.reduced_formula == s.composition.reduced_formula and matcher.fit(o, s) for o in structures):
            continue
        structures.append(s)
        kept.append(row)
    unique = pl.DataFrame(kept, schema=novel.schema) if kept else novel.head(0)
    phonon_stable = unique.filter(pl.col("phonon_verdict") == "stable")
    listed = phonon_stable if config.require_phonon_stable else unique
    funnel += [(f"E_hull <= {thr}", stable.height), ("novel", novel.height), ("unique", unique.height),
               ("phonon-stable", phonon_stable.height),
               ("DFT-refined (of the unique)", unique.filter(pl.col("dft_verdict").is_in(ENERGY_VERDICTS)).height)]

    out_dir = settings.artifacts_dir() / "sun_report" / key
    shutil.rmtree(out_dir, ignore_errors=True)
    (out_dir / "cif").mkdir(parents=True)
    rows = []
    for r in listed.iter_rows(named=True):
        cif = out_dir / "cif" / f"{r['formula']}_SG{r['space_group']}_{gene_hash(r['gene_key'])}.cif"
        shutil.copyfile(r["relaxed_cif"], cif)
        rows.append({**{k: r.get(k) for k in SUN_SCHEMA}, "target": key, "cif": str(cif)})
    df = pl.DataFrame(rows, schema=SUN_SCHEMA, orient="row") if rows else pl.DataFrame(schema=SUN_SCHEMA)
    df.write_csv(out_dir / "sun_candidates.csv")
    with warehouse.get_connection() as conn:
        replace_partition(conn, "sun_candidates", key, df)

    meta = {
        "candidates": dg.MetadataValue.int(df.height),
        "phonon_stable": dg.MetadataValue.int(phonon_stable.height),
        "funnel": dg.MetadataValue.md(markdown_table([{"stage": s, "count": n} for s, n in funnel]) + "\n\n" +
                                      bar_chart_markdown([s for s, _ in funnel], [n for _, n in funnel],
                                                         title=f"{key}: discovery funnel", xlabel="stage",
                                                         ylabel="count")),
        "candidates_table": dg.MetadataValue.md(markdown_table(rounded_rows(df.to_dicts(), drop=("target", "gene_key")))),
        "csv": dg.MetadataValue.path(str(out_dir / "sun_candidates.csv")),
    }
    paper = target.raw.get("published_phonon_stable") or []
    if paper:
        from pymatgen.core import Composition

        norm = {Composition(f).reduced_formula: f for f in paper}
        with warehouse.get_connection() as conn:
            genes = read_table(conn, "SELECT formula, bool_or(passed) AS passed FROM filtered_genes WHERE target = ? "
                               "GROUP BY formula", [key])
        passed = dict(zip(genes["formula"], genes["passed"]))
        # per formula the lowest-E_hull gene (the later row wins)
        verdicts = {r["formula"]: r for r in cand.sort("e_above_hull", descending=True, nulls_last=False).iter_rows(named=True)}
        table = []
        for reduced, name in norm.items():
            r = verdicts.get(reduced)
            table.append({"paper formula": name, "generated": reduced in passed, "passed filters": bool(passed.get(reduced)),
                          "relaxed": r is not None, "E_hull": None if r is None or r["e_above_hull"] is None
                          else round(r["e_above_hull"], 3), "phonons": None if r is None else r["phonon_verdict"],
                          "in S.U.N. list": reduced in set(df["formula"].to_list())})
        meta["paper_comparison"] = dg.MetadataValue.md(markdown_table(table))
        meta["paper_formulas_generated"] = dg.MetadataValue.int(sum(t["generated"] for t in table))
        meta["paper_funnel"] = json.dumps(target.raw.get("published_funnel"))
    return dg.MaterializeResult(metadata=meta)
