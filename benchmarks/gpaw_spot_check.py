"""GPAW spot check of the MLIP's S.U.N. calls (see dft/spot_check.py for the method): PBE energies
of up to --candidates S.U.N. candidates (refined_structures: GPAW relax for <= 8 primitive atoms,
else a single point) and of the snapshot phases each would decompose into, then how often the
MLIP's stable/unstable call (E_hull <= --threshold) agrees with PBE's reaction energy.

    .venv/bin/python benchmarks/gpaw_spot_check.py [--home /tmp/wycryst-loo] [--partition campaign-paper]
        [--candidates 10] [--threshold 0.08] [--plan-only] [--ecut 600] [--kpts-density 3.5]

--plan-only lists the candidates, which ones GPAW can check (PAW setups, snapshot structures for
every phase) and the phases to compute, without running GPAW. Every GPAW result is stored per task
(refined_structures' own store; phases under artifacts/gpaw_spot_check/), so a killed run resumes.
Hours on 2 cores: a 600 eV single point of a 20-atom telluride is tens of minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", default="/tmp/wycryst-loo")
    ap.add_argument("--partition", default="campaign-paper")
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--threshold", type=float, default=0.08)
    ap.add_argument("--sun-threshold", type=float, default=0.1, help="MLIP E_hull of the candidates taken")
    ap.add_argument("--ecut", type=float, default=600.0)
    ap.add_argument("--kpts-density", type=float, default=3.5)
    ap.add_argument("--plan-only", action="store_true")
    args = ap.parse_args()
    home = Path(args.home)
    os.environ["WYCRYST_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster_home")
    os.environ.pop("MP_API_KEY", None)

    import duckdb
    import polars as pl

    from dft.energetics import SnapshotHull
    from dft.spot_check import (decomposition_energy, gpaw_reference_elements, gpaw_setup_elements, phase_energy_task,
                                plan_spot_check, spot_check_agreement)
    from wycryst_assets import settings
    from wycryst_assets.assets.sampling import _load_model_manifest

    key = args.partition
    excluded = _load_model_manifest(key)["excluded_material_ids"]
    with duckdb.connect(str(settings.warehouse_path()), read_only=True) as conn:
        best = pl.from_arrow(conn.execute(
            "SELECT * FROM relaxed_structures WHERE target = ? AND best_trial AND is_novel AND e_above_hull <= ? "
            "ORDER BY e_above_hull", [key, args.sun_threshold]).arrow())
        mats = pl.from_arrow(conn.execute(
            "SELECT material_id, formula_pretty, formation_energy_per_atom, nelements, cif FROM materials").arrow())
    mats = mats.filter(~pl.col("material_id").is_in(excluded))
    hull = SnapshotHull(mats.select("material_id", "formula_pretty", "formation_energy_per_atom").rows())
    elements = (mats.filter(pl.col("nelements") == 1).sort("formation_energy_per_atom")
                .unique("formula_pretty", keep="first"))
    element_materials = dict(zip(elements["formula_pretty"], elements["material_id"]))
    have = set(mats.filter(pl.col("cif").is_not_null())["material_id"].to_list())
    setups = gpaw_setup_elements()
    plan = plan_spot_check(best, hull, setup_elements=setups, element_materials=element_materials,
                           have_structure=have, reference_elements=gpaw_reference_elements(setups))
    print(f"{key}: {best.height} S.U.N. candidates (novel, MLIP E_hull <= {args.sun_threshold}); "
          f"{int(plan['checkable'].sum())} checkable by GPAW")
    print(plan.select("formula", "mlip_e_above_hull", "checkable", "reason", "phases").to_pandas().to_string())
    if args.plan_only:
        return

    import dagster as dg

    from dft.hpc import run_tasks
    from wycryst_assets.cli import init_dagster_home
    from wycryst_assets.definitions import defs

    init_dagster_home()
    graph = {a.key.to_user_string(): a for a in defs.assets}
    with dg.DagsterInstance.get() as instance:
        cfg = {"engine": "gpaw", "mode": "auto", "max_structures": 4 * args.candidates,
               "max_e_above_hull": args.sun_threshold, "ecut": args.ecut, "kpts_density": args.kpts_density}
        res = dg.materialize([graph["refined_structures"]], instance=instance, resources=dict(defs.resources),
                             partition_key=key, run_config={"ops": {"refined_structures": {"config": cfg}}},
                             raise_on_error=False)
        if not res.success:
            raise SystemExit(f"refined_structures failed: {res.failure_data_for_node('refined_structures')}")
    with duckdb.connect(str(settings.warehouse_path()), read_only=True) as conn:
        refined = pl.from_arrow(conn.execute("SELECT gene_key, energy_per_atom, mode, verdict FROM refined_structures "
                                             "WHERE target = ? AND energy_per_atom IS NOT NULL", [key]).arrow())
    pbe = dict(zip(refined["gene_key"], refined["energy_per_atom"]))
    checkable = plan.filter(pl.col("checkable")).iter_rows(named=True)
    chosen = [r for r in checkable if r["gene_key"] in pbe][:args.candidates]
    cifs = dict(zip(mats["material_id"], mats["cif"]))
    gpaw_settings = {"ecut": args.ecut, "kpts": {"density": args.kpts_density, "gamma": True}}
    base = settings.artifacts_dir() / "gpaw_spot_check" / key
    tasks = {}
    for r in chosen:
        for p in json.loads(r["phases"]):
            if p["name"].startswith("element:"):
                source = {"element": p["name"].split(":", 1)[1],
                          "cache_dir": str(settings.artifacts_dir() / "gpaw_references")}
            else:
                source = {"cif": cifs[p["name"]]}
            tasks[f"{p['name']}-{int(args.ecut)}-{args.kpts_density}"] = {
                **source, "settings": gpaw_settings, "workdir": str(base / "runs" / p["name"].replace(":", "_"))}
    from dft.hpc import ComputeConfig

    phase_energies = run_tasks(phase_energy_task, tasks, ComputeConfig(max_workers=1, folder=base / "submitit"),
                               base / "results", log=print)
    rows = []
    for r in plan.iter_rows(named=True):
        row = {"formula": r["formula"], "mlip_e_above_hull": r["mlip_e_above_hull"], "reason": r["reason"],
               "pbe_decomposition_energy": None}
        if r in chosen:
            phases = json.loads(r["phases"])
            energies = [phase_energies[f"{p['name']}-{int(args.ecut)}-{args.kpts_density}"].get("energy_per_atom")
                        for p in phases]
            if None in energies:
                row["reason"] = "a phase's GPAW run failed"
            else:
                row["pbe_decomposition_energy"] = decomposition_energy(
                    pbe[r["gene_key"]], [(p["fraction"], e) for p, e in zip(phases, energies)])
        elif r["checkable"]:
            row["reason"] = "not refined (refined_structures limits) or beyond --candidates"
        rows.append(row)
    print(pl.DataFrame(rows).to_pandas().to_string())
    print(json.dumps(spot_check_agreement(rows, args.threshold), indent=1))


if __name__ == "__main__":
    main()
