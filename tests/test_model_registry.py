"""dft.relax.MODELS: every MLIP whose weights ship in a wheel, its energy scale checked against MP."""

from __future__ import annotations

import dataclasses

import polars as pl
import pytest
from pymatgen.core import Structure

from dft import relax
from dft.energetics import NoveltyChecker, SnapshotHull, load_elemental_references
from dft.pipeline import ENERGY_SCALE, relax_task, score_relaxations

# MgO in the snapshot (hexagonal, 4 sites; the lowest E_hull MgO the snapshot holds). A plain
# oxide separates the two energy scales: MP2020's oxide correction is 0.687 eV per O, so a model
# on the wrong scale misses MP's E_f by ~0.34 eV/atom, far outside the 0.1 eV/atom tolerance.
OXIDE_ID = "mp-1065577"
TOLERANCE = 0.1  # eV/atom, |E_f(model) - E_f(MP)|


def test_registry_names_families_and_scales():
    assert set(relax.MODELS) == {"chgnet", "sevennet", "sevennet-0", "sevennet-l3i5", "sevennet-mf0"}
    assert ENERGY_SCALE == {name: spec.energy_scale for name, spec in relax.MODELS.items()}
    assert relax.MODELS["sevennet"].weights == relax.MODELS["sevennet-0"].weights  # alias
    assert relax.MODELS["sevennet-mf0"].modal == "PBE"  # MP's PBE/PBE+U training data
    for name, spec in relax.MODELS.items():
        assert spec.name == name and spec.energy_scale in relax.ENERGY_SCALES and spec.description
    # every registered model's weights are in the installed wheels
    assert relax.available_models() == sorted(relax.MODELS)


def test_unknown_name_lists_the_models():
    with pytest.raises(ValueError, match="unknown relaxer 'm3gnet'; valid: chgnet, sevennet, sevennet-0"):
        relax.get_relaxer("m3gnet")


def test_missing_weights_fail_clearly_without_download(monkeypatch):
    spec = dataclasses.replace(relax.MODELS["sevennet-l3i5"], name="sevennet-gone", weights="Nowhere/missing.pth")
    monkeypatch.setitem(relax.MODELS, "sevennet-gone", spec)
    with pytest.raises(FileNotFoundError, match=r"model 'sevennet-gone'.*never downloaded.*available here: chgnet"):
        relax.get_relaxer("sevennet-gone")
    with pytest.raises(FileNotFoundError, match="sevennet-gone"):
        relax.load_model("sevennet-gone")


def test_relaxer_name_is_the_registry_name():
    assert relax.get_relaxer("sevennet-l3i5").name == "sevennet-l3i5"
    assert relax.get_relaxer("SevenNet-MF0").name == "sevennet-mf0"
    assert relax.get_relaxer().name == relax.DEFAULT_RELAXER == "chgnet"


@pytest.fixture(scope="module")
def oxide(materials):
    row = materials.filter(pl.col("material_id") == OXIDE_ID).row(0, named=True)
    return row, materials.filter(pl.col("chemsys").is_in(["Mg", "O", "Mg-O"]))


@pytest.mark.parametrize("name", ["chgnet", "sevennet-0", "sevennet-l3i5", "sevennet-mf0"])
def test_formation_energy_of_an_oxide_matches_mp(name, oxide, shared_data, tmp_path):
    """Relax the snapshot's MgO with the model through the platform's task, score it through the
    platform's energetics (MP2020 or not, per ENERGY_SCALE): E_f within 0.1 eV/atom of MP's."""
    row, system = oxide
    cif = tmp_path / "in.cif"
    Structure.from_str(row["cif"], fmt="cif").to(filename=str(cif))
    result = relax_task({"cif_path": str(cif), "relaxer": name, "out_cif": str(tmp_path / "out.cif")})
    assert result["verdict"] == "converged" and result["relaxer"] == name
    hull = SnapshotHull(system.select("material_id", "formula_pretty", "formation_energy_per_atom").rows())
    novelty = NoveltyChecker(system.select("material_id", "formula_pretty", "cif").rows())
    refs = load_elemental_references(shared_data / "mp-elemental-reference-entries.json.gz")
    (scored,) = score_relaxations([result], references=refs, hull=hull, novelty=novelty)
    expected_note = "already MP2020" if relax.MODELS[name].energy_scale == "mp2020_corrected" else "MP2020 applied"
    assert expected_note in scored["energy_note"]
    assert scored["formation_energy_per_atom"] == pytest.approx(row["formation_energy_per_atom"], abs=TOLERANCE)
    assert scored["matched_material_id"] is not None  # relaxed, it is still the snapshot's MgO


def test_the_cascade_defaults_are_registry_models_with_weights_here():
    from dft import model_choice

    for name in (model_choice.DEFAULT_RELAXER, model_choice.DEFAULT_RESCORER, model_choice.DEFAULT_PHONON_MODEL):
        assert name in relax.available_models()
    assert relax.DEFAULT_RELAXER == model_choice.DEFAULT_RELAXER and model_choice.NO_RESCORER not in relax.MODELS


def test_the_default_decider_orders_the_snapshots_mgo_polymorphs_as_mp(oxide, shared_data, tmp_path):
    """The cascade's default decider (dft.model_choice.DEFAULT_RESCORER) on every MgO polymorph of
    the snapshot (MP: P6_3/mmc -3.016 < P6_3mc -2.979 < P-6m2 -2.716 eV/atom, gaps of 37 and 263
    meV/atom, both above the models' ~20-50 meV/atom errors), relaxed and scored through the
    platform: MP's order, and the lowest one's E_f within 0.05 eV/atom of MP's."""
    from dft.model_choice import DEFAULT_RESCORER

    _, system = oxide
    mgo = system.filter(pl.col("formula_pretty") == "MgO").sort("formation_energy_per_atom")
    assert mgo.height == 3
    refs = load_elemental_references(shared_data / "mp-elemental-reference-entries.json.gz")
    hull = SnapshotHull(system.select("material_id", "formula_pretty", "formation_energy_per_atom").rows())
    novelty = NoveltyChecker(system.select("material_id", "formula_pretty", "cif").rows())
    ours = []
    for row in mgo.iter_rows(named=True):
        cif = tmp_path / f"{row['material_id']}.cif"
        Structure.from_str(row["cif"], fmt="cif").to(filename=str(cif))
        result = relax_task({"cif_path": str(cif), "relaxer": DEFAULT_RESCORER,
                             "out_cif": str(tmp_path / f"{row['material_id']}-out.cif")})
        (scored,) = score_relaxations([result], references=refs, hull=hull, novelty=novelty)
        assert scored["verdict"] == "converged" and scored["symmetry_kept"], scored
        ours.append(scored["formation_energy_per_atom"])
    assert ours == sorted(ours), list(zip(mgo["material_id"], mgo["formation_energy_per_atom"], ours))
    assert ours[0] == pytest.approx(mgo["formation_energy_per_atom"][0], abs=0.05)
