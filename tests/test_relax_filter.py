"""dft.relax's cached Frechet cell filter equals ASE's FrechetCellFilter: same generalized forces,
positions and optimizer trajectory, with one matrix logarithm and one Frechet derivative per
configuration instead of two and nine."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.constraints import FixSymmetry
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS, FIRE

from dft.relax import _cached_frechet_filter


def strained_cu():
    """fcc Cu in a 4-atom cell under an asymmetric strain with rattled atoms: every cell and
    position component carries force."""
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
    atoms.set_cell(atoms.cell @ np.array([[1.02, 0.03, 0.0], [0.01, 0.97, 0.02], [0.0, -0.02, 1.05]]),
                   scale_atoms=True)
    atoms.rattle(0.05, seed=2)
    atoms.calc = EMT()
    return atoms


def test_forces_and_positions_equal_ases_filter():
    atoms = strained_cu()
    ours, ase_filter = _cached_frechet_filter(atoms), FrechetCellFilter(atoms)
    for _ in range(3):  # the initial configuration, then two moved ones
        want = ase_filter.get_forces()
        assert np.abs(want[-3:]).max() > 0.05  # the cell does carry force
        assert np.allclose(ours.get_forces(), want, rtol=1e-10, atol=1e-12)
        assert np.allclose(ours.get_positions(), ase_filter.get_positions(), rtol=1e-10, atol=1e-12)
        assert np.allclose(ours.stress, ase_filter.stress, rtol=1e-10, atol=1e-12)
        x = ase_filter.get_positions()
        ase_filter.set_positions(x + 0.01 * want / np.abs(want).max())  # moves atoms and cell


@pytest.mark.parametrize("optimizer", [FIRE, BFGS])
def test_relaxation_follows_the_same_path(optimizer):
    runs = []
    for make in (_cached_frechet_filter, FrechetCellFilter):
        atoms = strained_cu()
        atoms.set_constraint(FixSymmetry(atoms, symprec=1e-3))
        opt = optimizer(make(atoms), logfile=None)
        opt.run(fmax=0.01, steps=150)
        runs.append((opt.nsteps, atoms.get_potential_energy(), atoms.cell.cellpar()))
    (steps_a, e_a, cell_a), (steps_b, e_b, cell_b) = runs
    assert steps_a == steps_b < 150
    assert e_a == pytest.approx(e_b, abs=1e-8) and np.allclose(cell_a, cell_b, atol=1e-6)


def test_deformation_log_equals_scipys_logm():
    """Against scipy.linalg.logm on random deformation gradients (symmetric and not, up to 40 %
    strain), the identity, a pure rotation-free shear, and exp(log F) = F."""
    from scipy.linalg import expm, logm

    from dft.relax import deformation_log

    rng = np.random.default_rng(0)
    cases = [np.eye(3), np.array([[1, 0.3, 0], [0, 1, 0], [0, 0, 1.0]]), np.diag([0.6, 1.0, 1.4])]
    for scale in (1e-6, 0.01, 0.1, 0.4):
        for _ in range(6):
            m = np.eye(3) + scale * rng.uniform(-1, 1, (3, 3))
            cases += [m, 0.5 * (m + m.T)]
    for f in cases:
        got = deformation_log(f)
        assert np.allclose(got, np.real(logm(f)), rtol=1e-12, atol=1e-14)
        assert np.allclose(expm(got), f, rtol=1e-12, atol=1e-14)
    # eigenvalues with a negative real part: no principal real log series; scipy's answer
    flipped = np.diag([-1.0, 2.0, 1.0])
    assert np.allclose(deformation_log(flipped), np.real(logm(flipped)))


def test_default_optimizer_reaches_the_emt_lattice_constant_of_cu():
    """Hand-checkable: fcc Cu with EMT, started 4 % too large. The equilibrium lattice constant is
    the minimum of E(a), found here by a parabola through a scan (independently of any optimizer);
    the default optimizer (BFGS) and FIRE both relax to it under the same fmax, BFGS in fewer
    steps."""
    from pymatgen.core import Lattice, Structure

    from dft.relax import DEFAULT_OPTIMIZER, AseRelaxer

    grid = np.linspace(3.55, 3.63, 9)
    energies = []
    for a in grid:
        atoms = bulk("Cu", "fcc", a=a, cubic=True)
        atoms.calc = EMT()
        energies.append(atoms.get_potential_energy())
    c2, c1, _ = np.polyfit(grid, energies, 2)
    a0 = -c1 / (2 * c2)
    assert 3.58 < a0 < 3.60  # ASE's EMT Cu: 3.59 A

    start = Structure(Lattice.cubic(3.73), ["Cu"] * 4, [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]])
    assert DEFAULT_OPTIMIZER == "BFGS"
    results = {name: AseRelaxer(EMT, name="emt", optimizer=name).relax(start, fmax=0.005, max_steps=200)
               for name in ("BFGS", "FIRE")}
    for name, r in results.items():
        assert r.converged and r.sg_after == 225 and r.symmetry_kept, name
        assert r.structure.lattice.a == pytest.approx(a0, abs=2e-3), name
    assert results["BFGS"].energy == pytest.approx(results["FIRE"].energy, abs=1e-4)
    assert results["BFGS"].steps < results["FIRE"].steps
