"""dft.energetics (MP2020 energies, formation energies, snapshot hull, novelty) and dft.phonons
(phonopy verdicts with an ASE calculator). Fast cases use ASE's EMT; CHGNet cases are slow."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from pymatgen.core import Composition, Lattice, Structure

from dft.energetics import (
    SCHEME_NOTE,
    NoveltyChecker,
    SnapshotHull,
    formation_energy_per_atom,
    load_elemental_references,
    mp_compatible_energy,
)
from dft.phonons import PhononResult, band_structure_png, phonon_verdict

CUBIC_SRTIO3 = dict(lattice=Lattice.cubic(3.905), species=["Sr", "Ti", "O", "O", "O"],
                    coords=[[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


@pytest.fixture(scope="module")
def refs_path(shared_data):
    return shared_data / "mp-elemental-reference-entries.json.gz"


@pytest.fixture(scope="module")
def parquet(shared_data):
    return shared_data / "mp_snapshot" / "materials.parquet"


@pytest.fixture(scope="module")
def hull(parquet):
    return SnapshotHull.from_parquet(parquet)


@pytest.fixture(scope="module")
def novelty(parquet):
    return NoveltyChecker.from_parquet(parquet)


@pytest.fixture(scope="module")
def snapshot_rows(parquet):
    return pl.read_parquet(parquet, columns=["material_id", "formula_pretty", "nelements",
                                             "formation_energy_per_atom", "energy_above_hull", "cif"])


def _mp2020_yaml() -> dict:
    from pathlib import Path

    import pymatgen.analysis.compatibility as compat
    from monty.serialization import loadfn

    return loadfn(Path(compat.__file__).parent / "MP2020Compatibility.yaml")


# ----------------------------------------------------------------------------- energetics


def test_library_imports_neither_dagster_nor_models():
    code = ("import sys, dft.energetics, dft.phonons; "
            "bad = [m for m in ('dagster', 'chgnet', 'torch') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_elemental_references_match_the_entries(refs_path):
    from monty.serialization import loadfn

    refs = load_elemental_references(refs_path)
    entries = loadfn(refs_path)  # {element: ComputedEntry}, read independently
    assert len(refs) == len(entries) == 89
    for element in ("O", "Ti", "Sr", "Fe"):
        assert refs[element] == pytest.approx(entries[element].energy_per_atom, abs=1e-9)
    assert refs["O"] == pytest.approx(-4.9467, abs=1e-4)  # MP's O2 reference, eV/atom


def test_mp2020_oxide_correction_of_srtio3(refs_path):
    structure = Structure(**CUBIC_SRTIO3)
    result = mp_compatible_energy(structure, -40.0)
    oxide = _mp2020_yaml()["Corrections"]["CompositionCorrections"]["oxide"]
    assert oxide == pytest.approx(-0.687)
    assert result.ok and result.reason is None
    assert result.run_type == "GGA" and result.hubbards == {}
    assert result.correction == pytest.approx(3 * oxide)
    assert result.corrected_energy == pytest.approx(-40.0 + 3 * oxide)
    refs = load_elemental_references(refs_path)
    ef = formation_energy_per_atom(structure.composition, result.corrected_energy, refs)
    assert ef == pytest.approx((result.corrected_energy - refs["Sr"] - refs["Ti"] - 3 * refs["O"]) / 5)


def test_mp2020_gga_u_mixing_for_iron_oxide():
    structure = Structure(Lattice.cubic(4.3), ["Fe", "O"] * 4,
                          [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [0, 0, .5], [.5, 0, .5], [0, .5, 0],
                           [0, .5, .5], [.5, 0, 0]])
    corrections = _mp2020_yaml()["Corrections"]
    result = mp_compatible_energy(structure, -60.0)
    assert result.run_type == "GGA+U" and result.hubbards == {"Fe": 5.3}
    expected = 4 * corrections["CompositionCorrections"]["oxide"] + 4 * corrections["GGAUMixingCorrections"]["O"]["Fe"]
    assert result.correction == pytest.approx(expected)


def test_mp2020_rejection_gives_reason_not_exception():
    # MPRelaxSet has no POTCAR for Po: MP2020 rejects the entry
    structure = Structure(Lattice.cubic(3.4), ["Po", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    result = mp_compatible_energy(structure, -10.0)
    assert not result.ok and result.corrected_energy is None
    assert "POTCAR" in result.reason


def test_formation_energy_needs_every_reference():
    with pytest.raises(ValueError, match="Xe|reference"):
        formation_energy_per_atom("XeO3", -10.0, {"O": -4.9})
    assert formation_energy_per_atom("O2", 2 * -4.9, {"O": -4.9}) == pytest.approx(0.0)


def test_hull_reproduces_mp_formation_energies_of_ground_states(hull, snapshot_rows):
    on_hull = snapshot_rows.filter((pl.col("energy_above_hull") == 0) & (pl.col("nelements") == 3)).sample(25, seed=3)
    for row in on_hull.iter_rows(named=True):
        assert hull.e_above_hull(row["formula_pretty"], row["formation_energy_per_atom"]) == pytest.approx(0, abs=1e-6)
        assert hull.hull_energy_per_atom(row["formula_pretty"]) == pytest.approx(row["formation_energy_per_atom"], abs=1e-6)


def test_hull_distances_against_stored_values(hull, snapshot_rows):
    """The snapshot is a subset of MP: fewer competing phases can only lower the hull distance,
    and most materials keep MP's value (the hull phases that decide it are in the subset)."""
    sample = snapshot_rows.filter(pl.col("nelements") == 3).sample(120, seed=11)
    ours = np.array([hull.e_above_hull(r["formula_pretty"], r["formation_energy_per_atom"])
                     for r in sample.iter_rows(named=True)])
    stored = sample["energy_above_hull"].to_numpy()
    assert np.all(ours <= stored + 1e-6)
    assert np.mean(np.abs(ours - stored) < 0.02) >= 0.75


def test_leave_one_out_removes_the_only_ground_state(parquet, hull):
    ef = -0.230183  # Ce3AlC (mp-10036), the only Ce3AlC entry, on MP's hull
    assert hull.e_above_hull("Ce3AlC", ef) == pytest.approx(0, abs=1e-5)
    loo = SnapshotHull.from_parquet(parquet, exclude_ids=["mp-10036"])
    assert loo.hull_energy_per_atom("Ce3AlC") > ef + 1e-3
    assert loo.e_above_hull("Ce3AlC", ef) < -1e-3  # rediscovered below the reduced hull
    assert loo.e_above_hull("Ce3AlC", 0.0) > 0


def test_unknown_element_is_a_clear_error(hull):
    with pytest.raises(ValueError):
        hull.e_above_hull("Xx2O3", -1.0)
    with pytest.raises(ValueError, match="Po"):
        hull.e_above_hull("PoO2", -1.0)  # a real element absent from the snapshot


def test_scheme_note_names_the_caveats():
    for phrase in ("MaterialsProject2020Compatibility", "2023-02-07", "GPAW", "snapshot"):
        assert phrase in SCHEME_NOTE


# ----------------------------------------------------------------------------- novelty


def _snapshot_structure(snapshot_rows, material_id) -> Structure:
    cif = snapshot_rows.filter(pl.col("material_id") == material_id)["cif"][0]
    return Structure.from_str(cif, fmt="cif")


def test_novelty_matches_itself_and_a_rattled_supercell(novelty, snapshot_rows):
    ilmenite = _snapshot_structure(snapshot_rows, "mp-754329")  # CdSnO3 R-3, one of two polymorphs
    assert novelty.match(ilmenite) == (False, "mp-754329")
    rattled = ilmenite.copy()
    rattled.make_supercell([2, 1, 1])
    rattled.perturb(0.02, min_distance=0.005)
    rattled.scale_lattice(rattled.volume * 1.03)
    assert novelty.match(rattled) == (False, "mp-754329")


def test_other_polymorph_or_formula_is_novel(novelty, parquet, snapshot_rows):
    cubic = Structure(Lattice.cubic(4.0), ["Cd", "Sn", "O", "O", "O"], CUBIC_SRTIO3["coords"])
    assert novelty.match(cubic) == (True, None)  # snapshot has CdSnO3 only as R-3 and Pnma
    unknown = Structure(Lattice.cubic(5.0), ["Xe", "Lu"], [[0, 0, 0], [.5, .5, .5]])
    assert novelty.match(unknown) == (True, None)
    loo = NoveltyChecker.from_parquet(parquet, exclude_ids=["mp-754329"])
    assert loo.match(_snapshot_structure(snapshot_rows, "mp-754329")) == (True, None)


# ----------------------------------------------------------------------------- phonons


def _cu(kind: str, a: float) -> Structure:
    from ase.build import bulk

    atoms = bulk("Cu", kind, a=a, cubic=True)
    return Structure(Lattice(atoms.cell[:]), atoms.get_chemical_symbols(), atoms.get_scaled_positions())


def test_fcc_copper_with_emt_is_stable():
    from ase.calculators.emt import EMT

    result = phonon_verdict(_cu("fcc", 3.582), EMT(), supercell_min_length=8.0, mesh=(6, 6, 6))
    assert result.verdict == "stable", result.reason
    assert result.n_atoms_primitive == 1 and result.n_displacements == 1
    assert result.supercell_matrix == [[4, 0, 0], [0, 4, 0], [0, 0, 4]]  # primitive a = 2.53 A
    assert result.space_group.startswith("Fm-3m")
    assert result.min_frequency_thz > -result.tolerance_thz
    assert abs(result.gamma_acoustic_min_thz) < 1e-3  # sum rule imposed
    top = max(float(f.max()) for f in result.band_frequencies)
    assert 6.5 < top < 9.0  # Cu's phonon band top is ~7.3 THz
    assert result.band_labels[0] == ("Γ", "X")
    png = band_structure_png(result, "fcc Cu (EMT)")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_simple_cubic_copper_with_emt_is_unstable():
    from ase.calculators.emt import EMT

    result = phonon_verdict(_cu("sc", 2.424), EMT(), supercell_min_length=8.0, mesh=(6, 6, 6))
    assert result.verdict == "unstable"
    assert result.min_frequency_thz < -1.0
    assert result.where == "M"  # zone-boundary shear instability of simple cubic
    assert "imaginary" in result.reason


def test_calculator_errors_give_failed_not_raise():
    from ase.calculators.calculator import Calculator

    class Broken(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("forces",), system_changes=None):
            raise RuntimeError("calculator exploded")

    result = phonon_verdict(_cu("fcc", 3.582), Broken(), supercell_min_length=5.0)
    assert result.verdict == "failed"
    assert "calculator exploded" in result.reason
    assert result.n_displacements == 1 and result.seconds >= 0
    assert band_structure_png(result)[:4] == b"\x89PNG"


def test_unusable_input_fails_cleanly():
    result = phonon_verdict("not a structure", None)
    assert isinstance(result, PhononResult) and result.verdict == "failed" and result.reason


@pytest.mark.slow
def test_cubic_srtio3_with_chgnet_is_unstable():
    """CHGNet (like PBE) puts cubic SrTiO3 at a saddle point: an imaginary polar mode at Γ and the
    antiferrodistortive mode at R."""
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    calculator = CHGNetCalculator(CHGNet.load(verbose=False), use_device="cpu")
    structure = Structure(**{**CUBIC_SRTIO3, "lattice": Lattice.cubic(3.944)})  # CHGNet's a
    result = phonon_verdict(structure, calculator, supercell_min_length=7.0, mesh=(4, 4, 4))
    assert result.verdict == "unstable", result.reason
    assert result.min_frequency_thz < -1.0
    assert result.n_displacements == 3 and result.n_atoms_supercell == 40


def test_phonopy_keeps_the_given_primitive_cell():
    """A tetragonal CsCl-type cell with its 4-fold axis along a: phonopy's "auto" primitive cell
    (its default for primitive_matrix=None since v4) permutes the axes, so q-points in this
    cell's basis (the band path, the near-Gamma test) would be read in another basis. The
    platform's Phonopy keeps the cell it is given, axis for axis."""
    import warnings

    from phonopy import Phonopy

    from dft.phonons import _to_phonopy_atoms, phonopy_for

    cell = Structure(Lattice.orthorhombic(4.6, 4.0, 4.0), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auto = Phonopy(_to_phonopy_atoms(cell), supercell_matrix=np.eye(3, dtype=int) * 2, primitive_matrix=None)
    assert not np.allclose(auto.primitive.cell, cell.lattice.matrix)  # the case the fix is for
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no PrimitiveMatrixAutoDefaultWarning either
        ours = phonopy_for(cell, np.eye(3, dtype=int) * 2)
    assert np.allclose(ours.primitive.cell, cell.lattice.matrix)
    assert np.allclose(ours.primitive.scaled_positions, cell.frac_coords)
