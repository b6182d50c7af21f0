"""Paths that used to give a silently wrong result now give a recorded verdict with its reason:
the relaxer's lost final structure, a refinement that could not return the conventional cell, a
snapshot reference that could not be parsed (novelty unknown, not "novel"), and error texts that
were dropped by ``except Exception``."""

import math

import numpy as np
import polars as pl
import pytest
from pymatgen.core import Lattice, Structure

CU_SIGMA = 3.6 / 2 ** 0.5 / 2 ** (1 / 6)  # LJ minimum at fcc Cu's nearest-neighbour distance


def _lj_relaxer(**kwargs):
    from ase.calculators.lj import LennardJones

    from dft.relax import AseRelaxer

    return AseRelaxer(lambda: LennardJones(sigma=CU_SIGMA, epsilon=0.4, rc=6.0, smooth=True), name="lj", **kwargs)


def _fcc(a=3.7):
    return Structure(Lattice.cubic(a), ["Cu"] * 4, [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]])


def test_a_lost_final_structure_is_a_failed_row_never_the_input():
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
    atoms.new_array("oxi_states", np.full(len(atoms), np.nan))  # pymatgen cannot read it back
    r = _lj_relaxer().relax(atoms, fmax=0.01, max_steps=200)
    assert r.verdict == "failed" and r.structure is None and not r.converged
    assert r.reason.startswith("structure_conversion_failed: ValueError")
    assert math.isfinite(r.energy) and r.steps > 0  # the relaxation itself ran and is reported
    # the same cell without the unreadable array relaxes to a structure that is not the input
    ok = _lj_relaxer().relax(bulk("Cu", "fcc", a=3.7, cubic=True), fmax=0.01, max_steps=200)
    assert ok.verdict == "converged" and ok.structure.lattice.a < 3.65


def test_relax_primitive_says_which_cell_it_returns():
    from dft.relax import relax_primitive

    direct = _lj_relaxer().relax(_fcc(), fmax=0.01, max_steps=200)
    r = relax_primitive(_lj_relaxer(), _fcc(), fmax=0.01, max_steps=200)
    assert r.cell == "conventional" and len(r.structure) == 4 and r.reason == ""
    assert r.energy == pytest.approx(direct.energy, abs=1e-3) and direct.cell == "input"


def direct_energy_per_atom():
    return _lj_relaxer().relax(_fcc(), fmax=0.01, max_steps=200).energy_per_atom


class _SmallerRepeatRelaxer:
    """Stands in for a potential that relaxes a primitive cell into a minimum with a smaller
    repeat unit: the real LJ relaxation, returned as three copies of the relaxed cell (a cell
    that is not a whole fraction of spglib's conventional fcc cell of 4 atoms)."""

    name = "lj"

    def relax(self, structure, *, fmax=0.05, max_steps=500):
        r = _lj_relaxer().relax(structure, fmax=fmax, max_steps=max_steps)
        r.structure = r.structure.make_supercell([3, 1, 1], in_place=False)
        r.energy *= 3
        return r


def test_a_conventional_cell_that_cannot_be_recovered_is_recorded():
    from dft.pipeline import relax_result_fields
    from dft.relax import relax_primitive

    r = relax_primitive(_SmallerRepeatRelaxer(), _fcc(), fmax=0.01, max_steps=200)
    assert r.cell == "primitive" and len(r.structure) == 3  # not claimed to be the conventional cell
    assert "conventional_cell_not_recovered" in r.reason and "4 atoms" in r.reason
    assert r.energy_per_atom == pytest.approx(direct_energy_per_atom(), abs=1e-3)  # still per atom
    fields = relax_result_fields(r)  # what relaxed_structures / refined_structures record
    assert fields["cell"] == "primitive" and fields["n_atoms"] == 3


def _cubic_srtio3(a=3.9):
    return Structure(Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]])


def test_an_unparsed_reference_makes_novelty_unknown_not_novel():
    from dft.energetics import NoveltyChecker

    other = Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"],  # O on edge centres: another crystal
                      [[0, 0, 0], [.5, .5, .5], [.5, 0, 0], [0, .5, 0], [0, 0, .5]])
    rows = [("mp-good", "SrTiO3", _cubic_srtio3().to(fmt="cif")), ("mp-broken", "SrTiO3", "data_x\n_cell_length_a 3\n"),
            ("mp-ca", "CaTiO3", _cubic_srtio3().to(fmt="cif").replace("Sr", "Ca"))]
    novelty = NoveltyChecker(rows)
    assert novelty.check(_cubic_srtio3(3.95)) == (False, "mp-good", "")  # a match is a match
    novel, match, note = novelty.check(other)
    assert novel is None and match is None  # mp-broken could be this crystal
    assert "novelty unknown" in note and "mp-broken" in note and "mp-broken" in novelty.parse_failures
    assert novelty.match(other) == (None, None)
    clean = NoveltyChecker([rows[0]])
    assert clean.check(other) == (True, None, "")


def test_scoring_records_unknown_novelty_and_the_sun_list_does_not_count_it(tmp_path):
    from dft.energetics import NoveltyChecker
    from dft.pipeline import score_relaxations
    from dft.sun import select_sun

    cif = str(tmp_path / "x.cif")
    _cubic_srtio3(3.9).to(filename=cif)

    class Hull:
        def e_above_hull(self, comp, ef):
            return 0.0

    row = {"relaxed_cif": cif, "energy": -40.0, "verdict": "converged", "relaxer": "chgnet", "formula": "SrTiO3",
           "gene_key": "g", "space_group": 221, "wyckoff": "{}", "symmetry_kept": True, "energy_per_atom": -8.0}
    novelty = NoveltyChecker([("mp-broken", "SrTiO3", "data_x\n")])
    (scored,) = score_relaxations([row], references={"Sr": -1.0, "Ti": -2.0, "O": -3.0}, hull=Hull(), novelty=novelty)
    assert scored["is_novel"] is None and "novelty unknown" in scored["novelty_note"]
    best = pl.DataFrame([scored])
    sun = select_sun(best, pl.DataFrame(schema={"gene_key": pl.String, "phonon_verdict": pl.String,
                                               "min_frequency_thz": pl.Float64}),
                     pl.DataFrame(schema={"gene_key": pl.String, "dft_engine": pl.String, "dft_verdict": pl.String,
                                          "dft_formation_energy_per_atom": pl.Float64}), max_e_above_hull=0.1)
    assert sun.stable.height == 1 and sun.novel.height == 0


def test_filter_errors_keep_their_text():
    from ml.filters import FilterConfig, apply_filters

    df = pl.DataFrame({"formula": ["SrTiO3", "SrTiO3"], "space_group": [221, 221],
                       "wyckoff": ['[1, 2]', '{"O": ["3c"], "Sr": ["1a"], "Ti": ["1b"], "Xx": 5}'],
                       "predicted_formation_energy": [-1.0, -1.0]})
    out = apply_filters(df, known_gene_keys=set(), target=None, config=FilterConfig(min_synthesizability=None))
    notes = out["notes"].to_list()
    assert "wyckoff_unparseable" in out["reasons"][0] and any(n.startswith("wyckoff_error: GeneError") for n in notes[0])
    assert "wyckoff_unparseable" in out["reasons"][1]  # an unforeseen error: the code and its text
    assert "wyckoff_error: TypeError: 'int' object is not iterable" in notes[1]


def test_trials_and_phonon_paths_keep_the_reason():
    from dft.phonons import band_path
    from dft.trials import space_group_and_error

    sg, why = space_group_and_error(_cubic_srtio3())
    assert sg == 221 and why == ""
    squashed = Structure(Lattice.cubic(3.9), ["Sr", "Sr"], [[0, 0, 0], [0, 0, 0]])  # two atoms on one site
    sg, why = space_group_and_error(squashed)
    assert sg is None and why.startswith("spglib")
    _, _, source = band_path(Structure(Lattice.cubic(3.0), ["Sr", "Sr"], [[0, 0, 0], [0, 0, 1e-4]]), 0.01)
    assert source.startswith("generic") and "HighSymmKpath failed: SymmetryUndeterminedError" in source
