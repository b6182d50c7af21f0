"""ml.mp_source: MP summary docs -> snapshot rows, and the export, with no network.

Summary documents are rebuilt from real rows of the offline snapshot (structure from the row's
CIF, properties from its columns), so a converted doc must give the offline row back. The MP
server is replaced by an in-process stand-in passed as ``rester_factory``.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from emmet.core.summary import SummaryDoc
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

import ml.mp_source as mps
from ml.snapshot import MATERIALS_FILE, REQUIRED_COLUMNS, verify_snapshot

SHARED_DATA = Path(os.environ.get("WYCRYST_SHARED_DATA", Path(__file__).parents[2] / "shared" / "data"))
OFFLINE = SHARED_DATA / "mp_snapshot" / MATERIALS_FILE
API_KEY = "TEST-KEY-must-not-leak-7f3a9c"
STANDIN_VERSION = "2099.01.01-standin"

pytestmark = [
    pytest.mark.skipif(not OFFLINE.is_file(), reason=f"offline snapshot not found at {OFFLINE}"),
    # the offline CIFs carry coordinates pymatgen rounds to ideal values on reading
    pytest.mark.filterwarnings("ignore:Issues encountered while parsing CIF"),
]


@pytest.fixture(scope="module")
def offline_rows() -> list[dict[str, Any]]:
    """Five real offline rows: a unary, a binary and a ternary (these have a band gap and no
    ``theoretical``), and two ICSD-flagged rows (``theoretical`` False, no band gap), one of
    them a quaternary (nothing in the conversion limits the element count)."""
    df = pl.read_parquet(OFFLINE).sort("material_id")
    picks = [
        df.filter(pl.col("nelements") == 1),
        df.filter((pl.col("nelements") == 2) & pl.col("band_gap").is_not_null()),
        df.filter((pl.col("nelements") == 3) & (pl.col("nsites") <= 20)),
        df.filter(pl.col("theoretical").is_not_null() & (pl.col("nelements") == 3) & (pl.col("nsites") <= 30)),
        df.filter(pl.col("theoretical").is_not_null() & (pl.col("nelements") == 4) & (pl.col("nsites") <= 30)),
    ]
    rows = [p.row(0, named=True) for p in picks]
    assert len({r["material_id"] for r in rows}) == len(rows)
    return rows


def _fields(row: dict[str, Any]) -> dict[str, Any]:
    """The summary fields of an offline row, as mp-api would send them."""
    structure = Structure.from_str(row["cif"], fmt="cif")
    fields = {
        "material_id": row["material_id"],
        "structure": structure,
        "formula_pretty": row["formula_pretty"],
        "composition": structure.composition,
        "elements": row["elements"],
        "nelements": row["nelements"],
        "chemsys": row["chemsys"],
        "nsites": row["nsites"],
        "volume": row["volume"],
        "density": row["density"],
        "symmetry": {
            "number": row["symmetry_number"],
            "symbol": row["symmetry_symbol"],
            "crystal_system": row["crystal_system"].capitalize(),  # MP spells it "Trigonal"
        },
        "formation_energy_per_atom": row["formation_energy_per_atom"],
        "energy_above_hull": row["energy_above_hull"],
        "band_gap": row["band_gap"],
    }
    if row["theoretical"] is not None:
        fields["theoretical"] = row["theoretical"]
    return fields


def summary_doc(row: dict[str, Any]) -> SummaryDoc:
    return SummaryDoc(**_fields(row))


def summary_dict(row: dict[str, Any]) -> dict[str, Any]:
    """The ``use_document_model=False`` shape: plain JSON-like values."""
    fields = _fields(row)
    fields["structure"] = fields["structure"].as_dict()
    fields["composition"] = {str(el): amt for el, amt in fields["composition"].items()}
    fields["theoretical"] = row["theoretical"]
    return fields


def check_row(got: dict[str, Any], want: dict[str, Any], *, theoretical_known: bool = True) -> None:
    assert tuple(got) == REQUIRED_COLUMNS
    for col in ("material_id", "formula_pretty", "composition", "elements", "nelements", "chemsys",
                "nsites", "symmetry_number", "symmetry_symbol", "crystal_system"):
        assert got[col] == want[col], col
    for col in ("volume", "density", "formation_energy_per_atom", "energy_above_hull"):
        assert got[col] == pytest.approx(want[col]), col
    assert got["band_gap"] == (None if want["band_gap"] is None else pytest.approx(want["band_gap"]))
    if theoretical_known or want["theoretical"] is not None:
        assert got["theoretical"] == want["theoretical"]
    assert got["year"] is None
    assert got["origin_split"] == "mp_api"
    reparsed = Structure.from_str(got["cif"], fmt="cif")
    original = Structure.from_str(want["cif"], fmt="cif")
    assert len(reparsed) == want["nsites"]
    assert StructureMatcher().fit(reparsed, original)


class StandInRester:
    """In-process stand-in for ``MPRester``: serves fixed docs and records the calls."""

    def __init__(self, api_key: str, docs: list[Any]) -> None:
        self.api_key = api_key
        self.docs = docs
        self.search_kwargs: dict[str, Any] | None = None
        self.entered = self.exited = False
        self.materials = self
        self.summary = self

    def __enter__(self) -> "StandInRester":
        self.entered = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.exited = True

    def get_database_version(self) -> str:
        return STANDIN_VERSION

    def search(self, **kwargs: Any) -> list[Any]:
        self.search_kwargs = kwargs
        return list(self.docs)


def standin_factory(docs: list[Any], made: list[StandInRester]):
    def factory(api_key: str) -> StandInRester:
        rester = StandInRester(api_key, docs)
        made.append(rester)
        return rester

    return factory


def test_summary_fields_are_summarydoc_fields():
    assert set(mps.SUMMARY_FIELDS) <= set(SummaryDoc.model_fields)


def test_summary_doc_to_row_reproduces_offline_rows(offline_rows):
    for row in offline_rows:
        check_row(mps.summary_doc_to_row(summary_doc(row)), row, theoretical_known=False)


def test_summary_dict_to_row_reproduces_offline_rows(offline_rows):
    for row in offline_rows:
        check_row(mps.summary_doc_to_row(summary_dict(row)), row)


def test_mp_api_reduced_document_shape(offline_rows):
    """What ``search(fields=...)`` returns with the document model on (mp-api's MPDataDoc)."""
    schemas = pytest.importorskip("mp_api.client.core.schemas")
    if not hasattr(schemas, "_convert_to_model"):
        pytest.skip("mp-api has no _convert_to_model")
    raw = [summary_dict(r) for r in offline_rows]
    docs = schemas._convert_to_model(raw, SummaryDoc, requested_fields=list(mps.SUMMARY_FIELDS))
    for doc, row in zip(docs, offline_rows):
        check_row(mps.summary_doc_to_row(doc), row)


def test_unconvertible_doc_raises(offline_rows):
    bad = summary_dict(offline_rows[0])
    bad["structure"] = None
    with pytest.raises(mps.ConversionError, match="structure"):
        mps.summary_doc_to_row(bad)


def test_export_snapshot_with_standin(tmp_path, offline_rows, capsys):
    made: list[StandInRester] = []
    logged: list[str] = []
    docs = [summary_doc(r) for r in offline_rows]
    info = mps.export_snapshot(tmp_path / "snap", api_key=API_KEY, max_elements=3, num_chunks=2,
                               rester_factory=standin_factory(docs, made), log=logged.append)

    (rester,) = made
    assert rester.api_key == API_KEY and rester.entered and rester.exited
    assert rester.search_kwargs["num_elements"] == (1, 3)
    assert rester.search_kwargs["num_chunks"] == 2
    assert set(rester.search_kwargs["fields"]) == set(mps.SUMMARY_FIELDS)

    checked = verify_snapshot(tmp_path / "snap")
    assert checked.database_version == info.database_version == STANDIN_VERSION
    assert checked.n_materials == len(offline_rows)
    manifest = checked.manifest
    assert manifest["source"] == "mp-api" and manifest["skipped"] == []
    assert manifest["description"] == "Materials Project summary, <=3 elements, exported with mp-api"

    written = pl.read_parquet(tmp_path / "snap" / MATERIALS_FILE)
    offline_schema = pl.read_parquet_schema(OFFLINE)
    assert dict(written.schema) == {c: offline_schema[c] for c in REQUIRED_COLUMNS}
    by_id = {r["material_id"]: r for r in written.iter_rows(named=True)}
    for row in offline_rows:
        check_row(by_id[row["material_id"]], row, theoretical_known=False)

    for path in (tmp_path / "snap").rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path
    out = capsys.readouterr()
    assert API_KEY not in out.out + out.err
    assert logged and all(API_KEY not in line for line in logged)


def test_export_records_skipped_docs(tmp_path, offline_rows):
    good = [summary_doc(r) for r in offline_rows[:3]]
    no_structure = summary_dict(offline_rows[3])
    no_structure["structure"] = None
    no_energy = summary_dict(offline_rows[4])
    no_energy["formation_energy_per_atom"] = None
    docs = [good[0], no_structure, good[1], no_energy, good[2], good[0]]  # last: a repeat

    info = mps.export_snapshot(tmp_path / "snap", api_key=API_KEY,
                               rester_factory=standin_factory(docs, []), log=lambda _: None)

    assert info.n_materials == 3
    written = set(pl.read_parquet(tmp_path / "snap" / MATERIALS_FILE)["material_id"])
    assert written == {r["material_id"] for r in offline_rows[:3]}
    skipped = json.loads((tmp_path / "snap" / "manifest.json").read_text())["skipped"]
    reasons = {s["material_id"]: s["reason"] for s in skipped[:2]}
    assert set(reasons) == {offline_rows[3]["material_id"], offline_rows[4]["material_id"]}
    assert "structure" in reasons[offline_rows[3]["material_id"]]
    assert "formation_energy_per_atom" in reasons[offline_rows[4]["material_id"]]
    assert skipped[2] == {"material_id": offline_rows[0]["material_id"], "reason": "duplicate material_id"}


def test_export_with_no_docs_writes_empty_snapshot(tmp_path):
    info = mps.export_snapshot(tmp_path / "snap", api_key=API_KEY,
                               rester_factory=standin_factory([], []), log=lambda _: None)
    assert info.n_materials == 0 and info.database_version == STANDIN_VERSION


def test_missing_key_names_mp_api_key(tmp_path, monkeypatch):
    monkeypatch.delenv("MP_API_KEY", raising=False)
    made: list[StandInRester] = []
    with pytest.raises(mps.MissingApiKeyError, match="MP_API_KEY"):
        mps.export_snapshot(tmp_path / "snap", rester_factory=standin_factory([], made))
    with pytest.raises(mps.MissingApiKeyError, match="MP_API_KEY"):
        mps.live_database_version()
    assert made == [] and not (tmp_path / "snap").exists()


def test_key_from_environment(monkeypatch):
    monkeypatch.setenv("MP_API_KEY", API_KEY)
    made: list[StandInRester] = []
    assert mps.live_database_version(rester_factory=standin_factory([], made)) == STANDIN_VERSION
    assert [r.api_key for r in made] == [API_KEY]


def test_import_does_not_construct_mprester(monkeypatch, offline_rows, tmp_path):
    import mp_api.client

    constructed: list[object] = []

    class Exploding:
        def __init__(self, *args: object, **kwargs: object) -> None:
            constructed.append(kwargs)
            raise RuntimeError("MPRester must not be constructed here")

    monkeypatch.setattr(mp_api.client, "MPRester", Exploding)
    module = importlib.reload(mps)
    assert constructed == []
    check_row(module.summary_doc_to_row(summary_dict(offline_rows[0])), offline_rows[0])
    assert constructed == []
    # The default factory reaches MPRester only when an export actually runs.
    with pytest.raises(RuntimeError, match="must not be constructed"):
        module.export_snapshot(tmp_path / "snap", api_key=API_KEY, log=lambda _: None)
    assert len(constructed) == 1
