"""Shared helpers of the asset modules: fixed-schema frames, verdict counts, counts by SQL, the
trained PVAE's manifest. Asset modules import these (public names), never each other's privates."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl

from wycryst_assets import settings


def frame(rows: list[dict], schema: dict) -> pl.DataFrame:
    """``rows`` as a frame with exactly ``schema``'s columns (missing keys -> null)."""
    return pl.DataFrame([{k: r.get(k) for k in schema} for r in rows], schema=schema, orient="row")


def verdict_counts(df: pl.DataFrame) -> list[dict]:
    """``[{"verdict", "len"}, ...]`` sorted by verdict (for a metadata table)."""
    return df.group_by("verdict").len().sort("verdict").to_dicts() if df.height else []


def count(conn, sql: str, key: str) -> int:
    """``count(*)``-style query with one ``?`` parameter (the partition key)."""
    return int(conn.execute(sql, [key]).fetchone()[0])


def model_dir(target: str) -> Path:
    """Where a partition's PVAE checkpoint and ``model.json`` live."""
    return settings.artifacts_dir() / "pvae_model" / target


def write_model_manifest(target: str, manifest: dict) -> Path:
    path = model_dir(target) / "model.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2, default=str))
    return path


def load_model_manifest(target: str) -> dict:
    """The partition's ``model.json`` (checkpoint, excluded materials, release); a clear failure
    when pvae_model has not been materialized for it."""
    path = model_dir(target) / "model.json"
    if not path.is_file():
        raise dg.Failure(f"no trained model for {target}: materialize pvae_model for this partition first ({path})")
    return json.loads(path.read_text())
