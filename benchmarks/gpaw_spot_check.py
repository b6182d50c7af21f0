"""GPAW spot check of the MLIP's S.U.N. calls (see dft/spot_check.py for the method): PBE energies
of up to --candidates S.U.N. candidates of the energy-model cascade (rescored_structures: the
decider's E_hull, the fast model's beside it) and of the snapshot phases each would decompose into,
then how often each model's stable/unstable call (E_hull <= --threshold) agrees with PBE's reaction
energy (on MP2020's scale, raw PBE shown beside it).

    .venv/bin/python benchmarks/gpaw_spot_check.py [--home /tmp/wycryst-loo] [--partition campaign-paper]
        [--candidates 10] [--threshold 0.08] [--sun-threshold 0.1] [--pool either|decider]
        [--order affordable|hull] [--candidate-mode single_point|auto] [--ecut 600] [--kpts-density 3.5]
        [--plan-only | --report-only] [--markdown PATH]

Candidates: novel genes of rescored_structures with E_hull <= --sun-threshold by the decider
(--pool decider) or by either model (--pool either, default: each model's S.U.N. calls get tested),
one per distinct crystal (dft.selection.refinement_candidates). --order affordable (default) takes
the checkable candidates whose reaction has the smallest primitive cells first (a bias towards small
high-symmetry cells, printed); --order hull the lowest decider E_hull first. The candidate's PBE energy
is a single point at the decider's geometry by default (--candidate-mode auto relaxes cells of <= 8
atoms, hours on 2 cores); --relax-inconclusive then relaxes (<= --relax-max-atoms) the candidates
whose single point, an upper bound, calls them unstable. Every GPAW result is stored per task under
artifacts/gpaw_spot_check/<partition>/results (one candidate and its phases after another), so a
killed run resumes and --report-only reports whatever finished without running GPAW.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _fmt(v, digits=3):
    return "" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def _agreement_line(name: str, a: dict) -> str:
    rate = "n/a" if a["agreement_rate"] is None else f"{100 * a['agreement_rate']:.0f} %"
    conf = "n/a" if a["pbe_confirms_mlip_stable"] is None else f"{100 * a['pbe_confirms_mlip_stable']:.0f} %"
    return (f"| {name} | {a['compared']} | {a['agree']} | {rate} | {a['both_stable']} | {a['mlip_stable_pbe_unstable']} "
            f"| {a['mlip_unstable_pbe_stable']} | {a['both_unstable']} | {conf} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", default="/tmp/wycryst-loo")
    ap.add_argument("--partition", default="campaign-paper")
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--threshold", type=float, default=0.08, help="stable call: E_hull / dE_PBE <= this")
    ap.add_argument("--sun-threshold", type=float, default=0.1, help="MLIP E_hull of the candidates taken")
    ap.add_argument("--pool", choices=("either", "decider"), default="either")
    ap.add_argument("--order", choices=("affordable", "hull"), default="affordable")
    ap.add_argument("--candidate-mode", choices=("single_point", "auto", "relax"), default="single_point")
    ap.add_argument("--max-atoms", type=int, default=24, help="primitive atoms of a candidate")
    ap.add_argument("--ecut", type=float, default=600.0)
    ap.add_argument("--kpts-density", type=float, default=3.5)
    ap.add_argument("--timeout-s", type=int, default=3600, help="per GPAW task")
    ap.add_argument("--workers", type=int, default=1, help="GPAW tasks at once (one core each)")
    ap.add_argument("--plan-only", action="store_true")
    ap.add_argument("--report-only", action="store_true", help="report stored results, run no GPAW")
    ap.add_argument("--relax-inconclusive", action="store_true",
                    help="then relax (GPAW, symmetry kept) the candidates whose single point is above --threshold")
    ap.add_argument("--relax-max-atoms", type=int, default=8)
    ap.add_argument("--markdown", default="", help="also write the report (markdown) here")
    args = ap.parse_args()
    home = Path(args.home)
    os.environ["WYCRYST_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster_home")
    os.environ.pop("MP_API_KEY", None)

    import duckdb
    import polars as pl

    from dft.energetics import SnapshotHull
    from dft.hpc import ComputeConfig, read_result, run_tasks
    from dft.refinement import refinement_tasks
    from dft.selection import refinement_candidates
    from dft.spot_check import (affordable_order, decomposition_energy, gpaw_reference_elements, gpaw_setup_elements,
                                phase_atoms_of, plan_spot_check, reaction_energy, spot_check_agreement,
                                spot_check_task)
    from wycryst_assets import settings
    from wycryst_assets.io import load_model_manifest

    key = args.partition
    excluded = load_model_manifest(key)["excluded_material_ids"]
    in_pool = "e_above_hull <= ?" + (" OR fast_e_above_hull <= ?" if args.pool == "either" else "")
    params = [key, args.sun_threshold] + ([args.sun_threshold] if args.pool == "either" else [])
    with duckdb.connect(str(settings.warehouse_path()), read_only=True) as conn:
        best = pl.from_arrow(conn.execute(
            f"SELECT * FROM rescored_structures WHERE target = ? AND is_novel AND verdict = 'converged' "
            f"AND ({in_pool}) ORDER BY e_above_hull, energy_per_atom", params).arrow())
        mats = pl.from_arrow(conn.execute(
            "SELECT material_id, formula_pretty, formation_energy_per_atom, nelements, cif FROM materials").arrow())
    mats = mats.filter(~pl.col("material_id").is_in(excluded))
    hull = SnapshotHull(mats.select("material_id", "formula_pretty", "formation_energy_per_atom").rows())
    elements = (mats.filter(pl.col("nelements") == 1).sort("formation_energy_per_atom")
                .unique("formula_pretty", keep="first"))
    element_materials = dict(zip(elements["formula_pretty"], elements["material_id"]))
    element_offsets = dict(zip(elements["formula_pretty"], elements["formation_energy_per_atom"]))
    cifs = dict(zip(mats["material_id"], mats["cif"]))
    have = {m for m, c in cifs.items() if c}
    setups = gpaw_setup_elements()

    # one per distinct crystal, primitive cells <= --max-atoms; their primitive sizes for the cost
    sizes: dict[str, int] = {}

    def primitive_atoms(cif: str) -> int:
        from pymatgen.core import Structure

        from dft.relax import primitive_cell

        sizes[cif] = len(primitive_cell(Structure.from_file(cif)))
        return sizes[cif]

    taken, skipped = refinement_candidates(best, max_structures=10**6, max_e_above_hull=None, max_atoms=args.max_atoms,
                                           mode=args.candidate_mode, primitive_atoms=primitive_atoms)
    mode_of = {row["gene_key"]: mode for row, mode in taken}
    rows_of = {row["gene_key"]: row for row, _ in taken}
    pool = pl.DataFrame([dict(r, n_atoms=sizes[r["relaxed_cif"]]) for r, _ in taken], infer_schema_length=None) \
        if taken else best.clear()
    phase_size_cache: dict[str, int | None] = {}

    def phase_atoms(name: str) -> int | None:
        if name not in phase_size_cache:
            phase_size_cache[name] = phase_atoms_of(name, cifs)
        return phase_size_cache[name]

    plan = plan_spot_check(pool, hull, setup_elements=setups, element_materials=element_materials,
                           have_structure=have, reference_elements=gpaw_reference_elements(setups),
                           phase_atoms=phase_atoms, element_offsets=element_offsets)
    ordered = affordable_order(plan) if args.order == "affordable" else \
        plan.filter(pl.col("checkable")).sort("mlip_e_above_hull")
    chosen = ordered.head(args.candidates)
    chosen_keys = set(chosen["gene_key"])
    decider = (plan["mlip_model"].drop_nulls().unique().to_list() or ["?"])
    fast = (plan["fast_model"].drop_nulls().unique().to_list() or ["?"])
    pool_text = {"either": f"decider ({', '.join(decider)}) or fast ({', '.join(fast)}) E_hull", "decider": "decider E_hull"}
    lines = [f"{key}: {best.height} novel genes with {pool_text[args.pool]} <= {args.sun_threshold}; "
             f"{len(taken)} distinct crystals (<= {args.max_atoms} primitive atoms; {len(skipped)} skipped: "
             f"same crystal or larger); {int(plan['checkable'].sum())} checkable by GPAW; "
             f"{chosen.height} chosen ({args.order} order)"]
    if args.order == "affordable":
        lines.append("selection rule: smallest largest-primitive-cell of the reaction (candidate and phases) first, "
                     "then fewest atoms in all -- biased towards small, high-symmetry cells and simple decompositions")
    print("\n".join(lines))
    show = plan.with_columns(pl.col("gene_key").is_in(list(chosen_keys)).alias("chosen"),
                             pl.col("phases").map_elements(
                                 lambda s: " + ".join(f"{p['fraction']:.2f} {p['formula']}({p['name']},{p.get('n_atoms')}"
                                                      f"{',+%.3f' % p['offset'] if p.get('offset') else ''})"
                                                      for p in json.loads(s)) if s else "", return_dtype=pl.String)
                             .alias("reaction"))
    print(show.select("formula", "space_group", "n_atoms", "mlip_e_above_hull", "fast_e_above_hull", "checkable",
                      "chosen", "reaction_max_atoms", "reaction_atoms", "reason", "reaction")
          .to_pandas().to_string(max_colwidth=110))
    if args.plan_only:
        return

    # tasks in the order they should finish: each chosen candidate, then its phases not yet queued
    gpaw_settings = {"ecut": args.ecut, "kpts": {"density": args.kpts_density, "gamma": True}}
    base = settings.artifacts_dir() / "gpaw_spot_check" / key
    tag = f"{int(args.ecut)}-{args.kpts_density}"
    tasks: dict[str, dict] = {}
    cand_key: dict[str, str] = {}
    for r in chosen.iter_rows(named=True):
        row = rows_of[r["gene_key"]]
        ctasks, _ = refinement_tasks([(row, mode_of[r["gene_key"]])], base / "candidates", engine="gpaw",
                                     settings=gpaw_settings, fmax=0.05, max_steps=60, timeout_s=args.timeout_s,
                                     code="spot_check")
        (k, payload), = ctasks.items()
        tasks[k] = {**payload, "kind": "candidate"}
        cand_key[r["gene_key"]] = k
        for p in json.loads(r["phases"]):
            pk = f"{p['name'].replace(':', '_')}-{tag}"
            if pk in tasks:
                continue
            if p["name"].startswith("element:"):
                source = {"element": p["name"].split(":", 1)[1],
                          "cache_dir": str(settings.artifacts_dir() / "gpaw_references")}
            else:
                source = {"cif": cifs[p["name"]]}
            tasks[pk] = {"kind": "phase", **source, "settings": gpaw_settings, "timeout_s": args.timeout_s,
                         "workdir": str(base / "runs" / p["name"].replace(":", "_"))}
    results_dir = base / "results"
    print(f"{len(tasks)} GPAW tasks ({chosen.height} candidates + {len(tasks) - chosen.height} phases), settings "
          f"{gpaw_settings}, candidate mode {args.candidate_mode}; results in {results_dir}", flush=True)
    if args.report_only:
        results = {k: read_result(results_dir, k) for k in tasks}
    else:
        results = run_tasks(spot_check_task, tasks, ComputeConfig(max_workers=args.workers, folder=base / "submitit"),
                            results_dir, log=lambda m: print(m, flush=True))

    def score(relaxed: dict[str, dict]) -> list[dict]:
        """One row per plan row: the PBE reaction energy where the candidate and all its phases have
        GPAW energies (the candidate's relaxed energy where ``relaxed`` has one, else its single point)."""
        out = []
        for r in plan.iter_rows(named=True):
            row = {k: r[k] for k in ("gene_key", "formula", "space_group", "n_atoms", "mlip_model", "mlip_e_above_hull",
                                     "fast_model", "fast_e_above_hull")}
            row.update(pbe_decomposition_energy_raw=None, pbe_decomposition_energy=None, reason=r["reason"], phases="")
            if r["phases"]:
                row["phases"] = " + ".join(f"{p['fraction']:.2f} {p['formula']} ({p['name']})"
                                           + (f" +{p['offset']:.3f}" if p.get("offset") else "")
                                           for p in json.loads(r["phases"]))
            if r["gene_key"] in chosen_keys:
                cres = results.get(cand_key[r["gene_key"]])
                rel = relaxed.get(r["gene_key"])
                if cres is not None and rel is not None and rel.get("energy_per_atom") is not None:
                    row["single_point_max_force"] = cres.get("max_force")
                    cres = rel
                phases = json.loads(r["phases"])
                pres = [results.get(f"{p['name'].replace(':', '_')}-{tag}") for p in phases]
                if cres is None or None in pres:
                    row["reason"] = "GPAW not finished (run stopped before this candidate's tasks)"
                elif cres.get("energy_per_atom") is None or any(x.get("energy_per_atom") is None for x in pres):
                    failed = [x.get("reason") for x in [cres, *pres] if x.get("energy_per_atom") is None]
                    row["reason"] = f"GPAW failed: {'; '.join(str(f)[:150] for f in failed)}"
                else:
                    fractions = [p["fraction"] for p in phases]
                    row["pbe_decomposition_energy_raw"] = reaction_energy(
                        cres["energy_per_atom"], phases, [x["energy_per_atom"] for x in pres])
                    corr = [cres.get("mp2020_correction_per_atom")] + [x.get("mp2020_correction_per_atom") for x in pres]
                    if None in corr:
                        row["reason"] = "no MP2020 correction: " + "; ".join(
                            x.get("mp2020_note") or "" for x in [cres, *pres] if x.get("mp2020_correction_per_atom") is None)
                    else:
                        row["pbe_decomposition_energy"] = row["pbe_decomposition_energy_raw"] + decomposition_energy(
                            corr[0], list(zip(fractions, corr[1:])))
                        row["reason"] = ""
                    row["gpaw_core_seconds"] = sum((x.get("cpu_seconds") or x.get("seconds") or 0.0) for x in [cres, *pres])
                    row["candidate_gpaw_mode"] = cres.get("verdict")
                    row["candidate_max_force"] = cres.get("max_force")
            elif r["checkable"]:
                row["reason"] = f"checkable, not chosen (beyond --candidates {args.candidates}, {args.order} order)"
            out.append(row)
        return out

    out = score({})
    relaxed: dict[str, dict] = {}
    if args.relax_inconclusive:
        # a single point at the MLIP geometry is an upper bound: where it calls a candidate unstable
        # and the cell is small enough, relax it (symmetry kept) and decide on the relaxed energy
        inconclusive = [r for r in out if r["pbe_decomposition_energy"] is not None and r["candidate_gpaw_mode"] ==
                        "single_point" and r["pbe_decomposition_energy"] > args.threshold
                        and r["n_atoms"] <= args.relax_max_atoms]
        rtasks, rkey = {}, {}
        for r in inconclusive:
            t, _ = refinement_tasks([(rows_of[r["gene_key"]], "relax")], base / "candidates", engine="gpaw",
                                    settings=gpaw_settings, fmax=0.05, max_steps=60, timeout_s=args.timeout_s,
                                    code="spot_check")
            (k, payload), = t.items()
            rtasks[k], rkey[r["gene_key"]] = {**payload, "kind": "candidate"}, k
        print(f"relaxing {len(rtasks)} candidates whose single point calls them unstable (<= {args.relax_max_atoms} "
              "atoms)", flush=True)
        if args.report_only:
            rres = {k: read_result(results_dir, k) for k in rtasks}
        else:
            rres = run_tasks(spot_check_task, rtasks, ComputeConfig(max_workers=args.workers, folder=base / "submitit"),
                             results_dir, log=lambda m: print(m, flush=True))
        relaxed = {g: rres[k] for g, k in rkey.items() if rres.get(k) is not None}
        out = score(relaxed)

    agreements = {name: spot_check_agreement(out, args.threshold, mlip_column=col)
                  for name, col in ((f"decider ({', '.join(decider)})", "mlip_e_above_hull"),
                                    (f"fast ({', '.join(fast)})", "fast_e_above_hull"))}
    agreements_raw = {name: spot_check_agreement(out, args.threshold, mlip_column=col,
                                                 pbe_column="pbe_decomposition_energy_raw")
                      for name, col in ((f"decider ({', '.join(decider)})", "mlip_e_above_hull"),
                                        (f"fast ({', '.join(fast)})", "fast_e_above_hull"))}
    compared = [r for r in out if r["pbe_decomposition_energy"] is not None]
    md = [f"# GPAW spot check of the MLIP's S.U.N. calls: {key}", "", *lines, "",
          f"GPAW PBE {gpaw_settings}; candidate: {args.candidate_mode} at the decider's geometry"
          + (f", relaxed (symmetry kept) where the single point is above {args.threshold} and the cell has <= "
             f"{args.relax_max_atoms} atoms" if args.relax_inconclusive else "")
          + "; a single point is an upper bound of the candidate's PBE energy (its PBE max force says how far from "
          "a PBE minimum), so 'MLIP stable, PBE not' is an upper bound where the candidate was not relaxed. Phases: "
          "single points at MP's geometry (GPAW's relaxed reference state for `element:` phases; a metastable elemental "
          "stand-in is lowered by its snapshot E_f, shown as +offset). Stable call: E <= "
          f"{args.threshold} eV/atom. dE_PBE = E(candidate) - sum f_i E(phase_i); `+MP2020` adds MP2020's corrections "
          "of each side (the scale MLIP E_hull is on).", "",
          "| candidate | SG | atoms | decider E_hull | fast E_hull | dE_PBE raw | dE_PBE+MP2020 | decider agrees | fast agrees "
          "| candidate PBE | max force eV/A | GPAW s (candidate CPU + phases wall; shared phases in each row) | reaction |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in compared:
        p = r["pbe_decomposition_energy"] <= args.threshold
        agree_d = "yes" if (r["mlip_e_above_hull"] <= args.threshold) == p else "no"
        agree_f = "" if r["fast_e_above_hull"] is None else ("yes" if (r["fast_e_above_hull"] <= args.threshold) == p else "no")
        md.append(f"| {r['formula']} | {r['space_group']} | {r['n_atoms']} | {_fmt(r['mlip_e_above_hull'])} | "
                  f"{_fmt(r['fast_e_above_hull'])} | {_fmt(r['pbe_decomposition_energy_raw'])} | "
                  f"{_fmt(r['pbe_decomposition_energy'])} | {agree_d} | {agree_f} | {r.get('candidate_gpaw_mode')} | "
                  f"{_fmt(r.get('candidate_max_force'), 2)}"
                  f"{' (single point ' + _fmt(r['single_point_max_force'], 2) + ')' if r.get('single_point_max_force') else ''} | "
                  f"{_fmt(r.get('gpaw_core_seconds'), 0)} | {r['phases']} |")
    header = ["", "| model | compared | agree | agreement | both stable | MLIP stable, PBE not | PBE stable, MLIP not "
              "| both unstable | PBE confirms MLIP-stable |", "|---|---|---|---|---|---|---|---|---|"]
    md += ["", f"Agreement at {args.threshold} eV/atom, dE_PBE+MP2020:", *header,
           *[_agreement_line(n, a) for n, a in agreements.items()],
           "", "Same with raw dE_PBE (no MP2020 corrections):", *header,
           *[_agreement_line(n, a) for n, a in agreements_raw.items()],
           "", "Not compared (reason):", ""]
    md += [f"- {r['formula']} (SG {r['space_group']}, {r['n_atoms']} atoms, decider E_hull {_fmt(r['mlip_e_above_hull'])}): "
           f"{r['reason']}" for r in out if r["pbe_decomposition_energy"] is None]
    text = "\n".join(md) + "\n"
    print(text)
    print(json.dumps({"agreement": agreements, "agreement_raw": agreements_raw}, indent=1, default=str)[:4000])
    if args.markdown:
        Path(args.markdown).write_text(text)
    report_dir = home / "benchmarks" / "gpaw_spot_check"
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / f"{key}.json").write_text(json.dumps({"rows": out, "agreement": agreements,
                                                         "agreement_raw": agreements_raw}, indent=1, default=str))


if __name__ == "__main__":
    main()
