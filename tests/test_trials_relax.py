"""dft.trials (PyXtal trials of a Wyckoff gene) and dft.relax (symmetry-kept relaxations)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes
from pymatgen.core import Lattice, Structure

from dft.relax import AseRelaxer, RelaxResult, Relaxer, get_relaxer
from dft.trials import build_trial, generate_trials, n_trials
from ml.genes import gene_from_structure, gene_key, validate_gene

SRTIO3 = ("SrTiO3", 221, {"Sr": ["1a"], "Ti": ["1b"], "O": ["3c"]})
CATIO3_PNMA = ("CaTiO3", 62, {"Ca": ["4c"], "Ti": ["4b"], "O": ["4c", "8d"]})


def _same_structure(a: Structure, b: Structure) -> bool:
    return (
        [str(s.specie) for s in a] == [str(s.specie) for s in b]
        and np.allclose(a.lattice.matrix, b.lattice.matrix, atol=1e-10)
        and np.allclose(a.frac_coords, b.frac_coords, atol=1e-10)
    )


def test_dft_imports_without_dagster_or_models():
    code = (
        "import sys, dft.trials, dft.relax; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('dagster', 'torch', 'chgnet', 'sevenn')]; "
        "assert not bad, bad; assert dft.relax._MODELS == {}"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---- trials --------------------------------------------------------------------------------

def test_n_trials_is_dof_plus_one():
    assert n_trials(0) == 1
    assert n_trials(7) == 8


def test_dof0_gene_gives_one_cubic_trial():
    (trial,) = generate_trials(*SRTIO3, seed=0)
    assert trial.verdict == "ok" and trial.reason == ""
    s = trial.structure
    assert s.composition.as_dict() == {"Sr": 1.0, "Ti": 1.0, "O": 3.0}
    assert trial.space_group_built == 221
    assert np.allclose(s.lattice.abc, s.lattice.a) and np.allclose(s.lattice.angles, 90)
    assert trial.min_distance > 0.5 and trial.seconds < 10


def test_dof_gene_gives_dof_plus_one_reproducible_trials():
    dof = validate_gene(*CATIO3_PNMA).total_dof
    assert dof == 7
    first = generate_trials(*CATIO3_PNMA, seed=42)
    again = generate_trials(*CATIO3_PNMA, seed=42)
    other = generate_trials(*CATIO3_PNMA, seed=43)
    assert len(first) == len(again) == dof + 1
    assert all(t.verdict == "ok" for t in first)
    for t in first:
        assert t.structure.composition.as_dict() == {"Ca": 4.0, "Ti": 4.0, "O": 12.0}
        assert t.space_group_built == 62
        assert t.min_distance > 0.5
    assert [t.seed for t in first] == [t.seed for t in again]
    assert all(_same_structure(a.structure, b.structure) for a, b in zip(first, again))
    assert not _same_structure(first[0].structure, other[0].structure)
    # a single trial is rebuilt from its recorded seed
    rebuilt = build_trial(*CATIO3_PNMA, seed=first[3].seed, trial=3)
    assert _same_structure(rebuilt.structure, first[3].structure)
    assert len(generate_trials(*CATIO3_PNMA, seed=42, n=2)) == 2
    # a trial budget keeps the first trials of the uncapped run (their relaxations are reused)
    capped = generate_trials(*CATIO3_PNMA, seed=42, max_trials=3)
    assert [t.seed for t in capped] == [t.seed for t in first[:3]]
    assert all(_same_structure(a.structure, b.structure) for a, b in zip(capped, first))
    assert len(generate_trials(*CATIO3_PNMA, seed=42, max_trials=100)) == dof + 1


@pytest.mark.parametrize(
    "wyckoff, reason",
    [
        ({"Sr": ["1a"], "Ti": ["1a"], "O": ["3c"]}, "dof0_site_occupied_twice"),
        ({"Sr": ["1z"], "Ti": ["1b"], "O": ["3c"]}, "letter_not_in_space_group"),
        ({"Sr": ["1a"], "Ti": ["1b"], "O": ["1c"]}, "multiplicity_mismatch"),
    ],
)
def test_impossible_gene_is_a_verdict_not_an_exception(wyckoff, reason):
    (result,) = generate_trials("SrTiO3", 221, wyckoff, seed=0)
    assert result.verdict == "invalid_gene"
    assert result.structure is None
    assert result.reason.startswith(reason)


def test_unbuildable_and_too_close_trials_are_verdicts():
    (failed,) = generate_trials(*SRTIO3, seed=0, tol_factor=100.0, max_attempts=1)
    assert failed.verdict == "pyxtal_failed" and failed.structure is None and failed.reason
    (close,) = generate_trials(*SRTIO3, seed=0, min_distance=50.0, max_attempts=2)
    assert close.verdict == "too_close" and close.min_distance < 50.0 and close.reason.startswith("too_close")


# ---- relaxation ----------------------------------------------------------------------------

class FakeCalculator(Calculator):
    """Energy per atom, zero or given forces and stress; or NaN; or an exception."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, energy_per_atom=-5.0, stress=0.0, fail=False):
        super().__init__()
        self.energy_per_atom, self.stress, self.fail = energy_per_atom, stress, fail

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.fail:
            raise RuntimeError("calculator blew up")
        n = len(self.atoms)
        energy = self.energy_per_atom * n
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": np.zeros((n, 3)) * (1.0 if np.isfinite(energy) else np.nan),
            "stress": np.array([self.stress] * 3 + [0.0] * 3),
        }


@pytest.fixture(scope="module")
def chgnet() -> AseRelaxer:
    relaxer = get_relaxer()  # default: CHGNet
    assert relaxer.name == "chgnet" and isinstance(relaxer, Relaxer)
    return relaxer


@pytest.fixture(scope="module")
def srtio3() -> Structure:
    return generate_trials(*SRTIO3, seed=0)[0].structure  # a ~4.8 A cubic cell


def pnma_catio3() -> Structure:
    """Pnma CaTiO3 near its relaxed geometry (Ti on 4b), rounded and on the experimental cell."""
    return Structure.from_spacegroup(
        62,
        Lattice.orthorhombic(5.44, 7.64, 5.38),
        ["Ca", "Ti", "O", "O"],
        [[0.04, 0.25, 0.99], [0.0, 0.0, 0.5], [0.98, 0.25, 0.42], [0.79, 0.04, 0.79]],
    )


def test_get_relaxer_names():
    with pytest.raises(ValueError, match="chgnet, sevennet"):
        get_relaxer("m3gnet")


def test_chgnet_relaxes_cubic_srtio3_keeping_221(chgnet, srtio3):
    result = chgnet.relax(srtio3)
    assert isinstance(result, RelaxResult)
    assert result.verdict == "converged" and result.converged and result.max_force <= 0.05
    assert result.sg_before == result.sg_after == 221 and result.symmetry_kept
    assert result.structure.lattice.a == pytest.approx(3.905, rel=0.03)
    assert -10 < result.energy_per_atom < -6  # raw CHGNet (MP-compatible) total energy
    assert result.energy == pytest.approx(5 * result.energy_per_atom)
    assert result.relaxer == "chgnet" and result.steps > 0 and result.seconds > 0


def test_chgnet_keeps_pnma_catio3(chgnet):
    start = pnma_catio3()
    gene, _ = gene_from_structure(start)
    assert gene.key == gene_key(*CATIO3_PNMA)
    result = chgnet.relax(start)
    assert result.verdict == "converged", result.reason
    assert result.sg_before == result.sg_after == 62 and result.symmetry_kept  # M3GNet broke 62 -> 14
    assert gene_from_structure(result.structure)[0].key == gene_key(*CATIO3_PNMA)


def test_max_steps_gives_not_converged(chgnet, srtio3):
    result = chgnet.relax(srtio3, max_steps=2)
    assert result.verdict == "not_converged" and not result.converged
    assert result.steps == 2 and result.reason.startswith("max_steps")
    assert result.structure is not None and result.symmetry_kept


@pytest.mark.parametrize(
    "calculator, expected, reason",
    [
        (lambda: FakeCalculator(energy_per_atom=float("nan")), "exploded", "non_finite"),
        (lambda: FakeCalculator(energy_per_atom=1e4), "exploded", "energy_per_atom"),
        (lambda: FakeCalculator(stress=-1.0), "exploded", "volume_change"),
        (lambda: FakeCalculator(fail=True), "failed", "RuntimeError"),
    ],
)
def test_bad_physics_is_a_row_not_an_exception(calculator, expected, reason, srtio3):
    result = AseRelaxer(calculator, name="fake").relax(srtio3, max_steps=200)
    assert result.verdict == expected and not result.converged
    assert result.reason.startswith(reason), result.reason
    assert result.relaxer == "fake" and result.structure is not None


def test_collapsed_atoms_are_exploded():
    two_close = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.02, 0, 0]])  # 0.1 A apart
    result = AseRelaxer(FakeCalculator, name="fake").relax(two_close)
    assert result.verdict == "exploded" and result.reason.startswith("atoms_collapsed")


def test_fixsymmetry_is_appended_to_existing_constraints(srtio3):
    from ase.constraints import FixAtoms
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(srtio3)
    atoms.set_constraint(FixAtoms(indices=[0]))
    result = AseRelaxer(FakeCalculator, name="fake").relax(atoms)
    assert result.verdict == "converged" and result.symmetry_kept


@pytest.mark.slow
def test_sevennet_relaxes_srtio3(srtio3):
    relaxer = get_relaxer("sevennet")
    result = relaxer.relax(srtio3)
    assert result.verdict == "converged" and result.relaxer == "sevennet"
    assert result.sg_after == 221
    assert result.structure.lattice.a == pytest.approx(3.905, rel=0.03)
    assert relaxer.calculator() is not None


@pytest.mark.slow
def test_chgnet_keeps_pnma_from_a_random_trial(chgnet):
    trial = generate_trials(*CATIO3_PNMA, seed=0)[1]
    result = chgnet.relax(trial.structure)
    assert result.verdict == "converged" and result.symmetry_kept and result.sg_after == 62


def test_centred_cells_relax_in_their_primitive_cell_and_come_back_conventional():
    """fcc Cu (conventional 4 atoms, primitive 1) with EMT: the primitive relaxation returns the
    conventional cell with the energy of 4 atoms, equal to relaxing the conventional cell itself."""
    from ase.calculators.emt import EMT

    from dft.relax import relax_primitive

    cu = Structure(Lattice.cubic(3.7), ["Cu"] * 4, [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]])
    emt = AseRelaxer(EMT, name="emt")
    direct = emt.relax(cu, fmax=0.01, max_steps=200)
    seen = []

    class Spy:  # records the cell the potential actually sees
        def relax(self, s, **kw):
            seen.append(len(s))
            return emt.relax(s, **kw)

    via = relax_primitive(Spy(), cu, fmax=0.01, max_steps=200)
    assert seen == [1]
    assert direct.converged and via.converged and via.sg_after == 225
    assert len(via.structure) == 4
    assert via.energy == pytest.approx(direct.energy, abs=2e-3)
    assert via.structure.lattice.a == pytest.approx(direct.structure.lattice.a, abs=2e-3)
    assert via.structure.lattice.angles == pytest.approx((90, 90, 90))
    # a primitive cell goes straight through
    seen.clear()
    prim = Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]])
    relax_primitive(Spy(), prim, fmax=0.5, max_steps=1)
    assert seen == [5]
