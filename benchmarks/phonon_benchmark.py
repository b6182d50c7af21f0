"""Core-seconds of CHGNet phonon verdicts (dft.phonons) on small cells.

Cells: cubic SrTiO3 (Pm-3m, 5 atoms, not in the snapshot) and two 10-atom snapshot ternaries,
SrTiO3 I4/mcm (mp-4651) and CdSnO3 R-3 (mp-754329). Each is first relaxed with CHGNet keeping its
space group (FixSymmetry + FrechetCellFilter, timed separately), then phonon_verdict runs with the
default settings (supercell vectors >= 10 A, 0.01 A displacements, 8x8x8 Gamma-centred mesh plus
band path). Target: <= 120 core-s per phonon verdict.

core-s = time.process_time() (CPU time of all threads of this process); wall = perf_counter.

    .venv/bin/python benchmarks/phonon_benchmark.py [--shared-data DIR] [--threads N] [--png DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

CASES = (("SrTiO3 Pm-3m (cubic)", None), ("SrTiO3 I4/mcm", "mp-4651"), ("CdSnO3 R-3", "mp-754329"))
TARGET_CORE_S = 120.0


def cubic_srtio3():
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def snapshot_structure(parquet: Path, material_id: str):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from pymatgen.core import Structure

    table = pq.read_table(parquet, columns=["material_id", "cif"])
    row = table.filter(pc.equal(table["material_id"], material_id)).to_pylist()[0]
    return Structure.from_str(row["cif"], fmt="cif")


def relax_keep_symmetry(structure, calculator, fmax: float = 0.005, steps: int = 300):
    from ase.constraints import FixSymmetry
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = calculator
    atoms.set_constraint(FixSymmetry(atoms, symprec=0.01))
    opt = BFGS(FrechetCellFilter(atoms), logfile=None)
    converged = opt.run(fmax=fmax, steps=steps)
    atoms.set_constraint()
    return AseAtomsAdaptor.get_structure(atoms), bool(converged), opt.nsteps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-data", type=Path, default=Path(
        os.environ.get("WYCRYST_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--png", type=Path, default=None, help="write band-structure PNGs here")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    from dft.phonons import band_structure_png, phonon_verdict

    t0, c0 = time.perf_counter(), time.process_time()
    calculator = CHGNetCalculator(CHGNet.load(verbose=False), use_device="cpu")
    print(f"CHGNet load: {time.perf_counter() - t0:.1f} s wall, {time.process_time() - c0:.1f} core-s; "
          f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")

    parquet = args.shared_data / "mp_snapshot" / "materials.parquet"
    rows = []
    for name, material_id in CASES:
        structure = cubic_srtio3() if material_id is None else snapshot_structure(parquet, material_id)
        t0, c0 = time.perf_counter(), time.process_time()
        relaxed, converged, nsteps = relax_keep_symmetry(structure, calculator)
        relax_wall, relax_cpu = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        result = phonon_verdict(relaxed, calculator)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rows.append((name, len(relaxed), result, wall, cpu))
        print(f"{name:22s} atoms {len(relaxed):2d} | relax {nsteps:3d} steps converged={converged} "
              f"{relax_wall:6.1f} s wall {relax_cpu:6.1f} core-s | phonons: {result.verdict:8s} "
              f"min {result.min_frequency_thz if result.min_frequency_thz is None else round(result.min_frequency_thz, 3)} THz "
              f"at {result.where} | SG {result.space_group} supercell {[r[i] for i, r in enumerate(result.supercell_matrix or [])]} "
              f"({result.n_atoms_supercell} atoms) x {result.n_displacements} displacements | "
              f"{wall:6.1f} s wall {cpu:6.1f} core-s {'OK' if cpu <= TARGET_CORE_S else 'OVER TARGET'}"
              + (f" | reason: {result.reason}" if result.verdict == "failed" else ""), flush=True)
        if args.png:
            args.png.mkdir(parents=True, exist_ok=True)
            (args.png / f"{name.split()[0]}_{name.split()[1].replace('/', '_')}.png").write_bytes(
                band_structure_png(result, name))
    worst = max(cpu for *_, cpu in rows)
    print(f"max phonon core-s {worst:.1f} (target <= {TARGET_CORE_S:.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
