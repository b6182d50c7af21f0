"""The energy-model cascade on one partition that already has relaxed_structures: materializes
rescored_structures (the decider re-relaxes the fast model's best trial of each gene in its window)
through the real Dagster instance of --home, then prints, on the same genes, how many are at or
below E_hull 0 / 0.08 / 0.1 by the fast model and by the decider, symmetry kept by the decider, the
mean E_f shift and the cascade's extra cost (core-minutes).

    .venv/bin/python benchmarks/cascade_counts.py --home /tmp/wycryst-loo [--partition campaign-paper]
        [--config '{"rescorer": "sevennet-0"}']
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", required=True)
    ap.add_argument("--partition", default="campaign-paper")
    ap.add_argument("--config", default="", help="JSON config of rescored_structures")
    args = ap.parse_args()
    os.environ["WYCRYST_HOME"] = args.home
    os.environ["DAGSTER_HOME"] = str(Path(args.home) / "dagster_home")
    os.environ.pop("MP_API_KEY", None)
    from wycryst_assets.cli import init_dagster_home

    init_dagster_home()
    import dagster as dg
    import duckdb
    import polars as pl

    from wycryst_assets.definitions import defs
    from wycryst_assets.partitions import sync_target_partitions

    graph = {a.key.to_user_string(): a for a in defs.assets}
    key = args.partition
    start = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        sync_target_partitions(instance)
        res = dg.materialize([graph["rescored_structures"]], instance=instance, resources=dict(defs.resources),
                             partition_key=key, raise_on_error=False,
                             run_config={"ops": {"rescored_structures": {"config": json.loads(args.config or "{}")}}})
    if not res.success:
        raise SystemExit(f"rescored_structures failed: {res.failure_data_for_node('rescored_structures')}")
    meta = res.asset_materializations_for_node("rescored_structures")[0].metadata
    print(f"rescored_structures: {time.perf_counter() - start:.0f} s wall; decided by {meta['decided_by'].value}; "
          f"cascade cost {meta['core_minutes_rescoring'].value} core-minutes")
    with duckdb.connect(str(Path(args.home) / "warehouse.duckdb"), read_only=True) as con:
        df = pl.from_arrow(con.execute("SELECT * FROM rescored_structures WHERE target = ?", [key]).to_arrow_table())
    print("status:", dict(df.group_by("status").len().iter_rows()))
    done = df.filter(pl.col("status") == "rescored")
    if done.is_empty():
        return
    fast, decider = done["fast_relaxer"][0], done["energy_model"][0]
    print(f"on the same {done.height} rescored genes (of {df.height}):")
    for cut in (0.0, 0.08, 0.1):
        f, d = done["fast_e_above_hull"] <= cut, done["e_above_hull"] <= cut
        print(f"  E_hull <= {cut:<4}: {fast} {int(f.sum())}, {decider} {int(d.sum())}, both {int((f & d).sum())}")
    shift = (done["formation_energy_per_atom"] - done["fast_formation_energy_per_atom"]).abs().mean()
    print(f"  symmetry kept by {decider}: {int(done['symmetry_kept'].sum())}/{done.height}; "
          f"mean |E_f({decider}) - E_f({fast})| {1000 * float(shift):.1f} meV/atom")


if __name__ == "__main__":
    main()
