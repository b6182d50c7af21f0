"""PVAE on all ternary genes of the snapshot: reconstruction accuracy, E_f MAE, speed, memory.

Trains ``ml.training.train_pvae`` with the default ``PVAEConfig`` (or overrides) on the CPU with a
fixed number of torch threads and prints, next to the paper's Table 2, the validation element /
Wyckoff / space-group accuracy, the property head's E_f MAE, seconds per epoch and peak memory.

    .venv/bin/python benchmarks/pvae_benchmark.py [GENES.parquet] [--threads 2] [--epochs N]
        [--set key=value ...]

Without GENES.parquet the gene table is built from the snapshot first (~1.5 min on 2 cores;
``--save-genes PATH`` keeps it for the next run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import warnings
from dataclasses import fields
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._memory import TreePeakRSS  # noqa: E402

PAPER = {"element_slot_accuracy": 0.999, "wyckoff_accuracy": 0.926, "space_group_accuracy": 0.918}


def build_genes(snapshot: Path, processes: int) -> pl.DataFrame:
    from ml.gene_table import build_gene_table

    df = pl.read_parquet(snapshot / "materials.parquet")
    rows, rejected = build_gene_table(df["material_id"].to_list(), df["cif"].to_list(), processes=processes)
    print(f"gene table: {len(rows)} genes, {len(rejected)} rejected")
    return pl.DataFrame(rows, infer_schema_length=None).join(
        df.select("material_id", "formation_energy_per_atom", "band_gap", "energy_above_hull", "theoretical"),
        on="material_id")


def parse_overrides(pairs: list[str]) -> dict:
    from ml.pvae import PVAEConfig

    types = {f.name: f.type for f in fields(PVAEConfig)}
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in types:
            raise SystemExit(f"unknown PVAEConfig field {key!r}")
        out[key] = json.loads(value) if value[:1] in "[{0123456789.-" or value in ("true", "false") else value
    return out


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("genes", nargs="?", help="gene table parquet with properties (built when omitted)")
    ap.add_argument("--snapshot", default=os.environ.get(
        "WYCRYST_SNAPSHOT", str(Path(os.environ.get("WYCRYST_SHARED_DATA", REPO.parent / "shared" / "data"))
                                / "mp_snapshot")))
    ap.add_argument("--save-genes", help="write the built gene table here")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--epochs", type=int, help="override PVAEConfig.max_epochs")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override PVAEConfig fields")
    args = ap.parse_args()

    import torch

    from ml.pvae import PVAEConfig
    from ml.training import train_pvae

    torch.set_num_threads(args.threads)
    if args.genes:
        genes = pl.read_parquet(args.genes)
    else:
        genes = build_genes(Path(args.snapshot), processes=args.threads)
        if args.save_genes:
            genes.write_parquet(args.save_genes)
    overrides = parse_overrides(args.set)
    if args.epochs:
        overrides["max_epochs"] = args.epochs
    config = PVAEConfig(**{**PVAEConfig().to_dict(), **overrides})
    ternaries = genes.filter(pl.col("n_elements") == 3).height
    print(f"{ternaries} ternary genes; torch threads {torch.get_num_threads()}; config {config.to_dict()}")

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, TreePeakRSS() as peak:
        result = train_pvae(genes, config, tmp, accelerator="cpu", devices=1,
                            log=lambda line: print(line, flush=True))
    total = time.perf_counter() - start
    m = result.metrics
    max_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    print("\nvalidation (20 % of ternaries, reconstruction from z_mean)   ours      paper")
    print(f"  element accuracy, per slot                              {m['element_slot_accuracy']:7.2%}   "
          f"{PAPER['element_slot_accuracy']:7.1%}")
    print(f"  element accuracy, all 3 slots right                     {m['element_accuracy']:7.2%}")
    print(f"  Wyckoff accuracy (all letter counts of all slots)       {m['wyckoff_accuracy']:7.2%}   "
          f"{PAPER['wyckoff_accuracy']:7.1%}")
    print(f"  space-group accuracy                                    {m['space_group_accuracy']:7.2%}   "
          f"{PAPER['space_group_accuracy']:7.1%}")
    print(f"  E_f MAE of the property head (eV/atom)                  {m['ef_mae']:7.4f}")
    print(f"  E_f R^2                                                 {m['ef_r2']:7.4f}")
    print(f"  band-gap MAE where known (eV)                           {m['gap_mae']:7.4f}")
    print(f"speed: {m['epochs']} epochs, {m['epoch_seconds']:.2f} s/epoch wall (train + validation), "
          f"{m['epoch_cpu_seconds']:.2f} CPU s/epoch, fastest epoch {min(h['seconds'] for h in result.history):.2f} s; "
          f"{total:.0f} s total incl. final evaluation; {m['n_train']} train / {m['n_val']} validation genes")
    print(f"memory: peak RSS {peak.gib:.2f} GiB (sampled), ru_maxrss {max_rss_gib:.2f} GiB")


if __name__ == "__main__":
    main()
