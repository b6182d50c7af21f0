"""Relaxation throughput through dft.hpc.run_tasks: local process pool vs the local Slurm.

    bash scripts/slurm_local.sh start        # for the slurm figure
    .venv/bin/python benchmarks/hpc_benchmark.py [--n 16] [--chunk-size 4] [--modes local,slurm]

N small PyXtal trials (cubic SrTiO3 Pm-3m, SrTiO3 I4/mcm, CaTiO3 Pnma; 5-20 atoms) are relaxed
with CHGNet (``dft.relax.get_relaxer("chgnet")``, FixSymmetry + FrechetCellFilter, fmax 0.05) on
1 CPU per task, in chunks of ``--chunk-size`` structures (one worker process / one Slurm
array element per chunk, CHGNet loaded once per chunk). Prints structures/min per mode, side by
side, with the same trials and chunking; the wall time includes model loading and, for Slurm,
scheduling and job start-up.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

GENES = [  # (formula, space group, Wyckoff sites, share of the trials)
    ("SrTiO3", 221, {"Sr": ["1a"], "Ti": ["1b"], "O": ["3c"]}, 0.4),
    ("SrTiO3", 140, {"Sr": ["4b"], "Ti": ["4c"], "O": ["4a", "8h"]}, 0.3),
    ("CaTiO3", 62, {"Ca": ["4c"], "Ti": ["4b"], "O": ["4c", "8d"]}, 0.3),
]
FMAX, MAX_STEPS = 0.05, 200


def relax_task(payload: dict) -> dict:
    """One CHGNet relaxation (runs in the worker / job; dft.hpc caps its threads at 1 CPU)."""
    import warnings

    from pymatgen.core import Structure

    from dft.relax import get_relaxer

    warnings.filterwarnings("ignore")  # CHGNet's per-step UserWarnings

    result = get_relaxer("chgnet").relax(Structure.from_dict(payload["structure"]), fmax=FMAX, max_steps=MAX_STEPS)
    return {
        "verdict": result.verdict, "reason": result.reason, "energy": result.energy,
        "converged": result.converged, "steps": result.steps, "sg_before": result.sg_before,
        "sg_after": result.sg_after, "seconds": result.seconds, "pid": os.getpid(),
        "slurm_job_id": os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID"),
    }


def make_tasks(n: int, seed: int = 7) -> dict[str, dict]:
    from dft.trials import generate_trials

    tasks: dict[str, dict] = {}
    counts = [round(n * share) for *_, share in GENES]
    counts[0] += n - sum(counts)
    for (formula, sg, wyckoff, _), count in zip(GENES, counts):
        for trial in generate_trials(formula, sg, wyckoff, seed=seed, n=count):
            if trial.structure is not None:
                tasks[f"{formula}|{sg}|trial{trial.trial}"] = {"structure": trial.structure.as_dict()}
    return tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--chunk-size", type=int, default=4)
    parser.add_argument("--modes", default="local,slurm")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()

    from dft.hpc import ComputeConfig, run_tasks

    # the job unpickles relax_task by reference: take it from this file imported as a module
    fn = importlib.import_module(Path(__file__).stem).relax_task
    tasks = make_tasks(args.n)
    print(f"{len(tasks)} structures ({', '.join(f'{f}-{sg}' for f, sg, *_ in GENES)}), "
          f"chunk_size={args.chunk_size}, 1 CPU per task, CHGNet fmax={FMAX} max_steps={MAX_STEPS}, "
          f"{os.cpu_count()} CPUs")
    rows = []
    work = Path(tempfile.mkdtemp(prefix="hpc_benchmark-"))
    try:
        for mode in args.modes.split(","):
            config = ComputeConfig(mode=mode, max_workers=args.workers, chunk_size=args.chunk_size,
                                   cpus_per_task=1, time_minutes=30, folder=work / "submitit", poll_seconds=1.0)
            start = time.perf_counter()
            results = run_tasks(fn, tasks, config, work / f"results-{mode}", log=lambda line: print(f"  [{mode}] {line}"))
            wall = time.perf_counter() - start
            verdicts = [r["verdict"] for r in results.values()]
            relax_s = sum(r.get("seconds", 0.0) for r in results.values())
            rows.append((mode, len(results), wall, 60 * len(results) / wall, relax_s,
                         verdicts.count("converged"), sum(v == "failed" for v in verdicts),
                         sum(r.get("sg_after") == r.get("sg_before") for r in results.values())))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'mode':6} {'structs':>7} {'wall s':>7} {'structs/min':>11} {'relax s (sum)':>13} {'converged':>9} {'failed':>6} {'SG kept':>7}")
    for mode, n, wall, rate, relax_s, conv, failed, kept in rows:
        print(f"{mode:6} {n:7d} {wall:7.1f} {rate:11.1f} {relax_s:13.1f} {conv:9d} {failed:6d} {kept:7d}")
    rate = {row[0]: row[3] for row in rows}
    if {"local", "slurm"} <= rate.keys():
        print(f"slurm / local throughput: {rate['slurm'] / rate['local']:.2f}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
