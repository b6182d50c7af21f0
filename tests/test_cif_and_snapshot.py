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
