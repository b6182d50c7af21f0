"""``trial_structures``, ``relaxed_structures``, ``phonon_verdicts``: the paper's DFT workflow with
an MLIP (CHGNet default), run locally or on Slurm through the ``compute`` resource."""

import hashlib
import json

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from wycryst_assets import settings
from wycryst_assets.assets.sampling import _load_model_manifest, filtered_genes
from wycryst_assets.assets.snapshot import mp_snapshot
from wycryst_assets.partitions import current_registry, targets_partitions
from wycryst_assets.plots import bar_chart_markdown, markdown_table, rounded_rows
from wycryst_assets.resources import ComputeResource
from wycryst_assets.warehouse import read_table, replace_partition

TRIAL_SCHEMA = {
    "target": pl.String, "formula": pl.String, "space_group": pl.Int32, "wyckoff": pl.String, "gene_key": pl.String,
    "trial": pl.Int32, "seed": pl.Int64, "verdict": pl.String, "reason": pl.String, "min_distance": pl.Float64,
    "space_group_built": pl.Int32, "n_atoms": pl.Int32, "seconds": pl.Float64, "cif_path": pl.String,
}
RELAXED_SCHEMA = {
    "target": pl.String, "formula": pl.String, "space_group": pl.Int32, "wyckoff": pl.String, "gene_key": pl.String,
    "trial": pl.Int32, "relaxer": pl.String, "verdict": pl.String, "reason": pl.String, "energy": pl.Float64,
    "energy_per_atom": pl.Float64, "corrected_energy": pl.Float64, "formation_energy_per_atom": pl.Float64,
    "e_above_hull": pl.Float64, "max_force": pl.Float64, "steps": pl.Int32, "converged": pl.Boolean,
    "sg_before": pl.Int32, "sg_after": pl.Int32, "symmetry_kept": pl.Boolean, "is_novel": pl.Boolean,
    "matched_material_id": pl.String, "best_trial": pl.Boolean, "n_atoms": pl.Int32, "lattice": pl.String,
    "seconds": pl.Float64, "cpu_seconds": pl.Float64, "energy_note": pl.String, "relaxed_cif": pl.String,
}
PHONON_SCHEMA = {
    "target": pl.String, "formula": pl.String, "space_group": pl.Int32, "wyckoff": pl.String, "gene_key": pl.String,
    "trial": pl.Int32, "verdict": pl.String, "min_frequency_thz": pl.Float64, "where_min": pl.String,
    "reason": pl.String, "supercell": pl.String, "n_displacements": pl.Int32, "seconds": pl.Float64,
    "cpu_seconds": pl.Float64, "band_png": pl.String, "vasp_dfpt_dir": pl.String,
}


def _frame(rows: list[dict], schema: dict) -> pl.DataFrame:
    return pl.DataFrame([{k: r.get(k) for k in schema} for r in rows], schema=schema, orient="row")


GENE_COLUMNS = ("formula", "space_group", "wyckoff", "gene_key", "trial")


def _gene_columns(row: dict) -> dict:
    return {k: row[k] for k in GENE_COLUMNS}


def _verdict_counts(df: pl.DataFrame) -> list[dict]:
    return df.group_by("verdict").len().sort("verdict").to_dicts() if df.height else []


def _file_digest(path: str, settings_text: str) -> str:
    """Short digest of a structure file and the settings applied to it: a task key that changes
    when either does, so stored results are reused exactly when they still apply."""
    with open(path, "rb") as fh:
        return hashlib.sha1(fh.read() + settings_text.encode()).hexdigest()[:10]


class TrialStructuresConfig(dg.Config):
    """PyXtal trials (total DoF + 1 per gene) for the first ``max_genes`` passed genes."""

    max_genes: int = 40
    # "hits": most-sampled first; "space_group_round_robin": the most-hit gene of every space
    # group first, then the second of each, ...; "hits_then_space_groups": half the budget by
    # hits, then the best gene of each space group not yet covered. A ground-state question is
    # which symmetry wins (the paper's BaTiO3 run relaxed 26 genes in 11 SGs): by hits alone the
    # held-out BaTiO3 R3m gene is 42nd of 227; round robin would drop CaTiO3's second Pnma
    # configuration, the strongest rival. "auto": hits_then_space_groups for ground_state
    # partitions, hits otherwise.
    ranking: str = "auto"
    seed: int = 0
    max_attempts: int = 10
    min_distance: float = 0.5  # Angstrom, the paper's validity metric


@dg.asset(
    group_name="structures",
    kinds={"pyxtal", "duckdb"},
    partitions_def=targets_partitions,
    deps=[filtered_genes],
    pool="duckdb_writer",
    code_version="1",
    description="PyXtal trial structures (total DoF + 1 per passed gene, 1 when DoF = 0), reproducible "
    "per gene seed; CIFs under artifacts/trial_structures/<target>/, DuckDB `trial_structures`.",
)
def trial_structures(context: dg.AssetExecutionContext, config: TrialStructuresConfig, warehouse: DuckDBResource):
    from dft.pipeline import build_gene_trials

    from ml.filters import rank_genes

    key = context.partition_key
    ranking = config.ranking
    if ranking == "auto":
        ranking = "hits_then_space_groups" if current_registry().get(key).task == "ground_state" else "hits"
    with warehouse.get_connection() as conn:
        genes = read_table(conn, "SELECT formula, space_group, wyckoff, gene_key, hits FROM filtered_genes "
                           "WHERE target = ? AND passed", [key])
    try:
        chosen = rank_genes(genes, ranking, budget=config.max_genes).head(config.max_genes)
    except ValueError as exc:
        raise dg.Failure(str(exc)) from exc
    context.log.info(f"{key}: {genes.height} passed genes, building trials for {chosen.height} (ranked by {ranking}, "
                     f"{chosen['space_group'].n_unique()} space groups)")
    out_dir = settings.artifacts_dir() / "trial_structures" / key
    rows = []
    for i, gene in enumerate(chosen.iter_rows(named=True)):
        rows += [dict(r, target=key) for r in build_gene_trials(
            gene, seed=config.seed, out_dir=out_dir, max_attempts=config.max_attempts,
            min_distance=config.min_distance)]
        if (i + 1) % 10 == 0:
            context.log.info(f"trials for {i + 1}/{chosen.height} genes")
    df = _frame(rows, TRIAL_SCHEMA)
    with warehouse.get_connection() as conn:
        replace_partition(conn, "trial_structures", key, df)
    counts = _verdict_counts(df)
    ok = df.filter(pl.col("verdict") == "ok")
    return dg.MaterializeResult(metadata={
        "genes": dg.MetadataValue.int(chosen.height),
        "ranking": ranking,
        "genes_not_built": dg.MetadataValue.int(chosen.height - ok["gene_key"].n_unique()),
        "trials": dg.MetadataValue.int(df.height),
        "trials_ok": dg.MetadataValue.int(ok.height),
        "verdicts": dg.MetadataValue.md(markdown_table(counts)),
        "seconds_per_trial": dg.MetadataValue.float(round(float(df["seconds"].mean() or 0.0), 4)),
        "min_distance_min": dg.MetadataValue.float(float(ok["min_distance"].min() or 0.0)),
    })


class RelaxedStructuresConfig(dg.Config):
    """Symmetry-constrained relaxation (FixSymmetry + FrechetCellFilter + FIRE) of every built trial."""

    relaxer: str = "chgnet"  # a dft.relax.MODELS name: chgnet, sevennet-0, sevennet-l3i5, sevennet-mf0
    fmax: float = 0.05  # eV/Angstrom, atoms and cell
    max_steps: int = 300
    # centred cells (I/F/C/A/R) relaxed in their primitive cell (same result, 1.4-2.5x faster
    # measured with CHGNet on I4/mcm trials), reported in the conventional cell
    primitive_cell: bool = True


def _relax_key(row: dict, relaxer: str, fmax: float, max_steps: int, primitive: bool = True) -> str:
    from dft.pipeline import gene_hash

    # primitive and conventional relaxations give the same structure and energy, so they share
    # stored results; only the conventional-only setting gets its own
    digest = _file_digest(row["cif_path"], f"{relaxer}|{fmax}|{max_steps}" + ("" if primitive else "|conventional"))
    return f"{gene_hash(row['gene_key'])}-t{row['trial']}-{relaxer}-{digest}"


@dg.asset(
    group_name="structures",
    kinds={"ase", "duckdb"},
    partitions_def=targets_partitions,
    deps=[trial_structures, mp_snapshot],
    pool="relaxation",
    code_version="1",
    description="Every trial relaxed with the space group fixed; total energy -> MP2020 correction -> "
    "E_f against MP's elemental references -> E_hull against the snapshot's hull (left-out materials "
    "excluded), SG before/after, novelty, best trial per gene; DuckDB `relaxed_structures`.",
)
def relaxed_structures(context: dg.AssetExecutionContext, config: RelaxedStructuresConfig,
                       warehouse: DuckDBResource, compute: ComputeResource):
    from dft.energetics import SCHEME_NOTE, NoveltyChecker, SnapshotHull, load_elemental_references
    from dft.hpc import run_tasks
    from dft.pipeline import best_trial_per_gene, relax_task, score_relaxations

    key = context.partition_key
    excluded = _load_model_manifest(key)["excluded_material_ids"]
    with warehouse.get_connection() as conn:
        trials = read_table(conn, "SELECT * FROM trial_structures WHERE target = ? AND verdict = 'ok' "
                            "ORDER BY gene_key, trial", [key])
    base = settings.artifacts_dir() / "relaxed_structures" / key
    tasks, by_task = {}, {}
    for row in trials.iter_rows(named=True):
        tkey = _relax_key(row, config.relaxer, config.fmax, config.max_steps, config.primitive_cell)
        tasks[tkey] = {"cif_path": row["cif_path"], "relaxer": config.relaxer, "fmax": config.fmax,
                       "max_steps": config.max_steps, "primitive": config.primitive_cell,
                       "out_cif": str(base / "cif" / f"{tkey}.cif")}
        by_task[tkey] = row
    context.log.info(f"{key}: relaxing {len(tasks)} trials with {config.relaxer} ({compute.mode})")
    results = run_tasks(relax_task, tasks, compute.config(base / "submitit"), base / "results", log=context.log.info)
    rows = []
    for tkey, res in results.items():
        trial = by_task[tkey]
        rows.append({**_gene_columns(trial),
                     "relaxer": config.relaxer, **res, "verdict": res.get("verdict", "failed"),
                     "symmetry_kept": bool(res.get("symmetry_kept", False)), "steps": res.get("steps", 0)})
    with warehouse.get_connection() as conn:
        formulas = sorted({r["formula"] for r in rows})
        mats = read_table(conn, "SELECT material_id, formula_pretty, formation_energy_per_atom FROM materials")
        cifs = read_table(conn, "SELECT material_id, formula_pretty, cif FROM materials "
                          "WHERE list_contains(?, formula_pretty)", [formulas])
    # left-out materials count as never published: absent from the hull and the novelty reference
    hull = SnapshotHull(mats.rows(), exclude_ids=excluded)
    novelty = NoveltyChecker(cifs.rows(), exclude_ids=excluded)
    rows = score_relaxations(rows, references=load_elemental_references(settings.elemental_references()),
                             hull=hull, novelty=novelty)
    best = {id(r) for r in best_trial_per_gene(rows).values()}
    for r in rows:
        r.update(target=key, best_trial=id(r) in best, lattice=json.dumps(r.get("lattice")))
    df = _frame(rows, RELAXED_SCHEMA)
    with warehouse.get_connection() as conn:
        replace_partition(conn, "relaxed_structures", key, df)
    done = df.filter(pl.col("verdict") == "converged")
    best_df = df.filter(pl.col("best_trial")).sort("formation_energy_per_atom", nulls_last=True)
    verdicts = _verdict_counts(df)
    return dg.MaterializeResult(metadata={
        "trials": dg.MetadataValue.int(df.height),
        "converged": dg.MetadataValue.int(done.height),
        "symmetry_kept_rate": dg.MetadataValue.float(round(float(done["symmetry_kept"].mean() or 0.0), 4)),
        "verdicts": dg.MetadataValue.md(markdown_table(verdicts)),
        "core_seconds_per_relaxation": dg.MetadataValue.float(round(float(df["cpu_seconds"].mean() or 0.0), 2)),
        "genes_relaxed": dg.MetadataValue.int(best_df.height),
        "novel_genes": dg.MetadataValue.int(int(best_df["is_novel"].fill_null(False).sum())),
        "excluded_material_ids": str(excluded),
        "energy_scheme": dg.MetadataValue.md(SCHEME_NOTE),
        "best_per_gene": dg.MetadataValue.md(markdown_table(rounded_rows(best_df.head(25).select(
            "formula", "space_group", "wyckoff", "trial", "formation_energy_per_atom", "e_above_hull",
            "sg_after", "symmetry_kept", "is_novel").to_dicts()))),
        "relative_formation_energy": dg.MetadataValue.md(_relative_ef_chart(best_df, key)),
    })


def _relative_ef_chart(best: pl.DataFrame, key: str) -> str:
    have = best.filter(pl.col("formation_energy_per_atom").is_not_null()).head(30)
    if have.is_empty():
        return "_(no formation energies)_"
    ef = have["formation_energy_per_atom"]
    labels = [f"{f} {sg}" for f, sg in zip(have["formula"], have["space_group"])]
    return bar_chart_markdown(labels, (ef - ef.min()).to_list(), title=f"{key}: relative E_f of relaxed genes",
                              xlabel="gene (formula, SG)", ylabel="E_f - min (eV/atom)")


class PhononVerdictsConfig(dg.Config):
    """Phonopy finite displacements with the relaxation's potential on the best trial per gene."""

    max_e_above_hull: float = 0.2  # eV/atom; genes above it are skipped (recorded); < 0: no limit
    only_novel: bool = False
    max_structures: int = 10  # lowest E_hull first
    supercell_min_length: float = 10.0  # Angstrom
    # the paper's DFPT inputs (precise settings, IBRION 8, same supercell) per computed structure,
    # for the user's VASP cluster: artifacts/phonon_verdicts/<target>/vasp_dfpt/<task>/
    write_vasp_dfpt: bool = True


@dg.asset(
    group_name="structures",
    kinds={"phonopy", "duckdb"},
    partitions_def=targets_partitions,
    deps=[relaxed_structures],
    pool="relaxation",
    code_version="1",
    description="Dynamic stability of the lowest-energy relaxed structure per gene: stable / unstable "
    "(min frequency and where) / failed; DuckDB `phonon_verdicts`, band structures as plots.",
)
def phonon_verdicts(context: dg.AssetExecutionContext, config: PhononVerdictsConfig,
                    warehouse: DuckDBResource, compute: ComputeResource):
    from dft.hpc import run_tasks
    from dft.pipeline import gene_hash, phonon_task, write_dfpt_inputs
    from ml.plots import png_markdown

    key = context.partition_key
    with warehouse.get_connection() as conn:
        best = read_table(conn, "SELECT * FROM relaxed_structures WHERE target = ? AND best_trial "
                          "ORDER BY e_above_hull NULLS LAST, energy_per_atom", [key])
    keep = best
    if config.max_e_above_hull >= 0:
        keep = keep.filter(pl.col("e_above_hull").is_not_null() & (pl.col("e_above_hull") <= config.max_e_above_hull))
    if config.only_novel:
        keep = keep.filter(pl.col("is_novel").fill_null(False))
    keep = keep.head(config.max_structures)
    base = settings.artifacts_dir() / "phonon_verdicts" / key
    tasks, by_task = {}, {}
    for row in keep.iter_rows(named=True):
        tkey = f"{gene_hash(row['gene_key'])}-{_file_digest(row['relaxed_cif'], str(config.supercell_min_length))}"
        tasks[tkey] = {"cif_path": row["relaxed_cif"], "relaxer": row["relaxer"],
                       "supercell_min_length": config.supercell_min_length, "png": str(base / "bands" / f"{tkey}.png"),
                       "title": f"{row['formula']} SG {row['space_group']}"}
        by_task[tkey] = row
    context.log.info(f"{key}: phonons for {len(tasks)} of {best.height} relaxed genes")
    results = run_tasks(phonon_task, tasks, compute.config(base / "submitit"), base / "results", log=context.log.info)
    rows = []
    for tkey, res in results.items():
        r = by_task[tkey]
        if config.write_vasp_dfpt and res.get("verdict") in ("stable", "unstable"):
            res["vasp_dfpt_dir"] = write_dfpt_inputs(r["relaxed_cif"], str(base / "vasp_dfpt" / tkey),
                                                     res.get("supercell_matrix"), config.supercell_min_length)
        rows.append({**_gene_columns(r), "target": key,
                     "verdict": res.get("verdict", "failed"), "min_frequency_thz": res.get("min_frequency_thz"),
                     "where_min": res.get("where"), "reason": res.get("reason"),
                     "supercell": json.dumps(res.get("supercell_matrix")), "n_displacements": res.get("n_displacements"),
                     "seconds": res.get("seconds"), "cpu_seconds": res.get("cpu_seconds"), "band_png": res.get("band_png"),
                     "vasp_dfpt_dir": res.get("vasp_dfpt_dir")})
    skipped = best.filter(~pl.col("gene_key").is_in(keep["gene_key"]))
    for r in skipped.iter_rows(named=True):
        rows.append({**_gene_columns(r), "target": key,
                     "verdict": "skipped", "reason": f"not selected (E_hull {r['e_above_hull']}, novel {r['is_novel']}; "
                     f"limits: E_hull <= {config.max_e_above_hull}, only_novel {config.only_novel}, "
                     f"max {config.max_structures})"})
    df = _frame(rows, PHONON_SCHEMA)
    with warehouse.get_connection() as conn:
        replace_partition(conn, "phonon_verdicts", key, df)
    counts = _verdict_counts(df)
    meta = {
        "computed": dg.MetadataValue.int(len(tasks)),
        "verdicts": dg.MetadataValue.md(markdown_table(counts)),
        "results": dg.MetadataValue.md(markdown_table(rounded_rows(df.filter(pl.col("verdict") != "skipped").select(
            "formula", "space_group", "wyckoff", "verdict", "min_frequency_thz", "where_min").to_dicts()))),
    }
    plots = [r for r in rows if r.get("band_png")][:3]
    if plots:
        from pathlib import Path

        meta["band_structures"] = dg.MetadataValue.md("\n\n".join(
            png_markdown(Path(r["band_png"]).read_bytes(), f"{r['formula']} SG {r['space_group']}") for r in plots))
    return dg.MaterializeResult(metadata=meta)
