"""Origins of latent sampling by task, and the optional E_hull limit on them (ground states only)."""

import polars as pl
import pytest

from ml.origins import GROUND_STATES, origin_genes
from ml.targets import Target


def _genes() -> pl.DataFrame:
    # hand-built gene rows: formula, elements, space group, the snapshot's E_hull (eV/atom)
    rows = [
        ("CaTiO3", ["Ca", "Ti", "O"], 62, 0.0),
        ("SrTiO3", ["Sr", "Ti", "O"], 221, 0.0),
        ("SrTiO3", ["Sr", "Ti", "O"], 140, 0.015),  # a metastable polymorph
        ("BaZrO3", ["Ba", "Zr", "O"], 221, 0.04),
        ("CaZrO3", ["Ca", "Zr", "O"], 221, 0.2),
        ("BaTiS3", ["Ba", "Ti", "S"], 194, 0.0),  # S is outside the campaign below
        ("TiO2", ["Ti", "O"], 136, 0.0),  # binary: never an origin
    ]
    return pl.DataFrame({
        "material_id": [f"m-{i}" for i in range(len(rows))],
        "formula": [r[0] for r in rows], "slot_elements": [r[1] for r in rows],
        "n_elements": [len(set(r[1])) for r in rows], "space_group": [r[2] for r in rows],
        "energy_above_hull": [r[3] for r in rows],
    })


CAMPAIGN = Target("camp", "campaign", elements=("Ba", "Ca", "O", "Sr", "Ti", "Zr"))
POLYMORPH = Target("SrTiO3-221", "polymorph", formula="SrTiO3", space_group=221)


def test_ground_state_limit_keeps_the_snapshots_ground_states():
    # campaigns keep every origin by default: the 5 ternaries of campaign elements
    assert origin_genes(_genes(), CAMPAIGN)[0].height == 5
    origins, how = origin_genes(_genes(), CAMPAIGN, max_e_above_hull=GROUND_STATES)
    # of those 5, the two on the hull (CaTiO3, SrTiO3 Pm-3m)
    assert sorted(origins["material_id"].to_list()) == ["m-0", "m-1"]
    assert "ground states" in how and "2 of 5" in how


def test_origin_limit_can_be_set_or_lifted():
    genes = _genes()
    loose, how = origin_genes(genes, CAMPAIGN, max_e_above_hull=0.05)
    assert sorted(loose["material_id"].to_list()) == ["m-0", "m-1", "m-2", "m-3"] and "0.05" in how
    every, _ = origin_genes(genes, CAMPAIGN, max_e_above_hull=None)
    assert every.height == 5
    with pytest.raises(ValueError, match="energy_above_hull"):
        origin_genes(genes.drop("energy_above_hull"), CAMPAIGN, max_e_above_hull=GROUND_STATES)


def test_leave_one_out_origins_keep_metastable_prototypes():
    origins, how = origin_genes(_genes(), POLYMORPH)
    # every ternary in the target's space group 221, E_hull 0.04 and 0.2 included
    assert sorted(origins["material_id"].to_list()) == ["m-1", "m-3", "m-4"]
    assert "ground states" not in how
    # without an E_hull column a leave-one-out target still gets its origins
    assert origin_genes(_genes().drop("energy_above_hull"), POLYMORPH)[0].height == 3
