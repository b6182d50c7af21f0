"""Faults: the API key never reaches Dagster's logs or metadata; concurrent partition writers
share the DuckDB warehouse without lock errors or duplicated rows."""

import multiprocessing as mp
from pathlib import Path

import dagster as dg
import polars as pl

from tests.test_mp_source import API_KEY, offline_rows, standin_factory, summary_doc  # noqa: F401


def test_mp_api_key_never_in_dagster_logs_or_metadata(wycryst_env, offline_rows, monkeypatch):  # noqa: F811
    import ml.mp_source as mps
    from wycryst_assets.assets.snapshot import mp_snapshot
    from wycryst_assets.resources import warehouse_resource

    made = []
    monkeypatch.setattr(mps, "_default_rester_factory", standin_factory([summary_doc(r) for r in offline_rows], made))
    monkeypatch.setenv("MP_API_KEY", API_KEY)
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize([mp_snapshot], instance=instance, resources={"warehouse": warehouse_resource()})
        assert result.success and made and made[0].api_key == API_KEY  # the live path really ran
        meta = result.asset_materializations_for_node("mp_snapshot")[0].metadata
        assert meta["source"].value == "mp_api"
        records = instance.all_logs(result.run_id)
        text = "\n".join(str(r) for r in records)
        assert "mp-api" in text or "MP_API_KEY" in text  # the logs are there, and say what ran
        assert API_KEY not in text
    for path in Path(wycryst_env["home"]).rglob("*"):  # compute logs, snapshot files, warehouse
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert API_KEY.encode() not in path.read_bytes(), path


def _writer(db: str, target: str, n: int, queue) -> None:
    from dagster_duckdb import DuckDBResource

    from wycryst_assets.warehouse import read_table, replace_partition

    resource = DuckDBResource(database=db)
    try:
        for i in range(n):
            df = pl.DataFrame({"target": [target] * 50, "gene_key": [f"{target}-{i}-{j}" for j in range(50)],
                               "hits": list(range(50))})
            with resource.get_connection() as conn:
                replace_partition(conn, "sampled_genes", target, df)
            with resource.get_connection() as conn:
                read_table(conn, "SELECT count(*) FROM sampled_genes")
        queue.put((target, "ok"))
    except Exception as exc:  # reported to the parent, which fails the test
        queue.put((target, f"{type(exc).__name__}: {exc}"))


def test_two_partition_writers_at_once_share_the_warehouse(tmp_path):
    db = str(tmp_path / "warehouse.duckdb")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(db, t, 15, queue)) for t in ("CaTiO3-62", "SrTiO3-221")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    outcomes = dict(queue.get(timeout=5) for _ in procs)
    assert outcomes == {"CaTiO3-62": "ok", "SrTiO3-221": "ok"}
    import duckdb

    con = duckdb.connect(db, read_only=True)
    rows = con.execute("SELECT target, count(*), min(gene_key) FROM sampled_genes GROUP BY target ORDER BY target").fetchall()
    con.close()
    # each partition holds exactly its last write: nothing duplicated, nothing of the other lost
    assert rows == [("CaTiO3-62", 50, "CaTiO3-62-14-0"), ("SrTiO3-221", 50, "SrTiO3-221-14-0")]


def test_a_newer_schema_adds_columns_without_losing_stored_partitions(tmp_path):
    """Upgrading the code (filtered_genes gained `ternary_ok`) against an existing warehouse."""
    import duckdb

    from wycryst_assets.warehouse import replace_partition

    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    old = pl.DataFrame({"target": ["CaTiO3-62"] * 2, "gene_key": ["a", "b"], "passed": [True, False]})
    replace_partition(con, "filtered_genes", "CaTiO3-62", old)
    new = pl.DataFrame({"target": ["SrTiO3-221"], "gene_key": ["c"], "passed": [True], "ternary_ok": [False]})
    replace_partition(con, "filtered_genes", "SrTiO3-221", new)
    rows = con.execute("SELECT target, gene_key, passed, ternary_ok FROM filtered_genes ORDER BY gene_key").fetchall()
    assert rows == [("CaTiO3-62", "a", True, None), ("CaTiO3-62", "b", False, None), ("SrTiO3-221", "c", True, False)]
    con.close()
