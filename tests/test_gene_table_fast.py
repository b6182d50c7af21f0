"""The fast symmetry engine (moyopy + per-row spglib fallback) against the definition (spglib).

Every check compares with an independent run of the spglib engine on the same real rows; the
setting cases are materials where moyopy's raw Wyckoff letters are not spglib's, or spglib's
are not the canonical form (hand-worked below).
"""

import json

import numpy as np
import polars as pl
import pytest

from ml import moyo_genes
from ml.cif import parse_cif
from ml.gene_table import GENE_COLUMNS, build_gene_table, gene_row, gene_row_with_engine
from ml.genes import gene_key


def _rows(materials: pl.DataFrame, ids: list[str]) -> pl.DataFrame:
    return materials.filter(pl.col("material_id").is_in(ids))


def test_fast_engine_rows_equal_spglib_rows_on_a_snapshot_sample(materials):
    sample = materials.sample(300, seed=17)
    ids, cifs, sgs = sample["material_id"].to_list(), sample["cif"].to_list(), sample["symmetry_number"].to_list()
    stats: dict = {}
    fast = build_gene_table(ids, cifs, processes=1, engine="moyo", space_groups=sgs, stats=stats)
    ref = build_gene_table(ids, cifs, processes=1, engine="spglib")
    assert [r["material_id"] for r in fast[0]] == [r["material_id"] for r in ref[0]]
    for a, b in zip(fast[0], ref[0]):
        assert {c: a[c] for c in GENE_COLUMNS} == {c: b[c] for c in GENE_COLUMNS}, a["material_id"]
    assert fast[1] == ref[1]
    assert stats["engine"] == "moyo" and stats["rows"] == 300
    # the fast path did carry most rows; the rest are counted, by reason
    assert 0 < stats["fallback_rows"] < 300 * 0.8
    assert sum(stats["fallbacks_by_reason"].values()) == stats["fallback_rows"]
    assert set(stats["fallbacks_by_reason"]) <= set(moyo_genes.FALLBACK_REASONS)


def _raw_letters(cif: str):
    import spglib

    from ml.elements import element_index

    cell = parse_cif(cif)
    numbers = [element_index()[s] + 1 for s in cell.species]
    ds = moyo_genes._moyo_dataset(cell.lattice, cell.frac_coords, numbers, 0.1)
    spg = spglib.get_symmetry_dataset((cell.lattice, cell.frac_coords, numbers), symprec=0.1, angle_tolerance=5)
    return cell, list(ds.wyckoffs), list(spg.wyckoffs), ds


def test_other_origin_gives_the_same_canonical_row(materials):
    """Zincblende-type F-43m (216) cells: spglib puts the second element on 4d, moyopy on 4c
    (equivalent origins, related by a shift along the body diagonal). Both engines store the
    canonical form -- hand-worked: with the origin on the anion (first in the JSON), the cation
    sits a quarter diagonal away, 4c; 4b would be half a diagonal, not equivalent -- with no
    fallback, and it has the same gene_key as both raw forms."""
    for mid, anion, cation in (("mp-1001833", "Bi", "In"), ("mp-1002219", "Sb", "Tl")):
        rows = _rows(materials, [mid])
        cif, sg = rows["cif"][0], rows["symmetry_number"][0]
        cell, moyo_letters, spglib_letters, ds = _raw_letters(cif)
        assert ds.number == 216 and moyo_letters != spglib_letters  # another origin, really
        assert dict(zip(cell.species, spglib_letters)) == {cation: "a", anion: "d"}
        reference, _ = gene_row(mid, cif, engine="spglib")
        row, rejection, fallback = gene_row_with_engine(mid, cif, engine="moyo", space_group_label=sg)
        assert rejection is None and fallback is None and row == reference
        assert json.loads(row["wyckoff"]) == {anion: ["4a"], cation: ["4c"]}
        for letters in (moyo_letters, spglib_letters):
            raw = {el: [f"4{x}"] for el, x in zip(cell.species, letters)}
            assert gene_key(reference["formula"], 216, raw) == reference["gene_key"]


def test_perovskite_stored_in_the_canonical_form_not_spglibs(materials):
    """Cubic CsPbI3 (mp-1069538, Pm-3m): spglib's origin choice gives Cs 1b / Pb 1a / I 3d.
    The origin shift (1/2, 1/2, 1/2) swaps 1a<->1b and 3c<->3d, so the only other form is
    Cs 1a / Pb 1b / I 3c, the smaller JSON: that is what both engines store, in the letters and
    in the encoded letter counts, with unchanged multiplicities, DoF and gene_key."""
    rows = _rows(materials, ["mp-1069538"])
    cif, sg = rows["cif"][0], rows["symmetry_number"][0]
    cell, _, spglib_letters, _ = _raw_letters(cif)
    assert dict(zip(cell.species, spglib_letters)) == {"Cs": "b", "Pb": "a", "I": "d"}
    spglib_form = {"Cs": ["1b"], "Pb": ["1a"], "I": ["3d"]}
    canonical = {"Cs": ["1a"], "I": ["3c"], "Pb": ["1b"]}
    for engine in ("spglib", "moyo"):
        row, rejection, fallback = gene_row_with_engine("mp-1069538", cif, engine=engine, space_group_label=sg)
        assert rejection is None and fallback is None
        assert json.loads(row["wyckoff"]) == canonical
        assert row["gene_key"] == gene_key("CsPbI3", 221, spglib_form) == f"CsPbI3|221|{json.dumps(canonical)}"
        assert row["slot_elements"] == ["Cs", "Pb", "I"]  # cation first by electronegativity
        letters = np.array(row["wyckoff_letter_counts"]).reshape(3, 27)
        assert [np.flatnonzero(s).tolist() for s in letters] == [[0], [1], [2]]  # a, b, c
        assert json.loads(row["multiplicities"]) == {"Cs": [1], "I": [3], "Pb": [1]}
        assert row["total_dof"] == 0 and row["atoms_per_cell"] == 5


def test_alternative_settings_keep_multiplicity_and_dof():
    """Why only the letters move: every alternative setting of every space group maps a letter
    onto one of the same multiplicity and DoF (PyXtal's tables), and multiplicities never
    decrease along the letters, so the per-element multiplicity lists are the same for every
    equivalent form."""
    from ml.wyckoff import LETTER_INDEX, all_tables

    for number, table in all_tables().items():
        for perm in table.alternatives:
            for a, b in perm.items():
                assert (table.sites[a].multiplicity, table.sites[a].dof) == (
                    table.sites[b].multiplicity, table.sites[b].dof), (number, a, b)
        mults = [table.sites[x].multiplicity for x in sorted(table.sites, key=LETTER_INDEX.__getitem__)]
        assert mults == sorted(mults), number


def test_bad_rows_become_rejections_with_reasons(materials):
    good = materials.filter(pl.col("material_id") == "mp-5020")["cif"][0]
    unknown = good.replace("  Ba  Ba0", "  Qq  Qq0")
    assert "Qq" in unknown
    ids = ["bad-cif", "unknown-element", "empty", "mp-5020"]
    cifs = ["data_x\n_cell_length_a 3.0\nloop_\n_atom_site_fract_x\n garbage ((", unknown, "", good]
    stats: dict = {}
    genes, rejections = build_gene_table(ids, cifs, processes=1, engine="moyo",
                                         space_groups=[None, None, None, 160], stats=stats)
    reasons = {r["material_id"]: r["reason"] for r in rejections}
    assert reasons == {"bad-cif": "cif_parse_error", "unknown-element": "unknown_element", "empty": "cif_missing"}
    assert all(r["detail"] is not None for r in rejections)
    assert [g["material_id"] for g in genes] == ["mp-5020"] and genes[0]["space_group"] == 160
    ref = build_gene_table(ids, cifs, processes=1, engine="spglib")
    assert ref[1] == rejections


def test_fallbacks_are_counted_and_still_give_the_spglib_row(materials):
    rows = materials.filter(pl.col("material_id").is_in(["mp-5020", "mp-1001833", "mp-1002219"]))
    ids, cifs = rows["material_id"].to_list(), rows["cif"].to_list()
    wrong = [1 for _ in ids]  # a forced disagreement: every label says P1
    stats: dict = {}
    fast = build_gene_table(ids, cifs, processes=1, engine="moyo", space_groups=wrong, stats=stats)
    ref = build_gene_table(ids, cifs, processes=1, engine="spglib")
    assert fast == ref
    assert stats["fallback_rows"] == len(ids)
    assert stats["fallbacks_by_reason"] == {"space_group_differs_from_label": len(ids)}
    # no label at all: nothing confirms moyo's group, so spglib decides
    stats = {}
    assert build_gene_table(ids, cifs, processes=1, engine="moyo", stats=stats) == ref
    assert stats["fallbacks_by_reason"] == {"no_space_group_label": len(ids)}


def test_supercell_input_falls_back_to_spglib(materials):
    """A 2x1x1 supercell: moyo reduces it to a smaller primitive cell, spglib decides."""
    from pymatgen.io.cif import CifWriter

    row = materials.filter(pl.col("material_id") == "mp-5020")
    structure = parse_cif(row["cif"][0]).to_structure()
    structure.make_supercell([2, 1, 1])
    cif = str(CifWriter(structure))
    fast, rej, fallback = gene_row_with_engine("super", cif, engine="moyo", space_group_label=160)
    ref, _ = gene_row("super", cif, engine="spglib")
    assert rej is None and fallback == "supercell_input" and fast == ref
    assert np.isclose(sum(fast["element_count"]), 15)  # the conventional cell, not the supercell


def test_unknown_engine_is_an_error():
    with pytest.raises(ValueError):
        build_gene_table(["a"], ["x"], engine="fast")


def test_cell_shifted_off_the_origin_gives_the_same_row(materials):
    """The origin choice of either library no longer matters: a copy of a zincblende cell
    shifted by an arbitrary vector keeps moyo's gene (no fallback) and gives spglib's row."""
    from pymatgen.io.cif import CifWriter

    cif = _rows(materials, ["mp-1002219"])["cif"][0]
    structure = parse_cif(cif).to_structure()
    structure.translate_sites(list(range(len(structure))), [0.1, 0.13, 0.07])
    shifted = str(CifWriter(structure))
    row, rej, fallback = gene_row_with_engine("shifted", shifted, engine="moyo", space_group_label=216)
    ref, _ = gene_row("shifted", shifted, engine="spglib")
    original, _ = gene_row("shifted", cif, engine="spglib")
    assert rej is None and fallback is None and row == ref == original


def test_wyckoff_tables_cache_round_trips(tmp_path, monkeypatch):
    from ml import wyckoff

    monkeypatch.setenv("WYCRYST_CACHE", str(tmp_path))
    monkeypatch.setattr(wyckoff, "_TABLES", {})
    built = wyckoff.cached_all_tables()  # builds from PyXtal and writes the file
    files = list(tmp_path.glob("wyckoff_tables-pyxtal*.pkl"))
    assert len(files) == 1 and len(built) == 230
    monkeypatch.setattr(wyckoff, "_TABLES", {})
    loaded = wyckoff.cached_all_tables()  # read back
    assert loaded == built
    assert loaded[62].sites["c"].multiplicity == 4 and loaded[221].sites["a"].dof == 0
