"""The energy-model cascade on one partition that already has relaxed_structures: materializes
rescored_structures (the decider re-relaxes the fast model's best trial of each gene in its window)
through the real Dagster instance of --home, then prints, on the same genes, how many are at or
below E_hull 0 / 0.08 / 0.1 by the fast model and by the decider, symmetry kept by the decider, the
mean E_f shift and the cascade's extra cost (core-minutes).

    .venv/bin/python benchmarks/cascade_counts.py --home /tmp/wycryst-loo [--partition campaign-paper]
        [--config '{"rescorer": "sevennet-0"}'] [--skip-rescore]
        [--phonons [--phonon-config '{"max_e_above_hull": 0.1, "max_structures": 100}']]

``--phonons``: then materializes ``phonon_verdicts`` (the decider's structures, E_hull by the
decider, the default phonon model unless the config names another) and compares it with the
partition's phonon verdicts stored before (e.g. the fast model's pipeline: CHGNet E_hull, CHGNet
phonons): stable / unstable counts by each, and agreement on the genes both computed. The stored
rows are kept in ``<home>/benchmarks/phonon_verdicts_before_<partition>.parquet``.
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
    ap.add_argument("--skip-rescore", action="store_true", help="use the stored rescored_structures")
    ap.add_argument("--phonons", action="store_true", help="also phonon_verdicts, compared with the stored ones")
    ap.add_argument("--phonon-config", default='{"max_e_above_hull": 0.1, "max_structures": 100}',
                    help="JSON config of phonon_verdicts")
    args = ap.parse_args()
    os.environ["WYCRYST_HOME"] = args.home
    os.environ["DAGSTER_HOME"] = str(Path(args.home) / "dagster_home")
    os.environ.pop("MP_API_KEY", None)
    from wycryst_assets.cli import init_dagster_home

    init_dagster_home()
    import dagster as dg

    from wycryst_assets.definitions import defs
    from wycryst_assets.partitions import sync_target_partitions

    graph = {a.key.to_user_string(): a for a in defs.assets}
    key = args.partition
    start = time.perf_counter()
    if not args.skip_rescore:
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
    _counts(args.home, key)
    if args.phonons:
        _phonons(args, graph, key)


def _counts(home: str, key: str) -> None:
    import duckdb
    import polars as pl

    with duckdb.connect(str(Path(home) / "warehouse.duckdb"), read_only=True) as con:
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



def _phonon_rows(home: str, key: str):
    import duckdb

    from wycryst_assets.warehouse import read_partition

    with duckdb.connect(str(Path(home) / "warehouse.duckdb"), read_only=True) as con:
        return read_partition(con, "phonon_verdicts", key)


def _verdict_line(df, label: str) -> str:
    import polars as pl

    counts = dict(df.group_by("verdict").len().iter_rows())
    computed = df.filter(pl.col("verdict") != "skipped").height
    return (f"  {label}: computed {computed}, stable {counts.get('stable', 0)}, unstable {counts.get('unstable', 0)}, "
            f"failed {counts.get('failed', 0)}, skipped {counts.get('skipped', 0)}")


def _phonons(args, graph, key: str) -> None:
    import dagster as dg
    import polars as pl

    from wycryst_assets.definitions import defs

    before = _phonon_rows(args.home, key)
    if before is not None and before.height:
        out = Path(args.home) / "benchmarks" / f"phonon_verdicts_before_{key}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        if not out.exists():
            before.write_parquet(out)
        before = pl.read_parquet(out)
    config = json.loads(args.phonon_config or "{}")
    start = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        res = dg.materialize([graph["phonon_verdicts"]], instance=instance, resources=dict(defs.resources),
                             partition_key=key, raise_on_error=False,
                             run_config={"ops": {"phonon_verdicts": {"config": config}}})
    if not res.success:
        raise SystemExit(f"phonon_verdicts failed: {res.failure_data_for_node('phonon_verdicts')}")
    after = _phonon_rows(args.home, key)
    model = after["phonon_model"].drop_nulls()
    print(f"\nphonon_verdicts ({json.dumps(config)}): {time.perf_counter() - start:.0f} s wall, "
          f"{float(after['cpu_seconds'].fill_null(0).sum()) / 60:.1f} core-minutes in phonopy tasks")
    print(_verdict_line(after, f"now ({model[0] if model.len() else '?'} on the decider's structures)"))
    if before is None or before.is_empty():
        return
    old_model = before["phonon_model"].drop_nulls() if "phonon_model" in before.columns else None
    print(_verdict_line(before, f"stored before ({old_model[0] if old_model is not None and old_model.len() else 'model not recorded'})"))
    done = ["stable", "unstable"]
    both = (before.filter(pl.col("verdict").is_in(done)).select("gene_key", pl.col("verdict").alias("before"))
            .join(after.filter(pl.col("verdict").is_in(done)).select("gene_key", "formula", "space_group",
                                                                        pl.col("verdict").alias("now")), on="gene_key"))
    agree = int((both["before"] == both["now"]).sum())
    print(f"  genes computed both times: {both.height}; same verdict {agree}"
          + (f" ({100 * agree / both.height:.0f} %)" if both.height else ""))
    for r in both.filter(pl.col("before") != pl.col("now")).iter_rows(named=True):
        print(f"    {r['formula']} SG {r['space_group']}: before {r['before']}, now {r['now']}")
    stable = after.filter(pl.col("verdict") == "stable").select("formula", "space_group", "min_frequency_thz")
    print("  stable now:", ", ".join(f"{f} {sg}" for f, sg, _ in stable.iter_rows()) or "none")


if __name__ == "__main__":
    main()
