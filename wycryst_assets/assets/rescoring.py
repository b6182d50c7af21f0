"""``rescored_structures``: the energy-model cascade's second step -- the most accurate model
re-relaxes the fast model's best trial of each promising gene and its energies decide
(dft.rescoring; defaults and their evidence in dft.model_choice)."""

from typing import Literal, Optional

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from dft.model_choice import DEFAULT_RESCORE_MAX_E_ABOVE_HULL, DEFAULT_RESCORER, NO_RESCORER
from dft.relax import MODELS
from wycryst_assets import settings
from wycryst_assets.assets.snapshot import mp_snapshot
from wycryst_assets.assets.structures import RELAXED_SCHEMA, RelaxSettings, relaxed_structures
from wycryst_assets.cpu import cpu_budget
from wycryst_assets.io import frame, load_model_manifest
from wycryst_assets.partitions import targets_partitions
from wycryst_assets.plots import markdown_table, rounded_rows
from wycryst_assets.resources import ComputeResource
from wycryst_assets.versions import source_version
from wycryst_assets.warehouse import read_table, replace_partition

RESCORED_SCHEMA = {
    **RELAXED_SCHEMA, "energy_model": pl.String, "rescorer": pl.String, "status": pl.String, "rescore_note": pl.String,
    "rescore_verdict": pl.String, "rescore_reason": pl.String, "rescore_cpu_seconds": pl.Float64, "fast_relaxer": pl.String, "fast_trial": pl.Int32,
    "fast_energy_per_atom": pl.Float64, "fast_formation_energy_per_atom": pl.Float64,
    "fast_e_above_hull": pl.Float64, "fast_sg_after": pl.Int32, "fast_symmetry_kept": pl.Boolean,
    "fast_verdict": pl.String, "fast_relaxed_cif": pl.String, "fast_lattice": pl.String,
}


class RescoredStructuresConfig(RelaxSettings):
    """Which genes the decider re-relaxes; how (RelaxSettings) as in relaxed_structures."""

    # a dft.relax.MODELS name, or "none": the fast model's numbers pass through (status "passthrough")
    rescorer: Literal[tuple(MODELS) + (NO_RESCORER,)] = DEFAULT_RESCORER
    # genes whose fast-model E_hull is at most this (eV/atom) are rescored; None: no hull window
    max_e_above_hull: Optional[float] = DEFAULT_RESCORE_MAX_E_ABOVE_HULL
    # ... and/or the K lowest-E_f genes of each formula (None: not used; both None: every gene)
    top_k_per_formula: Optional[int] = None


@dg.asset(
    group_name="structures",
    kinds={"ase", "duckdb"},
    partitions_def=targets_partitions,
    deps=[relaxed_structures, mp_snapshot],
    code_version=source_version(__name__),
    description="The cascade's decider: the best trial of each gene within the window (fast E_hull <= 0.2 "
    "or top-K per formula) re-relaxed from the fast model's CIF with the rescorer (symmetry kept) and scored "
    "(MP2020 per the model's scale, E_f, E_hull, novelty); one row per gene with the deciding model's "
    "energies (`energy_model`) beside the fast model's (`fast_*`); DuckDB `rescored_structures`.",
)
def rescored_structures(context: dg.AssetExecutionContext, config: RescoredStructuresConfig,
                        warehouse: DuckDBResource, compute: ComputeResource):
    from dft.energetics import NoveltyChecker, SnapshotHull, load_elemental_references
    from dft.hpc import run_tasks
    from dft.pipeline import relax_batch_task, relax_task, relax_tasks, relaxed_rows, score_relaxations
    from dft.rescoring import rescore_candidates, rescore_trials, rescored_rows

    key, none = context.partition_key, config.rescorer == NO_RESCORER
    excluded = load_model_manifest(key)["excluded_material_ids"]
    with warehouse.get_connection() as conn:
        best = read_table(conn, "SELECT * FROM relaxed_structures WHERE target = ? AND best_trial ORDER BY gene_key", [key])
    taken, skipped = ([], []) if none else rescore_candidates(
        best, max_e_above_hull=config.max_e_above_hull, top_k_per_formula=config.top_k_per_formula)
    base = settings.artifacts_dir() / "rescored_structures" / key
    tasks, trial_of = relax_tasks(rescore_trials(taken), base, relaxer=config.rescorer, fmax=config.fmax,
                                  max_steps=config.max_steps, primitive=config.primitive_cell,
                                  code=source_version("dft.relax")) if taken else ({}, {})
    context.log.info(f"{key}: rescoring {len(tasks)} of {best.height} genes with {config.rescorer} ({compute.mode})")
    with cpu_budget(context) as threads:
        results = run_tasks(relax_batch_task if config.batched else relax_task, tasks,
                            compute.config(base / "submitit", threads), base / "results",
                            log=context.log.info, batched=config.batched) if tasks else {}
    with warehouse.get_connection() as conn:
        mats = read_table(conn, "SELECT material_id, formula_pretty, formation_energy_per_atom FROM materials")
        cifs = read_table(conn, "SELECT material_id, formula_pretty, cif FROM materials "
                          "WHERE list_contains(?, formula_pretty)", [sorted({r["formula"] for r in taken})])
    decided = score_relaxations(
        relaxed_rows(results, trial_of, config.rescorer), references=load_elemental_references(
            settings.elemental_references()), hull=SnapshotHull(mats.rows(), exclude_ids=excluded),
        novelty=NoveltyChecker(cifs.rows(), exclude_ids=excluded))  # left-out materials: never published
    df = frame([dict(r, target=key) for r in rescored_rows(best, decided, skipped, rescorer=config.rescorer)],
               RESCORED_SCHEMA)
    with warehouse.get_connection() as conn:
        replace_partition(conn, "rescored_structures", key, df)
    return dg.MaterializeResult(metadata=_metadata(df, config.rescorer))


def _metadata(df: pl.DataFrame, rescorer: str) -> dict:
    from dft.rescoring import decided_models

    done = df.filter(pl.col("status") == "rescored")
    shift = (done["formation_energy_per_atom"] - done["fast_formation_energy_per_atom"]) if done.height else None
    return {
        "rescorer": rescorer,
        "genes": dg.MetadataValue.int(df.height),
        "rescored": dg.MetadataValue.int(done.height),
        "decided_by": decided_models(df),
        "status": dg.MetadataValue.md(markdown_table(df.group_by("status").len().sort("status").to_dicts())),
        "mean_abs_ef_shift_mev": dg.MetadataValue.float(round(float(shift.abs().mean()) * 1000, 1) if done.height else 0.0),
        "core_minutes_rescoring": dg.MetadataValue.float(round(float(df["rescore_cpu_seconds"].sum() or 0.0) / 60, 2)),
        "fast_vs_decider": dg.MetadataValue.md(markdown_table(rounded_rows(df.sort("e_above_hull", nulls_last=True).head(
            25).select("formula", "space_group", "status", "energy_model", "e_above_hull", "fast_e_above_hull",
                       "formation_energy_per_atom", "fast_formation_energy_per_atom", "symmetry_kept").to_dicts()))),
    }
