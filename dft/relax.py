"""Symmetry-constrained relaxation of trial structures with an ASE calculator.

One protocol (:class:`Relaxer`) and one implementation (:class:`AseRelaxer`): ``FixSymmetry``
appended to the structure's existing constraints, a ``FrechetCellFilter`` relaxing positions and
cell together, an ASE optimizer by name (BFGS default, FIRE, ...). The MLIPs are thin subclasses
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
import functools
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
# ASE's BFGS (its defaults: initial Hessian 70 eV/A^2, trust radius 0.2 A per row, no line
# search) rather than FIRE: on the 40 seeded trials of benchmarks/batch_relax_benchmark.py (CHGNet,
# fmax 0.05 on the filter's rows, max_steps 300) it took 2180 steps to FIRE's 3519 (54 vs 88 per
# structure), converged 39/40 to FIRE's 37/40 (FIRE hit max_steps twice; one exploded on both),
# and where the two reach different minima (14 of 37 by > 1 meV/atom, random trials start far
# from any) BFGS ended lower 9 times and higher 5 (mean -36 meV/atom). Both paths (per-structure
# and batched) use the same optimizer, so their verdicts and energies agree.
DEFAULT_OPTIMIZER = "BFGS"

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


def deformation_log(matrix) -> np.ndarray:
    """Principal logarithm of a real 3x3 matrix whose eigenvalues have positive real parts (a
    deformation gradient), as ``scipy.linalg.logm`` returns it, by the Gregory series
    ``log A = 2 artanh(Z) = 2 (Z + Z^3/3 + Z^5/5 + ...)``, ``Z = (A - I)(A + I)^-1``, which
    converges when the eigenvalues of ``A`` have positive real parts and fast for the
    near-identity deformations of a relaxation (``|Z| ~ |A - I| / 2``: ~15 terms at a 30 %
    strain). scipy's general algorithm (Schur form, square roots, Pade) costs ~1 ms of Python
    per 3x3 call, more than the rest of the filter; this costs ~0.05 ms. Falls back to scipy
    when the series does not converge within 400 terms."""
    a = np.asarray(matrix, dtype=float)
    eye = np.eye(3)
    try:
        z = (a - eye) @ np.linalg.inv(a + eye)
    except np.linalg.LinAlgError:
        z = None
    if z is not None and np.all(np.isfinite(z)):
        z2 = z @ z
        term, total = z.copy(), z.copy()
        for j in range(1, 400):
            term = term @ z2
            step = term / (2 * j + 1)
            total += step
            size = np.abs(step).max()
            if size <= 1e-17 * np.abs(total).max() or size == 0.0:
                return 2.0 * total
            if not size < 1e3:  # diverging (an eigenvalue with a non-positive real part)
                break
    from scipy.linalg import logm

    return np.real(logm(a))


def _cached_frechet_filter(atoms):
    return _cached_filter_class()(atoms)


@functools.cache
def _cached_filter_class():
    """ASE's ``FrechetCellFilter`` with its generalized forces computed once per configuration
    and with fewer, cheaper matrix functions per step; same degrees of freedom, forces and steps
    (to ~1e-14). A profile of the batched path (20 trials, FIRE) had scipy's ``logm`` and
    ``expm_frechet`` at ~20 % of the CPU time, the model at ~50 %.

    * The filter recomputes the generalized forces on every ``get_forces``; an optimizer step
      reads them two or three times at the same positions. They are cached, keyed on the atoms'
      positions and cell, so any change recomputes them.
    * The cell force is the deformation-gradient virial ``G`` contracted with the Frechet
      derivative of ``expm`` at ``X = logm(F)`` in each of the nine unit directions ``E_mn``;
      ASE takes nine ``expm_frechet`` calls. Since ``<L(X, E), G> = <E, L(X^T, G)>`` (the adjoint
      of ``expm``'s Frechet derivative is the derivative at the transpose), one call gives all
      nine: ``L(X^T, G)``.
    * The matrix logarithm is :func:`deformation_log` (a series, not scipy's general ``logm``).
    * ``get_positions`` needs ``logm(N F)`` (the cell degrees of freedom, ``N`` = atoms) at the
      configuration whose forces were just computed with ``logm(F)``: it reuses that as
      ``logm(F) + ln(N) I`` instead of a second matrix logarithm.

    Built with the filter's default options only (no mask, hydrostatic strain, constant volume or
    pressure: the relaxations use none). tests/test_relax_filter.py checks forces, positions and
    whole relaxations against ASE's own filter."""
    from ase.filters import FrechetCellFilter
    from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress
    from scipy.linalg import expm_frechet

    class CachedFrechetCellFilter(FrechetCellFilter):
        _key = None
        _forces = None
        _log = (None, None)  # (cell bytes, logm of the deformation gradient)

        def _deform_log(self):
            cell = np.asarray(self.atoms.cell)
            key = cell.tobytes()
            if self._log[0] != key:
                self._log = (key, deformation_log(self._utility.deform_grad(cell)))
            return self._log[1]

        def get_positions(self):
            n = len(self.atoms)
            deform = self._utility.deform_grad(np.asarray(self.atoms.cell))
            pos = np.zeros((n + 3, 3))
            pos[:n] = np.linalg.solve(deform, self.atoms.get_positions().T).T
            pos[n:] = (self._deform_log() + math.log(float(n)) * np.eye(3)) * self.exp_cell_factor
            return pos

        def get_forces(self, **kwargs):
            key = (self.atoms.positions.tobytes(), np.asarray(self.atoms.cell).tobytes())
            if kwargs:
                return super().get_forces(**kwargs)
            if self._forces is None or key != self._key:
                self._key, self._forces = key, self._generalized_forces()
            return self._forces.copy()

        def _generalized_forces(self):
            stress = self.atoms.get_stress()
            atoms_forces = self.atoms.get_forces()
            cell = self.atoms.get_cell()
            volume = cell.volume
            virial = -volume * voigt_6_to_full_3x3_stress(stress)
            deform = self._utility.deform_grad(np.asarray(cell))
            log = self._deform_log()
            cell_grad = virial @ np.linalg.inv(deform.T)
            n = len(atoms_forces)
            forces = np.zeros((n + 3, 3))
            forces[:n] = atoms_forces @ deform
            forces[n:] = expm_frechet(log.T, cell_grad, compute_expm=False) / self.exp_cell_factor
            self.stress = full_3x3_to_voigt_6_stress(-(virial / volume))
            return forces

    return CachedFrechetCellFilter


class Relaxation:
    """One structure's symmetry-kept relaxation, advanced one step at a time by a driver.

    The state is exactly the per-structure machinery: an ASE ``Atoms`` with ``FixSymmetry``
    appended to its constraints, a ``FrechetCellFilter`` over it and the optimizer by name. A
    driver alternates :meth:`evaluate` (read energy and forces at the current configuration from
    the calculator -- which computes them, or serves results computed for a whole batch -- then run
    the convergence and explosion checks) and :meth:`step` (one optimizer step) until ``done``;
    ``result`` is then the :class:`RelaxResult`. :class:`AseRelaxer` drives one relaxation with a
    real calculator, :mod:`dft.batch_relax` many in lockstep, so verdicts cannot drift apart.
    Nothing raises: a failure anywhere finishes the relaxation with verdict "failed"."""

    def __init__(self, structure, calculator, *, name: str, optimizer: str = DEFAULT_OPTIMIZER,
                 symprec: float = RELAX_SYMPREC, fmax: float = 0.05, max_steps: int = 500):
        from ase import optimize
        from ase.constraints import FixSymmetry

        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        self.cpu_seconds: float | None = None  # a batch driver accounts CPU itself
        self.input, self.name, self.symprec = structure, name, symprec
        self.fmax, self.max_steps = float(fmax), int(max_steps)
        self.energy, self.max_force, self.steps = math.nan, math.nan, 0
        self.result: RelaxResult | None = None
        self.atoms = None
        self.sg_before = None
        try:
            self.atoms = _to_atoms(structure)
            self.n_atoms = len(self.atoms)
            self.sg_before = space_group_number(self.atoms, symprec)
            self.atoms.calc = calculator
            self.atoms.set_constraint(list(self.atoms.constraints) + [FixSymmetry(self.atoms, symprec=symprec)])
            self.volume0 = self.atoms.get_volume()
            self.filter = _cached_frechet_filter(self.atoms)
            self.optimizer = getattr(optimize, optimizer)(self.filter, logfile=None)
        except Exception as exc:
            self.fail(exc)

    @property
    def done(self) -> bool:
        return self.result is not None

    def evaluate(self) -> None:
        """Energy and generalized forces at the current configuration, then the checks: finish as
        exploded (non-finite, volume), converged (largest filter row <= fmax) or not converged
        (max_steps reached; both after the final checks), or stay active for the next step."""
        if self.done:
            return
        try:
            energy = self.atoms.get_potential_energy()
            gen_forces = self.filter.get_forces()
            self.energy = energy
            if not (math.isfinite(energy) and np.all(np.isfinite(gen_forces))):
                raise _Exploded("non_finite: energy or forces not finite")
            self.max_force = float(np.linalg.norm(gen_forces, axis=1).max())
            ratio = self.atoms.get_volume() / self.volume0
            if not (1 / VOLUME_RATIO_LIMIT <= ratio <= VOLUME_RATIO_LIMIT):
                raise _Exploded(f"volume_change: V/V0 = {ratio:.2f}")
            if self.max_force <= self.fmax or self.steps >= self.max_steps:
                self._final_checks()
                if self.max_force <= self.fmax:
                    self._finish("converged", "")
                else:
                    self._finish("not_converged", f"max_steps: {self.steps} steps, max force "
                                 f"{self.max_force:.3f} > fmax {self.fmax}")
        except _Exploded as exc:
            self._finish("exploded", str(exc))
        except Exception as exc:  # calculator failure: a row, not a crash
            self.fail(exc)

    def step(self) -> None:
        """One optimizer step from the evaluated configuration."""
        if self.done:
            return
        try:
            self.optimizer.step()
            self.optimizer.nsteps += 1
            self.steps = self.optimizer.nsteps
        except Exception as exc:
            self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        """Finish with verdict "failed" and the exception as the reason (a batch driver passes
        the exception its batched evaluation raised for this structure)."""
        if isinstance(exc, _Exploded):
            self._finish("exploded", str(exc))
        else:
            self._finish("failed", f"{type(exc).__name__}: {str(exc).strip()[:500]}")

    def _final_checks(self) -> None:
        e_atom = self.energy / self.n_atoms
        lo, hi = ENERGY_PER_ATOM_BOUNDS
        if not lo <= e_atom <= hi:
            raise _Exploded(f"energy_per_atom: {e_atom:.2f} eV outside [{lo}, {hi}]")
        if self.max_force > FORCE_LIMIT:
            raise _Exploded(f"max_force: {self.max_force:.1f} eV/A > {FORCE_LIMIT}")
        dmin = _min_distance(self.atoms)
        if dmin < MIN_DISTANCE:
            raise _Exploded(f"atoms_collapsed: min distance {dmin:.2f} A < {MIN_DISTANCE}")

    def _finish(self, verdict: str, reason: str) -> None:
        atoms = self.atoms
        final, sg_after = self.input, None
        if atoms is not None:
            try:
                final = _to_structure(atoms)
            except Exception as exc:  # the relaxed cell is lost: a failed row, never the input cell
                final, verdict = None, "failed"
                why = f"structure_conversion_failed: {type(exc).__name__}: {str(exc).strip()[:300]}"
                reason = f"{why}; {reason}" if reason else why
            sg_after = space_group_number(atoms, self.symprec)
            if self.sg_before is None or sg_after is None:
                why = (f"spglib found no space group at symprec {self.symprec} "
                       f"({'before' if self.sg_before is None else 'after'})")
                reason = f"{reason}; {why}" if reason else why
        n_atoms = len(atoms) if atoms is not None else 0
        energy = float(self.energy)
        cpu = self.cpu_seconds if self.cpu_seconds is not None else time.process_time() - self.cpu0
        self.result = RelaxResult(
            structure=final, energy=energy, energy_per_atom=energy / max(n_atoms, 1),
            max_force=float(self.max_force), steps=int(self.steps),
            converged=verdict == "converged", verdict=verdict, reason=reason,
            sg_before=self.sg_before, sg_after=sg_after,
            symmetry_kept=self.sg_before is not None and sg_after == self.sg_before,
            seconds=time.perf_counter() - self.wall0, relaxer=self.name, cpu_seconds=cpu,
        )
        if atoms is not None:
            atoms.calc = None  # release the calculator (and a batch's served results)


class AseRelaxer:
    """Relax with any ASE calculator; ``calculator_factory()`` returns a fresh calculator."""

    uses_torch = False  # MLIP subclasses: set torch's thread count before the model loads

    def __init__(self, calculator_factory: Callable[[], object], *, name: str = "ase",
                 optimizer: str = DEFAULT_OPTIMIZER, symprec: float = RELAX_SYMPREC, threads: int | None = 1):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        self.name = name
        self.optimizer = optimizer
        self.symprec = symprec
        self._factory = calculator_factory
        self.threads = threads

    def calculator(self):
        return self._factory()

    def _relax_calculator(self):
        """The calculator a relaxation steps with (by default :meth:`calculator`'s)."""
        return self._factory()

    def relax(self, structure, *, fmax: float = 0.05, max_steps: int = 500) -> RelaxResult:
        """Relax positions and cell under the structure's symmetry; never raises for bad physics."""
        with limited_threads(self.threads, torch_too=self.uses_torch):
            try:
                calculator = self._relax_calculator()
            except Exception as exc:
                calculator, error = None, exc
            else:
                error = None
            run = Relaxation(structure, calculator, name=self.name, optimizer=self.optimizer,
                             symprec=self.symprec, fmax=fmax, max_steps=max_steps)
            if error is not None:
                run.fail(error)
            while not run.done:
                run.evaluate()
                run.step()
            return run.result


# ---- machine-learned potentials: one registry, loaded lazily once per process ----------------

ENERGY_SCALES = ("mp2020_corrected", "mp_raw")


@dataclass(frozen=True)
class ModelSpec:
    """One MLIP whose weights ship inside an installed wheel (never downloaded at run time).

    ``family``: the package that runs it ("chgnet" | "sevennet"); ``checkpoint``: the package's own
    name for the weights; ``weights``: the file, relative to the package's pretrained folder;
    ``modal``: the fidelity head of a multi-fidelity model (None otherwise); ``energy_scale``:
    "mp2020_corrected" when the model's total energies are already on MP's corrected scale,
    "mp_raw" when they are raw MPtrj (PBE / PBE+U) energies that MP2020 still corrects."""

    name: str
    family: str
    checkpoint: str
    weights: str
    modal: str | None
    energy_scale: str
    description: str


def _spec(name, family, checkpoint, weights, modal, energy_scale, description) -> ModelSpec:
    assert energy_scale in ENERGY_SCALES, energy_scale
    return ModelSpec(name, family, checkpoint, weights, modal, energy_scale, description)


# Energy scales are measured, not assumed: tests/test_model_registry.py relaxes a snapshot oxide
# with every model and checks E_f (through dft.pipeline.score_relaxations) against MP's within
# 0.1 eV/atom; applying MP2020 to CHGNet (or leaving it off SevenNet) misses by ~0.3 eV/atom.
MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    _spec("chgnet", "chgnet", "0.3.0", "0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar", None, "mp2020_corrected",
          "CHGNet 0.3.0 (MPtrj; fitted to MP2020-corrected energies); matbench-discovery F1 0.613"),
    _spec("sevennet", "sevennet", "7net-0", "SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth", None, "mp_raw",
          "alias of sevennet-0 (the name older tables carry)"),
    _spec("sevennet-0", "sevennet", "7net-0", "SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth", None, "mp_raw",
          "SevenNet-0 11Jul2024 (MPtrj raw energies); matbench-discovery F1 0.724"),
    _spec("sevennet-l3i5", "sevennet", "7net-l3i5", "SevenNet_l3i5/checkpoint_l3i5.pth", None, "mp_raw",
          "SevenNet-l3i5 (MPtrj raw energies, l_max 3, 5 layers); matbench-discovery F1 0.760"),
    _spec("sevennet-mf0", "sevennet", "7net-mf-0", "SevenNet_MF_0/checkpoint_sevennet_mf_0.pth", "PBE", "mp_raw",
          "SevenNet-MF-0 multi-fidelity (PBE/PBE+U MPtrj + r2SCAN heads), evaluated with the PBE head"),
)}
from dft.model_choice import DEFAULT_RELAXER  # noqa: E402  (the defaults live in one place)

_PRETRAINED_DIRS = {"chgnet": ("chgnet", "pretrained"), "sevennet": ("sevenn", "pretrained_potentials")}


def model_spec(name: str) -> ModelSpec:
    """The registry entry of ``name`` (case-insensitive); ValueError naming the known models."""
    spec = MODELS.get(str(name).lower())
    if spec is None:
        raise ValueError(f"unknown relaxer {name!r}; valid: {', '.join(sorted(MODELS))}")
    return spec


def weights_path(spec: ModelSpec):
    """Where ``spec``'s weights lie in its installed package (found without importing it)."""
    import importlib.util
    from pathlib import Path

    package, folder = _PRETRAINED_DIRS[spec.family]
    found = importlib.util.find_spec(package)
    if found is None or not found.origin:
        return None
    return Path(found.origin).parent / folder / spec.weights


def available_models() -> list[str]:
    """Registry names whose weights are installed here."""
    return [name for name, spec in sorted(MODELS.items()) if (p := weights_path(spec)) is not None and p.is_file()]


def require_weights(name: str):
    """The weights file of model ``name``; a clear error (never a download) when it is missing."""
    spec = model_spec(name)
    path = weights_path(spec)
    if path is None or not path.is_file():
        package = _PRETRAINED_DIRS[spec.family][0]
        raise FileNotFoundError(
            f"model {spec.name!r} ({spec.description}): weights {spec.weights!r} not found in the installed "
            f"{package!r} package ({path or 'package not installed'}); weights are never downloaded at run "
            f"time. Models available here: {', '.join(available_models()) or 'none'}")
    return path


_MODELS: dict[str, object] = {}
_MODELS_LOCK = threading.Lock()


def _cached_model(key: str, load: Callable[[], object]):
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = _MODELS[key] = load()
        return model


def _load_chgnet(spec: ModelSpec):
    require_weights(spec.name)  # before importing the package (seconds) and never a download
    from chgnet.model import CHGNet

    with contextlib.redirect_stdout(io.StringIO()):
        return CHGNet.load(model_name=spec.checkpoint, use_device="cpu", verbose=False)


def _load_sevennet(spec: ModelSpec):
    path = require_weights(spec.name)
    from sevenn import util

    # a file path: sevenn's name resolver (which downloads some checkpoints) is never reached
    checkpoint = util.load_checkpoint(str(path))
    model = checkpoint.build_model()
    model.set_is_batch_data(False)
    if spec.modal is not None and spec.modal not in (model.modal_map or {}):
        raise ValueError(f"model {spec.name!r}: modal {spec.modal!r} not in its heads {sorted(model.modal_map or {})}")
    return model


_LOADERS = {"chgnet": _load_chgnet, "sevennet": _load_sevennet}


def load_model(name: str):
    """The torch model of registry entry ``name`` on the CPU, loaded once per process (aliases
    sharing one weights file share one instance)."""
    spec = model_spec(name)
    return _cached_model(f"{spec.family}:{spec.weights}", lambda: _LOADERS[spec.family](spec))


class MLIPRelaxer(AseRelaxer):
    """An :class:`AseRelaxer` whose calculator is a registry model; ``name`` is the registry name
    (recorded in every result row, so models with one family stay distinguishable)."""

    uses_torch = True
    family = ""

    def __init__(self, model: str | None = None, *, optimizer: str = DEFAULT_OPTIMIZER, symprec: float = RELAX_SYMPREC,
                 threads: int | None = 1):
        self.spec = model_spec(model or self.family)
        if self.family and self.spec.family != self.family:
            raise ValueError(f"{type(self).__name__} runs {self.family} models, not {self.spec.name!r}")
        super().__init__(self._make_calculator, name=self.spec.name, optimizer=optimizer, symprec=symprec,
                         threads=threads)

    def _make_calculator(self):
        raise NotImplementedError


class CHGNetRelaxer(MLIPRelaxer):
    """CHGNet (pretrained weights shipped in the wheel, offline) on the CPU."""

    family = "chgnet"

    def _make_calculator(self):
        from chgnet.model.dynamics import CHGNetCalculator

        model = load_model(self.spec.name)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints the device
            return CHGNetCalculator(model=model, use_device="cpu", on_isolated_atoms="ignore")

    def _relax_calculator(self):
        """Relaxations step with the batched evaluator on one structure (dft.batch_relax.CHGNetBatch:
        CHGNet's graph, model and composition model, forces and stress from one backward pass),
        so the per-structure path and the batched one compute the same numbers and follow the
        same path. CHGNetCalculator's own forces come from two double-backward gradients that
        differ at float32 rounding (~1e-4 eV/A on a rough trial); with BFGS that was enough to
        send 4 of 40 random trials into different minima (up to 40 meV/atom apart).
        tests/test_batch_relax.py checks the evaluator against CHGNetCalculator."""
        from dft.batch_relax import CHGNetBatch, EvaluatorCalculator

        return EvaluatorCalculator(CHGNetBatch(load_model(self.spec.name)))


class SevenNetRelaxer(MLIPRelaxer):
    """SevenNet (``sevennet-0`` by default; checkpoints shipped in the wheel) on the CPU; a
    multi-fidelity checkpoint runs with its registry ``modal``."""

    family = "sevennet"

    def __init__(self, model: str | None = None, **kwargs):
        super().__init__(model or "sevennet", **kwargs)

    def _make_calculator(self):
        from sevenn.calculator import SevenNetCalculator

        model = load_model(self.spec.name)
        model.set_is_batch_data(False)  # the batched path may share this instance
        return SevenNetCalculator(model=model, file_type="model_instance", device="cpu", modal=self.spec.modal)


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
    primitive = primitive_cell(structure)
    if primitive is structure:  # primitive already, or spglib could not analyse it: relax as given
        return relaxer.relax(structure, fmax=fmax, max_steps=max_steps)
    return conventional_result(relaxer.relax(primitive, fmax=fmax, max_steps=max_steps))


def conventional_result(result: RelaxResult) -> RelaxResult:
    """A primitive-cell relaxation reported in spglib's standard conventional cell, the energy
    scaled to it (``cell="conventional"``); ``cell="primitive"`` with the reason when it carries no
    usable structure or the refinement finds another cell. The per-structure and batched paths
    both use this."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

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


RELAXER_CLASSES: dict[str, type[MLIPRelaxer]] = {"chgnet": CHGNetRelaxer, "sevennet": SevenNetRelaxer}
RELAXERS = MODELS  # registry names (kept for callers that list them)


def get_relaxer(name: str = DEFAULT_RELAXER, **kwargs) -> MLIPRelaxer:
    """The relaxer of registry entry ``name`` (see ``MODELS``); kwargs go to its constructor
    (optimizer, symprec, threads). Unknown names raise ValueError; missing weights raise
    FileNotFoundError when the model is first used."""
    spec = model_spec(name)
    require_weights(spec.name)
    return RELAXER_CLASSES[spec.family](spec.name, **kwargs)
