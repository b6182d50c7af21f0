"""Latent sampling throughput end to end, old (reference) vs new (fast) path in one run.

What is timed is the work of the ``sampled_genes`` asset up to the DuckDB write: encode the
task's origins, perturb + decode + merge, canonicalize + dedupe (gene keys, hits, mean predicted
properties), add the partition columns; the DuckDB write (``replace_partition`` into a scratch
warehouse) is timed separately. Both paths run on the same points (same seed), and the script
checks that their tables are identical. Targets: issue 17 asks >= 100,000 latent points/s on the
2-core development machine (quiet); the paper reports ~2,000 genes per CPU-second.

Scenarios (origins and element constraint as the asset chooses them for a registry target):
``CaTiO3-62`` — ground state, training ternaries of stoichiometry ABC3, elements Ca/O/Ti;
``campaign-paper`` — training ternaries made of the campaign's 24 elements, decoded over them.
Noise 1 and 4 x posterior sigma (the asset's default is 4).

Model: by default a PVAE trained here for a few epochs on every ternary gene of the snapshot
(gene table and checkpoint cached under ``--work``; throughput does not depend on how well it is
trained, the number of distinct decoded rows a little). ``--home H`` uses instead a partition's
trained model and warehouse (``$H/artifacts/pvae_model/<target>/model.json``).

    .venv/bin/python benchmarks/sampling_throughput.py [--points 1000000] [--noise 1,4]
        [--scenarios CaTiO3-62,campaign-paper] [--impl reference,fast] [--epochs 4] [--threads N]

Timings depend on the machine's load: the script prints ``uptime`` first and the 1-minute load
next to each figure, and points per CPU-second (all threads) beside the wall-clock rate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED = Path(os.environ.get("WYCRYST_SHARED_DATA", REPO.parent / "shared" / "data"))


def _genes(work: Path, snapshot: Path, processes: int):
    import polars as pl

    from ml.gene_table import build_gene_table

    path = work / "ternary_genes.parquet"
    if path.is_file():
        return pl.read_parquet(path)
    df = pl.read_parquet(snapshot / "materials.parquet").filter(pl.col("nelements") == 3)
    t = time.perf_counter()
    rows, rejected = build_gene_table(df["material_id"].to_list(), df["cif"].to_list(), processes=processes)
    genes = pl.DataFrame(rows, infer_schema_length=None).join(
        df.select("material_id", "formation_energy_per_atom", "band_gap"), on="material_id")
    print(f"gene table: {genes.height} ternary genes, {len(rejected)} rejected, {time.perf_counter() - t:.0f} s")
    work.mkdir(parents=True, exist_ok=True)
    genes.write_parquet(path)
    return genes


def _model(work: Path, genes, epochs: int) -> str:
    from ml.pvae import PVAEConfig
    from ml.training import train_pvae

    stamp = work / "model.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("epochs") == epochs:
        return json.loads(stamp.read_text())["checkpoint"]
    t = time.perf_counter()
    result = train_pvae(genes, PVAEConfig(max_epochs=epochs), work / "model", accelerator="cpu", devices=1, log=None)
    print(f"PVAE: {epochs} epochs in {time.perf_counter() - t:.0f} s, validation "
          f"Wyckoff accuracy {result.metrics['wyckoff_accuracy']:.3f}, "
          f"SG accuracy {result.metrics['space_group_accuracy']:.3f}")
    stamp.write_text(json.dumps({"epochs": epochs, "checkpoint": str(result.checkpoint_path)}))
    return str(result.checkpoint_path)


def _scenario(genes, registry, key: str):
    """(origin genes, how, allowed elements) as the sampled_genes asset chooses them."""
    from pymatgen.core import Composition

    from ml.origins import origin_genes

    target = registry.get(key)
    origins, how = origin_genes(genes, target)
    if target.task == "campaign":
        allowed = tuple(target.elements)
    else:
        allowed = tuple(sorted(str(e) for e in Composition(target.reduced_formula).elements))
    return origins, how, allowed


def _clear_caches() -> None:
    """Formula caches fill during a run; a fresh asset process starts without them."""
    from ml.genes import normalize_formula
    from ml.tensors import _reduced_formula

    _reduced_formula.cache_clear()
    normalize_formula.cache_clear()


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=1_000_000, help="latent points per scenario and noise")
    ap.add_argument("--noise", default="1,4", help="noise scales in posterior sigma, comma-separated")
    ap.add_argument("--scenarios", default="CaTiO3-62,campaign-paper")
    ap.add_argument("--impl", default="reference,fast", help="implementations to time, in this order")
    ap.add_argument("--work", default=str(REPO / ".wycryst" / "bench-sampling"), help="gene table + model cache")
    ap.add_argument("--epochs", type=int, default=4, help="PVAE epochs when the model is trained here")
    ap.add_argument("--home", help="use this WYCRYST_HOME's partition models and warehouse instead")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's, as in the asset)")
    ap.add_argument("--batch-size", type=int, default=32768)
    args = ap.parse_args()

    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    import duckdb
    import numpy as np
    import polars as pl
    import torch

    from ml.decoded_genes import setting_tables
    from ml.sampling import SamplingConfig, sample_genes
    from ml.targets import load_registry
    from ml.tensors import encode_table
    from ml.training import load_pvae
    from ml.wyckoff import multiplicity_matrix
    from wycryst_assets.warehouse import replace_partition

    if args.threads:
        torch.set_num_threads(args.threads)
    registry = load_registry(os.environ.get("WYCRYST_TARGETS", SHARED / "targets.json"))
    if not args.home:
        genes = _genes(Path(args.work), Path(os.environ.get("WYCRYST_SNAPSHOT", SHARED / "mp_snapshot")),
                       processes=os.cpu_count() or 1)
        checkpoint = _model(Path(args.work), genes, args.epochs)
    multiplicity_matrix(), setting_tables()  # per-process tables (PyXtal groups), built once
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {os.cpu_count()} CPUs; "
          f"batch {args.batch_size}; {args.points:,} latent points per run")
    noises = [float(x) for x in args.noise.split(",")]
    impls = args.impl.split(",")
    summary = []
    for key in args.scenarios.split(","):
        if args.home:
            home = Path(args.home)
            manifest = json.loads((home / "artifacts/pvae_model" / key / "model.json").read_text())
            con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
            genes = pl.from_arrow(con.execute("SELECT * FROM wyckoff_genes WHERE n_elements = 3").fetch_arrow_table())
            con.close()
            genes = genes.filter(~pl.col("material_id").is_in(manifest["excluded_material_ids"]))
            checkpoint = manifest["checkpoint"]
        origins, how, allowed = _scenario(genes, registry, key)
        module = load_pvae(checkpoint)
        per_origin = max(1, min(5000, args.points // origins.height))
        print(f"\n{key}: {origins.height} origins ({how}) x {per_origin} = {origins.height * per_origin:,} points, "
              f"elements {','.join(allowed)}")
        for impl in impls:  # warm-up: first torch calls, lazily built tables
            sample_genes(module, encode_table(origins.head(2)),
                         SamplingConfig(200, allowed_elements=allowed, implementation=impl))
        for noise in noises:
            tables = {}
            for impl in impls:
                _clear_caches()
                cfg = SamplingConfig(per_origin, noise, 0, args.batch_size, "posterior_sigma",
                                     allowed_elements=allowed, implementation=impl)
                wall, cpu = time.perf_counter(), time.process_time()
                table, stats = sample_genes(module, encode_table(origins), cfg)
                table = table.with_columns(pl.lit(key).alias("target"), pl.lit("bench").alias("database_version"))
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                tables[impl] = table
                n = stats["latent_points"]
                print(f"  {noise:g} sigma {impl:9s}: {n / wall:10,.0f} points/s end to end ({wall:6.2f} s; "
                      f"{n / cpu:8,.0f} points per CPU-s; decode {stats['decode_seconds']:.2f} s, "
                      f"canonicalize {stats['canonicalize_seconds']:.2f} s) | {stats['distinct_decoded_rows']:,} "
                      f"distinct rows -> {stats['genes']:,} genes | load {os.getloadavg()[0]:.1f}", flush=True)
                if impl == "fast":
                    print(f"      rows without atoms {stats['decoded_rows_without_atoms']} "
                          f"({stats['decoded_points_without_atoms']} points), with a letter outside the space group "
                          f"{stats['decoded_rows_letter_outside_space_group']} "
                          f"({stats['decoded_points_letter_outside_space_group']} points); reference-packed batches "
                          f"{stats['fallback_batches']}")
                summary.append((key, noise, impl, n / wall, n / cpu))
            last = tables[impls[-1]]
            with tempfile.TemporaryDirectory() as tmp:
                con = duckdb.connect(str(Path(tmp) / "warehouse.duckdb"))
                t = time.perf_counter()
                replace_partition(con, "sampled_genes", key, last)
                write = time.perf_counter() - t
                con.close()
            print(f"  DuckDB write of {last.height:,} genes: {write:.2f} s (not in the figures above)")
            if {"reference", "fast"} <= tables.keys():
                a, b = tables["reference"], tables["fast"]
                exact = ["formula", "space_group", "wyckoff", "gene_key", "hits", "n_configurations", "configurations"]
                same = a.select(exact).equals(b.select(exact))
                dev = (max(float(np.abs(a[c].to_numpy() - b[c].to_numpy()).max(initial=0.0))
                           for c in ("predicted_formation_energy", "predicted_band_gap")) if same else float("nan"))
                print(f"  reference vs fast: tables {'IDENTICAL' if same else 'DIFFERENT'} "
                      f"(genes, keys, hits, configurations); largest mean-property difference {dev:.1e}")
    print("\nscenario          noise  " + "  ".join(f"{i:>12s} pts/s" for i in impls) + "   speed-up")
    for key in args.scenarios.split(","):
        for noise in noises:
            rates = {i: r for k, nz, i, r, _ in summary if k == key and nz == noise}
            ratio = f"{rates['fast'] / rates['reference']:8.1f}x" if {"reference", "fast"} <= rates.keys() else ""
            print(f"{key:16s} {noise:5g}s  " + "  ".join(f"{rates[i]:18,.0f}" for i in impls) + f"   {ratio}")
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
