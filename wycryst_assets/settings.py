"""Paths and switches from the environment, with the defaults of DESIGN.md section 3."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def wycryst_home() -> Path:
    """Warehouse, artifacts and snapshots live here (``WYCRYST_HOME``, default ``./.wycryst``)."""
    return Path(os.environ.get("WYCRYST_HOME", ".wycryst")).resolve()


def shared_data() -> Path:
    return Path(os.environ.get("WYCRYST_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


def snapshot_source() -> Path:
    """The offline snapshot directory to copy when no ``MP_API_KEY`` is set."""
    return Path(os.environ.get("WYCRYST_SNAPSHOT", shared_data() / "mp_snapshot")).resolve()


def targets_file() -> Path:
    return Path(os.environ.get("WYCRYST_TARGETS", shared_data() / "targets.json")).resolve()


def warehouse_path() -> Path:
    return wycryst_home() / "warehouse.duckdb"


def snapshots_dir() -> Path:
    return wycryst_home() / "snapshots"


def artifacts_dir() -> Path:
    return wycryst_home() / "artifacts"


def mp_api_key_present() -> bool:
    return bool(os.environ.get("MP_API_KEY", "").strip())


def dagster_home() -> Path:
    return Path(os.environ.get("DAGSTER_HOME", wycryst_home() / "dagster_home")).resolve()


def elemental_references() -> Path:
    """MP's elemental reference entries (chemical potentials of MP-compatible energies)."""
    default = shared_data() / "mp-elemental-reference-entries.json.gz"
    return Path(os.environ.get("WYCRYST_ELEMENTAL_REFS", default)).resolve()
