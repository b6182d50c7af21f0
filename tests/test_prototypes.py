"""Prototype-seeded trials: gene patterns and element maps worked by hand, substitution checked on
real snapshot Heuslers (Fm-3m, no free coordinate: the substituted cell must be the real crystal
up to its volume) and the LOO exclusion."""

from __future__ import annotations

import json

import polars as pl
import pytest

from dft.prototypes import (
    PrototypeIndex,
    chemical_distance,
    element_maps,
    gene_pattern,
    prototype_trials,
    scaled_volume,
    substituted_structure,
)
from ml.gene_table import gene_row

HEUSLERS = ("mp-10883", "mp-10884", "mp-1018071", "mp-10872")  # AlCrCo2, AlFeCo2, MnFe2Ge, HfAlAu2


def test_pattern_folds_elements_and_alternative_settings():
    # perovskites in either origin choice of Pm-3m share one pattern; another configuration does not
    a = gene_pattern(221, {"Sr": ["1a"], "Ti": ["1b"], "O": ["3c"]})
    b = gene_pattern(221, {"Ca": ["1b"], "Ti": ["1a"], "O": ["3d"]})
    # anonymous: which element sits on 1a and which on 1b does not change the pattern
    assert gene_pattern(221, {"Cs": ["1a"], "Pb": ["1b"], "I": ["3d"]}) == a
    c = gene_pattern(221, {"Cs": ["1a"], "Pb": ["3c"], "I": ["3d"]})  # another configuration: Cu3Au-like + 1a
    assert a == b == '221|[["1a"], ["1b"], ["3c"]]'
    assert c != a


def test_element_maps_follow_site_lists_and_enumerate_ties():
    # the body-centre shift maps Cs 1a / Pb 1b / I 3c onto Sr 1b / Ti 1a / O 3d
    assert element_maps(221, {"Cs": ["1a"], "Pb": ["1b"], "I": ["3c"]},
                        {"Sr": ["1b"], "Ti": ["1a"], "O": ["3d"]}) == [{"Cs": "Sr", "Pb": "Ti", "I": "O"}]
    # Fm-3m Heusler: 4a and 4b are exchanged by the (1/2,1/2,1/2) shift, so both assignments fit
    maps = element_maps(225, {"Cu": ["8c"], "Mn": ["4a"], "Al": ["4b"]}, {"Co": ["8c"], "Ti": ["4a"], "Sn": ["4b"]})
    assert sorted(json.dumps(m, sort_keys=True) for m in maps) == sorted([
        json.dumps({"Cu": "Co", "Mn": "Ti", "Al": "Sn"}, sort_keys=True),
        json.dumps({"Cu": "Co", "Mn": "Sn", "Al": "Ti"}, sort_keys=True)])
    # Mendeleev numbers (Pettifor): Mn 60, Ti 51, Sn 83, Al 80, Cu 72, Co 64 -> 8+9+3 = 20 vs 8+23+29 = 60
    assert [chemical_distance(m) for m in maps] in ([20, 60], [60, 20])
    assert element_maps(221, {"Cs": ["1a"], "Pb": ["1b"], "I": ["3c"]}, {"Cs": ["1a"], "Pb": ["1b"], "I": ["6e"]}) == []


@pytest.fixture(scope="module")
def heusler_rows(materials):
    rows = []
    for r in materials.filter(pl.col("material_id").is_in(list(HEUSLERS))).iter_rows(named=True):
        gene, _ = gene_row(r["material_id"], r["cif"])
        rows.append({**gene, "cif": r["cif"], "energy_above_hull": r["energy_above_hull"], "volume": r["volume"],
                     "nsites": r["nsites"]})
    return {r["material_id"]: r for r in rows}


def test_held_out_material_is_never_its_own_prototype_and_substitution_rebuilds_it(heusler_rows, tmp_path):
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    target = heusler_rows["mp-10884"]  # AlFeCo2, Fm-3m, DoF 0
    assert target["space_group"] == 225 and target["total_dof"] == 0
    wyckoff = json.loads(target["wyckoff"])
    everything = PrototypeIndex(heusler_rows.values())
    loo = PrototypeIndex(heusler_rows.values(), exclude_ids=["mp-10884"])
    # the material's own gene is never offered, excluded or not; the others are, closest first
    for index in (everything, loo):
        chosen = index.choose(target["formula"], 225, wyckoff, per_gene=5)
        ids = [c.prototype.material_id for c in chosen]
        assert "mp-10884" not in ids and len(ids) == 3
        assert [c.distance for c in chosen] == sorted(c.distance for c in chosen)
    best = loo.choose(target["formula"], 225, wyckoff, per_gene=2)
    assert len(best) == 2 and best[0].prototype.material_id == "mp-10883"  # AlCrCo2: only Cr -> Fe differs
    real = Structure.from_str(target["cif"], fmt="cif")
    for choice in best:
        s = substituted_structure(choice.prototype.cif, choice.mapping)
        assert s.composition.reduced_formula == real.composition.reduced_formula
        # no free coordinate: the substituted cell is the real crystal up to its volume
        assert StructureMatcher(scale=True).fit(s, real)
        per_atom = s.volume / len(s)
        assert abs(per_atom / (target["volume"] / target["nsites"]) - 1) < 0.10

    rows = prototype_trials({"formula": target["formula"], "space_group": 225, "wyckoff": target["wyckoff"],
                             "gene_key": target["gene_key"]}, loo, out_dir=tmp_path, first_trial=1)
    assert [r["trial"] for r in rows] == [1, 2]
    assert [r["origin"] for r in rows] == [f"prototype:{c.prototype.material_id}" for c in best]
    assert all(r["verdict"] == "ok" and r["space_group_built"] == 225 and r["n_atoms"] == 16 for r in rows)
    assert all(Structure.from_file(r["cif_path"]).composition.reduced_formula == real.composition.reduced_formula
               for r in rows)


def test_a_prototype_whose_structure_is_not_its_gene_gets_a_verdict(heusler_rows, tmp_path):
    """An index row claiming the Heusler configuration with another material's CIF: the
    substituted cell's gene is checked, and the mismatch is a recorded verdict."""
    target = heusler_rows["mp-10884"]
    liar = dict(heusler_rows["mp-10883"], material_id="fake-1",
                cif=heusler_rows["mp-10872"]["cif"].replace("Hf", "Cr"))  # Hf-Al-Au2 cell, wrong species
    index = PrototypeIndex([liar])
    rows = prototype_trials({"formula": target["formula"], "space_group": 225, "wyckoff": target["wyckoff"],
                             "gene_key": target["gene_key"]}, index, out_dir=tmp_path, first_trial=0)
    assert len(rows) == 1 and rows[0]["verdict"] in ("prototype_mismatch", "prototype_failed")
    assert rows[0]["reason"] and rows[0]["cif_path"] is None


def test_volume_rules(heusler_rows):
    from pymatgen.core import Structure

    s = Structure.from_str(heusler_rows["mp-10883"]["cif"], fmt="cif")  # AlCrCo2
    assert scaled_volume(s, {"Cr": "Cr"}) == pytest.approx(s.volume)
    assert scaled_volume(s, {"Cr": "Fe"}, rule="keep") == pytest.approx(s.volume)
    bigger = scaled_volume(s, {"Al": "Hf"})  # atomic radii 1.25 -> 1.55 A: a larger cell
    assert bigger > s.volume
    with pytest.raises(ValueError, match="volume rule"):
        scaled_volume(s, {}, rule="guess")


def test_build_trials_numbers_prototype_trials_after_the_random_ones(heusler_rows, tmp_path):
    """dft.pipeline.build_trials: a DoF-0 gene gets its one random PyXtal trial (the paper's DoF + 1),
    then the prototype trials numbered after it; the gene's selection rank rides along; without an
    index (or with 0 per gene) only the random trial."""
    from dft.pipeline import build_trials

    target = heusler_rows["mp-10884"]
    gene = {"formula": target["formula"], "space_group": 225, "wyckoff": target["wyckoff"],
            "gene_key": target["gene_key"], "selection_rank": 3}
    index = PrototypeIndex(heusler_rows.values(), exclude_ids=["mp-10884"])
    rows = build_trials([gene], seed=0, out_dir=tmp_path, prototypes=index, prototypes_per_gene=2)
    assert [(r["trial"], r["origin"].split(":")[0]) for r in rows] == [(0, "random"), (1, "prototype"), (2, "prototype")]
    assert {r["selection_rank"] for r in rows} == {3} and "prototype:mp-10884" not in {r["origin"] for r in rows}
    assert all(r["verdict"] == "ok" for r in rows)
    for off in ({"prototypes": None, "prototypes_per_gene": 2}, {"prototypes": index, "prototypes_per_gene": 0}):
        assert [r["origin"] for r in build_trials([gene], seed=0, out_dir=tmp_path, **off)] == ["random"]
