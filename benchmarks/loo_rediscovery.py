"""Leave-one-out rediscovery on the published partitions, through a real Dagster instance.

For each target: pvae_model (trained with the target left out) -> sampled_genes -> filtered_genes;
prints unique genes, passed genes, whether the held-out gene (or an equivalent configuration) was
sampled / passed, its rank by hits, and the reasons when it failed. Models already trained in
WYCRYST_HOME are reused with --reuse-models.

    .venv/bin/python benchmarks/loo_rediscovery.py [--home DIR] [--targets K1,K2] [--reuse-models]
        [--samples-per-origin 5000] [--noise-scale 4.0] [--noise-unit posterior_sigma] [--min-synthesizability 0.1]
        [--element-constraint task|none] [--origin-scope stoichiometry|formula]
        [--structures --max-genes 30] [--skip-sampling] [--refine --refine-max-structures 3 --refine-mode auto]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PUBLISHED = ["CaTiO3-62", "BaTiO3-160", "CaTiO3-221", "SrTiO3-221", "CsPbI3-221", "CuInS2-122"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", default="/tmp/wycryst-loo")
    ap.add_argument("--targets", default=",".join(PUBLISHED))
    ap.add_argument("--reuse-models", action="store_true")
    ap.add_argument("--samples-per-origin", type=int, default=5000)
    ap.add_argument("--noise-scale", type=float, default=4.0)
    ap.add_argument("--noise-unit", default="posterior_sigma")
    ap.add_argument("--min-synthesizability", type=float, default=0.1)
    ap.add_argument("--element-constraint", default="task", choices=["task", "none"])
    ap.add_argument("--origin-scope", default="stoichiometry", choices=["stoichiometry", "formula"])
    ap.add_argument("--max-latent-points", type=int, default=2_000_000)
    ap.add_argument("--max-epochs", type=int, default=30)
    ap.add_argument("--structures", action="store_true",
                    help="also trial_structures -> relaxed_structures (fast) -> rescored_structures (decider) -> loo_report")
    ap.add_argument("--max-genes", type=int, default=30, help="trial_structures: genes per partition")
    ap.add_argument("--skip-sampling", action="store_true", help="keep the stored sampled_genes (filters rerun)")
    ap.add_argument("--refine", action="store_true", help="also refined_structures (GPAW) before loo_report")
    ap.add_argument("--refine-max-structures", type=int, default=3)
    ap.add_argument("--refine-mode", default="auto", choices=["auto", "relax", "single_point"])
    args = ap.parse_args()
    home = Path(args.home)
    os.environ["WYCRYST_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster_home")
    os.environ.pop("MP_API_KEY", None)
    from wycryst_assets.cli import init_dagster_home

    init_dagster_home()

    import dagster as dg
    import duckdb

    from wycryst_assets.assets.genes import wyckoff_genes
    from wycryst_assets.assets.pvae import TrainingDevice, model_dir, pvae_model
    from wycryst_assets.assets.sampling import filtered_genes, sampled_genes, synthesizability_model
    from wycryst_assets.assets.snapshot import mp_snapshot
    from wycryst_assets.partitions import sync_target_partitions
    from wycryst_assets.assets.refinement import refined_structures
    from wycryst_assets.assets.report import loo_report
    from wycryst_assets.assets.rescoring import rescored_structures
    from wycryst_assets.assets.structures import relaxed_structures, trial_structures
    from wycryst_assets.resources import compute_resource, warehouse_resource

    resources = {"warehouse": warehouse_resource(), "training_device": TrainingDevice(), "compute": compute_resource()}
    rows = []
    with dg.DagsterInstance.get() as instance:
        sync_target_partitions(instance)

        def run(assets, partition=None, config=None):
            t = time.perf_counter()
            res = dg.materialize(assets, instance=instance, resources=resources, partition_key=partition,
                                 run_config={"ops": config or {}}, selection=assets, raise_on_error=False)
            return res, time.perf_counter() - t

        if not (home / "warehouse.duckdb").exists() or not args.reuse_models:
            res, s = run([mp_snapshot, wyckoff_genes])
            print(f"snapshot + genes: {s:.0f} s", flush=True)
            res, s = run([synthesizability_model])
            print(f"synthesizability model: {s:.0f} s", flush=True)
        for key in args.targets.split(","):
            train_s = 0.0
            if not (args.reuse_models and (model_dir(key) / "model.json").exists()):
                res, train_s = run([pvae_model], key, {"pvae_model": {"config": {"max_epochs": args.max_epochs}}})
                m = res.asset_materializations_for_node("pvae_model")[0].metadata
                print(f"{key}: trained in {train_s:.0f} s; element {m['element_accuracy'].value:.3f} "
                      f"wyckoff {m['wyckoff_accuracy'].value:.3f} sg {m['space_group_accuracy'].value:.3f} "
                      f"ef_mae {m['ef_mae'].value:.3f}; excluded {m['excluded_material_ids'].value}", flush=True)
            sm, sample_s = {}, 0.0
            if not args.skip_sampling:
                res, sample_s = run([sampled_genes], key, {"sampled_genes": {"config": {
                    "samples_per_origin": args.samples_per_origin, "noise_scale": args.noise_scale,
                    "noise_unit": args.noise_unit, "element_constraint": args.element_constraint,
                    "origin_scope": args.origin_scope, "max_latent_points": args.max_latent_points}}})
                sm = res.asset_materializations_for_node("sampled_genes")[0].metadata
            res, filter_s = run([filtered_genes], key, {"filtered_genes": {"config": {
                "min_synthesizability": args.min_synthesizability}}})
            fm = res.asset_materializations_for_node("filtered_genes")[0].metadata
            row = {
                "target": key, "origins": sm["origins"].value.split()[0] if sm else "-",
                "points/s": round(sm["points_per_second"].value) if sm else "-", "unique": fm["sampled"].value,
                "passed": fm["passed"].value, "sampled": fm["held_out_gene_sampled"].value,
                "target passed": fm["held_out_gene_passed"].value, "rank": fm["held_out_gene_rank_by_hits"].value,
                "reasons": fm["held_out_gene_reasons"].value, "train s": round(train_s),
                "sample s": round(sample_s), "filter s": round(filter_s),
            }
            if args.structures:
                res, trial_s = run([trial_structures], key, {"trial_structures": {"config": {"max_genes": args.max_genes}}})
                tm = res.asset_materializations_for_node("trial_structures")[0].metadata
                res, relax_s = run([relaxed_structures], key)
                rm = res.asset_materializations_for_node("relaxed_structures")[0].metadata
                res, rescore_s = run([rescored_structures], key)
                refine_s = 0.0
                if args.refine:
                    res, refine_s = run([refined_structures], key, {"refined_structures": {"config": {
                        "max_structures": args.refine_max_structures, "mode": args.refine_mode}}})
                    print(res.asset_materializations_for_node("refined_structures")[0].metadata["dft_vs_mlip"].value,
                          flush=True)
                res, _ = run([loo_report], key)
                lm = res.asset_materializations_for_node("loo_report")[0].metadata
                part = lm["this_partition"].value
                row.update({
                    "trials": tm["trials_ok"].value, "s/trial": tm["seconds_per_trial"].value,
                    "relaxed": rm["converged"].value, "sym kept": rm["symmetry_kept_rate"].value,
                    "core-s/relax": rm["core_seconds_per_relaxation"].value, "relax s": round(relax_s),
                    "lattice err": round(part.get("lattice_max_error", float("nan")), 4),
                    "GS rank": part.get("ground_state_rank"), "rank by": part.get("ground_state_rank_source"),
                    "GS fast": part.get("ground_state_rank_fast"), "margin fast meV": part.get("ground_state_margin_mev_fast"),
                    "GS decider": part.get("ground_state_rank_decider"),
                    "margin decider meV": part.get("ground_state_margin_mev_decider"), "rescore s": round(rescore_s),
                    "lattice by": part.get("lattice_source"), "refine s": round(refine_s), "recovered": lm["recovered"].value,
                    "why not": lm["why_not"].value,
                })
            rows.append(row)
            print(row, flush=True)
    cols = list(rows[0])
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    sampled_n = sum(bool(r["sampled"]) for r in rows)
    passed_n = sum(bool(r["target passed"]) for r in rows)
    print(f"\nheld-out gene sampled in {sampled_n}/{len(rows)}, sampled and passed in {passed_n}/{len(rows)}")
    if args.structures:
        print(f"recovered (relaxed, SG kept, lattice within 3 %, GS rank 1): "
              f"{sum(bool(r['recovered']) for r in rows)}/{len(rows)}")


if __name__ == "__main__":
    main()
