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
        opt.run(fmax=1e-3, steps=300)
        runs.append((opt.nsteps, atoms.get_potential_energy(), atoms.cell.cellpar()))
    (steps_a, e_a, cell_a), (steps_b, e_b, cell_b) = runs
    assert steps_a == steps_b < 300
    assert e_a == pytest.approx(e_b, abs=1e-8) and np.allclose(cell_a, cell_b, atol=1e-6)
