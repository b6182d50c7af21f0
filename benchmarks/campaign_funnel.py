"""The paper's generation campaign (`campaign-paper`) through the S.U.N. report, with the funnel
and wall time per stage, through a real Dagster instance (reuses the snapshot/gene table of
--home when present, e.g. after loo_rediscovery.py).

    .venv/bin/python benchmarks/campaign_funnel.py [--home /tmp/wycryst-loo] [--max-genes 20]
        [--samples-per-origin 5000] [--max-epochs N (default: by task)] [--reuse-model] [--refine-max-structures 3]
        [--from-stage filtered_genes]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
KEY = "campaign-paper"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", default="/tmp/wycryst-loo")
    ap.add_argument("--max-genes", type=int, default=20)
    ap.add_argument("--samples-per-origin", type=int, default=5000)
    ap.add_argument("--max-latent-points", type=int, default=1_000_000)
    ap.add_argument("--max-epochs", type=int, default=None, help="PVAE epochs (default: by task, ml.pvae_config)")
    ap.add_argument("--reuse-model", action="store_true")
    ap.add_argument("--max-e-above-hull", type=float, default=0.1)
    ap.add_argument("--phonon-max-structures", type=int, default=60)
    ap.add_argument("--refine-max-structures", type=int, default=3, help="GPAW refinements (0: skip the stage)")
    ap.add_argument("--from-stage", default="pvae_model", help="skip the stages before this one (already materialized)")
    args = ap.parse_args()
    home = Path(args.home)
    os.environ["WYCRYST_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster_home")
    os.environ.pop("MP_API_KEY", None)
    from wycryst_assets.cli import init_dagster_home

    init_dagster_home()

    import dagster as dg

    from wycryst_assets.definitions import defs
    from wycryst_assets.assets.pvae import model_dir
    from wycryst_assets.partitions import sync_target_partitions

    graph = {a.key.to_user_string(): a for a in defs.assets}
    resources = dict(defs.resources)
    stages = [
        ("pvae_model", {"max_epochs": args.max_epochs}),
        ("sampled_genes", {"samples_per_origin": args.samples_per_origin, "max_latent_points": args.max_latent_points}),
        ("filtered_genes", {}),
        ("trial_structures", {"max_genes": args.max_genes}),
        ("relaxed_structures", {}),
        ("rescored_structures", {}),
        ("phonon_verdicts", {"max_e_above_hull": args.max_e_above_hull, "max_structures": args.phonon_max_structures}),
        ("refined_structures", {"max_e_above_hull": args.max_e_above_hull, "max_structures": args.refine_max_structures}),
        ("sun_report", {"max_e_above_hull": args.max_e_above_hull}),
    ]
    times = {}
    with dg.DagsterInstance.get() as instance:
        sync_target_partitions(instance)
        if not (home / "warehouse.duckdb").exists():
            for name in ("mp_snapshot", "wyckoff_genes", "synthesizability_model"):
                assert dg.materialize([graph[name]], instance=instance, resources=resources).success
        metas = {}
        names = [n for n, _ in stages]
        for name, cfg in stages[names.index(args.from_stage):]:
            if name == "pvae_model" and args.reuse_model and (model_dir(KEY) / "model.json").exists():
                continue
            if name == "refined_structures" and args.refine_max_structures <= 0:
                continue
            t = time.perf_counter()
            res = dg.materialize([graph[name]], instance=instance, resources=resources, partition_key=KEY,
                                 run_config={"ops": {name: {"config": cfg}}}, raise_on_error=False)
            times[name] = time.perf_counter() - t
            if not res.success:
                print(f"{name} failed: {res.failure_data_for_node(name)}", flush=True)
                return
            metas[name] = res.asset_materializations_for_node(name)[0].metadata
            print(f"{name}: {times[name]:.0f} s", flush=True)
    m = metas["sun_report"]
    print("\n## funnel (ours; paper: 639 genes -> 102 to DFT -> 8 phonon-stable)\n")
    print(m["funnel"].value.split("\n\n")[0])
    print("\n## the paper's eight\n")
    print(m["paper_comparison"].value)
    print("\n## S.U.N. candidates\n")
    print(m["candidates_table"].value)
    if "refined_structures" in metas:
        print("\n## DFT refinement (GPAW)\n")
        print(metas["refined_structures"]["dft_vs_mlip"].value)
    print("\nwall seconds per stage:", {k: round(v) for k, v in times.items()})


if __name__ == "__main__":
    main()
