"""Synthesizability model on the full gene table: 5-fold ROC AUC and training time.

Builds the gene table of the offline MP snapshot (or reads one already built, ``--genes``),
trains :func:`ml.synthesizability.train_synthesizability` on it and prints the mode (PU on the
offline snapshot: ICSD-known vs unlabeled), the cross-validated ROC AUC (per fold, mean, pooled),
the recall of known rows at score 0.5, the counts and the training seconds.

    .venv/bin/python benchmarks/synthesizability_benchmark.py [--genes /tmp/wycryst_genes.parquet]
        [--processes 2] [--seed 0] [--n-jobs 2] [--save model.joblib]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ml.gene_table import build_gene_table  # noqa: E402
from ml.synthesizability import train_synthesizability  # noqa: E402


def shared_data() -> Path:
    return Path(os.environ.get("WYCRYST_SHARED_DATA", REPO.parent / "shared" / "data"))


def gene_table(path: str | None, processes: int) -> pl.DataFrame:
    """Gene rows joined with the snapshot's labels; read from ``path`` when it has them."""
    if path and Path(path).is_file():
        genes = pl.read_parquet(path)
        if "theoretical" in genes.columns:
            print(f"gene table: {path} ({genes.height} rows)")
            return genes
    snapshot = pl.read_parquet(shared_data() / "mp_snapshot" / "materials.parquet")
    t = time.perf_counter()
    rows, rejected = build_gene_table(snapshot["material_id"].to_list(), snapshot["cif"].to_list(),
                                      processes=processes)
    print(f"gene table built: {len(rows)} genes, {len(rejected)} rejected, {time.perf_counter() - t:.1f} s")
    genes = pl.DataFrame(rows, infer_schema_length=None).join(
        snapshot.select("material_id", "theoretical"), on="material_id")
    if path:
        genes.write_parquet(path)
    return genes


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--genes", default=None, help="gene table parquet to read (or to write after building)")
    ap.add_argument("--processes", type=int, default=min(os.cpu_count() or 1, 8))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-jobs", type=int, default=None)
    ap.add_argument("--save", default=None)
    args = ap.parse_args()

    genes = gene_table(args.genes, args.processes)
    labels = genes["theoretical"].value_counts().sort("theoretical")
    print("theoretical flags:", dict(zip(labels["theoretical"].to_list(), labels["count"].to_list())))
    t = time.perf_counter()
    model = train_synthesizability(genes, seed=args.seed, n_jobs=args.n_jobs)
    seconds = time.perf_counter() - t
    m = model.metrics
    print(f"cores: {os.cpu_count()}, n_jobs: {m['n_jobs']}")
    print(f"mode: {m['mode']} ({m['auc_meaning']})")
    print(f"rows: {m['n_known']} known, {m['n_other']} {m['other_class']}, "
          f"{m['n_rows_without_features']} without features (invalid or > 3 elements)")
    print(f"{m['cv_folds']}-fold ROC AUC: {m['cv_roc_auc']:.4f} +- {m['cv_roc_auc_std']:.4f} "
          f"(folds {', '.join(f'{a:.4f}' for a in m['cv_roc_auc_folds'])}; pooled {m['cv_roc_auc_pooled']:.4f})")
    print(f"recall of known rows at score >= {m['threshold']}: {m['cv_recall_known_at_threshold']:.3f}; "
          f"{m['other_class']} rows at score >= {m['threshold']}: {m['cv_other_fraction_at_threshold']:.3f}")
    print(f"training seconds: {seconds:.1f} (features {m['feature_seconds']:.1f}, "
          f"{m['cv_folds'] * m['cv_bags'] + m['n_bags']} fits {m['fit_seconds']:.1f})")
    if args.save:
        print("saved:", model.save(args.save))
    print(json.dumps({k: v for k, v in m.items() if not isinstance(v, list)}, default=str))


if __name__ == "__main__":
    main()
