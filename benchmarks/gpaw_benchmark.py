"""GPAW (PBE, plane waves) wall time on cubic SrTiO3 (5 atoms, Pm-3m): one single point and one
symmetry-kept relaxation (FixSymmetry + cell filter + BFGS) from the experimental a = 3.905 Å,
plus the relaxed lattice constant against it (PBE is known to overestimate it by ~1 %).

    .venv/bin/python benchmarks/gpaw_benchmark.py [--ecut 600] [--kdensity 3.5 | --kspacing 0.2]
                                                  [--fmax 0.01] [--nprocs 1] [--json out.json]

Wall time is what the caller waits; CPU time is the GPAW subprocesses' user + system time
(on a shared machine the two differ by the contention).
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pymatgen.core import Lattice, Structure  # noqa: E402

from dft.gpaw_engine import GPAWRelaxer, gpaw_available, gpaw_python, gpaw_single_point  # noqa: E402

A_EXPERIMENT = 3.905  # Å, cubic SrTiO3 at room temperature
EV_PER_A3_TO_GPA = 160.21766


def srtio3(a: float = A_EXPERIMENT) -> Structure:
    return Structure(Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ecut", type=float, default=600.0)
    parser.add_argument("--kdensity", type=float, default=3.5, help="k-points per Å⁻¹ (ASE/GPAW, 2π included)")
    parser.add_argument("--kspacing", type=float, default=None, help="VASP-style KSPACING (overrides --kdensity)")
    parser.add_argument("--fmax", type=float, default=0.01)
    parser.add_argument("--max-steps", type=int, default=50)
    parser.add_argument("--nprocs", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    if not gpaw_available():
        sys.exit(f"GPAW is not importable by {gpaw_python()} (set GPAW_PYTHON)")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gpaw_benchmark_"))
    settings = {"ecut": args.ecut, "kpts": {"density": args.kdensity, "gamma": True}}
    if args.kspacing:
        settings["kspacing"] = args.kspacing
    report: dict = {"machine_cpus": os.cpu_count(), "settings": settings, "nprocs": args.nprocs,
                    "load_average_1min": os.getloadavg()[0]}

    cpu0, t0 = children_cpu(), time.perf_counter()
    sp = gpaw_single_point(srtio3(), workdir=workdir, nprocs=args.nprocs, **settings)
    report["single_point"] = {
        "wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(children_cpu() - cpu0, 1),
        "kpts": sp["kpts"], "energy_eV": round(sp["energy"], 4),
        "pressure_GPa": round(-float(sp["stress"][:3].mean()) * EV_PER_A3_TO_GPA, 2),
        "max_force_eV_per_A": sp["max_force"], "log": sp["log"],
    }
    print(json.dumps({"single_point": report["single_point"]}), flush=True)

    cpu0, t0 = children_cpu(), time.perf_counter()
    result = GPAWRelaxer(workdir, nprocs=args.nprocs, **settings).relax(srtio3(), fmax=args.fmax,
                                                                          max_steps=args.max_steps)
    a_relaxed = result.structure.lattice.a
    report["relax"] = {
        "wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(children_cpu() - cpu0, 1),
        "verdict": result.verdict, "reason": result.reason, "steps": result.steps,
        "max_force": result.max_force, "sg_before": result.sg_before, "sg_after": result.sg_after,
        "energy_eV": round(result.energy, 4),
        "a_relaxed_A": round(a_relaxed, 4), "a_experiment_A": A_EXPERIMENT,
        "a_deviation_percent": round(100 * (a_relaxed / A_EXPERIMENT - 1), 2),
    }
    print(json.dumps({"relax": report["relax"]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
