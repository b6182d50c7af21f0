"""``refined_structures``: DFT (GPAW here, VASP on clusters) on the MLIP's best candidates."""

from typing import Literal, Optional

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from wycryst_assets import settings
from wycryst_assets.assets.structures import relaxed_structures
from wycryst_assets.cpu import cpu_budget
from wycryst_assets.io import frame, verdict_counts
from wycryst_assets.partitions import targets_partitions
from wycryst_assets.plots import markdown_table, rounded_rows
from wycryst_assets.resources import ComputeResource
from wycryst_assets.versions import source_version
from wycryst_assets.warehouse import read_table, replace_partition

REFINED_SCHEMA = {
    "target": pl.String, "formula": pl.String, "space_group": pl.Int32, "wyckoff": pl.String, "gene_key": pl.String,
    "trial": pl.Int32, "engine": pl.String, "mode": pl.String, "verdict": pl.String, "reason": pl.String,
    "energy": pl.Float64, "energy_per_atom": pl.Float64, "formation_energy_per_atom": pl.Float64,
    "relative_energy_per_atom": pl.Float64, "rank_in_formula": pl.Int32,
    "mlip_formation_energy_per_atom": pl.Float64, "mlip_e_above_hull": pl.Float64, "mlip_rank_in_formula": pl.Int32,
    "max_force": pl.Float64, "steps": pl.Int32, "sg_before": pl.Int32, "sg_after": pl.Int32,
    "symmetry_kept": pl.Boolean, "n_atoms": pl.Int32, "lattice": pl.String, "mlip_lattice": pl.String,
    "seconds": pl.Float64, "cpu_seconds": pl.Float64, "energy_note": pl.String, "refined_cif": pl.String,
    "workdir": pl.String, "cell": pl.String,
}


class RefinedStructuresConfig(dg.Config):
    """Which candidates get DFT, with which engine and settings."""

    engine: Literal["gpaw", "vasp"] = "gpaw"  # vasp: runs VASP_COMMAND where set, else writes the paper's inputs
    # "relax" (symmetry kept, primitive cell), "single_point" (PBE energy at the MLIP geometry), or
    # "auto": relax when the primitive cell has <= relax_max_atoms atoms, else a single point
    mode: Literal["auto", "relax", "single_point"] = "auto"
    relax_max_atoms: int = 8
    max_atoms: int = 24  # primitive atoms; larger cells are recorded as skipped
    max_structures: int = 3  # lowest MLIP E_hull first (= lowest E_f within one formula)
    max_e_above_hull: Optional[float] = 0.1  # eV/atom on the MLIP's MP-compatible scale; None: no limit
    ecut: float = 600.0  # eV; Debian's PAW datasets need >= 600 (stress)
    kpts_density: float = 3.5  # k-points per reciprocal Angstrom (2 pi included), Gamma-centred
    fmax: float = 0.05
    max_steps: int = 60
    timeout_s: int = 10800


@dg.asset(
    group_name="structures",
    kinds={"gpaw", "duckdb"},
    partitions_def=targets_partitions,
    deps=[relaxed_structures],
    code_version=source_version(__name__),
    description="PBE refinement of the MLIP's best candidates (lowest E_hull first, within a threshold, one per "
    "distinct crystal): GPAW relax or single point here, VASP on clusters; E_f against the engine's own elemental "
    "references, energy relative to the lowest refined structure of each formula; DuckDB `refined_structures`.",
)
def refined_structures(context: dg.AssetExecutionContext, config: RefinedStructuresConfig,
                       warehouse: DuckDBResource, compute: ComputeResource):
    from dft.hpc import run_tasks
    from dft.refinement import engine_references, refine_task, refined_rows, refinement_tasks
    from dft.selection import rank_in_formula, refinement_candidates

    key = context.partition_key
    with warehouse.get_connection() as conn:
        best = read_table(conn, "SELECT * FROM relaxed_structures WHERE target = ? AND best_trial "
                          "AND verdict = 'converged' ORDER BY e_above_hull NULLS LAST, energy_per_atom", [key])
    taken, skipped = refinement_candidates(
        best, max_structures=config.max_structures, max_e_above_hull=config.max_e_above_hull,
        max_atoms=config.max_atoms, mode=config.mode, relax_max_atoms=config.relax_max_atoms)
    dft_settings = {"ecut": config.ecut, "kpts": {"density": config.kpts_density, "gamma": True}}
    base = settings.artifacts_dir() / "refined_structures" / key
    tasks, row_of = refinement_tasks(taken, base, engine=config.engine, settings=dft_settings, fmax=config.fmax,
                                     max_steps=config.max_steps, timeout_s=config.timeout_s,
                                     code=source_version("dft.refinement"))
    context.log.info(f"{key}: {config.engine} refinement of {len(tasks)} of {best.height} relaxed genes "
                     f"({', '.join(t['mode'] for t in tasks.values())})")
    with cpu_budget(context) as threads:  # one DFT task per worker / Slurm job, with the task's time limit
        executor = compute.config(base / "submitit", threads, chunk_size=1,
                                  time_minutes=max(compute.time_minutes, config.timeout_s // 60 + 10))
        results = run_tasks(refine_task, tasks, executor, base / "results", log=context.log.info)
        computed = [dict(r, formula=row_of[k]["formula"]) for k, r in results.items()]
        references, note = engine_references(config.engine, computed, dft_settings, executor=executor,
                                             cache_dir=settings.artifacts_dir() / "gpaw_references",
                                             timeout_s=config.timeout_s, log=context.log.info)
    rows = refined_rows(results, tasks, row_of, skipped, engine=config.engine, references=references,
                        reference_note=note, mlip_rank=rank_in_formula(best, "formation_energy_per_atom"))
    df = frame([dict(r, target=key) for r in rows], REFINED_SCHEMA)
    with warehouse.get_connection() as conn:
        replace_partition(conn, "refined_structures", key, df)
    return dg.MaterializeResult(metadata=_metadata(df, config, dft_settings, note))


def _metadata(df: pl.DataFrame, config: RefinedStructuresConfig, dft_settings: dict, note: str) -> dict:
    done = df.filter(pl.col("energy_per_atom").is_not_null()).sort("formula", "rank_in_formula")
    return {
        "engine": config.engine,
        "refined": dg.MetadataValue.int(done.height),
        "verdicts": dg.MetadataValue.md(markdown_table(verdict_counts(df))),
        "settings": dg.MetadataValue.json({**dft_settings, "fmax": config.fmax, "max_steps": config.max_steps}),
        "energy_scheme": dg.MetadataValue.md(
            f"{config.engine} PBE total energies on the engine's own scale; E_f against elemental references "
            f"computed with the same settings ({note or 'none'}); MP's references, MP2020 and the snapshot hull "
            "do not apply. `relative_energy_per_atom` is to the lowest refined structure of the same formula."),
        "dft_vs_mlip": dg.MetadataValue.md(markdown_table(rounded_rows(done.select(
            "formula", "space_group", "mode", "verdict", "rank_in_formula", "mlip_rank_in_formula",
            "relative_energy_per_atom", "formation_energy_per_atom", "mlip_formation_energy_per_atom",
            "symmetry_kept", "lattice", "cpu_seconds").to_dicts()))),
        "core_seconds": dg.MetadataValue.float(round(float(df["cpu_seconds"].sum() or 0.0), 1)),
    }
