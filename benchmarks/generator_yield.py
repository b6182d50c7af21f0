"""What each budget ranking earns: trial_structures -> relaxed_structures -> phonon_verdicts ->
generator_metrics for every rule on the same budget of one partition (default campaign-paper,
100 genes), through the real Dagster instance of --home, then the yield per rule (S.U.N. at 0 and
0.08, MetaSUN 0.1, phonon-stable S.U.N.) and the metrics of random vs ranked selections beside
the published anchors.

    .venv/bin/python benchmarks/generator_yield.py [--home /tmp/wycryst-loo] [--partition campaign-paper]
        [--budget 100] [--rules random,random_by_hits,hits,...] [--selection-seed 0] [--relaxer chgnet]
        [--prepare] [--force] [--max-steps 300] [--phonon-max-e-above-hull 0.1] [--filtered-config JSON]
        [--sampled-config JSON] [--heldout-campaign SEED]

Relaxations are stored per structure file + settings (relaxed_structures' task key hashes the
trial CIF, which PyXtal rebuilds identically from the per-gene seed), and phonons per relaxed
file, so a gene two rules both select is relaxed once; the table reports how many relaxations each
rule ran and how many it reused. Resumable: a killed run keeps every finished relaxation and
phonon result, and each rule's metrics are saved under --home/benchmarks/generator_yield/ (rerun
skips finished rules unless --force; the saved file's name carries the rule, budget, seed, relaxer
and the --sampled-config / --filtered-config, not the PVAE: after retraining it, pass --force).
--prepare first runs the campaign's upstream chain (snapshot, genes, synthesizability, PVAE,
sampling, filters) where it is missing, with campaign_funnel.py's settings.
--unconditional scores campaign-unconditional instead (ml.targets.unconditional_campaign: every
non-noble-gas, non-radioactive element of the training ternaries, all of them origins; the closest
this platform comes to the anchors' unconditional sampling), written to --home/targets-unconditional.json.
--heldout-campaign SEED scores a campaign nobody tuned for instead of --partition: 24 elements drawn
with that seed outside campaign-paper's (ml.targets.heldout_campaign), campaign-paper's selection
rules; the registry (the shared one plus this entry) is written to --home/targets-heldout-SEED.json
and used through WYCRYST_TARGETS.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _count(path: Path) -> int:
    return len(list(path.glob("*.json"))) if path.is_dir() else 0


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def _pct_ci(row: dict) -> str:
    if row.get("value") is None:
        return "n/a"
    ci = "" if row.get("ci95_low") is None else f" [{100 * row['ci95_low']:.0f}-{100 * row['ci95_high']:.0f}]"
    return f"{100 * row['value']:.1f} %{ci}"


def _n(v) -> int | None:
    return None if v is None else int(v)


def _table(rows: list[dict]) -> str:
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(out + ["| " + " | ".join("" if r[c] is None else str(r[c]) for c in cols) + " |" for r in rows])


def _use_extra_campaign(home: Path, seed: int | None) -> str:
    """Write the shared registry plus campaign-heldout-SEED (campaign-unconditional when ``seed``
    is None) to home, point WYCRYST_TARGETS at it, and return the partition key."""
    import duckdb

    from ml.targets import heldout_campaign, unconditional_campaign
    from wycryst_assets import settings

    shared = json.loads(settings.targets_file().read_text())
    paper = next(t for t in shared["targets"] if t["partition"] == "campaign-paper")
    with duckdb.connect(str(settings.warehouse_path()), read_only=True) as conn:
        genes = [r[0] for r in conn.execute("SELECT slot_elements FROM wyckoff_genes WHERE n_elements = 3").fetchall()]
    if seed is None:
        entry = unconditional_campaign(genes, selection=paper.get("selection"))
        registry = home / "targets-unconditional.json"
    else:
        entry = heldout_campaign(genes, paper["elements"], seed=seed, selection=paper.get("selection"))
        registry = home / f"targets-heldout-{seed}.json"
    registry.write_text(json.dumps({**shared, "targets": [*shared["targets"], entry]}, indent=1))
    os.environ["WYCRYST_TARGETS"] = str(registry)
    print(f"{entry['partition']}: {', '.join(entry['elements'])} ({entry['_about']}); registry {registry}",
          flush=True)
    return entry["partition"]


def main() -> None:
    from ml.selection import COMPARED_SELECTIONS, SELECTIONS

    ap = argparse.ArgumentParser()
    ap.add_argument("--home", default="/tmp/wycryst-loo")
    ap.add_argument("--partition", default="campaign-paper")
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--rules", default=",".join(COMPARED_SELECTIONS))
    ap.add_argument("--selection-seed", type=int, default=0)
    ap.add_argument("--relaxer", default="chgnet")
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--phonon-max-e-above-hull", type=float, default=0.1)
    ap.add_argument("--prepare", action="store_true", help="run the upstream chain where it is missing")
    ap.add_argument("--max-epochs", type=int, default=None, help="--prepare: PVAE epochs (default: by task, ml.pvae_config)")
    ap.add_argument("--samples-per-origin", type=int, default=5000, help="--prepare: latent samples per origin")
    ap.add_argument("--training-seed", type=int, default=None,
                    help="--prepare: seed of the PVAE's training and of its latent sampling (default: the "
                         "assets' defaults), for an independently trained model in a new home")
    ap.add_argument("--force", action="store_true", help="recompute rules that have saved metrics")
    ap.add_argument("--filtered-config", default="",
                    help="JSON config to re-materialize filtered_genes with first, e.g. "
                         "'{\"max_predicted_formation_energy\": 10, \"min_synthesizability\": 0}' (reliability "
                         "filters only: the random sample then skips the feasibility filters); saved results are "
                         "labelled with it, and filtered_genes is re-materialized with its defaults at the end")
    ap.add_argument("--unconditional", action="store_true",
                    help="score campaign-unconditional (every element of the training ternaries, as the field "
                         "scores generators) instead of --partition")
    ap.add_argument("--heldout-campaign", type=int, default=None, metavar="SEED",
                    help="score campaign-heldout-SEED (24 elements drawn outside campaign-paper's) instead of "
                         "--partition; needs the home's wyckoff_genes (with --prepare it is built first)")
    ap.add_argument("--sampled-config", default="",
                    help="JSON config to re-materialize sampled_genes with first (then filtered_genes), e.g. "
                         "'{\"noise_scale\": 6, \"samples_per_origin\": 1000}': the generator itself changes; "
                         "saved results are labelled with it, and the home keeps these samples (use a copy)")
    args = ap.parse_args()
    rules = [r for r in args.rules.split(",") if r]
    unknown = [r for r in rules if r not in SELECTIONS]
    if unknown:
        ap.error(f"unknown rule(s) {unknown}; valid: {', '.join(SELECTIONS)}")
    home = Path(args.home)
    os.environ["WYCRYST_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster_home")
    os.environ.pop("MP_API_KEY", None)
    from wycryst_assets.cpu import RUN_THREADS_ENV, usable_cores

    # the stages run one at a time here, as in `wycryst run`: each gets every core (without this the
    # instance's run queue of 2 gives each run half the cores, and relaxations and phonons run on one)
    os.environ.setdefault(RUN_THREADS_ENV, str(usable_cores()))
    from wycryst_assets.cli import init_dagster_home

    init_dagster_home()

    import dagster as dg
    import duckdb
    import polars as pl

    from ml.benchmark_anchors import WYFORMER_DFT, anchor_rows
    from wycryst_assets import settings
    from wycryst_assets.assets.pvae import model_dir
    from wycryst_assets.definitions import defs
    from wycryst_assets.partitions import sync_target_partitions
    from wycryst_assets.warehouse import table_exists

    key = args.partition
    graph = {a.key.to_user_string(): a for a in defs.assets}
    resources = dict(defs.resources)

    def materialize(instance, name: str, cfg: dict | None = None):
        res = dg.materialize([graph[name]], instance=instance, resources=resources, partition_key=key,
                             run_config={"ops": {name: {"config": cfg or {}}}}, raise_on_error=False)
        # a short PVAE may fail its blocking quality check; its checkpoint is still written
        if not res.success and not (name == "pvae_model" and (model_dir(key) / "model.json").exists()):
            raise SystemExit(f"{name} failed: {res.failure_data_for_node(name)}")
        return res

    results: dict[str, dict] = {}
    with dg.DagsterInstance.get() as instance:
        if args.prepare and not (home / "warehouse.duckdb").exists():
            for name in ("mp_snapshot", "wyckoff_genes", "synthesizability_model"):
                assert dg.materialize([graph[name]], instance=instance, resources=resources).success
        if args.heldout_campaign is not None or args.unconditional:
            key = _use_extra_campaign(home, None if args.unconditional else args.heldout_campaign)
        out_dir = home / "benchmarks" / "generator_yield" / key
        out_dir.mkdir(parents=True, exist_ok=True)
        relax_results = settings.artifacts_dir() / "relaxed_structures" / key / "results"
        phonon_results = settings.artifacts_dir() / "phonon_verdicts" / key / "results"
        sync_target_partitions(instance)
        if args.prepare:
            if not (model_dir(key) / "model.json").exists():
                materialize(instance, "pvae_model", {"max_epochs": args.max_epochs}
                            | ({} if args.training_seed is None else {"seed": args.training_seed}))
            with duckdb.connect(str(settings.warehouse_path()), read_only=True) as conn:
                have = table_exists(conn, "filtered_genes") and conn.execute(
                    "SELECT count(*) FROM filtered_genes WHERE target = ?", [key]).fetchone()[0]
            if not have and not args.sampled_config:  # --sampled-config samples and filters just below
                materialize(instance, "sampled_genes", {"samples_per_origin": args.samples_per_origin,
                                                        "max_latent_points": 1_000_000}
                            | ({} if args.training_seed is None else {"seed": args.training_seed}))
                materialize(instance, "filtered_genes")
        import hashlib

        label = ""
        if args.sampled_config:
            materialize(instance, "sampled_genes", json.loads(args.sampled_config))
            label += "-g" + hashlib.sha1(args.sampled_config.encode()).hexdigest()[:8]
        if args.filtered_config or args.sampled_config:
            materialize(instance, "filtered_genes", json.loads(args.filtered_config or "{}"))
        if args.filtered_config:
            label += "-f" + hashlib.sha1(args.filtered_config.encode()).hexdigest()[:8]
        for rule in rules:
            saved = out_dir / f"{rule}-b{args.budget}-s{args.selection_seed}-{args.relaxer}{label}.json"
            if saved.exists() and not args.force:
                results[rule] = json.loads(saved.read_text())
                print(f"{rule}: saved result reused ({saved})", flush=True)
                continue
            t0 = time.perf_counter()
            before_relax, before_phon = _count(relax_results), _count(phonon_results)
            materialize(instance, "trial_structures", {"ranking": rule, "max_genes": args.budget,
                                                       "selection_seed": args.selection_seed})
            materialize(instance, "relaxed_structures", {"relaxer": args.relaxer, "max_steps": args.max_steps})
            materialize(instance, "rescored_structures", {"max_steps": args.max_steps})
            materialize(instance, "phonon_verdicts", {"max_e_above_hull": args.phonon_max_e_above_hull,
                                                      "max_structures": args.budget})
            materialize(instance, "generator_metrics")
            with duckdb.connect(str(settings.warehouse_path()), read_only=True) as conn:
                metrics = pl.from_arrow(conn.execute("SELECT * FROM generator_metrics WHERE target = ?", [key]).arrow())
                trials = conn.execute("SELECT count(*) FROM trial_structures WHERE target = ? AND verdict = 'ok'",
                                      [key]).fetchone()[0]
            ran_relax, ran_phon = _count(relax_results) - before_relax, _count(phonon_results) - before_phon
            results[rule] = {"metrics": metrics.drop("target").to_dicts(), "seconds": time.perf_counter() - t0,
                             "trials_relaxed": trials, "relaxations_run": ran_relax,
                             "relaxations_reused": trials - ran_relax, "phonons_run": ran_phon}
            saved.write_text(json.dumps(results[rule], indent=1))
            print(f"{rule}: {results[rule]['seconds']:.0f} s, {ran_relax} relaxations run, "
                  f"{trials - ran_relax} reused, {ran_phon} phonon runs", flush=True)
        if args.filtered_config:  # leave the partition's filters as the platform's defaults
            materialize(instance, "filtered_genes")

    def m(rule: str, name: str) -> dict:
        return next((r for r in results[rule]["metrics"] if r["metric"] == name), {})

    print(f"\n## Yield per ranking rule ({key}, budget {args.budget} genes, relaxer {args.relaxer}, "
          f"selection seed {args.selection_seed}"
          + (f"; sampled_genes config {args.sampled_config}" if args.sampled_config else "")
          + (f"; filtered_genes config {args.filtered_config}" if args.filtered_config else "") + ")\n")
    yield_rows = []
    for rule in rules:
        sel = m(rule, "sun_in_relaxed_sample_e0.08")
        yield_rows.append({
            "rule": rule, "selected": _n(sel.get("denominator")),
            "S.U.N. <= 0 (n)": _n(m(rule, "sun_in_relaxed_sample_e0").get("numerator")),
            "S.U.N. <= 0.08 (n)": _n(sel.get("numerator")), "S.U.N. <= 0.08 / selected [95 % CI]": _pct_ci(sel),
            "WyFormer S.U.N. rate <= 0.08 [95 % CI]": _pct_ci(m(rule, "sun_rate_e0.08")),
            "MetaSUN (0, 0.1] (n)": _n(m(rule, "metasun_e0.1").get("numerator")),
            "phonon-stable S.U.N. <= 0.1 (n)": _n(m(rule, "phonon_stable_sun_e0.1").get("numerator")),
            "dynamically stable": _pct(m(rule, "dynamically_stable").get("value")),
            "relaxations run / reused": f"{results[rule]['relaxations_run']} / {results[rule]['relaxations_reused']}",
            "wall s": round(results[rule]["seconds"]),
        })
    print(_table(yield_rows))
    decided = {m(rule, "sun_rate_e0.08").get("decided_by") for rule in rules}
    print(f"\nenergies decided by: {', '.join(sorted(d for d in decided if d))}")

    shown = [r for r in ("random", "random_by_hits") if r in results]
    ranked = [r for r in rules if r not in shown]
    print("\n## Metrics: random vs ranked selections (ours) beside the published anchors (theirs)\n")
    names = [r["metric"] for r in results[rules[0]]["metrics"]]
    rows = []
    for name in names:
        first = m(rules[0], name)
        row = {"metric": name}
        for rule in shown + ranked:
            r = m(rule, name)
            v = r.get("value")
            row[rule] = ("n/a" if v is None else f"{v:g}" if first.get("group") == "diversity" else _pct_ci(r)) + (
                "" if r.get("denominator") is None else f" ({r.get('numerator') or 0:g}/{r['denominator']:g})")
        row["published (theirs)"] = (first.get("published") or "").replace("|", "/")
        rows.append(row)
    print(_table(rows))
    print("\n## WyFormer DFT table (theirs: VASP PBE, ~105 random novel samples per generator, MP-20)\n")
    print(_table(anchor_rows()))
    wyformer = WYFORMER_DFT["WyFormer"]["sun_008"]
    for rule in shown:
        v = m(rule, "sun_rate_e0.08").get("value")
        if v is not None:
            print(f"\n{rule}: WyFormer-style S.U.N. (E_hull <= 0.08) {100 * v:.1f} % vs WyFormer's {wyformer} % "
                  f"(ours MLIP-decided; theirs DFT; see the protocol differences in generator_metrics)")


if __name__ == "__main__":
    main()
