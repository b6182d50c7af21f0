"""PyXtal trial structures of a Wyckoff gene.

A gene (formula, space group, {element: [Wyckoff labels]}) fixes which orbits each element
occupies; the free coordinates and the lattice are drawn at random by PyXtal. The paper builds
``total DoF + 1`` trials per gene (one when the gene has no free coordinate) and relaxes each.

Reproducibility: trial ``t`` of a call with ``seed`` gets its own seed
``trial_seed(seed, t)`` (a ``numpy.random.SeedSequence`` of ``(seed, t)``), and attempt ``k`` of
that trial draws from ``numpy.random.default_rng([trial_seed, k])``. A rerun with the same seed
gives identical lattices and coordinates; a single trial can be rebuilt from its recorded seed
with :func:`build_trial`.

Distances: PyXtal's atomic tolerance matrix (``Tol_matrix(prototype="atomic", factor=f)``)
rejects pairs closer than ``f * (r_cov,i + r_cov,j) / 2`` while placing atoms; the built
structure is then checked against the paper's validity metric (every interatomic distance,
periodic images included, above ``min_distance``, default 0.5 Angstrom).

Symmetry of the built structure (``space_group_built``) is spglib's at ``BUILT_SYMPREC`` = 1e-3
Angstrom, the tolerance that relaxations (``dft.relax``) fix the symmetry with. A random draw
can land on a supergroup (rare for DoF > 0); the trial is still "ok" and the number says so.

Nothing here raises for a bad gene: every outcome is a :class:`TrialResult` with a verdict.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np

from ml.genes import GeneError, canonical_wyckoff, validate_gene

BUILT_SYMPREC = 1e-3
DEFAULT_MIN_DISTANCE = 0.5  # Angstrom, paper's validity threshold
DEFAULT_TOL_FACTOR = 1.0  # scales PyXtal's half-covalent-radius-sum pair tolerance

VERDICTS = ("ok", "pyxtal_failed", "too_close", "invalid_gene")


@dataclass
class TrialResult:
    trial: int
    seed: int  # this trial's own seed (see module docstring)
    structure: object | None  # pymatgen Structure (conventional cell) or None
    verdict: str  # one of VERDICTS
    reason: str  # "" when ok; machine-readable prefix otherwise ("reason: detail")
    min_distance: float | None  # Angstrom, shortest interatomic distance incl. periodic images
    seconds: float  # wall time of this trial, all attempts included
    space_group_built: int | None  # spglib at BUILT_SYMPREC
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"


def n_trials(total_dof: int) -> int:
    """Trials per gene (paper): total DoF + 1, and 1 when the gene has no free coordinate."""
    return max(int(total_dof), 0) + 1


def trial_seed(seed: int, trial: int) -> int:
    """The seed of trial ``trial`` of a call seeded with ``seed`` (deterministic, 32-bit)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(trial)]).generate_state(1)[0])


@functools.lru_cache(maxsize=256)
def _group(space_group: int):
    from pyxtal.symmetry import Group

    return Group(space_group)


@functools.lru_cache(maxsize=8)
def _tol_matrix(factor: float):
    from pyxtal.tolerance import Tol_matrix

    return Tol_matrix(prototype="atomic", factor=factor)


def min_interatomic_distance(structure) -> float:
    """Shortest distance between two atoms (periodic images of the same atom included)."""
    for cutoff in (4.0, 8.0, 16.0):
        _, _, _, dists = structure.get_neighbor_list(r=cutoff)
        dists = dists[dists > 1e-8]
        if len(dists):
            return float(dists.min())
    return float(min(structure.lattice.abc))


def space_group_of(structure, symprec: float = BUILT_SYMPREC) -> int | None:
    """spglib space-group number of a pymatgen Structure, or None when spglib finds none."""
    return space_group_and_error(structure, symprec)[0]


def space_group_and_error(structure, symprec: float = BUILT_SYMPREC) -> tuple[int | None, str]:
    """(spglib space-group number or None, why it is None -- "" when found)."""
    import spglib

    cell = (structure.lattice.matrix, structure.frac_coords, [site.specie.Z for site in structure])
    try:
        ds = spglib.get_symmetry_dataset(cell, symprec=symprec)
    except Exception as exc:
        return None, f"spglib failed: {type(exc).__name__}: {exc}"[:300]
    if ds is None:
        return None, f"spglib found no space group at symprec {symprec}"
    return int(ds.number), ""


def _gene_inputs(formula: str, space_group: int, wyckoff: dict):
    """(species, numIons, sites, total_dof) or raise GeneError."""
    summary = validate_gene(formula, space_group, wyckoff)
    canon = canonical_wyckoff(wyckoff)
    species = list(canon)
    return species, [summary.counts[el] for el in species], [list(canon[el]) for el in species], summary.total_dof


def build_trial(formula: str, space_group: int, wyckoff: dict, *, seed: int, trial: int = 0,
                max_attempts: int = 10, min_distance: float = DEFAULT_MIN_DISTANCE,
                tol_factor: float = DEFAULT_TOL_FACTOR, _inputs=None) -> TrialResult:
    """One trial from its own seed (``TrialResult.seed``); retries up to ``max_attempts``."""
    start = time.perf_counter()

    def result(structure, verdict, reason, dmin=None, sg=None, attempts=0):
        return TrialResult(trial, int(seed), structure, verdict, reason, dmin,
                           time.perf_counter() - start, sg, attempts)

    try:
        species, num_ions, sites, _ = _inputs or _gene_inputs(formula, space_group, wyckoff)
    except GeneError as exc:
        return result(None, "invalid_gene", str(exc))

    from pyxtal import pyxtal

    group = _group(int(space_group))
    tm = _tol_matrix(float(tol_factor))
    last_reason = "pyxtal_failed: no attempt made"
    last_close = None
    for attempt in range(max(1, int(max_attempts))):
        rng = np.random.default_rng([int(seed), attempt])
        crystal = pyxtal()
        try:
            crystal.from_random(3, group, species, num_ions, sites=sites, tm=tm,
                                random_state=rng, max_count=1)
            if not crystal.valid:
                raise RuntimeError("pyxtal returned an invalid crystal")
            structure = crystal.to_pymatgen()
        except Exception as exc:  # Comp_CompatibilityError, ValueError, RuntimeError, ...
            last_reason = f"pyxtal_failed: {type(exc).__name__}: {str(exc).strip()}"
            if isinstance(exc, ValueError) and "incompatible" in str(exc):
                break  # the Wyckoff list cannot hold the composition: retrying won't help
            continue
        dmin = min_interatomic_distance(structure)
        if dmin <= min_distance:
            last_close = (structure, dmin, attempt + 1)
            continue
        sg, why = space_group_and_error(structure)  # "ok" with the reason when spglib finds none
        return result(structure, "ok", why, dmin, sg, attempt + 1)
    if last_close is not None:
        structure, dmin, attempts = last_close
        return result(structure, "too_close", f"too_close: {dmin:.3f} A <= {min_distance} A",
                      dmin, space_group_of(structure), attempts)
    return result(None, "pyxtal_failed", last_reason, attempts=max(1, int(max_attempts)))


def generate_trials(formula: str, space_group: int, wyckoff: dict, *, seed: int, n: int | None = None,
                    max_attempts: int = 10, min_distance: float = DEFAULT_MIN_DISTANCE,
                    tol_factor: float = DEFAULT_TOL_FACTOR) -> list[TrialResult]:
    """``n`` trials of a gene (default :func:`n_trials` of its total DoF), reproducible by ``seed``.

    An invalid gene gives one ``invalid_gene`` result; a gene PyXtal cannot realize gives
    ``pyxtal_failed`` results. Never raises for a bad gene.
    """
    start = time.perf_counter()
    try:
        inputs = _gene_inputs(formula, space_group, wyckoff)
    except GeneError as exc:
        return [TrialResult(0, trial_seed(seed, 0), None, "invalid_gene", str(exc), None,
                            time.perf_counter() - start, None)]
    count = n_trials(inputs[3]) if n is None else int(n)
    return [
        build_trial(formula, space_group, wyckoff, seed=trial_seed(seed, t), trial=t,
                    max_attempts=max_attempts, min_distance=min_distance, tol_factor=tol_factor,
                    _inputs=inputs)
        for t in range(count)
    ]
