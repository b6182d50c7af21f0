"""Which origins the relaxed genes came from, and how often each kind gave S.U.N.

Re-samples every origin of the partition alone (same PVAE, noise scale and decoded elements as
``sampled_genes``; seed = the origin's index), so that each relaxed gene of the partition's last
yield run gets the origins that decode to it; then prints S.U.N. (E_hull <= 0.08 by the decider,
novel) among the relaxed genes decoded from at least one on-hull origin vs only from metastable
ones. This is the measurement behind the ground-state option of ``sampled_genes``
(``max_origin_e_above_hull``, ``ml.origins.GROUND_STATES``; benchmarks/results/generator_yield_campaign.md).

    .venv/bin/python benchmarks/origin_provenance.py --home H --partition campaign-heldout-0 [--per-origin 1000]
        [--targets H/targets-heldout-0.json]

Origins are every training ternary of the task (no E_hull limit), so genes from both kinds are
traced. The home's warehouse is copied first (a running benchmark may hold it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", required=True)
    ap.add_argument("--partition", required=True)
    ap.add_argument("--per-origin", type=int, default=1000)
    ap.add_argument("--noise-scale", type=float, default=4.0)
    ap.add_argument("--targets", default=None, help="registry file (a held-out campaign's, in its home)")
    args = ap.parse_args()
    os.environ["WYCRYST_HOME"] = args.home
    if args.targets:
        os.environ["WYCRYST_TARGETS"] = args.targets

    import duckdb
    import polars as pl

    from dft.generator_report import TABLES, best_relaxed_with_facts
    from dft.rescoring import decided_best
    from ml.origins import GROUND_STATES, allowed_elements, origin_genes
    from ml.sampling import SamplingConfig, sample_genes
    from ml.tensors import encode_table
    from ml.training import load_pvae
    from wycryst_assets.assets.pvae import model_dir
    from wycryst_assets.partitions import current_registry
    from wycryst_assets.warehouse import read_partition

    key = args.partition
    target = current_registry().get(key)
    manifest = json.loads((model_dir(key) / "model.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "warehouse.duckdb"
        shutil.copy(Path(args.home) / "warehouse.duckdb", copy)
        with duckdb.connect(str(copy), read_only=True) as conn:
            train = conn.execute("SELECT * FROM wyckoff_genes WHERE n_elements = 3").pl()
            tables = {t: read_partition(conn, t, key) for t in TABLES}
    train = train.filter(~pl.col("material_id").is_in(manifest["excluded_material_ids"]))
    origins, how = origin_genes(train, target)
    on_hull = set(origin_genes(train, target, max_e_above_hull=GROUND_STATES)[0]["material_id"].to_list())
    module = load_pvae(manifest["checkpoint"])
    allowed = allowed_elements(target)
    print(f"{key}: {origins.height} origins ({how}) x {args.per_origin}", flush=True)
    parts = []
    for i in range(origins.height):
        row = origins[i]
        table, _ = sample_genes(module, encode_table(row), SamplingConfig(
            args.per_origin, args.noise_scale, i, 32768, "posterior_sigma", allowed_elements=allowed))
        parts.append(table.select("gene_key").with_columns(
            pl.lit(row["material_id"][0] in on_hull).alias("origin_on_hull")))
    prov = pl.concat(parts).group_by("gene_key").agg(pl.col("origin_on_hull").any().alias("from_ground_state"))

    best = best_relaxed_with_facts(decided_best(tables["relaxed_structures"], tables["rescored_structures"]))
    e = pl.col("e_above_hull")
    rows = (tables["trial_structures"].select("gene_key").unique()
            .join(best.select("gene_key", "e_above_hull", "is_novel"), on="gene_key", how="left")
            .join(prov, on="gene_key", how="left")
            .with_columns((e.is_not_null() & (e <= 0.08) & pl.col("is_novel").fill_null(False)).alias("sun")))
    for label, cond in (("from >= 1 on-hull origin", pl.col("from_ground_state") == True),  # noqa: E712
                        ("only from metastable origins", pl.col("from_ground_state") == False),  # noqa: E712
                        ("not decoded again", pl.col("from_ground_state").is_null())):
        part = rows.filter(cond)
        print(f"{label}: S.U.N. {int(part['sun'].sum())} of {part.height}")


if __name__ == "__main__":
    main()
