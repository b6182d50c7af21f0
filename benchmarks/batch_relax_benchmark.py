"""Batched vs per-structure symmetry-kept relaxation on the same PyXtal trials, in one run.

    .venv/bin/python benchmarks/batch_relax_benchmark.py [--n 48] [--relaxer chgnet] [--seed 0]
        [--max-atoms 20] [--max-steps 300] [--json batch_relax.json] [--sides single,batched,batched-1x2]
        [--optimizer FIRE]
        [--sweep 20,100,400]   # instead: batch-size sweep, in this process, 1 thread

Trials: genes of random snapshot materials (``ml.genes.gene_from_structure``), one seeded PyXtal
trial each (``dft.pipeline.build_gene_trials``, the platform's own trial builder), kept when the
primitive cell the relaxer sees has at most ``--max-atoms`` atoms; ``--n`` of them. Every side
relaxes the same CIFs through ``dft.hpc.run_tasks`` in local mode, exactly as the
``relaxed_structures`` asset does (FixSymmetry + FrechetCellFilter + BFGS, fmax 0.05, centred cells
in their primitive cell), model loading included:

* ``single``: the per-structure path, ``relax_task``, 2 worker processes x 1 thread, chunks of 4;
* ``batched``: ``relax_batch_task`` (``batched=True``), 2 worker processes x 1 thread, the trials
  in guided batches handed out as workers free up (run_tasks' default: 10, 8, 6, 4, 3, 3, 2, 2, 2 for 40 trials);
* ``batched-1x2``: one worker process with 2 torch/BLAS threads batching all of them.

Both sides use the platform's optimizer (``dft.relax.DEFAULT_OPTIMIZER``, BFGS) unless
``--optimizer`` names another (e.g. ``--optimizer FIRE``, the optimizer before BFGS).

Prints ``uptime`` at the start and end, then per side: structures/min, core-seconds per relaxation
(CPU of the worker processes, all threads, process start and model load included, divided by the
trials), optimizer steps (total and per structure), verdicts, symmetry kept among converged; then batched vs single: the ratio of structures/min, verdict agreement, max |dE| per
atom over the trials converged on both sides, and every disagreement. Writes the figures to
``--json``.

``--sweep CAPS``: relax the same trials in this process (1 thread) with ``dft.batch_relax`` at
each cap on the atoms per model call, and print core-seconds per relaxation for each.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dft.hpc import ComputeConfig, run_tasks  # noqa: E402
from dft.pipeline import build_gene_trials, relax_batch_task, relax_task  # noqa: E402
from dft.relax import DEFAULT_OPTIMIZER  # noqa: E402

SIDES = {  # name -> (task function, batched, workers, threads per worker)
    "single": (relax_task, False, 2, 1),
    "batched": (relax_batch_task, True, 2, 1),
    "batched-1x2": (relax_batch_task, True, 1, 2),
}


def build_trials(snapshot: Path, n: int, seed: int, max_atoms: int, out_dir: Path) -> list[dict]:
    """``n`` seeded PyXtal trials (one per gene of random snapshot rows) whose primitive cell has
    at most ``max_atoms`` atoms."""
    import polars as pl
    from pymatgen.core import Structure

    from dft.relax import primitive_cell
    from ml.genes import gene_from_structure

    rows = pl.read_parquet(snapshot / "materials.parquet", columns=["material_id", "nsites", "cif"]).rows(named=True)
    random.Random(seed).shuffle(rows)
    trials, seen = [], set()
    for row in rows:
        if len(trials) >= n:
            break
        try:
            gene, _ = gene_from_structure(Structure.from_str(row["cif"], fmt="cif"))
        except Exception:
            continue
        if gene.key in seen:
            continue
        seen.add(gene.key)
        spec = {"formula": gene.formula, "space_group": gene.space_group, "wyckoff": gene.wyckoff, "gene_key": gene.key}
        built = [t for t in build_gene_trials(spec, seed=seed, out_dir=out_dir, max_attempts=5) if t["cif_path"]]
        if not built:
            continue
        trial = built[0]
        n_primitive = len(primitive_cell(Structure.from_file(trial["cif_path"])))
        if n_primitive <= max_atoms:
            trials.append({**trial, "n_primitive": n_primitive, "material_id": row["material_id"]})
    return trials


def run_side(name: str, trials: list[dict], args, work: Path) -> dict:
    fn, batched, workers, threads = SIDES[name]
    tasks = {f"{i:03d}-{t['formula']}-{t['space_group']}": {
        "cif_path": t["cif_path"], "relaxer": args.relaxer, "fmax": args.fmax, "max_steps": args.max_steps,
        "primitive": True, "optimizer": args.optimizer, "out_cif": str(work / name / "cif" / f"{i:03d}.cif")}
        for i, t in enumerate(trials)}
    config = ComputeConfig(mode="local", max_workers=workers, chunk_size=4, threads_per_task=threads,
                           folder=work / "submitit")
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall0 = time.perf_counter()
    results = run_tasks(fn, tasks, config, work / name / "results", log=lambda _msg: None, batched=batched)
    wall = time.perf_counter() - wall0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    core_seconds = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    rows = list(results.values())
    verdicts = Counter(r.get("verdict", "failed") for r in rows)
    converged = [r for r in rows if r.get("verdict") == "converged"]
    return {
        "side": name, "workers": workers, "threads_per_worker": threads, "batched": batched,
        "structures": len(rows), "wall_seconds": round(wall, 1),
        "structures_per_minute": round(60 * len(rows) / wall, 2),
        "core_seconds_per_relaxation": round(core_seconds / len(rows), 2),
        "task_core_seconds_per_relaxation": round(sum(r.get("cpu_seconds") or 0 for r in rows) / len(rows), 2),
        "verdicts": dict(verdicts),
        "symmetry_kept_of_converged": round(sum(bool(r["symmetry_kept"]) for r in converged) / max(len(converged), 1), 4),
        "steps_total": sum(int(r.get("steps") or 0) for r in rows),
        "results": results,
    }


def compare(single: dict, batched: dict) -> dict:
    agree, disagreements, de = 0, [], []
    for key, a in single["results"].items():
        b = batched["results"][key]
        if a.get("verdict") == b.get("verdict"):
            agree += 1
        else:
            disagreements.append({"task": key, "single": [a.get("verdict"), a.get("reason")],
                                  "batched": [b.get("verdict"), b.get("reason")]})
        if a.get("verdict") == b.get("verdict") == "converged":
            d = abs(a["energy_per_atom"] - b["energy_per_atom"])
            de.append((d, key))
            if d > 1e-3:
                disagreements.append({"task": key, "energy_per_atom": [a["energy_per_atom"], b["energy_per_atom"]],
                                      "sg_after": [a["sg_after"], b["sg_after"]], "steps": [a["steps"], b["steps"]]})
    worst = max(de) if de else (0.0, None)
    return {
        "speedup": round(batched["structures_per_minute"] / single["structures_per_minute"], 2),
        "verdict_agreement": round(agree / len(single["results"]), 4),
        "both_converged": len(de),
        "max_abs_de_mev_per_atom": round(1000 * worst[0], 4), "worst_task": worst[1],
        "within_1_mev": sum(d <= 1e-3 for d, _ in de),
        "disagreements": disagreements,
    }


def sweep(trials: list[dict], caps: list[int], args) -> list[dict]:
    from pymatgen.core import Structure

    from dft.batch_relax import BatchRelaxer

    structures = [Structure.from_file(t["cif_path"]) for t in trials]
    rows = []
    for cap in caps:
        relaxer = BatchRelaxer(args.relaxer, max_batch_atoms=cap, threads=1, optimizer=args.optimizer or DEFAULT_OPTIMIZER)
        relaxer.relax_many(structures[:1], max_steps=2)  # model load outside the timing
        relaxer.model_calls = 0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        results = relaxer.relax_many(structures, fmax=args.fmax, max_steps=args.max_steps, primitive=True)
        row = {"max_batch_atoms": cap, "core_seconds_per_relaxation": round((time.process_time() - cpu0) / len(results), 2),
               "wall_seconds": round(time.perf_counter() - wall0, 1), "model_calls": relaxer.model_calls,
               "steps": sum(r.steps for r in results)}
        print(f"max_batch_atoms {cap:5d}: {row['core_seconds_per_relaxation']} core-s per relaxation, "
              f"{row['model_calls']} model calls for {row['steps']} steps", flush=True)
        rows.append(row)
    return rows


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return f"loadavg {os.getloadavg()}"


def main() -> None:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # the workers' per-step library warnings
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--snapshot", default=os.environ.get("WYCRYST_SNAPSHOT", str(
        Path(os.environ.get("WYCRYST_SHARED_DATA", REPO.parent / "shared" / "data")) / "mp_snapshot")))
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-atoms", type=int, default=20)
    ap.add_argument("--relaxer", default="chgnet")
    ap.add_argument("--fmax", type=float, default=0.05)
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--optimizer", default=None, help=f"ASE optimizer of both sides (default: the platform's, "
                    f"dft.relax.DEFAULT_OPTIMIZER = {DEFAULT_OPTIMIZER})")
    ap.add_argument("--sides", default="single,batched,batched-1x2")
    ap.add_argument("--json", default="batch_relax_benchmark.json")
    ap.add_argument("--sweep", default="", help="comma-separated max_batch_atoms caps: run the sweep instead")
    args = ap.parse_args()
    sides = args.sides.split(",")
    unknown = set(sides) - set(SIDES)
    if unknown:
        ap.error(f"unknown sides {sorted(unknown)}; valid: {', '.join(SIDES)}")

    load_start = uptime()
    print(f"load at start: {load_start}")
    with tempfile.TemporaryDirectory(prefix="batch_relax_bench_") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        trials = build_trials(Path(args.snapshot), args.n, args.seed, args.max_atoms, work / "trials")
        sizes = [t["n_primitive"] for t in trials]
        print(f"{len(trials)} trials (seed {args.seed}) of {len(set(t['gene_key'] for t in trials))} genes, "
              f"primitive cells of {min(sizes)}-{max(sizes)} atoms (mean {sum(sizes) / len(sizes):.1f}), "
              f"built in {time.perf_counter() - t0:.0f} s; relaxer {args.relaxer}, fmax {args.fmax}, "
              f"max_steps {args.max_steps}, optimizer {args.optimizer or DEFAULT_OPTIMIZER}")
        if args.sweep:
            rows = sweep(trials, [int(c) for c in args.sweep.split(",")], args)
            print(f"load at end: {uptime()}")
            Path(args.json).write_text(json.dumps({"load_start": load_start, "sweep": rows, "settings": vars(args)}, indent=1))
            return
        figures = {}
        for side in sides:
            figures[side] = run_side(side, trials, args, work)
            f = figures[side]
            print(f"{side:12s} {f['workers']} proc x {f['threads_per_worker']} thr: {f['structures_per_minute']:7.2f} "
                  f"structures/min  ({f['wall_seconds']} s wall, {f['core_seconds_per_relaxation']} core-s per "
                  f"relaxation, {f['steps_total']} steps = {f['steps_total'] / f['structures']:.1f} per structure)  verdicts {f['verdicts']}  symmetry kept "
                  f"{100 * f['symmetry_kept_of_converged']:.1f} % of converged", flush=True)
    comparisons = {}
    if "single" in figures:
        for side in sides:
            if side == "single":
                continue
            c = comparisons[side] = compare(figures["single"], figures[side])
            print(f"{side} vs single: {c['speedup']}x structures/min; verdicts agree on "
                  f"{100 * c['verdict_agreement']:.1f} %; max |dE| {c['max_abs_de_mev_per_atom']} meV/atom over "
                  f"{c['both_converged']} converged both ways ({c['within_1_mev']} within 1 meV/atom)")
            for d in c["disagreements"]:
                print(f"  disagreement: {d}")
    load_end = uptime()
    print(f"load at end: {load_end}")
    out = {"load_start_end": [load_start, load_end], "trials": [{k: t[k] for k in ("formula", "space_group", "gene_key", "n_primitive",
                                                                   "material_id")} for t in trials],
           "settings": vars(args), "sides": {k: {x: y for x, y in v.items() if x != "results"} for k, v in figures.items()},
           "comparisons": comparisons, "per_task": {k: v["results"] for k, v in figures.items()}}
    Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
