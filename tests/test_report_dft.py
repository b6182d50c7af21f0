"""loo_report's use of the DFT refinement: DFT decides the ground-state rank only where it refined
the held-out gene and at least one rival of the same formula."""

import polars as pl

from dft.loo import apply_dft
from ml.targets import parse_target


def _target(targets, key):
    return parse_target(next(t for t in targets if t["partition"] == key))


def _refined(rows):
    return pl.DataFrame([{"engine": "gpaw", "mode": "single_point", "verdict": "single_point", "refined_cif": None,
                          **r} for r in rows])


def test_dft_rank_replaces_the_mlip_rank_with_a_rival_refined(targets):
    target = _target(targets, "CaTiO3-62")
    keys = sorted(target.gene_keys())
    refined = _refined([
        {"gene_key": keys[0], "formula": "CaTiO3", "rank_in_formula": 1, "relative_energy_per_atom": 0.0},
        {"gene_key": "rival", "formula": "CaTiO3", "rank_in_formula": 2, "relative_energy_per_atom": 0.012},
        {"gene_key": "other", "formula": "Ca2TiO4", "rank_in_formula": 1, "relative_energy_per_atom": 0.0},
    ])
    row = {"ground_state_rank": 2, "ground_state_rank_source": "mlip", "lattice_source": "mlip"}
    apply_dft(row, refined, keys, target)
    assert row["ground_state_rank"] == 1 and row["ground_state_rank_source"] == "dft"
    assert row["dft_genes_of_formula"] == 2 and row["dft_ground_state_rank"] == 1
    assert row["lattice_source"] == "mlip"  # a single point does not move the cell


def test_a_lone_refined_gene_leaves_the_mlip_rank(targets):
    target = _target(targets, "CaTiO3-62")
    keys = sorted(target.gene_keys())
    row = {"ground_state_rank": 2, "ground_state_rank_source": "mlip"}
    apply_dft(row, _refined([{"gene_key": keys[0], "formula": "CaTiO3", "rank_in_formula": 1,
                              "relative_energy_per_atom": 0.0}]), keys, target)
    assert row["ground_state_rank"] == 2 and row["ground_state_rank_source"] == "mlip"
    assert row["dft_ground_state_rank"] == 1 and row["dft_genes_of_formula"] == 1
    untouched = {"ground_state_rank": 3}
    apply_dft(untouched, _refined([{"gene_key": "rival", "formula": "CaTiO3", "rank_in_formula": 1,
                                    "relative_energy_per_atom": 0.0}]), keys, target)
    assert untouched == {"ground_state_rank": 3}  # the held-out gene was not refined


def test_refinement_takes_one_of_two_genes_that_relaxed_to_the_same_crystal(tmp_path):
    from pymatgen.core import Lattice, Structure

    from dft.selection import same_crystal_label as _same_crystal

    cubic = Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"],
                      [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]])
    paths = {}
    for name, s in (("a", cubic), ("b", cubic.make_supercell([1, 1, 2], in_place=False)),  # same crystal, other cell
                    # the origin moved by (1/2,1/2,1/2): Sr 1b, Ti 1a, O 3d -- the same perovskite
                    ("shifted", Structure(Lattice.cubic(3.9), cubic.species, [[.5, .5, .5], [0, 0, 0], [0, 0, .5],
                                                                             [0, .5, 0], [.5, 0, 0]])),
                    # Sr 1b, Ti 1a, O 3c: Ti twelve-fold coordinated -- another crystal
                    ("other", Structure(Lattice.cubic(3.9), cubic.species, [[.5, .5, .5], [0, 0, 0], [0, .5, .5],
                                                                           [.5, 0, .5], [.5, .5, 0]]))):
        paths[name] = str(tmp_path / f"{name}.cif")
        s.to(filename=paths[name])
    chosen = []
    row = lambda k, w: {"formula": "SrTiO3", "space_group": 221, "wyckoff": w, "relaxed_cif": paths[k]}  # noqa: E731
    assert _same_crystal(row("a", "Sr1a"), chosen) is None and len(chosen) == 1
    assert _same_crystal(row("b", "Sr1a-supercell"), chosen) == "SrTiO3 SG 221 Sr1a"
    assert _same_crystal(row("shifted", "Sr1b-3d"), chosen) == "SrTiO3 SG 221 Sr1a"
    assert len(chosen) == 1
    assert _same_crystal(row("other", "Sr1b-3c"), chosen) is None and len(chosen) == 2
