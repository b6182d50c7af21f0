"""CIF parsing and the snapshot format."""

import json
import shutil

import numpy as np
import polars as pl
import pytest

from ml.cif import CifError, parse_cif
from ml.snapshot import SnapshotError, copy_snapshot, verify_snapshot, write_snapshot
from tests.conftest import MALFORMED_CIF, _unknown_element_cif


def test_fast_cif_parser_matches_pymatgen(materials):
    from pymatgen.core import Structure

    for cif in materials.sample(30, seed=9)["cif"]:
        ref = Structure.from_str(cif, fmt="cif")
        cell = parse_cif(cif)
        assert np.allclose(cell.lattice, ref.lattice.matrix, atol=1e-6)
        assert cell.species == [s.specie.symbol for s in ref]
        assert np.allclose(cell.frac_coords, ref.frac_coords, atol=1e-6)


def test_bad_cifs_get_reasons(materials):
    with pytest.raises(CifError) as err:
        parse_cif(MALFORMED_CIF)
    assert err.value.reason == "cif_parse_error"
    with pytest.raises(CifError) as err:
        parse_cif(_unknown_element_cif(materials["cif"][0]))
    assert err.value.reason == "unknown_element"
    with pytest.raises(CifError) as err:
        parse_cif("")
    assert err.value.reason == "cif_missing"
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter

    disordered = Structure(Lattice.cubic(4.0), [{"Sr": 0.5, "Ca": 0.5}, "Ti", "O", "O", "O"],
                           [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    with pytest.raises(CifError) as err:
        parse_cif(str(CifWriter(disordered)))
    assert err.value.reason == "partial_occupancy"


def test_symmetrized_cif_goes_through_pymatgen():
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter

    s = Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
                  [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    text = str(CifWriter(s, symprec=0.1))  # a CIF with the 48 operations of Pm-3m
    cell = parse_cif(text)
    assert sorted(cell.species) == ["O", "O", "O", "Sr", "Ti"]


def test_shared_snapshot_verifies(shared_data):
    info = verify_snapshot(shared_data / "mp_snapshot")
    assert info.n_materials == 25200 and info.database_version == "offline-subset-1"


def test_checksum_mismatch_and_missing_column_fail(small_snapshot, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(small_snapshot, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["materials_sha256"] = "0" * 64
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SnapshotError, match="sha256 mismatch"):
        verify_snapshot(bad)

    table = pl.read_parquet(small_snapshot / "materials.parquet").drop("cif")
    nocol = tmp_path / "nocol"
    nocol.mkdir()
    table.write_parquet(nocol / "materials.parquet")
    from ml.snapshot import sha256_of

    manifest = json.loads((small_snapshot / "manifest.json").read_text())
    manifest["materials_sha256"] = sha256_of(nocol / "materials.parquet")
    (nocol / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SnapshotError, match="cif"):
        verify_snapshot(nocol)
    with pytest.raises(SnapshotError):
        write_snapshot(table, tmp_path / "x", database_version="v", description="d")


def test_copy_keeps_old_releases(small_snapshot, tmp_path):
    first = copy_snapshot(small_snapshot, tmp_path / "snapshots")
    assert first.path == tmp_path / "snapshots" / "test-release-1"
    table = pl.read_parquet(small_snapshot / "materials.parquet").head(10)
    newer = write_snapshot(table, tmp_path / "src2", database_version="test-release-2", description="d")
    second = copy_snapshot(newer.path, tmp_path / "snapshots")
    assert second.path.name == "test-release-2" and first.path.is_dir()
    assert copy_snapshot(small_snapshot, tmp_path / "snapshots").sha256 == first.sha256


def _atom_lines(cif: str) -> tuple[str, list[list[str]]]:
    """(text before the atom rows, atom rows split into fields) of a pymatgen P1 CIF, whose
    atom-site loop (type_symbol label multiplicity x y z occupancy) comes last."""
    lines = cif.rstrip("\n").split("\n")
    first = max(i for i, line in enumerate(lines) if line.strip().startswith("_atom_site_")) + 1
    return "\n".join(lines[:first]) + "\n", [line.split() for line in lines[first:]]


def _with_rows(head: str, rows: list[list[str]]) -> str:
    return head + "".join("  " + "  ".join(r) + "\n" for r in rows)


def test_cif_numbers_with_uncertainty_and_no_occupancy_column(materials):
    """The column-at-a-time reader gives the same cell for numbers with an uncertainty,
    5.4321(3), and for a CIF without an occupancy column, as pymatgen reads from them."""
    from pymatgen.core import Structure

    for cif in materials.sample(5, seed=3)["cif"]:
        plain = parse_cif(cif)
        head, rows = _atom_lines(cif)
        uncertain = _with_rows(head, [r[:3] + [f"{x}(3)" for x in r[3:6]] + ["1.0(1)"] for r in rows])
        lines = uncertain.split("\n")
        lines = [line + "(2)" if line.startswith("_cell_length_") else line for line in lines]
        uncertain = "\n".join(lines)
        assert "(2)" in uncertain and "(3)" in uncertain
        no_occupancy = _with_rows(head.replace(" _atom_site_occupancy\n", ""), [r[:6] for r in rows])
        assert "_atom_site_occupancy" not in no_occupancy
        for text in (uncertain, no_occupancy):
            cell = parse_cif(text)
            ref = Structure.from_str(text, fmt="cif")
            assert cell.species == plain.species == [s.specie.symbol for s in ref]
            assert np.allclose(cell.lattice, plain.lattice, atol=1e-9)
            assert np.allclose(cell.lattice, ref.lattice.matrix, atol=1e-6)
            assert np.allclose(cell.frac_coords, plain.frac_coords, atol=1e-12)
            assert cell.frac_coords.shape == (len(rows), 3) and cell.frac_coords.flags.c_contiguous


def test_partial_occupancy_and_malformed_rows_keep_their_reason(materials):
    """A partial occupancy is the recorded CifError 'partial_occupancy' naming the first such
    row, whether the numbers carry uncertainties or not; the first problem in file order wins
    when a row is also malformed; a CIF without atom rows is a parse error."""
    cif = materials.filter(pl.col("nsites") >= 4)["cif"][0]
    head, rows = _atom_lines(cif)

    def reason(new_rows):
        with pytest.raises(CifError) as err:
            parse_cif(_with_rows(head, new_rows))
        return err.value.reason, err.value.detail

    partial = [r[:6] + ["0.5"] if i == 2 else r for i, r in enumerate(rows)]
    assert reason(partial) == ("partial_occupancy", f"{rows[2][0]} occupancy 0.5")
    partial_uncertain = [r[:6] + ["0.75(2)"] if i >= 1 else r for i, r in enumerate(rows)]
    assert reason(partial_uncertain) == ("partial_occupancy", f"{rows[1][0]} occupancy 0.75(2)")
    # a malformed coordinate after the partial row: the partial occupancy is reported
    late_bad = [r[:3] + ["abc"] + r[4:] if i == 3 else r for i, r in enumerate(partial)]
    assert reason(late_bad)[0] == "partial_occupancy"
    # a malformed coordinate before it: the parse error is
    early_bad = [r[:3] + ["abc"] + r[4:] if i == 0 else r for i, r in enumerate(partial)]
    assert reason(early_bad)[0] == "cif_parse_error"
    unknown_occupancy = [r[:6] + ["?"] if i == 1 else r for i, r in enumerate(rows)]
    assert reason(unknown_occupancy)[0] == "cif_parse_error"
    assert reason([]) == ("cif_parse_error", "no atom sites")
    with pytest.raises(CifError) as err:  # the loop lacks fract_z: no usable atom rows
        parse_cif(cif.replace("_atom_site_fract_z", "_atom_site_fract_q"))
    assert (err.value.reason, err.value.detail) == ("cif_parse_error", "no atom sites")
