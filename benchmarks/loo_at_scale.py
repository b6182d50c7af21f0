"""Leave-one-out at scale: N random targets from the snapshot through the real Dagster instance.

Draws N targets (default 30; ml.loo_draw: seeded, stratified over the two tasks, the 7 crystal
systems and 4 anion chemistries, <= 20 atoms primitive, never a published target's formula),
writes them as a registry (``<home>/targets.json``; one ``model_group``, so one PVAE trained with
all N left out serves every partition), and runs each partition in its own WYCRYST_HOME:
pvae_model -> sampled_genes -> filtered_genes (once per --filter-variants; the last one stays) and,
for the first --structures-n targets (draw order, so still stratified), the energy-model cascade
as the asset graph runs it: trial_structures (budget --max-genes genes) -> relaxed_structures
(the fast model, CHGNet) -> rescored_structures (the decider, SevenNet-0, re-relaxes and rescores
the best trial of each gene in its window) -> loo_report, once per --trial-variants (``random``:
PyXtal trials only; ``prototypes``: + --prototypes prototype-seeded trials per gene; relaxations
are stored per trial file, so the second variant only relaxes the new trials). ``--no-rescore``:
the fast model alone (rescorer "none", the behaviour before the cascade). Beside the cascade's
verdict the benchmark keeps the fast model's own verdict on the same relaxations (``loo_verdict``
without the decider): SG kept, lattice error, ground-state rank and margin, recovered by each.
Stage ``rescore``: for partitions whose structures are stored (e.g. by a run before the cascade),
only rescored_structures -> loo_report on the relaxations in the warehouse (those of the last
trial variant run), without redoing trials or relaxations. DFT refinement is off unless --refine.
Prints the rediscovery table (both models' columns), rates per task / crystal system /
chemistry, fast model vs cascade, the stage where each held-out gene was lost, wall times;
writes ``<home>/loo_at_scale/results.json``.

Every stage is resumable: results per partition and stage are kept in
``<home>/loo_at_scale/state/<partition>.json`` and a rerun skips what is there (runs left
"started" by a killed invocation are marked failed and their pool slots freed first; do not run
two invocations on one home at once) (``--redo STAGE,...``
reruns stages: base, draw, train, sample, filter, structures, rescore).

    .venv/bin/python benchmarks/loo_at_scale.py [--home .wycryst/loo-at-scale] [--n 30] [--seed 0]
        [--stages train,sample,filter,structures,rescore] [--no-rescore] [--structures-n 12] [--max-genes 20]
        [--trial-variants random,prototypes] [--prototypes 2] [--filter-variants conventional,primitive]
        [--max-epochs 30] [--samples-per-origin 5000] [--max-latent-points 2000000] [--base-from DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PUBLISHED_FORMULAS = ("CaTiO3", "BaTiO3", "SrTiO3", "CsPbI3", "CuInS2")
ALL_STAGES = ("train", "sample", "filter", "structures", "rescore")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", default=str(REPO / ".wycryst" / "loo-at-scale"))
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-atoms", type=int, default=20, help="primitive-cell atoms of a drawn target")
    ap.add_argument("--include-unknown", action="store_true", help="draw MP entries not flagged ICSD-known too")
    ap.add_argument("--group", default="", help="model_group name (default loo-at-scale-s<seed>-n<n>); "
                    "'none': one PVAE per target")
    ap.add_argument("--stages", default=",".join(ALL_STAGES))
    ap.add_argument("--targets", default="", help="only these partitions (comma-separated)")
    ap.add_argument("--redo", default="", help="stages to rerun although stored: "
                    "base,draw,train,sample,filter,structures,rescore")
    ap.add_argument("--base-from", default="", help="copy the warehouse (snapshot, genes) and the synthesizability "
                    "model from another WYCRYST_HOME instead of building them")
    ap.add_argument("--max-epochs", type=int, default=30)
    ap.add_argument("--torch-threads", type=int, default=1, help="PVAE training/sampling threads (0: torch's "
                    "default). 1: on a shared 2-core machine two spinning OpenMP threads slow an epoch many-fold")
    ap.add_argument("--samples-per-origin", type=int, default=5000)
    ap.add_argument("--max-latent-points", type=int, default=2_000_000)
    ap.add_argument("--noise-scale", type=float, default=4.0)
    ap.add_argument("--filter-variants", default="primitive", help="size_cell values to filter with, in order; "
                    "the last one feeds the structures (e.g. conventional,primitive for before/after)")
    ap.add_argument("--structures-n", type=int, default=12, help="structures for the first K drawn targets")
    ap.add_argument("--max-genes", type=int, default=20, help="trial_structures: genes per partition (the "
                    "platform default is 40; 10 left 3 of 30 held-out genes outside the budget, 20 left 2)")
    ap.add_argument("--max-trials-per-gene", type=int, default=4,
                    help="trial_structures: random trials per gene (paper: DoF + 1; 0: no cap)")
    ap.add_argument("--trial-variants", default="random,prototypes")
    ap.add_argument("--prototypes", type=int, default=2, help="prototype trials per gene in the 'prototypes' variant")
    ap.add_argument("--no-rescore", action="store_true", help="structures: the fast model alone (rescored_structures "
                    "with rescorer 'none'), as before the cascade; drops the rescore stage")
    ap.add_argument("--refine", action="store_true", help="also refined_structures (GPAW) before loo_report")
    ap.add_argument("--json", default="", help="results file (default <home>/loo_at_scale/results.json)")
    ap.add_argument("--also-home", default="", help="homes of other invocations of the same draw (comma-separated): "
                    "the table takes a partition's stored stages from whichever home holds the most of them")
    return ap.parse_args()


class Bench:
    """The benchmark's home, Dagster instance and per-partition state files."""

    def __init__(self, args):
        self.args = args
        self.home = Path(args.home).resolve()
        self.dir = self.home / "loo_at_scale"
        (self.dir / "state").mkdir(parents=True, exist_ok=True)
        self.redo = {s for s in args.redo.split(",") if s}

    def state(self, key: str) -> dict:
        path = self.dir / "state" / f"{key}.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def save(self, key: str, state: dict) -> None:
        path = self.dir / "state" / f"{key}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1, default=str))
        tmp.replace(path)


def _error_text(res) -> str:
    for event in res.all_events:
        if event.event_type_value == "STEP_FAILURE":
            err = event.step_failure_data.error
            while err is not None and err.cause is not None:  # the user code's own exception
                err = err.cause
            return (err.message if err else "step failed").strip().splitlines()[-1][:400]
    return "run failed"


def main() -> None:
    args = parse_args()
    bench = Bench(args)
    home = bench.home
    os.environ["WYCRYST_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster_home")
    os.environ["WYCRYST_TARGETS"] = str(home / "targets.json")
    os.environ.pop("MP_API_KEY", None)
    from wycryst_assets.cli import init_dagster_home

    init_dagster_home()
    import dagster as dg
    import duckdb
    import polars as pl

    from ml.loo_draw import benchmark_registry, candidate_pool, draw_targets
    from ml.loo_summary import failure_stage, markdown_table, rates, stage_counts
    from wycryst_assets.assets.genes import wyckoff_genes
    from wycryst_assets.assets.pvae import TrainingDevice, pvae_model
    from wycryst_assets.assets.refinement import refined_structures
    from dft.model_choice import DEFAULT_RESCORER, NO_RESCORER
    from wycryst_assets.assets.report import loo_report
    from wycryst_assets.assets.rescoring import rescored_structures
    from wycryst_assets.assets.sampling import filtered_genes, sampled_genes, synthesizability_model
    from wycryst_assets.assets.snapshot import mp_snapshot
    from wycryst_assets.assets.structures import relaxed_structures, trial_structures
    from wycryst_assets.partitions import sync_target_partitions
    from wycryst_assets.resources import compute_resource, warehouse_resource

    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)  # sampling runs in this process too
    wall_start = time.perf_counter()
    timings: dict[str, float] = {}
    resources = {"warehouse": warehouse_resource(), "training_device": TrainingDevice(torch_threads=args.torch_threads or None),
                 "compute": compute_resource()}
    warehouse = home / "warehouse.duckdb"

    # --- base: snapshot, genes, synthesizability
    synth = home / "artifacts" / "synthesizability" / "model.joblib"
    if args.base_from and (not warehouse.exists() or "base" in bench.redo):
        src = Path(args.base_from).resolve()
        shutil.copyfile(src / "warehouse.duckdb", warehouse)
        if (src / "snapshots").is_dir():
            shutil.copytree(src / "snapshots", home / "snapshots", dirs_exist_ok=True)
        synth.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / "artifacts" / "synthesizability" / "model.joblib", synth)
        print(f"base copied from {src}", flush=True)
    with dg.DagsterInstance.get() as instance:
        _release_dead_runs(instance)

        def run(assets, partition=None, config=None):
            t = time.perf_counter()
            res = dg.materialize(assets, instance=instance, resources=resources, partition_key=partition,
                                 run_config={"ops": config or {}}, selection=assets, raise_on_error=False)
            return res, time.perf_counter() - t

        if not warehouse.exists() or not synth.exists() or "base" in bench.redo:
            res, s = run([mp_snapshot, wyckoff_genes])
            print(f"snapshot + genes: {s:.0f} s ({'ok' if res.success else _error_text(res)})", flush=True)
            res, s2 = run([synthesizability_model])
            print(f"synthesizability model: {s2:.0f} s", flush=True)
            timings["base_s"] = s + s2

        # --- draw
        registry_path = home / "targets.json"
        group = None if args.group == "none" else (args.group or f"loo-at-scale-s{args.seed}-n{args.n}")
        draw_id = {"n": args.n, "seed": args.seed, "max_atoms": args.max_atoms, "model_group": group,
                   "require_known": not args.include_unknown}
        if registry_path.exists() and "draw" not in bench.redo:
            doc = json.loads(registry_path.read_text())
            if doc.get("draw") != draw_id:
                raise SystemExit(f"{registry_path} holds another draw ({doc.get('draw')}); use --redo draw or another --home")
        else:
            con = duckdb.connect(str(warehouse), read_only=True)
            table = con.execute(
                "SELECT g.material_id, g.formula, g.space_group, g.wyckoff, g.gene_key, g.atoms_per_cell, g.n_elements, "
                "m.energy_above_hull, m.formation_energy_per_atom, m.cif, m.nsites, m.theoretical "
                "FROM wyckoff_genes g JOIN materials m USING (material_id)").pl()
            con.close()
            pool = candidate_pool(table, exclude_formulas=PUBLISHED_FORMULAS, max_atoms=args.max_atoms,
                                  require_known=not args.include_unknown)
            drawn = draw_targets(pool, n=args.n, seed=args.seed)
            doc = benchmark_registry(drawn, model_group=group, about=(
                f"LOO benchmark draw (benchmarks/loo_at_scale.py, ml.loo_draw): {drawn.height} of {pool.height} "
                f"candidate ternaries, seed {args.seed}"))
            doc["draw"] = draw_id
            doc["pool"] = {"candidates": pool.height, **{f"{c}:{v}": n for c in ("task", "crystal_system", "chemistry")
                                                          for v, n in pool[c].value_counts().iter_rows()}}
            registry_path.write_text(json.dumps(doc, indent=1))
            for stale in (bench.dir / "state").glob("*.json"):
                stale.unlink()
            print(f"drew {drawn.height} targets from {pool.height} candidates -> {registry_path}", flush=True)
        entries = doc["targets"]
        print(markdown_table([{k: e[k] for k in ("partition", "task", "crystal_system", "chemistry", "material_id",
                                                 "e_above_hull", "atoms_primitive")} for e in entries]), flush=True)
        sync_target_partitions(instance)

        stages = [s for s in args.stages.split(",") if s]
        if args.no_rescore and "rescore" in stages:
            stages.remove("rescore")
            print("--no-rescore: stage rescore skipped", flush=True)
        rescorer = NO_RESCORER if args.no_rescore else DEFAULT_RESCORER

        def cascade_report(key: str, entry: dict, rescorer: str) -> tuple[dict, float]:
            """rescored_structures (rescorer "none": the fast model's numbers pass through, so no
            older decider rows are read) -> [refined_structures] -> loo_report on the partition's
            stored relaxations: the report row, the decider's counts, the fast model's own verdict
            beside it (``fast_only``) and the trial facts; and the rescoring seconds."""
            res, c_s = run([rescored_structures], key, {"rescored_structures": {"config": {"rescorer": rescorer}}})
            mats = res.asset_materializations_for_node("rescored_structures")
            facts = {"rescorer": rescorer, "rescore_s": c_s}
            if mats:
                m = mats[0].metadata
                facts.update(genes_relaxed=m["genes"].value, genes_rescored=m["rescored"].value,
                             rescore_core_min=m["core_minutes_rescoring"].value)
            else:
                facts["rescore_error"] = _error_text(res)
            f_s = 0.0
            if args.refine:
                res, f_s = run([refined_structures], key)
            res, _ = run([loo_report], key)
            mats = res.asset_materializations_for_node("loo_report")
            part = mats[0].metadata["this_partition"].value if mats else {"error": _error_text(res)}
            part.update(facts, refine_s=f_s)
            if mats and rescorer != NO_RESCORER:
                part["fast_only"] = _fast_only_verdict(warehouse, key, args.refine)
            part.update(_trial_facts(warehouse, key, entry), **_same_crystal(warehouse, key, entry))
            return part, c_s
        only = {t for t in args.targets.split(",") if t}
        filter_variants = [v for v in args.filter_variants.split(",") if v]
        trial_variants = [v for v in args.trial_variants.split(",") if v]
        for index, entry in enumerate(entries):
            key = entry["partition"]
            if only and key not in only:
                continue
            st = bench.state(key)
            invalidated = False
            ran_structures = False

            def wanted(stage: str, stored: bool) -> bool:
                nonlocal invalidated
                go = stage in stages and (invalidated or not stored or stage in bench.redo)
                if go:
                    invalidated = True  # a rerun stage makes every later stored stage stale
                return go

            if wanted("train", "train" in st):
                res, s = run([pvae_model], key, {"pvae_model": {"config": {"max_epochs": args.max_epochs}}})
                mats = res.asset_materializations_for_node("pvae_model")
                if mats:
                    m = mats[0].metadata
                    st["train"] = {"seconds": s, "element_accuracy": m["element_accuracy"].value,
                                   "space_group_accuracy": m["space_group_accuracy"].value,
                                   "model_group": m["model_group"].value, "excluded": m["excluded_material_ids"].value}
                else:
                    st["train"] = {"seconds": s, "error": _error_text(res)}
                for later in ("sample", "filter", "structures"):
                    st.pop(later, None)
                bench.save(key, st)
                print(f"[{index + 1}/{len(entries)}] {key}: pvae {s:.0f} s {st['train'].get('model_group', st['train'].get('error'))}",
                      flush=True)
            if wanted("sample", "sample" in st) and "error" not in st.get("train", {"error": 1}):
                res, s = run([sampled_genes], key, {"sampled_genes": {"config": {
                    "samples_per_origin": args.samples_per_origin, "max_latent_points": args.max_latent_points,
                    "noise_scale": args.noise_scale}}})
                mats = res.asset_materializations_for_node("sampled_genes")
                if mats:
                    m = mats[0].metadata
                    st["sample"] = {"seconds": s, "origins": m["origins"].value, "unique_genes": m["unique_genes"].value,
                                    "sampled": m["held_out_gene_sampled"].value, "hits": m["held_out_gene_hits"].value,
                                    "latent_points": m["latent_points"].value}
                else:
                    st["sample"] = {"seconds": s, "error": _error_text(res)}
                st.pop("filter", None), st.pop("structures", None)
                bench.save(key, st)
                print(f"[{index + 1}/{len(entries)}] {key}: sampled {s:.0f} s {st['sample']}", flush=True)
            if wanted("filter", "filter" in st) and "error" not in st.get("sample", {"error": 1}):
                st["filter"] = {}
                for variant in filter_variants:
                    res, s = run([filtered_genes], key, {"filtered_genes": {"config": {"size_cell": variant}}})
                    mats = res.asset_materializations_for_node("filtered_genes")
                    if mats:
                        m = mats[0].metadata
                        st["filter"][variant] = {"seconds": s, "unique": m["sampled"].value, "passed_genes": m["passed"].value,
                                                 "sampled": m["held_out_gene_sampled"].value,
                                                 "passed": m["held_out_gene_passed"].value,
                                                 # absent when the held-out gene was not sampled
                                                 "rank_by_hits": getattr(m.get("held_out_gene_rank_by_hits"), "value",
                                                                         None),
                                                 "reasons": m["held_out_gene_reasons"].value}
                    else:
                        st["filter"][variant] = {"seconds": s, "error": _error_text(res)}
                st.pop("structures", None)
                bench.save(key, st)
                print(f"[{index + 1}/{len(entries)}] {key}: filters {json.dumps(st['filter'])}", flush=True)
            last_filter = (st.get("filter") or {}).get(filter_variants[-1], {})
            if (index < args.structures_n and last_filter.get("passed") and "error" not in last_filter
                    and wanted("structures", "structures" in st and all(v in st["structures"] for v in trial_variants))):
                st["structures"] = {}
                ran_structures = True
                for variant in trial_variants:
                    per_gene = args.prototypes if variant == "prototypes" else 0
                    res, t_s = run([trial_structures], key, {"trial_structures": {"config": {
                        "max_genes": args.max_genes, "prototypes_per_gene": per_gene,
                        "max_trials_per_gene": args.max_trials_per_gene or None}}})
                    res, r_s = run([relaxed_structures], key)
                    part, c_s = cascade_report(key, entry, rescorer)
                    part.update(trial_s=t_s, relax_s=r_s)
                    st["structures"][variant] = part
                    bench.save(key, st)
                    print(f"[{index + 1}/{len(entries)}] {key}: structures ({variant}) {t_s + r_s + c_s:.0f} s "
                          f"{_verdict_text(part)}", flush=True)
            stored_structures = st.get("structures") or {}
            # the variants run in order and each replaces the partition's trials: the last is in the warehouse
            in_warehouse = list(stored_structures)[-1] if stored_structures else None
            if ("rescore" in stages and in_warehouse and not ran_structures
                    and (stored_structures[in_warehouse].get("rescorer") in (None, NO_RESCORER) or "rescore" in bench.redo)):
                old = stored_structures[in_warehouse]
                part, c_s = cascade_report(key, entry, DEFAULT_RESCORER)
                # the verdict before the first rescoring stays (a --redo rescore keeps it)
                before = old.get("before_rescore") or {k: old.get(k) for k in (
                    "rescorer", "recovered", "why_not", "lattice_max_error", "ground_state_rank", "energy_model")}
                part.update(trial_s=old.get("trial_s"), relax_s=old.get("relax_s"), rescore_stage=True,
                            before_rescore=before)
                if old.get("rescore_s") is not None:  # a rerun finds the decider's relaxations stored: keep the first time
                    part["rescore_s_first"] = old.get("rescore_s_first", old["rescore_s"])
                if in_warehouse == "prototypes" and part.get("prototype_trials_relaxed") == 0:
                    print(f"warning: {key}: variant 'prototypes' stored but no prototype-seeded trial relaxed", flush=True)
                st["structures"][in_warehouse] = part
                bench.save(key, st)
                print(f"[{index + 1}/{len(entries)}] {key}: rescore ({in_warehouse}) {c_s:.0f} s {_verdict_text(part)}",
                      flush=True)

    # --- the table
    homes = [bench, *(Bench(argparse.Namespace(**{**vars(args), "home": h})) for h in args.also_home.split(",") if h)]

    def stored_home(key: str):  # the home that ran the most stages of this partition (this one on ties)
        return max(homes, key=lambda h: len(h.state(key)))

    def stored(key: str) -> dict:
        return stored_home(key).state(key)

    passed_rank = _rank_among_passed([h.home / "warehouse.duckdb" for h in homes], entries)
    rows = []
    for index, entry in enumerate(entries):
        key = entry["partition"]
        home = stored_home(key)
        st = home.state(key)
        if only and key not in only:
            continue
        base = {"partition": key, "task": entry["task"], "crystal_system": entry["crystal_system"],
                "chemistry": entry["chemistry"], "structures_planned": index < args.structures_n}
        in_warehouse = list(st.get("structures") or {})[-1:]  # the variant whose relaxations are stored
        for tv in in_warehouse:  # runs stored before the arrangement probe existed: probe now
            part = st["structures"][tv]
            if part.get("same_crystal_fast") is False and "arrangement_found" not in part:
                part.update(_arrangement_probe(home.home / "warehouse.duckdb", key, entry))
        for fv in filter_variants:
            for tv in (trial_variants if st.get("structures") else [None]):
                rows.append(_row(base, st, fv, tv))
                if fv == filter_variants[-1]:
                    rows[-1]["rank_among_passed"] = passed_rank.get(key)
    result_rows = [r for r in rows if r["filter_variant"] == filter_variants[-1]]
    final_variant = trial_variants[-1] if trial_variants else None
    final = [r for r in result_rows if r["trial_variant"] in (final_variant, None)]
    cols = ["partition", "task", "crystal_system", "chemistry", "origins", "sampled", "passed", "rank_by_hits",
            "rank_among_passed", "in_budget", "relaxed", "sg_kept", "lattice_err_fast", "lattice_err", "gs_rank_fast",
            "gs_rank", "margin_fast_mev", "margin_decider_mev", "recovered_fast", "recovered", "decided_by",
            "best_origin", "stage", "reason"]
    print(f"\n## Rediscovery table (filters: size on the {filter_variants[-1]} cell; trials: {final_variant})\n")
    print("`*_fast`: the fast model alone (relaxed_structures); unsuffixed: the cascade, judged on the relaxation of "
          "the model in `decided_by` (the decider where it rescored the held-out gene); margins: meV/atom to the "
          "lowest rival crystal of the formula, positive = below every rival; stage/reason: the cascade's.\n")
    print(markdown_table(final, cols))
    for fv in filter_variants:
        these = [r for r in rows if r["filter_variant"] == fv and r["trial_variant"] in (final_variant, None)]
        print(f"\n### Rates, filters with size on the {fv} cell\n")
        for by in (None, "task", "crystal_system", "chemistry"):
            print(markdown_table(rates(these, by, ("sampled", "passed"))) + "\n")
    for tv in trial_variants:
        these = [r for r in result_rows if r["trial_variant"] == tv]
        if not these:
            continue
        print(f"\n### Recovered, trials: {tv} ({len(these)} partitions through loo_report)\n")
        for by in (None, "task", "crystal_system", "chemistry"):
            print(markdown_table(rates(these, by, ("sampled", "passed", "relaxed", "sg_kept", "lattice_ok",
                                                  "recovered_fast", "recovered"))) + "\n")
        judged = [r for r in these if r.get("decider_rescored") is not None]
        if judged:
            print(f"\n### Fast model alone vs the cascade, trials: {tv} ({len(judged)} partitions the decider "
                  f"ran on; {sum(bool(r['decider_rescored']) for r in judged)} with the held-out gene rescored)\n")
            print(markdown_table(judged, ["partition", "task", "crystal_system", "decided_by", "sg_kept_fast", "sg_kept",
                                          "same_crystal_fast", "same_crystal", "lattice_err_fast", "lattice_err", "gs_rank_fast", "gs_rank", "margin_fast_mev",
                                          "margin_decider_mev", "recovered_fast", "recovered", "stage", "reason"]) + "\n")
            planned = [r for r in result_rows if r["structures_planned"] and r["trial_variant"] in (tv, None)]
            print(f"Recovered over the {len(planned)} partitions planned for structures (a held-out gene lost "
                  "before them counts as not recovered by either):\n")
            for by in (None, "task", "crystal_system", "chemistry"):
                print(markdown_table(rates(planned, by, ("recovered_fast", "recovered"))) + "\n")
    print("\n### Where the held-out gene was lost\n")
    print(markdown_table(stage_counts(final)))
    fixes = _before_after(rows, entries, filter_variants, trial_variants)
    if fixes:
        print("\n### Before / after the fixes (per partition; see the README of benchmarks for the rules)\n")
        fields = [f for f in ("passed_before", "passed_after", "recovered_before", "recovered_random",
                              "recovered_after_fast", "recovered_after") if any(r.get(f) is not None for r in fixes)]
        for by in (None, "task", "crystal_system", "chemistry"):
            print(markdown_table(rates(fixes, by, fields)) + "\n")
    wall = time.perf_counter() - wall_start
    stage_seconds = {}
    for entry in entries:
        st = stored(entry["partition"])
        for name in ("train", "sample"):
            stage_seconds[name] = stage_seconds.get(name, 0.0) + float(st.get(name, {}).get("seconds", 0.0))
        for v in (st.get("filter") or {}).values():
            stage_seconds["filter"] = stage_seconds.get("filter", 0.0) + float(v.get("seconds", 0.0))
        for v in (st.get("structures") or {}).values():
            stage_seconds["structures"] = stage_seconds.get("structures", 0.0) + float(v.get("trial_s") or 0.0) + float(
                v.get("relax_s") or 0.0) + float(v.get("refine_s") or 0.0)
            stage_seconds["rescore"] = stage_seconds.get("rescore", 0.0) + float(v.get("rescore_s_first", v.get("rescore_s")) or 0.0)
    print(f"\nwall time of this invocation: {wall / 60:.1f} min; stored stage seconds (all invocations): "
          + ", ".join(f"{k} {v / 60:.1f} min" for k, v in stage_seconds.items()))
    out = Path(args.json) if args.json else bench.dir / "results.json"
    out.write_text(json.dumps({"draw": doc.get("draw"), "pool": doc.get("pool"), "rows": rows,
                               "stage_seconds": stage_seconds, "wall_seconds_this_invocation": wall,
                               **timings}, indent=1, default=str))
    print(f"results: {out}")


def _before_after(rows: list[dict], entries: list[dict], filter_variants: list[str], trial_variants: list[str]) -> list[dict]:
    """Per partition, the outcome before and after the generic fixes this benchmark measures:
    ``passed_before`` = passed with the size rule on the conventional cell (when that variant ran)
    and SMACT judging the target's own formula; ``passed_after`` = passed as now.
    ``recovered_before`` = recovered with random trials only, the held-out gene passed before, and
    its lattice within 3 % as read before the closest-basis fix; ``recovered_random`` = random
    trials with every other fix; ``recovered_after`` = with prototype trials too (the cascade's
    verdict where the decider ran; ``recovered_after_fast`` = the fast model's alone)."""
    from ml.filters import smact_verdict

    out = []
    last_filter = filter_variants[-1]
    # the recovered columns compare trial variants: without a `random` run there is no "before"
    # (a run of --trial-variants prototypes alone reports passed before / after only)
    has_random = any(r.get("trial_variant") == "random" for r in rows)
    for entry in entries:
        mine = [r for r in rows if r["partition"] == entry["partition"]]
        if not mine:
            continue
        now = next((r for r in mine if r["filter_variant"] == last_filter), None)
        conv = next((r for r in mine if r["filter_variant"] == "conventional"), now)
        smact_ok = smact_verdict(entry["formula"]) is None
        row = {k: entry[k] for k in ("partition", "task", "crystal_system", "chemistry")}
        row["passed_after"] = now.get("passed") if now else None
        row["passed_before"] = None if conv is None or conv.get("passed") is None else bool(conv["passed"] and smact_ok)
        by_variant = {r["trial_variant"]: r for r in mine if r["filter_variant"] == last_filter and r["trial_variant"]}
        rnd, proto = by_variant.get("random"), by_variant.get("prototypes")
        planned = now is not None and now.get("structures_planned")
        if rnd is not None or (has_random and planned and now.get("recovered") is False):
            rec_random = bool(rnd and rnd.get("recovered"))
            err_before = rnd.get("lattice_err_before_fix") if rnd else None
            row["recovered_random"] = rec_random
            row["recovered_before"] = bool(rec_random and row["passed_before"] and err_before is not None
                                           and err_before <= 0.03)
            row["recovered_after"] = bool(proto.get("recovered")) if proto else (rec_random if "prototypes" not in
                                                                               trial_variants else False)
            row["recovered_after_fast"] = bool(proto.get("recovered_fast")) if proto else row["recovered_after"]
        out.append(row)
    return out


def _rank_among_passed(warehouses: list[Path], entries: list[dict]) -> dict:
    """partition -> the held-out gene's rank by hits among the partition's passed genes (the order
    the trial budget is spent in for polymorphs; ground states add one gene per space group), from
    the first warehouse that filtered the partition."""
    import duckdb

    out = {}
    for warehouse in warehouses:
        try:
            con = duckdb.connect(str(warehouse), read_only=True)
            rows = con.execute("SELECT target, gene_key, hits FROM filtered_genes WHERE passed").pl()
            con.close()
        except duckdb.Error:
            continue
        for entry in entries:
            mine = rows.filter(rows["target"] == entry["partition"]).sort(["hits", "gene_key"], descending=[True, False])
            if entry["partition"] in out or mine.is_empty():
                continue
            keys = mine["gene_key"].to_list()
            out[entry["partition"]] = keys.index(entry["gene_key"]) + 1 if entry.get("gene_key") in keys else None
    return out


def _release_dead_runs(instance) -> None:
    """Runs of this benchmark's own instance still marked started belong to a killed invocation
    (runs here are in-process): mark them failed and free their pool slots, or the next training
    or relaxation step waits forever for the 'training' / 'relaxation' slot."""
    from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

    for run in instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING])):
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        instance.report_run_failed(run)
        print(f"released run {run.run_id} of a killed invocation", flush=True)


def _trial_facts(warehouse: Path, key: str, entry: dict) -> dict:
    """Whether the held-out gene got trials, how many built, the SG after and origin of its best
    trial (fast model), its lattice error as read before the closest-basis fix (standard cell at
    symprec 0.01), and how many prototype-seeded trials of the partition were relaxed."""
    import duckdb
    from pymatgen.core import Structure

    from dft.matching import compare_lattice

    gene_key = entry["gene_key"]
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        trials = con.execute("SELECT count(*), count(*) FILTER (WHERE verdict = 'ok') FROM trial_structures "
                             "WHERE target = ? AND gene_key = ?", [key, gene_key]).fetchone()
        genes = con.execute("SELECT count(DISTINCT gene_key) FROM trial_structures WHERE target = ?", [key]).fetchone()
        best = con.execute("SELECT sg_after, origin, relaxed_cif FROM relaxed_structures WHERE target = ? AND gene_key = ? "
                           "AND best_trial", [key, gene_key]).fetchone()
        prototypes = con.execute("SELECT count(*) FROM relaxed_structures WHERE target = ? AND origin LIKE 'prototype%'",
                                 [key]).fetchone()
    finally:
        con.close()
    before = None
    if best and best[2]:
        before = compare_lattice(Structure.from_file(best[2]), entry["lattice_published_dft"], "lattice_published_dft",
                                 closest_basis=False).max_relative_error
    return {"in_budget": trials[0] > 0, "trials_ok": int(trials[1]), "genes_with_trials": int(genes[0]),
            "sg_after": best[0] if best else None, "best_origin": best[1] if best else None,
            "lattice_err_before_fix": before, "prototype_trials_relaxed": int(prototypes[0])}


def _verdict_text(part: dict) -> str:
    fast = part.get("fast_only") or {}
    text = f"recovered={part.get('recovered')} {part.get('why_not', '')}".strip()
    if part.get("rescorer") not in (None, "none"):
        text += (f"; decided by {part.get('energy_model')} ({part.get('genes_rescored')} of {part.get('genes_relaxed')} "
                 f"genes rescored); fast model alone: recovered={fast.get('recovered')} {fast.get('why_not', '')}")
    return text + (f"; rescoring failed: {part['rescore_error']}" if part.get("rescore_error") else "")


def _same_crystal(warehouse: Path, key: str, entry: dict) -> dict:
    """Whether the held-out gene's relaxed structure is the held-out material's crystal (snapshot
    CIF; dft.matching.same_arrangement), by the fast model (``same_crystal_fast``) and by the
    model that judged it (``same_crystal``: the decider where it rescored the gene)."""
    import duckdb
    from pymatgen.core import Structure

    from dft.matching import same_arrangement

    from wycryst_assets.warehouse import table_exists

    decided = None
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        ref = con.execute("SELECT cif FROM materials WHERE material_id = ?", [entry["material_id"]]).fetchone()
        fast = con.execute("SELECT relaxed_cif FROM relaxed_structures WHERE target = ? AND gene_key = ? AND best_trial "
                           "AND relaxed_cif IS NOT NULL", [key, entry["gene_key"]]).fetchone()
        if table_exists(con, "rescored_structures"):  # absent before the first rescoring
            decided = con.execute("SELECT relaxed_cif FROM rescored_structures WHERE target = ? AND gene_key = ? AND "
                                  "status = 'rescored' AND relaxed_cif IS NOT NULL", [key, entry["gene_key"]]).fetchone()
    finally:
        con.close()
    if not ref or not fast:
        return {}
    reference = Structure.from_str(ref[0], fmt="cif")
    out = {"same_crystal_fast": same_arrangement(Structure.from_file(fast[0]), reference)}
    out["same_crystal"] = same_arrangement(Structure.from_file(decided[0]), reference) if decided else out[
        "same_crystal_fast"]
    if not out["same_crystal_fast"]:
        out.update(_arrangement_probe(warehouse, key, entry))
    return out


def _arrangement_probe(warehouse: Path, key: str, entry: dict) -> dict:
    """Where the held-out gene's best relaxed trial (fast model) is another crystal than the
    held-out material's: did any other trial of that gene relax into the material's arrangement
    (dft.matching.same_arrangement)? ``arrangement_found`` (None: no relaxed trial to look at),
    the lowest such trial's ``arrangement_origin`` (random / prototype:<id>) and
    ``arrangement_above_mev``: its energy above the gene's best trial, meV/atom, by the fast model
    -- found but above says the model prefers another arrangement of the same Wyckoff gene; not
    found says the trials never reached it."""
    import duckdb
    from pymatgen.core import Structure

    from dft.matching import same_arrangement

    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        ref = con.execute("SELECT cif FROM materials WHERE material_id = ?", [entry["material_id"]]).fetchone()
        trials = con.execute("SELECT origin, energy_per_atom, relaxed_cif FROM relaxed_structures WHERE target = ? "
                             "AND gene_key = ? AND relaxed_cif IS NOT NULL AND energy_per_atom IS NOT NULL "
                             "ORDER BY energy_per_atom", [key, entry["gene_key"]]).fetchall()
    finally:
        con.close()
    if not ref or not trials:
        return {"arrangement_found": None}
    reference = Structure.from_str(ref[0], fmt="cif")
    for origin, energy, cif in trials:
        try:
            match = same_arrangement(Structure.from_file(cif), reference)
        except Exception:  # an unreadable relaxed file is no match
            match = False
        if match:
            return {"arrangement_found": True, "arrangement_origin": origin,
                    "arrangement_above_mev": round(1000 * (energy - trials[0][1]), 1), "arrangement_trials": len(trials)}
    return {"arrangement_found": False, "arrangement_trials": len(trials)}


def _fast_only_verdict(warehouse: Path, key: str, refine: bool) -> dict:
    """The fast model's own verdict on the partition's relaxations: dft.loo.loo_verdict on the
    tables loo_report reads, without the decider's rows."""
    import duckdb

    from dft.loo import loo_verdict
    from wycryst_assets.partitions import current_registry
    from wycryst_assets.warehouse import read_table, table_exists

    target = current_registry().get(key)
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        filt = read_table(con, "SELECT gene_key, passed FROM filtered_genes WHERE target = ?", [key])
        best = read_table(con, "SELECT * FROM relaxed_structures WHERE target = ? AND best_trial", [key])
        refined = read_table(con, "SELECT * FROM refined_structures WHERE target = ? AND energy_per_atom IS NOT NULL",
                             [key]) if refine and table_exists(con, "refined_structures") else None
    finally:
        con.close()
    row = loo_verdict(target, filt, best, refined, None)
    return {k: row.get(k) for k in ("recovered", "why_not", "energy_model", "sg_kept", "lattice_within_tolerance",
                                    "lattice_max_error", "ground_state_rank", "ground_state_margin_mev_fast",
                                    "formation_energy_per_atom", "e_above_hull")}


def _row(base: dict, st: dict, filter_variant: str, trial_variant: str | None) -> dict:
    from ml.loo_summary import failure_stage, model_figures

    row = dict(base, filter_variant=filter_variant, trial_variant=trial_variant)
    for stage in ("train", "sample"):
        if st.get(stage, {}).get("error"):
            row.update(error=st[stage]["error"], error_stage="origins" if "origin" in st[stage]["error"] else
                       ("training" if stage == "train" else "sampling"))
    row["origins"] = (st.get("sample", {}).get("origins") or "").split(" ")[0] or None
    f = (st.get("filter") or {}).get(filter_variant, {})
    if f.get("error"):
        row.update(error=f["error"], error_stage="filters")
    row.update(sampled=f.get("sampled", st.get("sample", {}).get("sampled")), passed=f.get("passed"),
               rank_by_hits=f.get("rank_by_hits") if (f.get("rank_by_hits") or 0) > 0 else None,  # -1: not sampled
               reasons=[r for r in (f.get("reasons") or "").split(", ")
                                                            if r and r not in ("-", "not sampled")])
    s = (st.get("structures") or {}).get(trial_variant) if trial_variant else None
    if s:
        row.update(in_budget=s.get("in_budget"), trials_ok=s.get("trials_ok"), relaxed=s.get("relaxed"),
                   sg_after=s.get("sg_after"), best_origin=s.get("best_origin"),
                   lattice_err_before_fix=s.get("lattice_err_before_fix"), genes_rescored=s.get("genes_rescored"),
                   same_crystal=s.get("same_crystal"), same_crystal_fast=s.get("same_crystal_fast"),
                   **{k: s.get(k) for k in ("arrangement_found", "arrangement_origin", "arrangement_above_mev",
                                            "arrangement_trials")},
                   **model_figures(s, s.get("fast_only")))
        if s.get("error"):
            row.update(error=s["error"], error_stage="report")
    else:
        row.update(in_budget=None, recovered=None)
    row["stage"], row["reason"] = failure_stage(row)
    if row["structures_planned"] and row["recovered"] is None and row["stage"] in ("training", "origins", "sampling",
                                                                                   "filters"):
        row["recovered"] = row["recovered_fast"] = False  # lost before the structure stage: known without running it
    return row


if __name__ == "__main__":
    main()
