"""Gene table build on the MP snapshot: the platform vs a plain per-row pymatgen loop.

Prints, in one run on the same machine:
  * plain loop (parse CIF -> SpacegroupAnalyzer(0.1) -> conventional standard structure ->
    symmetrized structure -> gene, one process) on a random sample of rows;
  * the platform's builder (gemmi CIF + spglib dataset + PyXtal tables, all cores) on the same
    sample and on the whole snapshot;
  * the whole materialization end to end (`dagster asset materialize --select
    mp_snapshot,wyckoff_genes` in a fresh DAGSTER_HOME), with peak memory of the process tree;
  * gene agreement between the two paths on the sample, counts, rejections by reason.

    .venv/bin/python benchmarks/gene_table_benchmark.py [--plain-rows 1500] [--skip-dagster]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._memory import TreePeakRSS  # noqa: E402
from ml.gene_table import build_gene_table  # noqa: E402
from ml.genes import gene_key  # noqa: E402


def plain_gene(cif: str):
    from pymatgen.core import Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    s = Structure.from_str(cif, fmt="cif")
    conv = SpacegroupAnalyzer(s, symprec=0.1).get_conventional_standard_structure()
    sga = SpacegroupAnalyzer(conv, symprec=0.1)
    sym = sga.get_symmetrized_structure()
    w: dict = {}
    for sites, label in zip(sym.equivalent_sites, sym.wyckoff_symbols):
        w.setdefault(sites[0].specie.symbol, []).append(label)
    return conv.composition.reduced_formula, sga.get_space_group_number(), w


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--snapshot", default=os.environ.get("WYCRYST_SNAPSHOT", str(REPO.parent / "shared/data/mp_snapshot")))
    ap.add_argument("--plain-rows", type=int, default=1500)
    ap.add_argument("--skip-dagster", action="store_true")
    args = ap.parse_args()
    df = pl.read_parquet(Path(args.snapshot) / "materials.parquet")
    cores = os.cpu_count()
    print(f"snapshot: {df.height} rows; cores: {cores}")

    sample = df.sample(min(args.plain_rows, df.height), seed=2024)
    t = time.perf_counter()
    plain = [plain_gene(c) for c in sample["cif"]]
    plain_s = time.perf_counter() - t
    plain_rate = sample.height / plain_s
    print(f"plain per-row loop, 1 process, {sample.height} rows: {plain_s:.1f} s = {plain_rate:.1f} rows/s")

    t = time.perf_counter()
    fast, _ = build_gene_table(sample["material_id"].to_list(), sample["cif"].to_list())
    fast_sample_s = time.perf_counter() - t
    print(f"platform builder, same {sample.height} rows: {fast_sample_s:.1f} s = {sample.height / fast_sample_s:.1f} rows/s "
          f"({(sample.height / fast_sample_s) / plain_rate:.1f}x)")
    by_id = {g["material_id"]: g for g in fast}
    exact = equivalent = differ = 0
    for mid, (formula, sg, w) in zip(sample["material_id"], plain):
        g = by_id.get(mid)
        from ml.genes import wyckoff_json

        if g and g["space_group"] == sg and g["wyckoff"] == wyckoff_json(w):
            exact += 1
        elif g and g["space_group"] == sg and g["gene_key"] == gene_key(formula, sg, w):
            equivalent += 1
        else:
            differ += 1
    print(f"agreement with the plain loop: {exact} identical, {equivalent} equivalent configuration, {differ} different")

    with TreePeakRSS() as peak:
        t = time.perf_counter()
        genes, rejections = build_gene_table(df["material_id"].to_list(), df["cif"].to_list())
        full_s = time.perf_counter() - t
    print(f"platform builder, all {df.height} rows: {full_s:.1f} s = {df.height / full_s:.1f} rows/s "
          f"({(df.height / full_s) / plain_rate:.1f}x the plain loop); peak RSS {peak.gib:.2f} GiB")
    ternary = sum(1 for g in genes if g["n_elements"] == 3)
    print(f"genes: {len(genes)}; ternary genes: {ternary}; rejections: {len(rejections)} {dict(Counter(r['reason'] for r in rejections))}")

    if args.skip_dagster:
        return
    tmp = Path(tempfile.mkdtemp(prefix="wycryst-bench-"))
    dagster_home = tmp / "dagster_home"
    dagster_home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "WYCRYST_HOME": str(tmp / "home"), "WYCRYST_SNAPSHOT": args.snapshot}
    env.pop("MP_API_KEY", None)
    with TreePeakRSS() as peak:
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "wycryst_assets", "--select", "mp_snapshot,wyckoff_genes"],
            cwd=REPO, env=env, capture_output=True, text=True,
        )
        e2e_s = time.perf_counter() - t
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        raise SystemExit("materialization failed")
    print(f"end to end (dagster asset materialize mp_snapshot,wyckoff_genes): {e2e_s:.1f} s = {df.height / e2e_s:.1f} rows/s "
          f"({(df.height / e2e_s) / plain_rate:.1f}x the plain loop); peak RSS of the process tree {peak.gib:.2f} GiB")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
