"""PyXtal trials and CHGNet relaxations on genes of the MP snapshot's ternaries.

Prints:
  * seconds per PyXtal trial (dft.trials.generate_trials, DoF + 1 trials per gene) over
    ``--genes`` genes of random ternaries (genes via ml.genes.gene_from_structure), verdicts;
  * CHGNet relaxation (FixSymmetry + FrechetCellFilter + FIRE, fmax 0.05) of ``--relaxations``
    trials of <= 20 atoms: CPU core-seconds (time.process_time, one torch/BLAS thread) and wall
    seconds per structure and per step, verdicts, symmetry-kept rate.

    .venv/bin/python benchmarks/structures_benchmark.py [--genes 50] [--relaxations 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dft.relax import get_relaxer  # noqa: E402
from dft.trials import generate_trials  # noqa: E402
from ml.genes import GeneError, gene_from_structure  # noqa: E402


def snapshot_genes(snapshot: Path, n: int, seed: int) -> list:
    """``n`` distinct genes of random ternary rows (rows whose gene extraction fails are skipped)."""
    from pymatgen.core import Structure

    df = pl.read_parquet(snapshot / "materials.parquet", columns=["material_id", "nelements", "cif"])
    rows = df.filter(pl.col("nelements") == 3).rows(named=True)
    random.Random(seed).shuffle(rows)
    genes: dict = {}
    for row in rows:
        if len(genes) >= n:
            break
        try:
            gene, summary = gene_from_structure(Structure.from_str(row["cif"], fmt="cif"))
        except (GeneError, ValueError):
            continue
        genes.setdefault(gene.key, (row["material_id"], gene, summary))
    return list(genes.values())


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--snapshot", default=os.environ.get("WYCRYST_SNAPSHOT", str(REPO.parent / "shared/data/mp_snapshot")))
    ap.add_argument("--genes", type=int, default=50)
    ap.add_argument("--relaxations", type=int, default=10)
    ap.add_argument("--max-atoms", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    genes = snapshot_genes(Path(args.snapshot), args.genes, args.seed)
    print(f"{len(genes)} genes from ternaries of {args.snapshot}")

    # warm-up: PyXtal import and first Group build are not per-trial costs
    generate_trials("SrTiO3", 221, {"Sr": ["1a"], "Ti": ["1b"], "O": ["3c"]}, seed=0)

    trials, wall0, cpu0 = [], time.perf_counter(), time.process_time()
    for i, (_, gene, summary) in enumerate(genes):
        for t in generate_trials(gene.formula, gene.space_group, gene.wyckoff, seed=args.seed + i):
            trials.append((gene, summary, t))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    secs = [t.seconds for _, _, t in trials]
    verdicts = Counter(t.verdict for _, _, t in trials)
    same_sg = sum(t.space_group_built == g.space_group for g, _, t in trials if t.ok)
    print("\n== PyXtal trials ==")
    print(f"trials {len(trials)} (DoF+1 per gene), wall {wall:.1f} s, CPU {cpu:.1f} s")
    print(f"seconds per trial: mean {statistics.mean(secs):.3f}, median {statistics.median(secs):.3f}, "
          f"p90 {pct(secs, 0.9):.3f}, max {max(secs):.3f}  (target <= 0.2 s; paper 2 CPU-s)")
    print(f"verdicts: {dict(verdicts)}; built SG == gene SG (symprec 1e-3): {same_sg}/{verdicts['ok']}")
    feasible = [t.seconds for _, s, t in trials if s.atoms_per_cell <= 50 and s.total_dof <= 5]
    if feasible:
        print(f"  genes within the paper's feasibility filter (atoms/cell <= 50, DoF <= 5): {len(feasible)} trials, "
              f"mean {statistics.mean(feasible):.3f} s, median {statistics.median(feasible):.3f} s, max {max(feasible):.3f} s")
    per_gene: dict = {}
    for g, s, t in trials:
        per_gene.setdefault(g.key, [g, s, 0.0])[2] += t.seconds
    for g, s, total in sorted(per_gene.values(), key=lambda x: -x[2])[:3]:
        print(f"  slowest gene: {g.formula} SG {g.space_group}, {s.atoms_per_cell} atoms, DoF {s.total_dof}: "
              f"{total:.1f} s for {s.total_dof + 1} trials")
    for reason, n in Counter(t.reason.split(":")[0] for _, _, t in trials if not t.ok).most_common(5):
        print(f"  rejected {reason}: {n}")

    # one ok trial per gene, smallest cells first up to max-atoms, shuffled deterministically
    picked, seen = [], set()
    for gene, summary, t in trials:
        if t.ok and summary.atoms_per_cell <= args.max_atoms and gene.key not in seen:
            seen.add(gene.key)
            picked.append((gene, t))
    random.Random(args.seed).shuffle(picked)
    picked = picked[: args.relaxations]

    if not picked:
        return
    relaxer = get_relaxer("chgnet")
    t0 = time.perf_counter()
    relaxer.calculator()  # model load, once per process
    print(f"\n== CHGNet relaxations (model load {time.perf_counter() - t0:.1f} s wall) ==")
    results = []
    for gene, t in picked:
        r = relaxer.relax(t.structure, fmax=0.05, max_steps=500)
        results.append(r)
        print(f"  {gene.formula:12s} SG {gene.space_group:3d} {len(t.structure):2d} atoms: {r.verdict:13s} "
              f"steps {r.steps:3d}  CPU {r.cpu_seconds:6.1f} s  wall {r.seconds:6.1f} s  "
              f"SG {r.sg_before}->{r.sg_after}  E {r.energy_per_atom:.3f} eV/atom {r.reason[:40]}")
    if results:
        cpu_s = [r.cpu_seconds for r in results]
        wall_s = [r.seconds for r in results]
        steps = sum(r.steps for r in results)
        kept = sum(r.symmetry_kept for r in results)
        print(f"core-seconds per structure: mean {statistics.mean(cpu_s):.1f}, median {statistics.median(cpu_s):.1f}; "
              f"wall mean {statistics.mean(wall_s):.1f} s; per step {sum(cpu_s) / max(steps, 1):.3f} CPU-s")
        print(f"verdicts: {dict(Counter(r.verdict for r in results))}; symmetry kept: {kept}/{len(results)} "
              f"({kept / len(results):.0%})")


if __name__ == "__main__":
    main()
