"""Shared fixtures: the shared data folder, a real Dagster instance in a temp DAGSTER_HOME,
and small real snapshots (rows of the offline MP snapshot, plus deliberately bad rows)."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import polars as pl
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("WYCRYST_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()
SNAPSHOT_DIR = SHARED_DATA / "mp_snapshot"

warnings.filterwarnings("ignore")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SNAPSHOT_DIR.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA} (set WYCRYST_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def materials(shared_data) -> pl.DataFrame:
    return pl.read_parquet(shared_data / "mp_snapshot" / "materials.parquet")


@pytest.fixture(scope="session")
def targets(shared_data) -> list[dict]:
    return json.loads((shared_data / "targets.json").read_text())["targets"]


@pytest.fixture
def wycryst_env(tmp_path, monkeypatch):
    """WYCRYST_HOME and DAGSTER_HOME in a temp dir, DAGSTER_HOME holding the repo's dagster.yaml."""
    home = tmp_path / "wycryst_home"
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir(parents=True)
    shutil.copyfile(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    monkeypatch.setenv("WYCRYST_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    monkeypatch.setenv("WYCRYST_SHARED_DATA", str(SHARED_DATA))
    monkeypatch.delenv("MP_API_KEY", raising=False)
    return {"home": home, "dagster_home": dagster_home}


# A few materials every foundation test wants: BaTiO3 R3m (mp-5020), cubic CsPbI3 (mp-1069538).
KEY_MATERIALS = ("mp-5020", "mp-1069538")

MALFORMED_CIF = "data_broken\n_cell_length_a 4.0\nloop_\n_atom_site_type_symbol\n  'unterminated\n"


def _unknown_element_cif(cif: str) -> str:
    """The same CIF with its first element symbol replaced by 'Xx' (no such element)."""
    lines = cif.splitlines()
    for i, line in enumerate(lines):
        parts = line.split()
        if len(parts) >= 7 and parts[1].startswith(parts[0]) and parts[0].isalpha():
            lines[i] = line.replace(parts[0], "Xx", 1)
            break
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def small_snapshot(materials, tmp_path_factory) -> Path:
    """A 60-row snapshot (key materials + a ternary sample) plus a malformed-CIF row and an
    unknown-element row, written in the real snapshot format."""
    from ml.snapshot import write_snapshot

    sample = materials.filter(pl.col("nelements") == 3).sample(56, seed=42)
    keys = materials.filter(pl.col("material_id").is_in(list(KEY_MATERIALS)))
    rows = pl.concat([keys, sample.filter(~pl.col("material_id").is_in(list(KEY_MATERIALS)))]).head(58)
    broken = rows.head(2).with_columns(
        pl.Series("material_id", ["test-malformed-cif", "test-unknown-element"]),
        pl.Series("cif", [MALFORMED_CIF, _unknown_element_cif(rows["cif"][1])]),
    )
    table = pl.concat([rows, broken])
    out = tmp_path_factory.mktemp("snapshot") / "test-release"
    write_snapshot(table, out, database_version="test-release-1", description="test subset")
    return out


TINY_PVAE = {"max_epochs": 1, "latent_dim": 16, "batch_size": 64}


def asset_runner(instance, resources):
    """``run(assets, partition, op_config)``: one materialization in ``instance``, never raising."""
    import dagster as dg

    def run(assets, partition=None, config=None):
        return dg.materialize(assets, instance=instance, resources=resources, partition_key=partition,
                              run_config={"ops": config or {}}, selection=assets, raise_on_error=False)

    return run


def materialize_through_sampling(run, key: str, samples_per_origin: int):
    """The upstream chain for one partition: snapshot + genes (1 process), synthesizability, a
    1-epoch PVAE (its blocking quality check may fail; the checkpoint is written) and
    ``sampled_genes``, whose result is returned."""
    from wycryst_assets.assets.genes import wyckoff_genes
    from wycryst_assets.assets.pvae import pvae_model
    from wycryst_assets.assets.sampling import sampled_genes, synthesizability_model
    from wycryst_assets.assets.snapshot import mp_snapshot

    assert run([mp_snapshot, wyckoff_genes], config={"wyckoff_genes": {"config": {"processes": 1}}}).success
    assert run([synthesizability_model]).success
    run([pvae_model], key, {"pvae_model": {"config": TINY_PVAE}})
    return run([sampled_genes], key, {"sampled_genes": {"config": {"samples_per_origin": samples_per_origin}}})
