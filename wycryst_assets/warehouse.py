"""DuckDB warehouse writes: whole tables and target partitions, each in one transaction.

Connections come from the ``DuckDBResource`` (which retries while another process holds the
file lock); writers are additionally serialized by the ``duckdb_writer`` concurrency pool.
"""

from __future__ import annotations

import re

import polars as pl

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"not a table name: {name!r}")
    return name


def replace_tables(conn, tables: dict[str, pl.DataFrame]) -> None:
    """Create-or-replace several tables atomically (all or none)."""
    conn.execute("BEGIN TRANSACTION")
    try:
        for name, df in tables.items():
            view = f"_incoming_{_check(name)}"
            conn.register(view, df.to_arrow())
            conn.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM {view}")
            conn.unregister(view)
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise


def replace_partition(conn, table: str, target: str, df: pl.DataFrame) -> None:
    """Delete the ``target`` partition's rows and insert ``df`` (which carries that target).
    Columns ``df`` has and the table lacks are added first (other partitions read NULL there)."""
    _check(table)
    if "target" not in df.columns:
        df = df.with_columns(pl.lit(target).alias("target"))
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.register("_incoming", df.to_arrow())
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} AS SELECT * FROM _incoming LIMIT 0")
        # a newer code version may add columns: add them (NULL for the rows already stored)
        have = {r[0] for r in conn.execute(f"DESCRIBE {table}").fetchall()}
        for name, dtype, *_ in conn.execute("DESCRIBE _incoming").fetchall():
            if name not in have:
                conn.execute(f'ALTER TABLE {table} ADD COLUMN "{name}" {dtype}')
        conn.execute(f"DELETE FROM {table} WHERE target = ?", [target])
        conn.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _incoming")
        conn.unregister("_incoming")
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise


def table_exists(conn, table: str) -> bool:
    """Whether ``table`` is in the warehouse yet (an optional stage may never have run)."""
    return bool(conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]).fetchone()[0])


def read_table(conn, sql: str, params=None) -> pl.DataFrame:
    return pl.from_arrow(conn.execute(sql, params or []).fetch_arrow_table())



def read_partition(conn, table: str, target: str) -> pl.DataFrame | None:
    """One partition's rows of ``table``, or None when the table does not exist yet."""
    if not table_exists(conn, _check(table)):
        return None
    return read_table(conn, f"SELECT * FROM {table} WHERE target = ?", [target])
