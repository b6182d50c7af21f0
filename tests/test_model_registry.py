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
