"""The snapshot format: ``materials.parquet`` + ``manifest.json`` (one MP release).

The offline snapshot in ``../shared/data/mp_snapshot`` and one exported from the live MP API
(:mod:`ml.mp_source`) are the same pair, so everything above the source is one code path.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

MATERIALS_FILE = "materials.parquet"
MANIFEST_FILE = "manifest.json"

# The columns every snapshot must carry (MP summary names).
REQUIRED_COLUMNS: tuple[str, ...] = (
    "material_id",
    "formula_pretty",
    "composition",
    "elements",
    "nelements",
    "chemsys",
    "nsites",
    "volume",
    "density",
    "symmetry_number",
    "symmetry_symbol",
    "crystal_system",
    "formation_energy_per_atom",
    "energy_above_hull",
    "band_gap",
    "theoretical",
    "year",
    "cif",
    "origin_split",
)


class SnapshotError(RuntimeError):
    """A snapshot that must not be used: missing file, checksum mismatch, missing column."""


@dataclass(frozen=True)
class SnapshotInfo:
    path: Path
    database_version: str
    sha256: str
    n_materials: int
    columns: tuple[str, ...]
    manifest: dict


def sha256_of(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise SnapshotError(f"no {MANIFEST_FILE} in snapshot directory {directory}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SnapshotError(f"{path} is not valid JSON: {exc}") from exc
    for key in ("database_version", "materials_sha256"):
        if not manifest.get(key):
            raise SnapshotError(f"{path} lacks {key!r}")
    return manifest


def database_version(directory: str | Path) -> str:
    """The MP database version a snapshot directory holds (reads only the manifest)."""
    return str(read_manifest(directory)["database_version"])


def verify_snapshot(directory: str | Path) -> SnapshotInfo:
    """Check the manifest, the parquet's sha256 and its columns; raise :class:`SnapshotError`."""
    import pyarrow.parquet as pq

    directory = Path(directory)
    manifest = read_manifest(directory)
    materials = directory / MATERIALS_FILE
    if not materials.is_file():
        raise SnapshotError(f"no {MATERIALS_FILE} in snapshot directory {directory}")
    digest = sha256_of(materials)
    if digest != manifest["materials_sha256"]:
        raise SnapshotError(
            f"sha256 mismatch for {materials}: manifest says {manifest['materials_sha256']}, file is {digest}"
        )
    schema = pq.read_schema(materials)
    columns = tuple(schema.names)
    expected = tuple(dict.fromkeys(REQUIRED_COLUMNS + tuple(manifest.get("columns", ()))))
    missing = [c for c in expected if c not in columns]
    if missing:
        raise SnapshotError(f"{materials} lacks column(s) {missing}")
    n = pq.read_metadata(materials).num_rows
    if "n_materials" in manifest and int(manifest["n_materials"]) != n:
        raise SnapshotError(f"manifest says {manifest['n_materials']} materials, {materials} has {n}")
    return SnapshotInfo(directory, str(manifest["database_version"]), digest, n, columns, manifest)


def safe_version_dirname(version: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in version) or "unknown"


def copy_snapshot(source: str | Path, dest_root: str | Path) -> SnapshotInfo:
    """Verify ``source`` and copy it to ``dest_root/<database_version>/`` (verified again).

    An existing copy with the same checksum is kept; old releases stay beside it.
    """
    info = verify_snapshot(source)
    dest = Path(dest_root) / safe_version_dirname(info.database_version)
    if dest.exists():
        try:
            existing = verify_snapshot(dest)
            if existing.sha256 == info.sha256:
                return existing
        except SnapshotError:
            pass
        shutil.rmtree(dest)
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    shutil.copy2(Path(source) / MATERIALS_FILE, tmp / MATERIALS_FILE)
    shutil.copy2(Path(source) / MANIFEST_FILE, tmp / MANIFEST_FILE)
    tmp.rename(dest)
    return verify_snapshot(dest)


def write_snapshot(table, directory: str | Path, *, database_version: str, description: str,
                   license: str = "CC BY 4.0, Materials Project (https://materialsproject.org)",
                   extra: dict | None = None) -> SnapshotInfo:
    """Write a polars DataFrame as a snapshot pair (parquet + manifest with its sha256)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise SnapshotError(f"cannot write a snapshot without column(s) {missing}")
    table = table.select(list(REQUIRED_COLUMNS))
    materials = directory / MATERIALS_FILE
    table.write_parquet(materials)
    manifest = {
        "database_version": database_version,
        "description": description,
        "license": license,
        "n_materials": table.height,
        "columns": list(REQUIRED_COLUMNS),
        "symmetry": "symmetry_number/symbol/crystal_system as Materials Project reports them "
        "(pymatgen SpacegroupAnalyzer(symprec=0.1))",
        "materials_sha256": sha256_of(materials),
        **(extra or {}),
    }
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return verify_snapshot(directory)


def load_materials(info: SnapshotInfo):
    """The snapshot's materials as a polars frame with its ``database_version`` column; a
    :class:`SnapshotError` when a ``material_id`` repeats (one row per material is the contract)."""
    import polars as pl

    materials = pl.read_parquet(Path(info.path) / MATERIALS_FILE)
    dupes = materials.filter(pl.col("material_id").is_duplicated())["material_id"].unique().to_list()
    if dupes:
        raise SnapshotError(f"snapshot {info.database_version} repeats material_id(s) {sorted(dupes)[:10]}")
    return materials.with_columns(pl.lit(info.database_version).alias("database_version"))


def resolve_source(source: str, api_key_present: bool) -> str:
    """``auto`` -> ``mp_api`` when an MP API key is set, else ``offline``; others as given."""
    if source == "auto":
        return "mp_api" if api_key_present else "offline"
    return source
