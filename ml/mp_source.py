"""Pull a snapshot from the live Materials Project API (mp-api) in the offline snapshot's format.

The offline snapshot (``../shared/data/mp_snapshot``) and one exported here are the same
``materials.parquet`` + ``manifest.json`` pair (:mod:`ml.snapshot`), so everything downstream
is one code path. ``mp_api.client.MPRester`` is imported and constructed only inside
:func:`export_snapshot` / :func:`live_database_version` (constructing it contacts the server),
never at import. The API key is read from the argument or ``MP_API_KEY`` and is never printed,
logged or written anywhere.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from ml.snapshot import REQUIRED_COLUMNS, SnapshotInfo, write_snapshot

# The mp-api summary fields a snapshot row is built from (names checked against
# emmet.core.summary.SummaryDoc; ``symmetry`` is an emmet SymmetryData).
SUMMARY_FIELDS: tuple[str, ...] = (
    "material_id",
    "formula_pretty",
    "composition",
    "elements",
    "nelements",
    "chemsys",
    "nsites",
    "volume",
    "density",
    "symmetry",
    "formation_energy_per_atom",
    "energy_above_hull",
    "band_gap",
    "theoretical",
    "structure",
)

# What ``origin_split`` says for rows that came from the live API.
ORIGIN_SPLIT = "mp_api"


def _schema() -> dict[str, Any]:
    """polars dtypes of the snapshot columns as the offline snapshot stores them (so an export
    with, e.g., no band gaps at all still writes the same schema)."""
    import polars as pl

    return {
        "material_id": pl.String, "formula_pretty": pl.String, "composition": pl.String,
        "elements": pl.List(pl.String), "nelements": pl.Int64, "chemsys": pl.String,
        "nsites": pl.Int64, "volume": pl.Float64, "density": pl.Float64,
        "symmetry_number": pl.Int64, "symmetry_symbol": pl.String, "crystal_system": pl.String,
        "formation_energy_per_atom": pl.Float64, "energy_above_hull": pl.Float64,
        "band_gap": pl.Float64, "theoretical": pl.Boolean, "year": pl.Float64,
        "cif": pl.String, "origin_split": pl.String,
    }


class MissingApiKeyError(RuntimeError):
    """No Materials Project API key: neither passed nor in ``MP_API_KEY``."""


class ConversionError(ValueError):
    """A summary document that cannot become a snapshot row (the message says why)."""


# A callable api_key -> context manager whose value has ``get_database_version()`` (or a
# ``db_version`` attribute) and ``materials.summary.search(...)``; MPRester by default.
ResterFactory = Callable[[str], AbstractContextManager[Any]]


def _get(doc: Any, name: str) -> Any:
    """Field ``name`` of a SummaryDoc / mp-api MPDataDoc / plain dict; None when absent."""
    if isinstance(doc, Mapping):
        return doc.get(name)
    try:
        return getattr(doc, name)
    except AttributeError:  # MPDataDoc raises for fields that were not requested
        return None


def _structure(value: Any):
    from pymatgen.core import Structure

    if isinstance(value, Structure):
        return value
    if isinstance(value, Mapping):
        return Structure.from_dict(value)
    if isinstance(value, str):
        return Structure.from_str(value, fmt="cif")
    raise ConversionError(f"no usable structure (got {type(value).__name__})")


def _enum_str(value: Any) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "value", value))


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def summary_doc_to_row(doc: Any) -> dict[str, Any]:
    """One MP summary document -> one snapshot row (exactly :data:`ml.snapshot.REQUIRED_COLUMNS`).

    ``doc`` is an ``emmet.core.summary.SummaryDoc``, the reduced document mp-api returns for
    ``fields=SUMMARY_FIELDS``, or the same as a plain dict (``use_document_model=False``).
    ``cif`` is the P1 CIF pymatgen writes for the structure, ``composition`` the cell
    composition without spaces (``Ga4Te4``), ``crystal_system`` lower case, ``year`` None (the
    summary has no publication year) and ``origin_split`` ``"mp_api"``.
    Raises :class:`ConversionError` when a required value is missing or unusable.
    """
    from pymatgen.core import Composition

    material_id = _get(doc, "material_id")
    if material_id is None or not str(material_id):
        raise ConversionError("no material_id")
    raw_structure = _get(doc, "structure")
    if raw_structure is None:
        raise ConversionError("no structure")
    structure = _structure(raw_structure)
    if len(structure) == 0:
        raise ConversionError("empty structure")

    symmetry = _get(doc, "symmetry")
    if symmetry is None:
        raise ConversionError("no symmetry")
    number, symbol = _get(symmetry, "number"), _get(symmetry, "symbol")
    crystal_system = _enum_str(_get(symmetry, "crystal_system"))
    if number is None or not symbol or not crystal_system:
        raise ConversionError("symmetry lacks number, symbol or crystal_system")

    formation_energy = _get(doc, "formation_energy_per_atom")
    e_hull = _get(doc, "energy_above_hull")
    if formation_energy is None or e_hull is None:
        raise ConversionError("no formation_energy_per_atom or energy_above_hull")

    raw_composition = _get(doc, "composition")
    composition = structure.composition if raw_composition is None else Composition(raw_composition)
    raw_elements = _get(doc, "elements")
    elements = sorted(str(e) for e in (raw_elements or composition.elements))
    theoretical = _get(doc, "theoretical")

    return {
        "material_id": str(material_id),
        "formula_pretty": _get(doc, "formula_pretty") or composition.reduced_formula,
        "composition": composition.formula.replace(" ", ""),
        "elements": elements,
        "nelements": int(_get(doc, "nelements") or len(elements)),
        "chemsys": _get(doc, "chemsys") or "-".join(elements),
        "nsites": int(_get(doc, "nsites") or len(structure)),
        "volume": float(_get(doc, "volume") or structure.volume),
        "density": float(_get(doc, "density") or structure.density),
        "symmetry_number": int(number),
        "symmetry_symbol": str(symbol),
        "crystal_system": crystal_system.lower(),
        "formation_energy_per_atom": float(formation_energy),
        "energy_above_hull": float(e_hull),
        "band_gap": _float_or_none(_get(doc, "band_gap")),
        "theoretical": None if theoretical is None else bool(theoretical),
        "year": None,
        "cif": structure.to(fmt="cif"),
        "origin_split": ORIGIN_SPLIT,
    }


def resolve_api_key(api_key: str | None = None) -> str:
    """The API key from the argument, else ``MP_API_KEY``; :class:`MissingApiKeyError` if neither."""
    key = (api_key or os.environ.get("MP_API_KEY") or "").strip()
    if not key:
        raise MissingApiKeyError(
            "no Materials Project API key: pass api_key or set the MP_API_KEY environment variable"
        )
    return key


def _default_rester_factory(api_key: str) -> AbstractContextManager[Any]:
    from mp_api.client import MPRester  # imported here: never at module import

    return MPRester(api_key=api_key, mute_progress_bars=True)


def _database_version(mpr: Any) -> str:
    """``mpr``'s database version (``db_version``; ``get_database_version()`` on older clients)."""
    version = getattr(mpr, "db_version", None)
    if not isinstance(version, str):
        with warnings.catch_warnings():  # deprecated in favour of db_version in recent mp-api
            warnings.simplefilter("ignore")
            version = mpr.get_database_version()
    if not version:
        raise RuntimeError("the Materials Project API reported no database version")
    return str(version)


def _mp_api_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mp-api")
    except PackageNotFoundError:
        return None


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def rows_from_docs(docs: Iterable[Any], *, secret: str = "") -> tuple[list[dict], list[dict]]:
    """Convert docs to rows; returns ``(rows, skipped)`` with ``{"material_id", "reason"}`` per skip.

    A repeated material_id is skipped too (the first one is kept). ``secret`` is masked out of
    any reason text.
    """
    rows: list[dict] = []
    skipped: list[dict] = []
    seen: set[str] = set()
    for doc in docs:
        mid = _get(doc, "material_id")
        mid = None if mid is None else str(mid)
        try:
            row = summary_doc_to_row(doc)
        except Exception as exc:  # noqa: BLE001 - one bad doc must not stop an export
            reason = f"{type(exc).__name__}: {exc}"
            skipped.append({"material_id": mid, "reason": _scrub(reason, secret)[:500]})
            continue
        if row["material_id"] in seen:
            skipped.append({"material_id": mid, "reason": "duplicate material_id"})
            continue
        seen.add(row["material_id"])
        rows.append(row)
    return rows, skipped


def export_snapshot(
    out_dir: str | Path,
    *,
    api_key: str | None = None,
    max_elements: int = 3,
    chunk_size: int = 1000,
    num_chunks: int | None = None,
    include_gnome: bool = False,
    rester_factory: ResterFactory | None = None,
    log: Callable[[str], None] = print,
) -> SnapshotInfo:
    """Export the live MP summary (materials with 1..``max_elements`` elements) as a snapshot.

    Writes ``out_dir/materials.parquet`` + ``manifest.json`` whose ``database_version`` is the
    live release's; docs that cannot be converted are listed in the manifest under ``skipped``.
    Deprecated materials and (unless ``include_gnome``) the GNoME r2SCAN batch are not requested.
    ``num_chunks`` limits the pull (``None``: everything). ``rester_factory`` replaces
    ``mp_api.client.MPRester`` (tests inject an in-process stand-in).
    """
    import polars as pl

    key = resolve_api_key(api_key)
    factory = rester_factory or _default_rester_factory
    with factory(key) as mpr:
        version = _database_version(mpr)
        log(f"Materials Project database {version}: searching summaries with 1..{max_elements} elements")
        docs = mpr.materials.summary.search(
            num_elements=(1, max_elements),
            deprecated=False,
            include_gnome=include_gnome,
            fields=list(SUMMARY_FIELDS),
            chunk_size=chunk_size,
            num_chunks=num_chunks,
        )
        rows, skipped = rows_from_docs(docs, secret=key)
    log(f"converted {len(rows)} materials, skipped {len(skipped)}")
    table = pl.DataFrame(rows, schema=_schema())
    table = table.select(list(REQUIRED_COLUMNS))
    return write_snapshot(
        table,
        out_dir,
        database_version=version,
        description=f"Materials Project summary, <={max_elements} elements, exported with mp-api",
        extra={
            "source": "mp-api",
            "mp_api_version": _mp_api_version(),
            "query": {
                "num_elements": [1, max_elements],
                "deprecated": False,
                "include_gnome": include_gnome,
                "num_chunks": num_chunks,
                "chunk_size": chunk_size,
                "fields": list(SUMMARY_FIELDS),
            },
            "n_skipped": len(skipped),
            "skipped": skipped,
        },
    )


def live_database_version(api_key: str | None = None, *, rester_factory: ResterFactory | None = None) -> str:
    """The database version the live Materials Project API serves now (one call)."""
    key = resolve_api_key(api_key)
    with (rester_factory or _default_rester_factory)(key) as mpr:
        return _database_version(mpr)
