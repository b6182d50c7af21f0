"""``refined_structures``: DFT (GPAW here, VASP on clusters) on the MLIP's best candidates."""

import json

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from wycryst_assets import settings
from wycryst_assets.assets.structures import _file_digest, _gene_columns, _verdict_counts, relaxed_structures
from wycryst_assets.partitions import targets_partitions
from wycryst_assets.plots import markdown_table, rounded_rows
from wycryst_assets.resources import ComputeResource
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
    "workdir": pl.String,
}


class RefinedStructuresConfig(dg.Config):
    """Which candidates get DFT, with which engine and settings."""

    engine: str = "gpaw"  # or "vasp" (runs VASP_COMMAND where set, else writes the paper's inputs)
    # "relax" (symmetry kept, primitive cell), "single_point" (PBE energy at the MLIP geometry), or
    # "auto": relax when the primitive cell has <= relax_max_atoms atoms, else a single point
    mode: str = "auto"
    relax_max_atoms: int = 8
    max_atoms: int = 24  # primitive atoms; larger cells are recorded as skipped
    max_structures: int = 3  # lowest MLIP E_hull first (= lowest E_f within one formula)
    max_e_above_hull: float = 0.1  # eV/atom on the MLIP's MP-compatible scale; < 0: no limit
    ecut: float = 600.0  # eV; Debian's PAW datasets need >= 600 (stress)
    kpts_density: float = 3.5  # k-points per reciprocal Angstrom (2 pi included), Gamma-centred
    fmax: float = 0.05
    max_steps: int = 60
    timeout_s: int = 10800


def _primitive_atoms(cif: str) -> int:
    from pymatgen.core import Structure

    from dft.relax import primitive_cell

    return len(primitive_cell(Structure.from_file(cif)))


def _mlip_columns(row: dict, mlip_rank: dict[str, int]) -> dict:
    """The MLIP's numbers for a refined (or skipped) gene, side by side with DFT's."""
    return {"mlip_formation_energy_per_atom": row["formation_energy_per_atom"], "mlip_e_above_hull": row["e_above_hull"],
            "mlip_rank_in_formula": mlip_rank.get(row["gene_key"]), "mlip_lattice": row["lattice"]}


def _same_crystal(row: dict, chosen: list) -> str | None:
    """The label of an already chosen candidate that ``row``'s relaxed structure is the same
    crystal as (:func:`dft.matching.same_crystal`), else None (``row`` is then appended)."""
    from pymatgen.core import Structure

    from dft.matching import same_crystal

    structure = Structure.from_file(row["relaxed_cif"])
    energy = row.get("energy_per_atom")
    for formula, other, other_energy, label in chosen:
        if formula == row["formula"] and same_crystal(structure, other, energy, other_energy):
            return label
    chosen.append((row["formula"], structure, energy, f"{row['formula']} SG {row['space_group']} {row['wyckoff']}"))
    return None


def _rank_in_formula(df: pl.DataFrame, column: str) -> dict[str, int]:
    out = {}
    for _, group in df.filter(pl.col(column).is_not_null()).group_by("formula"):
        for i, g in enumerate(group.sort(column)["gene_key"].to_list(), start=1):
            out[g] = i
    return out


@dg.asset(
    group_name="structures",
    kinds={"gpaw", "duckdb"},
    partitions_def=targets_partitions,
    deps=[relaxed_structures],
    pool="relaxation",
    code_version="1",
    description="PBE refinement of the MLIP's best candidates (lowest E_hull first, within a threshold): "
    "GPAW relax or single point here, VASP on clusters; E_f against the engine's own elemental references, "
    "energy relative to the lowest refined structure of each formula; DuckDB `refined_structures`.",
)
def refined_structures(context: dg.AssetExecutionContext, config: RefinedStructuresConfig,
                       warehouse: DuckDBResource, compute: ComputeResource):
    from dft.hpc import run_tasks
    from dft.pipeline import gene_hash
    from dft.refinement import ENGINES, refine_task, score_refinements

    if config.engine not in ENGINES or config.mode not in ("auto", "relax", "single_point"):
        raise dg.Failure(f"engine must be one of {ENGINES} and mode auto/relax/single_point, "
                         f"got {config.engine!r}/{config.mode!r}")
    key = context.partition_key
    with warehouse.get_connection() as conn:
        best = read_table(conn, "SELECT * FROM relaxed_structures WHERE target = ? AND best_trial "
                          "AND verdict = 'converged' ORDER BY e_above_hull NULLS LAST, energy_per_atom", [key])
    mlip_rank = _rank_in_formula(best, "formation_energy_per_atom")
    keep = best
    if config.max_e_above_hull >= 0:
        keep = keep.filter(pl.col("e_above_hull").is_not_null() & (pl.col("e_above_hull") <= config.max_e_above_hull))
    settings_json = {"ecut": config.ecut, "kpts": {"density": config.kpts_density, "gamma": True}}
    base = settings.artifacts_dir() / "refined_structures" / key
    tasks, by_task, skipped = {}, {}, []
    chosen = []  # (formula, structure, label) of the candidates already taken
    for row in keep.iter_rows(named=True):
        if len(tasks) >= config.max_structures:
            skipped.append((row, f"beyond max_structures {config.max_structures}"))
            continue
        same = _same_crystal(row, chosen)
        if same:  # two genes that relaxed to one crystal (e.g. a P2_1/c gene into a Pnma one): refine it once
            skipped.append((row, f"same crystal as {same} (StructureMatcher)"))
            continue
        n_prim = _primitive_atoms(row["relaxed_cif"])
        if n_prim > config.max_atoms:
            skipped.append((row, f"{n_prim} atoms in the primitive cell > max_atoms {config.max_atoms}"))
            continue
        mode = config.mode if config.mode != "auto" else ("relax" if n_prim <= config.relax_max_atoms else "single_point")
        text = json.dumps([config.engine, mode, settings_json, config.fmax, config.max_steps], sort_keys=True)
        tkey = f"{gene_hash(row['gene_key'])}-{config.engine}-{mode}-{_file_digest(row['relaxed_cif'], text)}"
        tasks[tkey] = {"cif_path": row["relaxed_cif"], "engine": config.engine, "mode": mode,
                       "workdir": str(base / "runs" / tkey), "out_cif": str(base / "cif" / f"{tkey}.cif"),
                       "fmax": config.fmax, "max_steps": config.max_steps, "timeout_s": config.timeout_s,
                       "settings": settings_json}
        by_task[tkey] = row
    skipped += [(r, f"MLIP E_hull {r['e_above_hull']} above {config.max_e_above_hull}")
                for r in best.filter(~pl.col("gene_key").is_in(keep["gene_key"])).iter_rows(named=True)]
    context.log.info(f"{key}: {config.engine} refinement of {len(tasks)} of {best.height} relaxed genes "
                     f"({', '.join(t['mode'] for t in tasks.values())})")
    # one DFT task per worker / Slurm job, with the task's own time limit
    executor = compute.config(base / "submitit", chunk_size=1,
                              time_minutes=max(compute.time_minutes, config.timeout_s // 60 + 10))
    results = run_tasks(refine_task, tasks, executor, base / "results", log=context.log.info)

    rows = []
    for tkey, res in results.items():
        r = by_task[tkey]
        rows.append({**_gene_columns(r), **res, "target": key, "verdict": res.get("verdict", "failed"),
                     "engine": config.engine, "mode": tasks[tkey]["mode"], **_mlip_columns(r, mlip_rank)})
    references, note = _references(context, config, rows, settings_json, executor)
    rows = score_refinements(rows, references, note)
    for row, why in skipped:
        rows.append({**_gene_columns(row), "target": key, "engine": config.engine, "verdict": "skipped",
                     "reason": why, **_mlip_columns(row, mlip_rank)})
    for r in rows:
        if isinstance(r.get("lattice"), dict):
            r["lattice"] = json.dumps(r["lattice"])
    df = pl.DataFrame([{k: r.get(k) for k in REFINED_SCHEMA} for r in rows], schema=REFINED_SCHEMA, orient="row")
    with warehouse.get_connection() as conn:
        replace_partition(conn, "refined_structures", key, df)
    done = df.filter(pl.col("energy_per_atom").is_not_null()).sort("formula", "rank_in_formula")
    return dg.MaterializeResult(metadata={
        "engine": config.engine,
        "refined": dg.MetadataValue.int(done.height),
        "verdicts": dg.MetadataValue.md(markdown_table(_verdict_counts(df))),
        "settings": dg.MetadataValue.json({**settings_json, "fmax": config.fmax, "max_steps": config.max_steps}),
        "energy_scheme": dg.MetadataValue.md(
            f"{config.engine} PBE total energies on the engine's own scale; E_f against elemental references "
            f"computed with the same settings ({note or 'none'}); MP's references, MP2020 and the snapshot hull "
            "do not apply. `relative_energy_per_atom` is to the lowest refined structure of the same formula."),
        "dft_vs_mlip": dg.MetadataValue.md(markdown_table(rounded_rows(done.select(
            "formula", "space_group", "mode", "verdict", "rank_in_formula", "mlip_rank_in_formula",
            "relative_energy_per_atom", "formation_energy_per_atom", "mlip_formation_energy_per_atom",
            "symmetry_kept", "lattice", "cpu_seconds").to_dicts()))),
        "core_seconds": dg.MetadataValue.float(round(float(df["cpu_seconds"].sum() or 0.0), 1)),
    })


def _references(context, config: RefinedStructuresConfig, rows: list[dict], settings_json: dict, executor):
    """The engine's own elemental references for the refined compositions, computed as one task
    through the compute executor (a Slurm job on a cluster) and cached per settings."""
    import hashlib

    from pymatgen.core import Composition

    from dft.hpc import run_tasks
    from dft.refinement import references_task

    if config.engine != "gpaw":
        return None, "VASP energies: pair them with VASP elemental references on the cluster"
    elements = sorted({el.symbol for r in rows if r.get("energy_per_atom") is not None
                       for el in Composition(r["formula"]).elements})
    if not elements:
        return {}, ""
    cache = settings.artifacts_dir() / "gpaw_references"
    context.log.info(f"GPAW elemental references for {', '.join(elements)} (cached in {cache})")
    key = "refs-" + hashlib.sha1(json.dumps([elements, settings_json], sort_keys=True).encode()).hexdigest()[:12]
    payload = {"elements": elements, "cache_dir": str(cache), "settings": settings_json, "timeout_s": config.timeout_s}
    result = run_tasks(references_task, {key: payload}, executor, cache / "results", log=context.log.info)[key]
    if "references" not in result:  # the compounds' energies still stand; E_f stays empty with the reason
        context.log.warning(f"GPAW references failed: {result}")
        return None, f"references failed: {str(result.get('reason', result))[:300]}"
    return result["references"], f"GPAW references, same settings, cached in {cache}"
