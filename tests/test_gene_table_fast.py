"""The fast symmetry engine (moyopy + per-row spglib fallback) against the definition (spglib).

Every check compares with an independent run of the spglib engine on the same real rows; the
setting case is a material where moyopy's raw Wyckoff letters are not spglib's.
"""

import numpy as np
import polars as pl
import pytest

from ml import moyo_genes
from ml.cif import parse_cif
from ml.gene_table import GENE_COLUMNS, build_gene_table, gene_row, gene_row_with_engine
from ml.genes import gene_key


@pytest.fixture(autouse=True)
def _fresh_setting_maps():
    moyo_genes._SETTING_MAPS.clear()
    yield
    moyo_genes._SETTING_MAPS.clear()


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


def test_other_setting_maps_to_the_same_gene(materials):
    """Half-Heusler-type F-43m (216) cells: moyopy puts the third site on 4c where spglib puts
    it on 4d (equivalent origins). gene_key folds them; the learned setting map then gives
    spglib's letters themselves for the next cell with the same transformation."""
    first, second = "mp-1001833", "mp-1002219"  # InBi and TlSb, zincblende, SG 216
    rows = _rows(materials, [first, second])
    cif = dict(zip(rows["material_id"], rows["cif"]))
    sg = dict(zip(rows["material_id"], rows["symmetry_number"]))
    for mid in (first, second):
        cell, moyo_letters, spglib_letters, ds = _raw_letters(cif[mid])
        assert ds.number == 216 and moyo_letters != spglib_letters  # another setting, really
        w_moyo, w_spglib = {}, {}
        for el, m, s in zip(cell.species, moyo_letters, spglib_letters):
            w_moyo.setdefault(el, []).append(f"4{m}")
            w_spglib.setdefault(el, []).append(f"4{s}")
        reference, _ = gene_row(mid, cif[mid], engine="spglib")
        assert gene_key(reference["formula"], 216, w_moyo) == reference["gene_key"]
        assert gene_key(reference["formula"], 216, w_spglib) == reference["gene_key"]

    row1, rej1, fb1 = gene_row_with_engine(first, cif[first], engine="moyo", space_group_label=sg[first])
    assert rej1 is None and fb1 == "setting_not_learned"  # spglib decided, and taught the map
    row2, rej2, fb2 = gene_row_with_engine(second, cif[second], engine="moyo", space_group_label=sg[second])
    assert rej2 is None and fb2 is None  # moyo's gene, mapped onto spglib's setting
    for mid, row in ((first, row1), (second, row2)):
        reference, _ = gene_row(mid, cif[mid], engine="spglib")
        assert row == reference


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


def test_cubic_cell_without_an_atom_on_the_origin_stays_with_spglib(materials):
    """The learned cubic setting map is used only with an atom on the input origin (elsewhere
    spglib's origin choice follows the rounding of its translations): a shifted copy of a cell
    whose map is known falls back and still gives spglib's row."""
    from pymatgen.io.cif import CifWriter

    rows = _rows(materials, ["mp-1001833", "mp-1002219"])
    cif = dict(zip(rows["material_id"], rows["cif"]))
    gene_row_with_engine("mp-1001833", cif["mp-1001833"], engine="moyo", space_group_label=216)  # learns
    _, _, fallback = gene_row_with_engine("mp-1002219", cif["mp-1002219"], engine="moyo", space_group_label=216)
    assert fallback is None
    structure = parse_cif(cif["mp-1002219"]).to_structure()
    structure.translate_sites(list(range(len(structure))), [0.1, 0.13, 0.07])
    shifted = str(CifWriter(structure))
    row, rej, fallback = gene_row_with_engine("shifted", shifted, engine="moyo", space_group_label=216)
    ref, _ = gene_row("shifted", shifted, engine="spglib")
    assert rej is None and fallback == "ambiguous_configuration" and row == ref


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
