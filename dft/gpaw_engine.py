"""GPAW (PBE, plane waves) as an external engine, run through a command like VASP.

GPAW lives in the system Python (Debian's ``gpaw`` 22.8 + ``gpaw-data``, with Debian's ASE
3.22), not in this virtualenv, so every calculation is one subprocess::

    $GPAW_PYTHON dft/gpaw_worker.py in.json out.json      (GPAW_PYTHON defaults to /usr/bin/python3)

with ``OMP_NUM_THREADS=1``, serial unless ``nprocs > 1`` and ``mpirun`` exists. This module
converts pymatgen structures to the worker's JSON and back, and turns the worker's answer into the
shared :class:`dft.relax.RelaxResult`.

Settings (keyword arguments, see ``gpaw_worker.DEFAULTS``): ``ecut`` 600 eV (Debian's datasets
need >= 600 eV), ``xc`` PBE, ``kpts`` {"density": 3.5, "gamma": True} (points per Å⁻¹, 2π
included, as ASE/GPAW define it) or an explicit mesh, ``kspacing`` (VASP-style, overrides
``kpts``), ``smearing`` FermiDirac width 0.01 eV, ``spinpol`` (auto: on when the structure has
``magmom`` site properties), ``optimizer`` BFGS, ``symprec`` for ``FixSymmetry``.

Relaxation: ``FixSymmetry`` + a cell filter (``ExpCellFilter`` under ASE 3.22, which has no
``FrechetCellFilter``) + BFGS. Convergence is the largest row of the filter's generalized forces
<= fmax, as in dft.relax. Explosion criteria are dft.relax's, except the energy-per-atom window:
GPAW's energies are relative to its isolated reference atoms, not on MP's scale.

Formation energies need GPAW's own elemental references (:func:`gpaw_elemental_references`),
computed with the same settings; MP's references and MP2020 corrections do not apply.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path

import numpy as np
from pymatgen.core import Composition, Lattice, Structure

from dft.gpaw_worker import DEFAULTS as WORKER_DEFAULTS
from dft.hpc import TaskInterrupted
from dft.relax import FORCE_LIMIT, MIN_DISTANCE, RELAX_SYMPREC, VOLUME_RATIO_LIMIT, RelaxResult, space_group_number

WORKER = Path(__file__).resolve().with_name("gpaw_worker.py")
DEFAULT_GPAW_PYTHON = "/usr/bin/python3"
REFERENCE_CACHE_NAME = "gpaw_elemental_references.json"
MOLECULE_BOX = 10.0  # Å, cubic box for diatomic references
# Elements whose standard state is a diatomic gas: X2 in a MOLECULE_BOX box at Γ.
DIATOMIC_REFERENCES = ("H", "N", "O", "F", "Cl")
# Heavier halogens (liquid Br2, molecular-solid I2): the X2 molecule at its experimental bond
# length (Å), relaxed, in the same box. PBE without dispersion barely binds the molecular solid,
# so the molecule stands in for it (the sublimation energy, ~0.1-0.3 eV/atom, is left out).
HALOGEN_MOLECULES = {"Br": 2.281, "I": 2.666}
# Ferromagnetic elemental references: initial moments (μB/atom) so the spin-polarized state is found.
MAGNETIC_REFERENCES = {"Fe": 2.2, "Co": 1.6, "Ni": 0.6}


class GPAWError(RuntimeError):
    """The worker did not produce a result (GPAW missing, crashed, timed out, or reported an error)."""


class GPAWInterrupted(GPAWError, TaskInterrupted):
    """The GPAW worker was stopped by SIGTERM, SIGINT or SIGHUP from outside: no verdict on the
    structure, so task runners store nothing and the next run retries it."""


_INTERRUPT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def gpaw_python() -> str:
    return os.environ.get("GPAW_PYTHON", DEFAULT_GPAW_PYTHON)


@lru_cache(maxsize=8)
def _importable(python: str) -> bool:
    try:
        proc = subprocess.run([python, "-c", "import gpaw, ase"], capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def gpaw_available() -> bool:
    """Whether ``GPAW_PYTHON`` exists and imports gpaw and ase."""
    return _importable(gpaw_python())


def settings_with_defaults(settings: Mapping) -> dict:
    unknown = set(settings) - set(WORKER_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown GPAW settings {sorted(unknown)}; valid: {sorted(WORKER_DEFAULTS)}")
    merged = dict(WORKER_DEFAULTS)
    merged.update(settings)
    return merged


# ---- pymatgen <-> worker JSON --------------------------------------------------------------

def structure_to_atoms_dict(structure: Structure) -> dict:
    data = {
        "cell": structure.lattice.matrix.tolist(),
        "positions": structure.cart_coords.tolist(),
        "numbers": [site.specie.Z for site in structure],
        "pbc": [True, True, True],
    }
    magmoms = structure.site_properties.get("magmom")
    if magmoms is not None:
        data["magmoms"] = [float(m) for m in magmoms]  # collinear moments, μB
    return data


def atoms_dict_to_structure(data: Mapping) -> Structure:
    return Structure(Lattice(data["cell"]), data["numbers"], data["positions"], coords_are_cartesian=True)


# ---- running the worker --------------------------------------------------------------------

def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _job_dir(workdir: str | Path | None, label: str) -> Path:
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix=f"gpaw_{label}_"))
    path = Path(workdir) / f"{label}_{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def run_worker(
    atoms: Mapping,
    mode: str,
    settings: Mapping,
    *,
    directory: str | Path,
    nprocs: int = 1,
    timeout_s: float | None = None,
) -> dict:
    """Run one worker job in ``directory`` (in.json, out.json, gpaw.txt land there); return out.json.

    Raises :class:`GPAWError` when there is no successful result.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    settings = settings_with_defaults(settings)
    settings["txt"] = str(directory / "gpaw.txt")
    job_in, job_out = directory / "in.json", directory / "out.json"
    job_in.write_text(json.dumps({"atoms": dict(atoms), "mode": mode, "settings": settings}))
    job_out.unlink(missing_ok=True)

    python = gpaw_python()
    command = [python, str(WORKER), str(job_in), str(job_out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nprocs > 1:
        mpirun = shutil.which("mpirun")
        if mpirun is None:
            raise GPAWError(f"nprocs={nprocs} asked for, but mpirun is not on PATH")
        command = [mpirun, "-np", str(int(nprocs)), *command]
        if hasattr(os, "geteuid") and os.geteuid() == 0:  # Open MPI refuses root without these
            env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    try:
        proc = subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except FileNotFoundError as exc:
        raise GPAWError(f"GPAW python {python!r} not found (set GPAW_PYTHON): {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise GPAWError(f"GPAW worker timed out after {timeout_s} s (log: {settings['txt']})") from exc
    if not job_out.exists():
        tail = (proc.stderr or proc.stdout or "").strip()[-1500:]
        if proc.returncode in {-int(sig) for sig in _INTERRUPT_SIGNALS}:
            raise GPAWInterrupted(f"GPAW worker stopped by {signal.Signals(-proc.returncode).name}: {tail}")
        raise GPAWError(f"GPAW worker exited {proc.returncode} without a result: {tail}")
    result = json.loads(job_out.read_text())
    if not result.get("ok"):
        raise GPAWError(f"GPAW worker failed: {result.get('error')} (log: {settings['txt']})")
    return result


def gpaw_single_point(
    structure: Structure,
    *,
    workdir: str | Path | None = None,
    nprocs: int = 1,
    timeout_s: float | None = None,
    **settings,
) -> dict:
    """Energy (eV), energy_per_atom, forces (eV/Å, N×3 array), stress (Voigt, eV/Å³), kpts, seconds, log."""
    directory = _job_dir(workdir, f"sp_{structure.composition.reduced_formula}")
    out = run_worker(structure_to_atoms_dict(structure), "single_point", settings,
                     directory=directory, nprocs=nprocs, timeout_s=timeout_s)
    return {
        "energy": out["energy"],
        "energy_per_atom": out["energy"] / len(structure),
        "forces": np.asarray(out["forces"]),
        "max_force": out["max_force"],
        "stress": None if out["stress"] is None else np.asarray(out["stress"]),
        "kpts": out["kpts"],
        "seconds": out["seconds"],
        "log": out["log"],
        "gpaw_version": out.get("gpaw_version"),
    }


# ---- relaxer -------------------------------------------------------------------------------

def _explosion(initial: Structure, final: Structure, energy: float, max_force: float) -> str | None:
    ratio = final.volume / initial.volume
    if not (math.isfinite(energy) and math.isfinite(max_force)):
        return "non_finite: energy or forces not finite"
    if not 1 / VOLUME_RATIO_LIMIT <= ratio <= VOLUME_RATIO_LIMIT:
        return f"volume_change: V/V0 = {ratio:.2f}"
    if max_force > FORCE_LIMIT:
        return f"max_force: {max_force:.1f} eV/A > {FORCE_LIMIT}"
    if len(final) > 1:
        dmin = float(np.min(final.distance_matrix[np.triu_indices(len(final), 1)]))
        if dmin < MIN_DISTANCE:
            return f"atoms_collapsed: min distance {dmin:.2f} A < {MIN_DISTANCE}"
    return None


class GPAWRelaxer:
    """Relaxer protocol over the GPAW worker: FixSymmetry + cell filter + BFGS, PBE plane waves.

    ``workdir``: where each relaxation gets its own folder (in.json, out.json, gpaw.txt); a
    temporary folder when None. Keyword ``settings`` go to the worker (ecut, kpts, kspacing, ...).
    """

    name = "gpaw"

    def __init__(
        self,
        workdir: str | Path | None = None,
        *,
        symprec: float = RELAX_SYMPREC,
        nprocs: int = 1,
        timeout_s: float | None = None,
        **settings,
    ):
        self.workdir = workdir
        self.symprec = symprec
        self.nprocs = nprocs
        self.timeout_s = timeout_s
        self.settings = settings_with_defaults({**settings, "symprec": symprec})

    def calculator(self):
        raise NotImplementedError(
            "GPAW runs in the system Python as an external engine; use gpaw_single_point() instead")

    def relax(self, structure: Structure, *, fmax: float = 0.05, max_steps: int = 500) -> RelaxResult:
        wall0, cpu0 = time.perf_counter(), _children_cpu_seconds()
        sg_before = space_group_number(structure, self.symprec)

        def finish(verdict, reason, final=structure, energy=math.nan, max_force=math.nan, steps=0):
            sg_after = space_group_number(final, self.symprec)
            return RelaxResult(
                structure=final, energy=float(energy), energy_per_atom=float(energy) / max(len(final), 1),
                max_force=float(max_force), steps=int(steps), converged=verdict == "converged",
                verdict=verdict, reason=reason, sg_before=sg_before, sg_after=sg_after,
                symmetry_kept=sg_before is not None and sg_after == sg_before,
                seconds=time.perf_counter() - wall0, relaxer=self.name,
                cpu_seconds=_children_cpu_seconds() - cpu0,
            )

        settings = {**self.settings, "fmax": fmax, "max_steps": int(max_steps)}
        try:
            directory = _job_dir(self.workdir, f"relax_{structure.composition.reduced_formula}")
            out = run_worker(structure_to_atoms_dict(structure), "relax", settings,
                             directory=directory, nprocs=self.nprocs, timeout_s=self.timeout_s)
            final = atoms_dict_to_structure(out["atoms"])
        except TaskInterrupted:
            raise  # no verdict: the task runner retries it
        except Exception as exc:  # a row, not a crash
            return finish("failed", f"{type(exc).__name__}: {str(exc).strip()[:500]}")

        max_force = out.get("max_generalized_force", out["max_force"])
        exploded = _explosion(structure, final, out["energy"], max_force)
        if exploded:
            verdict, reason = "exploded", exploded
        elif max_force <= fmax:
            verdict, reason = "converged", ""
        else:
            verdict, reason = "not_converged", (f"max_steps: {out['steps']} steps, max force "
                                                f"{max_force:.3f} > fmax {fmax}")
        return finish(verdict, reason, final, out["energy"], max_force, out["steps"])


# ---- GPAW's own elemental references -------------------------------------------------------

def reference_atoms(symbol: str) -> tuple[dict, str]:
    """The worker JSON of an element's reference state and a description of the choice.

    Solids: ``ase.build.bulk(symbol)`` (ASE's reference crystal at its experimental lattice
    constant; Fe/Co/Ni ferromagnetic). H, N, O, F, Cl: the X2 molecule (``ase.build.molecule``,
    G2 geometry; O2 as the spin-polarized triplet) in a 10 Å cubic box at Γ. Raises ValueError
    for elements ASE has no buildable reference for (B, P, S, Mn, Ga, Se, Br, Te, I, noble gases
    He..., ...), naming the reason. Br and I: the X2 molecule in the box (see HALOGEN_MOLECULES).
    """
    from ase.build import bulk, molecule
    from ase.data import atomic_numbers, reference_states

    if symbol not in atomic_numbers:
        raise ValueError(f"{symbol!r} is not an element")
    if symbol in DIATOMIC_REFERENCES:
        atoms = molecule(f"{symbol}2")
        atoms.set_cell([MOLECULE_BOX] * 3)
        atoms.center()
        atoms.pbc = True
        data = {
            "cell": atoms.cell[:].tolist(), "positions": atoms.positions.tolist(),
            "numbers": atoms.numbers.tolist(), "pbc": [True] * 3,
        }
        magmoms = atoms.get_initial_magnetic_moments()
        if np.any(magmoms):
            data["magmoms"] = magmoms.tolist()
        spin = " spin-polarized (triplet)" if np.any(magmoms) else ""
        return data, f"{symbol}2 molecule{spin} in a {MOLECULE_BOX:g} A box, Gamma point"
    if symbol in HALOGEN_MOLECULES:
        half = HALOGEN_MOLECULES[symbol] / 2
        centre = MOLECULE_BOX / 2
        data = {"cell": (np.eye(3) * MOLECULE_BOX).tolist(), "numbers": [atomic_numbers[symbol]] * 2,
                "positions": [[centre, centre, centre - half], [centre, centre, centre + half]], "pbc": [True] * 3}
        return data, (f"{symbol}2 molecule in a {MOLECULE_BOX:g} A box, Gamma point (stands in for the "
                      "condensed standard state; its cohesive energy is left out)")
    state = reference_states[atomic_numbers[symbol]]
    try:
        atoms = bulk(symbol)
    except Exception as exc:
        kind = state.get("symmetry") if state else None
        raise ValueError(f"ASE cannot build a reference crystal for {symbol} (reference state: {kind}): {exc}") from exc
    data = {
        "cell": atoms.cell[:].tolist(), "positions": atoms.positions.tolist(),
        "numbers": atoms.numbers.tolist(), "pbc": [True] * 3,
    }
    description = f"bulk {state['symmetry']} (ase.build.bulk)"
    if symbol in MAGNETIC_REFERENCES:
        data["magmoms"] = [MAGNETIC_REFERENCES[symbol]] * len(atoms)
        description += ", ferromagnetic"
    return data, description


def _settings_key(settings: Mapping, relax: bool) -> str:
    relevant = {k: settings[k] for k in ("ecut", "xc", "kpts", "kspacing", "smearing", "convergence")}
    relevant["relax"] = bool(relax)
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


def gpaw_elemental_references(
    elements: Iterable[str],
    cache_dir: str | Path,
    *,
    relax: bool = True,
    fmax: float = 0.05,
    max_steps: int = 100,
    nprocs: int = 1,
    timeout_s: float | None = None,
    **settings,
) -> dict[str, float]:
    """GPAW energy per atom (eV) of each element's reference state, cached in ``cache_dir``.

    Uses the same worker settings as the compounds they will be compared with (pass the same
    ``ecut``/``kpts``/``kspacing``/``smearing``; prefer a k-point density or kspacing over an
    explicit mesh, which would be reused as-is for every cell). Molecules always use Γ only.
    ``relax``: symmetry-kept relaxation (cell too for solids) before taking the energy.
    Elements without a reference (see :func:`reference_atoms`) are left out with a warning.
    The cache (``gpaw_elemental_references.json``) is keyed by the energy-relevant settings.
    """
    settings = settings_with_defaults(settings)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache_path = cache_dir / REFERENCE_CACHE_NAME
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    key = _settings_key(settings, relax)
    entry = cache.setdefault(key, {"settings": {k: settings[k] for k in ("ecut", "xc", "kpts", "kspacing", "smearing")},
                                   "relax": relax, "elements": {}})
    references: dict[str, float] = {}
    for symbol in sorted(set(elements)):
        if symbol in entry["elements"]:
            references[symbol] = entry["elements"][symbol]["energy_per_atom"]
            continue
        try:
            atoms, description = reference_atoms(symbol)
        except ValueError as exc:
            warnings.warn(f"no GPAW elemental reference for {symbol}: {exc}", stacklevel=2)
            continue
        job = dict(settings)
        molecule = symbol in DIATOMIC_REFERENCES or symbol in HALOGEN_MOLECULES
        if molecule:
            job.update(kpts=[1, 1, 1], kspacing=None, relax_cell=False)
        mode = "relax" if relax else "single_point"
        if relax:
            job.update(fmax=fmax, max_steps=max_steps)
        directory = _job_dir(cache_dir, f"ref_{symbol}")
        out = run_worker(atoms, mode, job, directory=directory, nprocs=nprocs, timeout_s=timeout_s)
        n_atoms = len(out["atoms"]["numbers"])
        entry["elements"][symbol] = {
            "energy_per_atom": out["energy"] / n_atoms,
            "energy": out["energy"],
            "n_atoms": n_atoms,
            "reference": description,
            "kpts": out["kpts"],
            "relaxed": relax,
            "converged": out["converged"],
            "cell": out["atoms"]["cell"],
            "seconds": out["seconds"],
            "log": out["log"],
        }
        references[symbol] = entry["elements"][symbol]["energy_per_atom"]
        tmp = cache_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(cache_path)
    return references


def gpaw_formation_energy_per_atom(
    composition: Structure | Composition | str,
    total_energy: float,
    references: Mapping[str, float] | None = None,
    *,
    cache_dir: str | Path | None = None,
    **settings,
) -> float:
    """(E_total - Σ n_el μ_el) / N in eV/atom against GPAW's own elemental references.

    ``references``: energy per atom by element (from :func:`gpaw_elemental_references`); when
    None they are computed (or read from the cache) in ``cache_dir`` with ``settings``, which must
    be the settings that gave ``total_energy``. Note: the O2/N2 molecule references carry PBE's
    known overbinding error; no fitted correction is applied (GPAW E_f is on its own scale).
    """
    comp = composition.composition if isinstance(composition, Structure) else Composition(composition)
    elements = [el.symbol for el in comp.elements]
    if references is None:
        if cache_dir is None:
            raise ValueError("pass references, or cache_dir (and the settings) to compute them")
        references = gpaw_elemental_references(elements, cache_dir, **settings)
    missing = [el for el in elements if el not in references]
    if missing:
        raise ValueError(f"no GPAW elemental reference for {missing}")
    reference_sum = sum(amount * references[el.symbol] for el, amount in comp.items())
    return (float(total_energy) - reference_sum) / comp.num_atoms
