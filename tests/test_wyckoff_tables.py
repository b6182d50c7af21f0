"""Wyckoff tables from PyXtal against International Tables facts worked by hand."""

import numpy as np
import pytest

from ml.wyckoff import dof_matrix, multiplicity_matrix, site_label, space_group_table


def test_pnma_sites_match_international_tables():
    # Pnma (62): 4a (-1), 4b (-1), 4c (.m.), 8d (1)
    table = space_group_table(62)
    assert {k: (v.multiplicity, v.dof) for k, v in table.sites.items()} == {
        "a": (4, 0), "b": (4, 0), "c": (4, 2), "d": (8, 3)
    }


def test_pm3m_has_27_positions_with_A_and_cubic_alternative():
    table = space_group_table(221)
    assert len(table.sites) == 14
    assert site_label(221, "a") == "1a" and site_label(221, "d") == "3d" and site_label(221, "n") == "48n"
    # the body-centre shift (1/2,1/2,1/2) swaps 1a<->1b and 3c<->3d
    swaps = [alt for alt in table.alternatives if alt["a"] == "b"]
    assert swaps and swaps[0]["c"] == "d" and swaps[0]["d"] == "c"
    assert any(all(k == v for k, v in alt.items()) for alt in table.alternatives)
    # Pmmm (47) runs out of Latin letters: its general position is 8A
    assert space_group_table(47).sites["A"].multiplicity == 8


def test_matrices_are_consistent_with_tables():
    mult, dof = multiplicity_matrix(), dof_matrix()
    assert mult.shape == dof.shape == (230, 27)
    assert mult[160 - 1, 0] == 3 and mult[160 - 1, 1] == 9  # R3m (hexagonal axes): 3a, 9b
    assert dof[1 - 1, 0] == 3 and np.all(mult[mult > 0] >= 1)
    # the general position has the largest multiplicity and DoF 3 in every group
    for sg in (2, 14, 62, 122, 166, 225):
        t = space_group_table(sg)
        general = max(t.sites.values(), key=lambda s: s.multiplicity)
        assert general.dof == 3


def test_bad_space_group_number():
    with pytest.raises(ValueError):
        space_group_table(231)


def test_centring_multiplicity_matches_spglib_lattice_translations():
    """Lattice points per conventional cell from the Hermann-Mauguin letter, checked for all 230
    groups against spglib's own operations: (operations of the conventional cell) / (distinct
    rotations) = number of centring translations."""
    import spglib

    from ml.wyckoff import centring_multiplicity

    first_hall = {}
    for hall in range(1, 531):
        number = spglib.get_spacegroup_type(hall).number
        first_hall.setdefault(number, hall)
    for number in range(1, 231):
        ops = spglib.get_symmetry_from_database(first_hall[number])
        rotations = {r.tobytes() for r in ops["rotations"]}
        assert centring_multiplicity(number) == len(ops["rotations"]) // len(rotations), number
    assert (centring_multiplicity(221), centring_multiplicity(227), centring_multiplicity(166),
            centring_multiplicity(139), centring_multiplicity(63)) == (1, 4, 3, 2, 2)
