"""PVAE epoch time with two trainings at once: torch's default threads (before the per-run CPU
budget) vs the budget (cores // 2 threads each, wycryst_assets.cpu), next to one training alone.

    .venv/bin/python benchmarks/concurrent_training.py [--genes GENES.parquet] [--epochs 3] [--max-genes N]

Without --genes the gene table is built from the snapshot first (``--save-genes PATH`` keeps it;
pvae_benchmark.py writes the same file). Each training is its own process, as two Dagster runs are.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _train(genes_path: str, epochs: int, threads: int | None, max_genes: int | None, barrier, queue) -> None:
    import polars as pl
    import torch

    from ml.pvae_config import PVAEConfig
    from ml.training import train_pvae

    if threads:
        torch.set_num_threads(threads)
    genes = pl.read_parquet(genes_path)
    if max_genes:
        ternary = genes.filter(pl.col("n_elements") == 3)
        genes = ternary.sample(min(max_genes, ternary.height), seed=0)
    barrier.wait()
    with tempfile.TemporaryDirectory() as tmp:
        result = train_pvae(genes, PVAEConfig(max_epochs=epochs), tmp, accelerator="cpu", devices=1, log=None)
    queue.put(([h["seconds"] for h in result.history], torch.get_num_threads()))


def run(genes_path: str, epochs: int, n: int, threads: int | None, max_genes: int | None = None) -> list:
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_train, args=(genes_path, epochs, threads, max_genes, barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    out = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genes", help="gene table parquet (pvae_benchmark.py --save-genes)")
    ap.add_argument("--save-genes", help="where to keep the gene table built here")
    ap.add_argument("--snapshot", default=str(REPO.parent / "shared" / "data" / "mp_snapshot"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-genes", type=int, help="train on a random subset of this many ternary genes")
    args = ap.parse_args()
    from wycryst_assets.cpu import usable_cores

    genes_path = args.genes
    if not genes_path:
        from benchmarks.pvae_benchmark import build_genes

        genes_path = args.save_genes or str(Path(tempfile.mkdtemp()) / "genes.parquet")
        build_genes(Path(args.snapshot), processes=usable_cores()).write_parquet(genes_path)
    cores = usable_cores()
    budget = max(1, cores // 2)
    print(f"{cores} usable cores; load {os.getloadavg()}; {args.epochs} epochs per training on "
          f"{args.max_genes or 'all'} ternary genes "
          "(epoch 1 included; median over epochs and trainings)")
    for label, n, threads in (("one training alone, torch default threads", 1, None),
                              ("two at once, torch default threads (before)", 2, None),
                              (f"two at once, budget {budget} thread(s) each (after)", 2, budget)):
        results = run(genes_path, args.epochs, n, threads, args.max_genes)
        seconds = [s for epochs, _ in results for s in epochs]
        used = sorted({t for _, t in results})
        print(f"{label:52s} {statistics.median(seconds):6.2f} s/epoch  (torch threads {used}, "
              f"all epochs {', '.join(f'{s:.1f}' for s in seconds)})")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
