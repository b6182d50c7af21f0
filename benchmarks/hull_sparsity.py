"""How often a "stable against the snapshot" call survives MP's full hull (dft.hull_sparsity), and
what that does to the S.U.N. counts of generator runs.

    python benchmarks/hull_sparsity.py [--home HOME ...] [--markdown FILE]

Every snapshot ternary is treated as a new candidate: its distance to the hull of the snapshot
without it, beside MP's own energy_above_hull (against all of MP). The precision of the stable call
is reported per E_hull bin, over all ternaries and over the splits that were not filtered on
stability (a split whose rows all sit within the threshold of MP's hull was selected on it, which
inflates the precision; which splits those are is read from the data). With --home, each home's
novel decided genes within the threshold (rescored_structures, the latest selection of each target)
are weighted by the unfiltered splits' precision of their bin: the S.U.N. count MP's hull would
keep, if the candidates' hull gaps look like those of the snapshot's own materials.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _percent(share: float | None) -> str:
    return "" if share is None else f"{100 * share:.1f} %"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", action="append", default=[], help="a platform home (its warehouse.duckdb is copied first)")
    ap.add_argument("--threshold", type=float, default=0.08)
    ap.add_argument("--markdown", default="")
    args = ap.parse_args()

    import duckdb
    import polars as pl
    import pyarrow.parquet as pq

    from dft.hull_sparsity import (ON_HULL_TOL, expected_mp_stable, leave_one_out_hull_distances,
                                   stable_call_precision)
    from wycryst_assets import settings

    path = settings.snapshot_source() / "materials.parquet"
    t0 = time.perf_counter()
    rows = pq.read_table(path, columns=["material_id", "formula_pretty", "formation_energy_per_atom",
                                        "energy_above_hull", "origin_split"]).to_pylist()
    d = leave_one_out_hull_distances(rows)
    split = pl.DataFrame([{"material_id": r["material_id"], "origin_split": r["origin_split"]} for r in rows])
    d = d.join(split, on="material_id", how="left")
    max_by_split = d.group_by("origin_split").agg(pl.col("e_hull_mp").max().alias("max_e"))
    filtered = set(max_by_split.filter(pl.col("max_e") <= args.threshold)["origin_split"].to_list())
    unfiltered = d.filter(~pl.col("origin_split").is_in(list(filtered)))
    out = [f"# Snapshot hull vs MP's hull: precision of the stable call (E_hull <= {args.threshold:g})", "",
           f"{d.height} snapshot ternaries with a formation energy ({time.perf_counter() - t0:.0f} s). Each one's "
           "distance to the hull of the snapshot without it (`e_hull_snapshot_loo`) against MP's "
           "`energy_above_hull` (all of MP). Splits selected on stability (every row within the "
           f"threshold of MP's hull): {', '.join(sorted(filtered)) or 'none'}.", ""]
    for name, part in (("all ternaries", d), (f"splits not selected on stability ({unfiltered.height})", unfiltered)):
        table = stable_call_precision(part, threshold=args.threshold)
        out += [f"**{name}**", "", "| snapshot E_hull (leave-one-out) | materials | stable in MP | precision |",
                "|---|---|---|---|"]
        out += [f"| {r['bin']} | {r['materials']} | {r['mp_stable']} | {_percent(r['precision'])} |"
                for r in table.iter_rows(named=True)]
        out.append("")
    precision = stable_call_precision(unfiltered, threshold=args.threshold)
    above = unfiltered.filter(pl.col("e_hull_snapshot") > ON_HULL_TOL).with_columns(
        (pl.col("e_hull_mp") - pl.col("e_hull_snapshot")).alias("gap"))
    if above.height:
        out += [f"Hull gap (MP's E_hull - the snapshot's, at the compositions of the {above.height} unfiltered "
                f"materials above the snapshot hull): median {above['gap'].median():.4f}, mean {above['gap'].mean():.4f} "
                f"eV/atom; > 0.01: {100 * (above['gap'] > 0.01).mean():.0f} %, > 0.04: {100 * (above['gap'] > 0.04).mean():.0f} %, "
                f"> 0.08: {100 * (above['gap'] > 0.08).mean():.0f} %. Rows where the snapshot's hull sits below MP's "
                f"(gap < -0.001, an energy-scheme mismatch): {(above['gap'] < -0.001).sum()}.", ""]

    if args.home:
        out += ["**Generator runs** (novel decided genes with E_hull <= the threshold, weighted by the unfiltered "
                "precision of their bin)", "", "| home | target | S.U.N. genes | expected to stay stable in MP | share |",
                "|---|---|---|---|---|"]
        for home in args.home:
            with tempfile.TemporaryDirectory() as tmp:
                copy = Path(tmp) / "warehouse.duckdb"
                shutil.copy(Path(home) / "warehouse.duckdb", copy)
                with duckdb.connect(str(copy), read_only=True) as conn:
                    genes = conn.execute("SELECT target, e_above_hull FROM rescored_structures "
                                         "WHERE is_novel AND e_above_hull IS NOT NULL AND e_above_hull <= ?",
                                         [args.threshold]).pl()
            for (target,), part in sorted(genes.group_by("target"), key=lambda x: x[0]):
                kept = expected_mp_stable(part["e_above_hull"].to_list(), precision)
                out.append(f"| {home} | {target} | {part.height} | {kept:.1f} | {100 * kept / part.height:.0f} % |")
        out.append("")
    text = "\n".join(out)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
