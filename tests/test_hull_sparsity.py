"""dft.hull_sparsity on a hand-worked Li-Fe system (formation energies in eV/atom, elements at 0):
LiFe -0.25, Li3Fe -0.15, LiFe3 -0.05, LiFe7 +0.05. With every phase, the hull is Fe - LiFe - Li3Fe -
Li: -0.5 x for x_Li <= 0.5, then LiFe -> Li3Fe (slope 0.4) -> Li.
- LiFe3 (x 0.25): hull -0.125 -> 0.075 above; LiFe7 (x 0.125): hull -0.0625 -> 0.1125 above.
- Li3Fe without itself: LiFe -> Li line at x 0.75 is -0.125 -> -0.025 (below it).
- LiFe without itself: Fe -> LiFe3 -> Li3Fe are collinear (slope -0.2), -0.1 at x 0.5 -> -0.15."""

from __future__ import annotations

import polars as pl
import pytest

from dft.hull_sparsity import bin_label, expected_mp_stable, leave_one_out_hull_distances, stable_call_precision

ROWS = [
    {"material_id": "m-1", "formula_pretty": "LiFe", "formation_energy_per_atom": -0.25, "energy_above_hull": 0.0},
    {"material_id": "m-2", "formula_pretty": "Li3Fe", "formation_energy_per_atom": -0.15, "energy_above_hull": 0.0},
    # MP knows a phase the snapshot lacks: LiFe3 is stable against the snapshot, not against MP
    {"material_id": "m-3", "formula_pretty": "LiFe3", "formation_energy_per_atom": -0.05, "energy_above_hull": 0.10},
    {"material_id": "m-4", "formula_pretty": "LiFe7", "formation_energy_per_atom": 0.05, "energy_above_hull": 0.20},
    {"material_id": "m-5", "formula_pretty": "NaCl", "formation_energy_per_atom": None, "energy_above_hull": 0.0},
]


def test_leave_one_out_distances_match_the_hand_worked_hull():
    d = leave_one_out_hull_distances(ROWS, nelements=2).sort("material_id")
    assert d["material_id"].to_list() == ["m-1", "m-2", "m-3", "m-4"]  # no formation energy: no row
    assert d["e_hull_snapshot"].to_list() == pytest.approx([0.0, 0.0, 0.075, 0.1125], abs=1e-9)
    assert d["e_hull_snapshot_loo"].to_list() == pytest.approx([-0.15, -0.025, 0.075, 0.1125], abs=1e-9)
    assert d["e_hull_mp"].to_list() == [0.0, 0.0, 0.10, 0.20]
    assert set(d["chemsys"]) == {"Fe-Li"} and set(d["n_phases"]) == {4}
    assert leave_one_out_hull_distances(ROWS).is_empty()  # default: ternaries only


def test_stable_call_precision_per_bin_and_the_expected_count():
    table = stable_call_precision(leave_one_out_hull_distances(ROWS, nelements=2))
    rows = {r["bin"]: (r["materials"], r["mp_stable"], r["precision"]) for r in table.iter_rows(named=True)}
    assert rows == {"<= -0.1": (1, 1, 1.0), "(-0.1, 0]": (1, 1, 1.0), "(0, 0.04]": (0, 0, None),
                    "(0.04, 0.08]": (1, 0, 0.0), "all <= 0.08": (3, 2, pytest.approx(2 / 3)), "above": (1, 0, 0.0)}
    # candidates' snapshot E_hulls: one per bin, one above the threshold
    assert expected_mp_stable([-0.3, -0.05, 0.02, 0.06, 0.2], table) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="threshold"):
        stable_call_precision(pl.DataFrame(), threshold=0.1)


def test_bin_labels():
    assert [bin_label(v) for v in (-0.1, -0.0999, 0.0, 0.04, 0.08, 0.0801)] == [
        "<= -0.1", "(-0.1, 0]", "(-0.1, 0]", "(0, 0.04]", "(0.04, 0.08]", None]
