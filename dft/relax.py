"""Symmetry-constrained relaxation of trial structures with an ASE calculator.

One protocol (:class:`Relaxer`) and one implementation (:class:`AseRelaxer`): ``FixSymmetry``
appended to the structure's existing constraints, a ``FrechetCellFilter`` relaxing positions and
cell together, an ASE optimizer by name (FIRE default, BFGS, ...). The MLIPs are thin subclasses
(:class:`CHGNetRelaxer`, :class:`SevenNetRelaxer`) built by :func:`get_relaxer`; each model is
loaded once per process, on first use, and cached in ``_MODELS``.

Decisions, so the numbers in a :class:`RelaxResult` mean one thing:

* Symmetry: ``FixSymmetry(symprec=RELAX_SYMPREC)`` (1e-3 Angstrom) fixes the group spglib finds
  at that tolerance (ASE symmetrizes the input to it first). ``sg_before`` and ``sg_after`` are
  spglib numbers at the *same* tolerance, 1e-3, so ``symmetry_kept = sg_after == sg_before``
  compares like with like; a looser tolerance afterwards would report supergroups of a
  slightly-off cell as "changed". Gaining symmetry (a supergroup after relaxation) counts as not
  kept: the gene's space group is what we test.
* Convergence is checked here, not trusted from the optimizer: the largest row norm of the
  filter's generalized forces (atoms and the cell's virial rows, eV/Angstrom) must be
  ``<= fmax``. ``max_force`` reports that same number.
* Exploded (bad physics, never an exception): non-finite energy or forces at any step; volume
  outside ``[1/3, 3] x`` the initial volume at any step; at the end an energy per atom outside
  ``ENERGY_PER_ATOM_BOUNDS`` = (-20, +5) eV (MP-compatible total energies lie in about
  -14..0 eV/atom), a max force above ``FORCE_LIMIT`` = 100 eV/Angstrom, or two atoms closer than
  ``MIN_DISTANCE`` = 0.5 Angstrom.
* Any exception inside the calculator or optimizer gives verdict "failed" with the reason.
* Energies are the calculator's raw total energies (eV); for CHGNet those are on MP's
  (GGA/GGA+U, MP2020-compatible) scale; corrections are applied elsewhere.
* Threads: a relaxation runs torch and BLAS/OpenMP with ``threads`` threads (default 1,
  None leaves them alone; restored afterwards). Small cells are latency-bound, and on a busy 2-core machine
  multi-threaded pools spin against each other: one CHGNet call on 5 atoms took ~1.7 CPU-s with
  2 torch threads vs 0.06 CPU-s with 1, and the FrechetCellFilter's 3x3 ``expm_frechet``
  spent ~11 ms per LU solve in multi-threaded OpenBLAS. Parallelism belongs across structures
  (processes), not inside one.
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

RELAX_SYMPREC = 1e-3
ENERGY_PER_ATOM_BOUNDS = (-20.0, 5.0)  # eV/atom
FORCE_LIMIT = 100.0  # eV/Angstrom, final
VOLUME_RATIO_LIMIT = 3.0
MIN_DISTANCE = 0.5  # Angstrom
OPTIMIZERS = ("FIRE", "BFGS", "LBFGS", "BFGSLineSearch", "LBFGSLineSearch", "MDMin", "GPMin")

VERDICTS = ("converged", "not_converged", "exploded", "failed")


@dataclass
class RelaxResult:
    structure: object  # pymatgen Structure: relaxed, or the last one reached
    energy: float  # total energy, eV (nan when never computed)
    energy_per_atom: float
    max_force: float  # eV/Angstrom, largest filter row (atoms and cell)
    steps: int
    converged: bool
    verdict: str  # one of VERDICTS
    reason: str  # "" when converged
    sg_before: int | None  # spglib at RELAX_SYMPREC
    sg_after: int | None  # spglib at RELAX_SYMPREC
    symmetry_kept: bool
    seconds: float  # wall time
    relaxer: str
    cpu_seconds: float = 0.0  # process CPU time (all threads)
    # which cell ``structure`` is: "input" (the cell given), "conventional" (relaxed in the
    # primitive cell, returned in spglib's conventional cell) or "primitive" (the conventional
    # cell could not be recovered; ``reason`` says why). See relax_primitive.
    cell: str = "input"


@runtime_checkable
class Relaxer(Protocol):
    name: str

    def relax(self, structure, *, fmax: float = 0.05, max_steps: int = 500) -> RelaxResult: ...

    def calculator(self):  # an ASE calculator with the same potential (phonons etc.)
        ...


class _Exploded(Exception):
    pass


@contextlib.contextmanager
def limited_threads(n: int | None, *, torch_too: bool = False):
    """Run a block with ``n`` BLAS/OpenMP threads (threadpoolctl) and ``n`` torch intra-op
    threads (when torch is loaded already or ``torch_too``; torch is not imported otherwise, it
    costs seconds). None leaves everything as is. The previous settings are restored."""
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    torch = None
    if torch_too or "torch" in sys.modules:
        import torch
    old = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(int(n))
    try:
        with threadpool_limits(limits=int(n)):
            yield
    finally:
        if torch is not None:
            torch.set_num_threads(old)


def space_group_number(atoms_or_structure, symprec: float = RELAX_SYMPREC) -> int | None:
    """spglib space-group number of an ASE Atoms or a pymatgen Structure (None when none)."""
    import spglib

    if hasattr(atoms_or_structure, "get_cell"):
        a = atoms_or_structure
        cell = (np.asarray(a.get_cell()), a.get_scaled_positions(wrap=True), a.get_atomic_numbers())
    else:
        s = atoms_or_structure
        cell = (s.lattice.matrix, s.frac_coords, [site.specie.Z for site in s])
    try:
        ds = spglib.get_symmetry_dataset(cell, symprec=symprec)
    except Exception:  # None is recorded by the caller (RelaxResult.reason: "spglib found no space group")
        return None
    return None if ds is None else int(ds.number)


def _to_atoms(structure):
    from ase import Atoms

    if isinstance(structure, Atoms):
        return structure.copy()  # keeps constraints
    from pymatgen.io.ase import AseAtomsAdaptor

    return AseAtomsAdaptor.get_atoms(structure)


def _to_structure(atoms):
    from pymatgen.io.ase import AseAtomsAdaptor

    plain = atoms.copy()
    plain.set_constraint()
    plain.calc = None
    return AseAtomsAdaptor.get_structure(plain)


def _min_distance(atoms) -> float:
    from ase.neighborlist import neighbor_list

    d = neighbor_list("d", atoms, MIN_DISTANCE + 0.5)
    return float(d.min()) if len(d) else math.inf


class AseRelaxer:
    """Relax with any ASE calculator; ``calculator_factory()`` returns a fresh calculator."""

    uses_torch = False  # MLIP subclasses: set torch's thread count before the model loads

    def __init__(self, calculator_factory: Callable[[], object], *, name: str = "ase",
                 optimizer: str = "FIRE", symprec: float = RELAX_SYMPREC, threads: int | None = 1):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        self.name = name
        self.optimizer = optimizer
        self.symprec = symprec
        self._factory = calculator_factory
        self.threads = threads

    def calculator(self):
        return self._factory()

    def relax(self, structure, *, fmax: float = 0.05, max_steps: int = 500) -> RelaxResult:
        """Relax positions and cell under the structure's symmetry; never raises for bad physics."""
        with limited_threads(self.threads, torch_too=self.uses_torch):
            return self._relax(structure, fmax=fmax, max_steps=max_steps)

    def _relax(self, structure, *, fmax: float, max_steps: int) -> RelaxResult:
        from ase import optimize
        from ase.constraints import FixSymmetry
        from ase.filters import FrechetCellFilter

        wall0, cpu0 = time.perf_counter(), time.process_time()
        atoms = _to_atoms(structure)
        n_atoms = len(atoms)
        sg_before = space_group_number(atoms, self.symprec)
        state = {"energy": math.nan, "max_force": math.nan, "steps": 0}

        def finish(verdict: str, reason: str) -> RelaxResult:
            try:
                final = _to_structure(atoms)
            except Exception as exc:  # the relaxed cell is lost: a failed row, never the input cell
                final, verdict = None, "failed"
                why = f"structure_conversion_failed: {type(exc).__name__}: {str(exc).strip()[:300]}"
                reason = f"{why}; {reason}" if reason else why
            sg_after = space_group_number(atoms, self.symprec)
            if sg_before is None or sg_after is None:
                why = f"spglib found no space group at symprec {self.symprec} ({'before' if sg_before is None else 'after'})"
                reason = f"{reason}; {why}" if reason else why
            energy = float(state["energy"])
            return RelaxResult(
                structure=final, energy=energy, energy_per_atom=energy / max(n_atoms, 1),
                max_force=float(state["max_force"]), steps=int(state["steps"]),
                converged=verdict == "converged", verdict=verdict, reason=reason,
                sg_before=sg_before, sg_after=sg_after,
                symmetry_kept=sg_before is not None and sg_after == sg_before,
                seconds=time.perf_counter() - wall0, relaxer=self.name,
                cpu_seconds=time.process_time() - cpu0,
            )

        try:
            atoms.calc = self._factory()
            atoms.set_constraint(list(atoms.constraints) + [FixSymmetry(atoms, symprec=self.symprec)])
            volume0 = atoms.get_volume()
            cell_filter = FrechetCellFilter(atoms)
            opt = getattr(optimize, self.optimizer)(cell_filter, logfile=None)

            def check() -> None:
                energy = atoms.get_potential_energy()
                gen_forces = cell_filter.get_forces()
                state["energy"] = energy
                if not (math.isfinite(energy) and np.all(np.isfinite(gen_forces))):
                    raise _Exploded("non_finite: energy or forces not finite")
                state["max_force"] = float(np.linalg.norm(gen_forces, axis=1).max())
                ratio = atoms.get_volume() / volume0
                if not (1 / VOLUME_RATIO_LIMIT <= ratio <= VOLUME_RATIO_LIMIT):
                    raise _Exploded(f"volume_change: V/V0 = {ratio:.2f}")

            check()
            for _ in opt.irun(fmax=fmax, steps=max_steps):
                state["steps"] = opt.nsteps
                check()
            state["steps"] = opt.nsteps
            check()

            e_atom = state["energy"] / n_atoms
            lo, hi = ENERGY_PER_ATOM_BOUNDS
            if not lo <= e_atom <= hi:
                raise _Exploded(f"energy_per_atom: {e_atom:.2f} eV outside [{lo}, {hi}]")
            if state["max_force"] > FORCE_LIMIT:
                raise _Exploded(f"max_force: {state['max_force']:.1f} eV/A > {FORCE_LIMIT}")
            dmin = _min_distance(atoms)
            if dmin < MIN_DISTANCE:
                raise _Exploded(f"atoms_collapsed: min distance {dmin:.2f} A < {MIN_DISTANCE}")
        except _Exploded as exc:
            return finish("exploded", str(exc))
        except Exception as exc:  # calculator or optimizer failure: a row, not a crash
            return finish("failed", f"{type(exc).__name__}: {str(exc).strip()[:500]}")

        if state["max_force"] <= fmax:
            return finish("converged", "")
        return finish("not_converged", f"max_steps: {state['steps']} steps, max force "
                      f"{state['max_force']:.3f} > fmax {fmax}")


# ---- machine-learned potentials, loaded lazily once per process ---------------------------

_MODELS: dict[str, object] = {}
_MODELS_LOCK = threading.Lock()


def _cached_model(key: str, load: Callable[[], object]):
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = _MODELS[key] = load()
        return model


def _load_chgnet(model_name: str):
    from chgnet.model import CHGNet

    with contextlib.redirect_stdout(io.StringIO()):
        return CHGNet.load(model_name=model_name, use_device="cpu", verbose=False)


class CHGNetRelaxer(AseRelaxer):
    """CHGNet (pretrained weights shipped in the wheel, offline) on the CPU."""

    uses_torch = True

    def __init__(self, *, model_name: str = "0.3.0", optimizer: str = "FIRE", symprec: float = RELAX_SYMPREC,
                 threads: int | None = 1):
        super().__init__(self._make_calculator, name="chgnet", optimizer=optimizer, symprec=symprec,
                         threads=threads)
        self.model_name = model_name

    def _make_calculator(self):
        from chgnet.model.dynamics import CHGNetCalculator

        model = _cached_model(f"chgnet:{self.model_name}", lambda: _load_chgnet(self.model_name))
        with contextlib.redirect_stdout(io.StringIO()):  # it prints the device
            return CHGNetCalculator(model=model, use_device="cpu", on_isolated_atoms="ignore")


def _load_sevennet(model_name: str):
    from sevenn import util

    checkpoint = util.load_checkpoint(model_name)
    model = checkpoint.build_model()
    model.set_is_batch_data(False)
    return model


class SevenNetRelaxer(AseRelaxer):
    """SevenNet (``7net-0`` by default; checkpoint shipped in the wheel) on the CPU."""

    uses_torch = True

    def __init__(self, *, model_name: str = "7net-0", optimizer: str = "FIRE", symprec: float = RELAX_SYMPREC,
                 threads: int | None = 1):
        super().__init__(self._make_calculator, name="sevennet", optimizer=optimizer, symprec=symprec,
                         threads=threads)
        self.model_name = model_name

    def _make_calculator(self):
        from sevenn.calculator import SevenNetCalculator

        model = _cached_model(f"sevennet:{self.model_name}", lambda: _load_sevennet(self.model_name))
        return SevenNetCalculator(model=model, file_type="model_instance", device="cpu")


def primitive_cell(structure, symprec: float = RELAX_SYMPREC):
    """spglib's primitive cell of ``structure`` at ``symprec``; the structure itself when it is
    primitive already or spglib cannot analyse it."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        primitive = SpacegroupAnalyzer(structure, symprec=symprec).find_primitive()
    except Exception:  # not an error in a result: the given cell is then relaxed as it is (cell "input")
        return structure
    return primitive if primitive is not None and len(primitive) < len(structure) else structure


def relax_primitive(relaxer, structure, *, fmax: float = 0.05, max_steps: int = 500) -> RelaxResult:
    """Relax a centred cell (I, F, C, A, R) in its primitive cell -- 2-4x fewer atoms for the
    potential and the same symmetry -- and return it in spglib's standard conventional cell
    (ITA setting) with the energy scaled to that cell (``cell="conventional"``), so the result reads
    exactly like a conventional-cell relaxation. Primitive input is relaxed as it is
    (``cell="input"``). When the conventional cell cannot be recovered from the relaxed primitive
    one (spglib fails, or finds a cell that is not a whole multiple of it -- the relaxation gained
    a translation), the primitive cell is returned as ``cell="primitive"`` with the reason
    appended: its energy and energy per atom are that cell's own."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    primitive = primitive_cell(structure)
    if primitive is structure:  # primitive already, or spglib could not analyse it: relax as given
        return relaxer.relax(structure, fmax=fmax, max_steps=max_steps)
    result = relaxer.relax(primitive, fmax=fmax, max_steps=max_steps)
    result.cell = "primitive"
    if result.structure is None or result.verdict not in ("converged", "not_converged"):
        return result

    def kept_primitive(why: str) -> RelaxResult:
        note = f"conventional_cell_not_recovered: {why}; reported in the primitive cell"
        result.reason = f"{result.reason}; {note}" if result.reason else note
        return result

    try:
        conventional = SpacegroupAnalyzer(result.structure, symprec=RELAX_SYMPREC).get_refined_structure()
    except Exception as exc:
        return kept_primitive(f"{type(exc).__name__}: {str(exc).strip()[:300]}")
    if len(conventional) % len(result.structure):
        return kept_primitive(f"spglib's refined cell has {len(conventional)} atoms, not a multiple of the "
                              f"relaxed primitive cell's {len(result.structure)}")
    factor = len(conventional) // len(result.structure)
    result.structure = conventional
    result.energy = result.energy * factor
    result.cell = "conventional"
    return result


RELAXERS: dict[str, type[AseRelaxer]] = {"chgnet": CHGNetRelaxer, "sevennet": SevenNetRelaxer}
DEFAULT_RELAXER = "chgnet"


def get_relaxer(name: str = DEFAULT_RELAXER, **kwargs) -> AseRelaxer:
    """A relaxer by name ("chgnet" default, "sevennet"); kwargs go to its constructor."""
    key = str(name).lower()
    if key not in RELAXERS:
        raise ValueError(f"unknown relaxer {name!r}; valid: {', '.join(sorted(RELAXERS))}")
    return RELAXERS[key](**kwargs)
