"""Gene table build on the MP snapshot: the platform's builder vs the plain per-row loop.

One run, the same seeded random rows for both (issue 17):
  * the plain per-row loop on one core: CifParser -> SpacegroupAnalyzer(symprec=0.1) ->
    conventional standard structure -> symmetrized structure -> gene;
  * the platform's builder (``build_gene_table``: gemmi CIF, moyopy with a per-row spglib
    fallback, cached gene columns) on every core;
  * both rates, their ratio and the peak memory of each (process tree: the builder's workers
    count), plus the load average at the start (the ratio is meant for a quiet machine);
  * agreement of every gene row (all columns, gene_key first) between the fast engine and the
    spglib engine (the definition) on the same rows, and the fallback count by reason;
  * the plain loop's gene_key against the platform's, as a cross-check of the definition.

    .venv/bin/python benchmarks/gene_table_benchmark.py [--rows 4000] [--seed 2024]
    .venv/bin/python benchmarks/gene_table_benchmark.py --rows 0          # all 25,200 rows
    .venv/bin/python benchmarks/gene_table_benchmark.py --agreement-all   # agreement only, whole snapshot
    .venv/bin/python benchmarks/gene_table_benchmark.py --dagster         # + end to end materialization
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._memory import TreePeakRSS  # noqa: E402
from ml.gene_table import GENE_COLUMNS, build_gene_table  # noqa: E402
from ml.genes import gene_key  # noqa: E402


def plain_gene(cif: str):
    """The plain per-row loop of issue 17 (pymatgen end to end, one row)."""
    from pymatgen.core import Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    s = Structure.from_str(cif, fmt="cif")
    conv = SpacegroupAnalyzer(s, symprec=0.1).get_conventional_standard_structure()
    sga = SpacegroupAnalyzer(conv, symprec=0.1)
    sym = sga.get_symmetrized_structure()
    w: dict = {}
    for sites, label in zip(sym.equivalent_sites, sym.wyckoff_symbols):
        w.setdefault(sites[0].specie.symbol, []).append(label)
    return conv.composition.reduced_formula, sga.get_space_group_number(), w


def plain_loop(cifs: list[str]) -> list:
    out = []
    for cif in cifs:
        try:
            out.append(plain_gene(cif))
        except Exception as exc:  # the loop records failures; it never stops
            out.append(exc)
    return out


def cpu_seconds() -> float:
    """CPU time of this process and of its finished (reaped) child processes."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def compare_engines(fast: tuple[list, list], reference: tuple[list, list]) -> dict:
    """Row-by-row agreement of two builds of the same rows (genes and rejections)."""
    fg = {r["material_id"]: r for r in fast[0]}
    rg = {r["material_id"]: r for r in reference[0]}
    fr = {r["material_id"]: r for r in fast[1]}
    rr = {r["material_id"]: r for r in reference[1]}
    ids = set(fg) | set(rg) | set(fr) | set(rr)
    key_same = rows_same = 0
    differ: list[str] = []
    column_diffs: Counter = Counter()
    for mid in sorted(ids):
        a, b = fg.get(mid), rg.get(mid)
        if a is None and b is None:  # both rejected: same reason?
            same = fr[mid]["reason"] == rr[mid]["reason"]
            key_same += same
            rows_same += same and fr[mid] == rr[mid]
            if not same:
                differ.append(mid)
            continue
        if a is None or b is None:
            differ.append(mid)
            continue
        key_same += a["gene_key"] == b["gene_key"]
        cols = [c for c in GENE_COLUMNS if a[c] != b[c]]
        column_diffs.update(cols)
        rows_same += not cols
        if cols:
            differ.append(mid)
    return {"rows": len(ids), "gene_key_same": key_same, "rows_identical": rows_same,
            "differ": differ, "column_diffs": dict(column_diffs)}


def print_agreement(label: str, agreement: dict, stats: dict) -> None:
    n = agreement["rows"]
    print(f"agreement, fast engine vs spglib engine, {label}: gene_key {agreement['gene_key_same']}/{n} "
          f"({100 * agreement['gene_key_same'] / max(n, 1):.2f} %), whole rows identical "
          f"{agreement['rows_identical']}/{n} ({100 * agreement['rows_identical'] / max(n, 1):.2f} %)")
    if agreement["differ"]:
        print(f"  differing rows ({len(agreement['differ'])}): {agreement['differ'][:20]} columns {agreement['column_diffs']}")
    fb = stats.get("fallback_rows", 0)
    print(f"  fallback to spglib: {fb}/{stats.get('rows', n)} rows ({100 * fb / max(stats.get('rows', n), 1):.1f} %) "
          f"by reason {stats.get('fallbacks_by_reason', {})}")


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--snapshot", default=os.environ.get("WYCRYST_SNAPSHOT", str(REPO.parent / "shared/data/mp_snapshot")))
    ap.add_argument("--rows", type=int, default=4000, help="random rows for the timed comparison (0 = all)")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--processes", type=int, default=0, help="builder processes (0 = every core)")
    ap.add_argument("--agreement-all", action="store_true",
                    help="only the fast-vs-spglib agreement on the whole snapshot (no plain loop)")
    ap.add_argument("--dagster", action="store_true", help="also time `dagster asset materialize` end to end")
    args = ap.parse_args()
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    df = pl.read_parquet(Path(args.snapshot) / "materials.parquet")
    cores = os.cpu_count() or 1
    processes = args.processes or cores
    print(f"snapshot: {df.height} rows; cores: {cores}; builder processes: {processes}")

    if args.agreement_all:
        ids, cifs, sgs = df["material_id"].to_list(), df["cif"].to_list(), df["symmetry_number"].to_list()
        stats: dict = {}
        t = time.perf_counter()
        fast = build_gene_table(ids, cifs, processes=processes, engine="moyo", space_groups=sgs, stats=stats)
        fast_s = time.perf_counter() - t
        t = time.perf_counter()
        ref = build_gene_table(ids, cifs, processes=processes, engine="spglib")
        ref_s = time.perf_counter() - t
        print(f"fast engine {fast_s:.1f} s ({df.height / fast_s:.0f} rows/s), spglib engine {ref_s:.1f} s "
              f"({df.height / ref_s:.0f} rows/s), {processes} processes")
        print_agreement(f"all {df.height} rows", compare_engines(fast, ref), stats)
        return

    sample = df if args.rows <= 0 else df.sample(min(args.rows, df.height), seed=args.seed)
    ids, cifs, sgs = sample["material_id"].to_list(), sample["cif"].to_list(), sample["symmetry_number"].to_list()
    n = sample.height

    with TreePeakRSS() as plain_peak:
        t, c = time.perf_counter(), cpu_seconds()
        plain = plain_loop(cifs)
        plain_s, plain_cpu = time.perf_counter() - t, cpu_seconds() - c
    plain_rate = n / plain_s
    print(f"plain per-row loop, 1 process, {n} rows: {plain_s:.1f} s = {plain_rate:.1f} rows/s; "
          f"peak RSS {plain_peak.gib:.2f} GiB; CPU {1000 * plain_cpu / n:.2f} ms/row")

    stats = {}
    with TreePeakRSS() as fast_peak:
        t, c = time.perf_counter(), cpu_seconds()
        fast = build_gene_table(ids, cifs, processes=processes, engine="moyo", space_groups=sgs, stats=stats)
        fast_s, fast_cpu = time.perf_counter() - t, cpu_seconds() - c
    fast_rate = n / fast_s
    print(f"platform builder (moyo + spglib fallback), {processes} processes, same {n} rows: {fast_s:.1f} s = "
          f"{fast_rate:.1f} rows/s; peak RSS of the process tree {fast_peak.gib:.2f} GiB; "
          f"CPU {1000 * fast_cpu / n:.2f} ms/row (all processes, start-up included)")
    print(f"RATIO platform / plain loop: {fast_rate / plain_rate:.1f}x")
    print(f"  CPU-time ratio x {processes} cores (what the ratio is when every process has a core of its own): "
          f"{processes * plain_cpu / fast_cpu:.1f}x")

    with TreePeakRSS() as ref_peak:
        t = time.perf_counter()
        ref = build_gene_table(ids, cifs, processes=processes, engine="spglib")
        ref_s = time.perf_counter() - t
    print(f"platform builder, spglib engine (switch), {processes} processes, same rows: {ref_s:.1f} s = "
          f"{n / ref_s:.1f} rows/s ({(n / ref_s) / plain_rate:.1f}x); peak RSS {ref_peak.gib:.2f} GiB")
    print_agreement(f"{n} rows", compare_engines(fast, ref), stats)

    by_id = {g["material_id"]: g for g in fast[0]}
    same = differ = failed = 0
    for mid, result in zip(ids, plain):
        g = by_id.get(mid)
        if isinstance(result, Exception) or g is None:
            failed += 1
            continue
        formula, sg, w = result
        try:
            same_key = g["space_group"] == sg and g["gene_key"] == gene_key(formula, sg, w)
        except Exception:
            same_key = False
        same += same_key
        differ += not same_key
    print(f"plain loop vs platform gene_key: {same} same, {differ} different, {failed} rejected/failed by either")
    genes, rejections = fast
    print(f"genes: {len(genes)}; rejections: {len(rejections)} {dict(Counter(r['reason'] for r in rejections))}")

    if args.dagster:
        run_dagster(args.snapshot, df.height, plain_rate)


def run_dagster(snapshot: str, rows: int, plain_rate: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="wycryst-bench-"))
    dagster_home = tmp / "dagster_home"
    dagster_home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "WYCRYST_HOME": str(tmp / "home"), "WYCRYST_SNAPSHOT": snapshot}
    env.pop("MP_API_KEY", None)
    with TreePeakRSS() as peak:
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "wycryst_assets", "--select", "mp_snapshot,wyckoff_genes"],
            cwd=REPO, env=env, capture_output=True, text=True,
        )
        e2e_s = time.perf_counter() - t
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        raise SystemExit("materialization failed")
    print(f"end to end (dagster asset materialize mp_snapshot,wyckoff_genes): {e2e_s:.1f} s = {rows / e2e_s:.1f} rows/s "
          f"({(rows / e2e_s) / plain_rate:.1f}x the plain loop); peak RSS of the process tree {peak.gib:.2f} GiB")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
