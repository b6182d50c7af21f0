"""mp_snapshot -> wyckoff_genes through a real Dagster instance (temp DAGSTER_HOME with the
repo's dagster.yaml) and a real DuckDB file."""

import json
import os
import shutil
import subprocess
import sys

import dagster as dg
import duckdb
import pytest

from tests.conftest import KEY_MATERIALS, REPO_ROOT


def _materialize(selection_assets, run_config=None):
    from wycryst_assets.resources import warehouse_resource

    with dg.DagsterInstance.get() as instance:
        assert instance.is_persistent  # the real SQLite-backed instance, not an ephemeral one
        return dg.materialize(
            selection_assets,
            instance=instance,
            resources={"warehouse": warehouse_resource()},
            run_config=run_config,
            raise_on_error=False,
        )


def test_snapshot_and_genes_materialize_with_rejections(wycryst_env, small_snapshot, monkeypatch):
    from wycryst_assets.assets.genes import wyckoff_genes
    from wycryst_assets.assets.snapshot import mp_snapshot
    from wycryst_assets.checks import every_material_accounted_for

    monkeypatch.setenv("WYCRYST_SNAPSHOT", str(small_snapshot))
    result = _materialize([mp_snapshot, wyckoff_genes, every_material_accounted_for],
                          run_config={"ops": {"wyckoff_genes": {"config": {"processes": 1}}}})
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks)

    mats = result.asset_materializations_for_node("mp_snapshot")[0]
    assert mats.tags["dagster/data_version"] == "test-release-1"
    assert mats.metadata["rows"].value == 60
    genes_meta = result.asset_materializations_for_node("wyckoff_genes")[0].metadata
    assert genes_meta["rejections"].value == 2 and genes_meta["genes"].value == 58
    # the fast symmetry engine is the default; rows it could not vouch for went through spglib
    assert genes_meta["symmetry_engine"].value == "moyo"
    assert 0 <= genes_meta["spglib_fallback_rows"].value < 60

    con = duckdb.connect(str(wycryst_env["home"] / "warehouse.duckdb"), read_only=True)
    reasons = dict(con.execute("SELECT material_id, reason FROM wyckoff_gene_rejections").fetchall())
    assert reasons == {"test-malformed-cif": "cif_parse_error", "test-unknown-element": "unknown_element"}
    sg, wyckoff = con.execute("SELECT space_group, wyckoff FROM wyckoff_genes WHERE material_id='mp-5020'").fetchone()
    assert sg == 160 and json.loads(wyckoff) == {"Ba": ["3a"], "O": ["9b"], "Ti": ["3a"]}
    ids = {r[0] for r in con.execute("SELECT material_id FROM wyckoff_genes").fetchall()}
    assert set(KEY_MATERIALS) <= ids
    row = con.execute(
        "SELECT len(element_index), len(wyckoff_letter_counts), len(element_descriptors), sg_index, "
        "formation_energy_per_atom, database_version FROM wyckoff_genes WHERE material_id='mp-1069538'"
    ).fetchone()
    assert row[:4] == (3, 81, 36, 220) and row[4] is not None and row[5] == "test-release-1"
    # the snapshot copy is kept under its release
    assert (wycryst_env["home"] / "snapshots" / "test-release-1" / "manifest.json").is_file()
    con.close()

    # idempotent: a second materialization gives the same rows
    again = _materialize([wyckoff_genes], run_config={"ops": {"wyckoff_genes": {"config": {"processes": 1}}}})
    assert again.success
    con = duckdb.connect(str(wycryst_env["home"] / "warehouse.duckdb"), read_only=True)
    assert con.execute("SELECT count(*), count(DISTINCT material_id) FROM wyckoff_genes").fetchone() == (58, 58)
    con.close()


def test_checksum_mismatch_fails_the_snapshot_and_writes_nothing(wycryst_env, small_snapshot, tmp_path, monkeypatch):
    from wycryst_assets.assets.snapshot import mp_snapshot

    bad = tmp_path / "tampered"
    shutil.copytree(small_snapshot, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["materials_sha256"] = "f" * 64
    (bad / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("WYCRYST_SNAPSHOT", str(bad))
    result = _materialize([mp_snapshot])
    assert not result.success
    failure = result.failure_data_for_node("mp_snapshot")
    assert "sha256 mismatch" in str(failure.error)
    warehouse = wycryst_env["home"] / "warehouse.duckdb"
    if warehouse.exists():
        con = duckdb.connect(str(warehouse), read_only=True)
        assert not con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name='materials'").fetchone()[0]
        con.close()


def test_cli_materializes_through_the_module(wycryst_env, small_snapshot):
    """`dagster asset materialize -m wycryst_assets --select mp_snapshot,wyckoff_genes` as a user runs it."""
    env = {**os.environ, "WYCRYST_SNAPSHOT": str(small_snapshot)}
    proc = subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "wycryst_assets",
         "--select", "mp_snapshot,wyckoff_genes"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    con = duckdb.connect(str(wycryst_env["home"] / "warehouse.duckdb"), read_only=True)
    n_genes, n_rej = con.execute(
        "SELECT (SELECT count(*) FROM wyckoff_genes), (SELECT count(*) FROM wyckoff_gene_rejections)"
    ).fetchone()
    assert (n_genes, n_rej) == (58, 2)
    con.close()
    with dg.DagsterInstance.get() as instance:
        records = instance.get_run_records()
        assert records and records[0].dagster_run.status == dg.DagsterRunStatus.SUCCESS


def test_libraries_do_not_import_dagster():
    code = "import sys, ml.gene_table, ml.genes, ml.snapshot, ml.cif, ml.encoding, dft; " \
           "print('dagster' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
