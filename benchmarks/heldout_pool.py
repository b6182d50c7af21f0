"""Pool the WyFormer-style S.U.N. rate over several generator_yield.py runs (held-out campaigns,
selection draws): one row per run and the pooled rate with its 95 % interval
(ml.generator_metrics.pooled_sun_rate), per named group, so a setting measured on several campaigns
is one figure with one interval.

    .venv/bin/python benchmarks/heldout_pool.py --group default H0/benchmarks/generator_yield/*/random_by_hits-*.json ... \
        [--group option FILE ...] [--markdown PATH]

Each FILE is a per-rule result that generator_yield.py saved under
HOME/benchmarks/generator_yield/PARTITION/ (its `metrics` rows). A run counts its `novel_samples`
(sample novelty), `sun_in_relaxed_sample_e0.08` (S.U.N. crystals / genes relaxed) and
`phonon_stable_sun_e0.1` (phonon-stable S.U.N. at E_hull <= 0.1).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run_of(path: Path) -> dict:
    """The figures pooled from one saved generator_yield.py result."""
    if not path.is_file():
        raise SystemExit(f"{path}: no such result file (a glob that matched nothing?)")
    rows = {m["metric"]: m for m in json.loads(path.read_text())["metrics"]}
    need = ("novel_samples", "sun_in_relaxed_sample_e0.08")
    missing = [m for m in need if rows.get(m, {}).get("value") is None]
    if missing:
        raise SystemExit(f"{path}: no value for {missing} (was the rule's generator_metrics complete?)")
    sun = rows["sun_in_relaxed_sample_e0.08"]
    phonon = rows.get("phonon_stable_sun_e0.1", {})
    return {"label": f"{path.parent.name}/{path.stem}", "novelty": rows["novel_samples"]["value"],
            "sun": int(sun["numerator"]), "selected": int(sun["denominator"]),
            "phonon_stable": None if phonon.get("numerator") is None else int(phonon["numerator"]),
            "selection": sun.get("selection"), "decided_by": sun.get("decided_by")}


def main() -> None:
    from ml.generator_metrics import pooled_sun_rate

    ap = argparse.ArgumentParser()
    ap.add_argument("--group", nargs="+", action="append", required=True, metavar=("NAME", "FILE"),
                    help="a group name, then the saved result files of its runs")
    ap.add_argument("--markdown", default="", help="also write the tables here")
    args = ap.parse_args()
    lines = ["| group | run | selection | sample novelty | S.U.N. <= 0.08 / relaxed | WyFormer-style | "
             "phonon-stable S.U.N. |", "|" + "---|" * 7]
    pooled_lines = ["| group | runs | S.U.N. / relaxed [95 % CI] | WyFormer-style S.U.N. [95 % CI] | "
                    "phonon-stable S.U.N. |", "|" + "---|" * 5]
    for name, *files in args.group:
        if not files:
            raise SystemExit(f"group {name!r} has no files")
        runs = [run_of(Path(f)) for f in files]
        for r in runs:
            lines.append(f"| {name} | {r['label']} | {r['selection']} | {100 * r['novelty']:.1f} % | "
                         f"{r['sun']}/{r['selected']} | {100 * r['novelty'] * r['sun'] / r['selected']:.1f} % | "
                         f"{'' if r['phonon_stable'] is None else r['phonon_stable']} |")
        p = pooled_sun_rate(runs)
        phon = [r["phonon_stable"] for r in runs]
        pooled_lines.append(
            f"| {name} | {p['runs']} | {p['sun']}/{p['selected']} = {100 * p['sun_in_relaxed']:.1f} % "
            f"[{100 * p['sun_in_relaxed_ci95_low']:.1f}-{100 * p['sun_in_relaxed_ci95_high']:.1f}] | "
            f"**{100 * p['value']:.1f} %** [{100 * p['ci95_low']:.1f}-{100 * p['ci95_high']:.1f}] | "
            f"{'n/a' if None in phon else sum(phon)} |")
    text = "\n".join(["## Runs", "", *lines, "", "## Pooled (ml.generator_metrics.pooled_sun_rate)", "",
                      *pooled_lines, "", "WyFormer (theirs, VASP PBE, ~105 relaxed): 23.5 %"])
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
