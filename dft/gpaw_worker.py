"""GPAW worker: one single point or one symmetry-kept relaxation, run as an external engine.

    /usr/bin/python3 dft/gpaw_worker.py in.json out.json

Runs in the system Python that holds Debian's ``gpaw`` (+ its ASE), like VASP runs through a
command. It imports only the standard library, numpy, ase and gpaw — never this repository or
pymatgen — so it can be copied next to a job and run on its own.

in.json::

    {"atoms": {"cell": 3x3, "positions": Nx3 (Å), "numbers": N, "pbc": [bool]*3,
               "magmoms": N (optional)},
     "mode": "single_point" | "relax",
     "settings": {"ecut": 600, "xc": "PBE", "kpts": {"density": 3.5, "gamma": true} | [n1, n2, n3],
                  "kspacing": null, "smearing": 0.01, "spinpol": null, "txt": "gpaw.txt",
                  "fmax": 0.05, "max_steps": 200, "optimizer": "BFGS", "symprec": 1e-3,
                  "relax_cell": true, "convergence": null}}

``kspacing`` (Å⁻¹, VASP's KSPACING: n_i = ceil(2π|b_i| / kspacing), |b_i| without 2π) overrides
``kpts`` when given. The default cut-off is 600 eV: Debian's PAW datasets are not converged below
that (at 400 eV cubic SrTiO3 shows +49 GPa of spurious stress).

out.json: ``ok`` plus energy (eV), forces (eV/Å), stress (Voigt, eV/Å³), atoms (as above),
steps, converged, max_force (atoms), max_generalized_force (atoms + cell rows, relax only),
kpts (the Monkhorst-Pack mesh used), seconds, log (GPAW text file), gpaw_version, ase_version;
or ``ok: false`` with ``error`` and ``traceback``.
"""

from __future__ import annotations

import json
import math
import sys
import time
import traceback
from pathlib import Path

import numpy as np

DEFAULTS = {
    "ecut": 600.0,
    "xc": "PBE",
    "kpts": {"density": 3.5, "gamma": True},
    "kspacing": None,
    "smearing": 0.01,
    "spinpol": None,
    "txt": "gpaw.txt",
    "fmax": 0.05,
    "max_steps": 200,
    "optimizer": "BFGS",
    "symprec": 1e-3,
    "relax_cell": True,
    "convergence": None,
}


def atoms_from_dict(data):
    from ase import Atoms

    atoms = Atoms(
        numbers=data["numbers"],
        positions=data["positions"],
        cell=data["cell"],
        pbc=data.get("pbc", [True, True, True]),
    )
    if data.get("magmoms") is not None:
        atoms.set_initial_magnetic_moments(data["magmoms"])
    return atoms


def atoms_to_dict(atoms):
    return {
        "cell": atoms.cell[:].tolist(),
        "positions": atoms.positions.tolist(),
        "numbers": atoms.numbers.tolist(),
        "pbc": [bool(p) for p in atoms.pbc],
    }


def kpoint_mesh(atoms, settings):
    """The Monkhorst-Pack mesh as a list of three ints (or the dict GPAW takes)."""
    if settings.get("kspacing"):
        recip = atoms.cell.reciprocal()
        return [
            max(1, int(math.ceil(2 * math.pi * np.linalg.norm(recip[i]) / settings["kspacing"] - 1e-9)))
            if atoms.pbc[i] else 1
            for i in range(3)
        ]
    return settings["kpts"]


def make_calculator(atoms, settings, txt):
    from gpaw import GPAW, PW, FermiDirac

    spinpol = settings["spinpol"]
    if spinpol is None:
        spinpol = bool(np.any(np.abs(atoms.get_initial_magnetic_moments()) > 1e-8))
    kpts = kpoint_mesh(atoms, settings)
    if isinstance(kpts, list):
        kpts = {"size": kpts, "gamma": True}
    kwargs = dict(
        mode=PW(settings["ecut"]),
        xc=settings["xc"],
        kpts=kpts,
        occupations=FermiDirac(settings["smearing"]),
        spinpol=spinpol,
        txt=txt,
    )
    if settings.get("convergence"):
        kwargs["convergence"] = settings["convergence"]
    return GPAW(**kwargs)


def _fix_symmetry_class():
    try:  # ASE >= 3.23
        from ase.constraints import FixSymmetry
    except ImportError:  # ASE 3.22 (Debian)
        from ase.spacegroup.symmetrize import FixSymmetry
    return FixSymmetry


def _cell_filter(atoms):
    try:  # ASE >= 3.23
        from ase.filters import FrechetCellFilter

        return FrechetCellFilter(atoms)
    except ImportError:  # ASE 3.22: FrechetCellFilter does not exist
        from ase.constraints import ExpCellFilter

        return ExpCellFilter(atoms)


def _optimizer(name):
    from ase import optimize

    return getattr(optimize, name)


def max_atom_force(forces):
    return float(np.sqrt((np.asarray(forces) ** 2).sum(axis=1).max())) if len(forces) else 0.0


def run(job):
    settings = dict(DEFAULTS)
    settings.update(job.get("settings") or {})
    mode = job.get("mode", "single_point")
    atoms = atoms_from_dict(job["atoms"])
    txt = str(Path(settings["txt"]).resolve())
    atoms.calc = make_calculator(atoms, settings, txt)

    started = time.perf_counter()
    steps, converged, generalized_max = 0, True, None
    if mode == "relax":
        atoms.set_constraint(list(atoms.constraints) + [_fix_symmetry_class()(atoms, symprec=settings["symprec"])])
        target = _cell_filter(atoms) if settings["relax_cell"] else atoms
        optimizer = _optimizer(settings["optimizer"])(target, logfile=txt + ".opt", trajectory=None)
        optimizer.run(fmax=settings["fmax"], steps=settings["max_steps"])
        steps = int(optimizer.nsteps)
        generalized = target.get_forces()  # atoms + cell DOF when a filter is used
        generalized_max = max_atom_force(generalized)
        converged = bool(generalized_max <= settings["fmax"])
    elif mode != "single_point":
        raise ValueError(f"unknown mode {mode!r} (single_point | relax)")

    energy = float(atoms.get_potential_energy())
    forces = atoms.get_forces()
    stress_note = None
    try:
        stress = atoms.get_stress(voigt=True).tolist()
    except Exception as exc:  # non-periodic cells have no stress; the reason is returned
        stress, stress_note = None, f"no stress: {type(exc).__name__}: {exc}"[:300]
    atoms.set_constraint()
    return {
        "ok": True,
        "mode": mode,
        "energy": energy,
        "forces": forces.tolist(),
        "stress": stress,
        "stress_note": stress_note,
        "max_force": max_atom_force(forces),
        "max_generalized_force": generalized_max,  # atoms + cell rows of the filter (relax only)
        "atoms": atoms_to_dict(atoms),
        "steps": steps,
        "converged": converged,
        "kpts": [int(n) for n in atoms.calc.wfs.kd.N_c],
        "settings": {k: v for k, v in settings.items()},
        "seconds": time.perf_counter() - started,
        "log": txt,
    }


def main(argv):
    if len(argv) != 3:
        print(f"usage: {argv[0]} in.json out.json", file=sys.stderr)
        return 2
    import ase
    import gpaw
    from gpaw.mpi import world

    job = json.loads(Path(argv[1]).read_text())
    try:
        result = run(job)
        code = 0
    except Exception as exc:  # reported to the caller as data, not a crash
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        code = 1
    result["gpaw_version"] = gpaw.__version__
    result["ase_version"] = ase.__version__
    if world.rank == 0:
        Path(argv[2]).write_text(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
