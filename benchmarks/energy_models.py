"""Energy models against MP's DFT: which MLIP should relax, which should decide, on this
platform's own code path.

    .venv/bin/python benchmarks/energy_models.py [--models chgnet,sevennet-0,...] [--n N] [--seed 0]
        [--max-materials N] [--gpaw-pairs 20] [--workers 2] [--relax-path serial|batched] [--batch 40]
        [--results-dir .wycryst/energy_models] [--json PATH] [--score-only | --gpaw-only | --relax-only]

What it does (every step resumable: per-task result files under ``--results-dir``):

1. Selection (``dft.energy_benchmark.select_materials``, seeded, fixed): every formula of the
   snapshot with >= 2 polymorphs among cells of <= 20 sites (MP's cells are primitive; 1,247
   formulas, 3,088 materials: 1,746 ternary, 1,164 binary, the rest unary/quaternary+), as whole
   groups, plus 10 % single-polymorph materials (3/4 ternary, 1/4 binary) -> 3,432 materials,
   58 % ternary. ``--n`` below that takes a seeded subset of whole polymorph groups stratified by
   number of elements (+ 10 % single-polymorph materials), e.g. ``--n 40`` to validate. Materials
   run in a seeded order of whole groups, so the finished part of an interrupted run is an
   unbiased subset; ``--max-materials N`` restricts the run (or ``--score-only``) to the first N
   materials of that order, cut at a group's end (``dft.energy_benchmark.whole_group_prefix``).
   Why all groups: the per-relaxation cost was measured first on MP's own (already relaxed)
   structures (median 4-6 FIRE steps from a DFT minimum), one thread, load ~12 on the 2 cores.
   Serial relaxer (20 random polymorph materials, then the 40 of ``--n 40``): CHGNet 0.95-1.25,
   SevenNet-0 1.6-1.7, SevenNet-l3i5 2.8-4.2, SevenNet-MF-0 1.7-1.8 core-s per relaxation.
   Batched relaxer (``--n 40``; energies equal to the serial ones within 2e-6 eV/atom): 0.49,
   1.03, 3.73, 1.08 -> 6.3 core-s per material for all four models, 3,432 x 6.3 = 21.7k core-s
   = 3.0 h of the 2 cores if they were idle.
   What the recorded run finished (README "Energy models"): on the shared machine (load 3-12)
   the first 328 materials of the seeded order (119 polymorph formulas, 296 polymorph materials,
   32 single ones; 54 % ternary) were relaxed by all four models in ~2.2 h wall, and the table
   is ``--max-materials 328``. Its batched relaxations cost 0.56 / 1.40 / 3.86 / 1.47 core-s
   (CHGNet / SevenNet-0 / -l3i5 / -MF-0), 7.3 core-s per material, so the whole selection is
   ~7 h of one core (3.5 h of the 2 cores when idle).
2. Relaxation: each model relaxes MP's structure with the platform's relaxer
   (FixSymmetry + FrechetCellFilter + FIRE, fmax 0.05, centred cells in their primitive cell)
   through ``dft.hpc.run_tasks``, one result file per model x material: batched
   (``dft.pipeline.relax_batch_task``, ``--batch`` materials x every model per chunk) or serial
   (``dft.pipeline.relax_task``). Result files are keyed by the relax settings, not the path, so a
   run resumed on the other path keeps what is finished; rows carry ``relax_path``.
3. Scoring (``dft.energy_benchmark.score_material_task`` -> ``dft.pipeline.score_relaxations``):
   MP2020 correction for raw-scale models (registry ``energy_scale``), E_f against MP's elemental
   references, E_hull against the snapshot hull **with the material itself excluded** (matbench-
   discovery style: what a leave-one-out partition sees); MP's E_hull is recomputed against the
   same hull (``mp_e_hull_loo``), so E_hull MAE and F1 compare like with like. (With one hull for
   both sides the E_hull error of a material equals its E_f error, so the two MAEs coincide by
   construction; the F1 scores are where the hull matters.)
4. Metrics per model (``dft.model_metrics``) on the materials every model finished: E_f and
   E_hull MAE vs MP; stable/unstable F1 at E_hull <= 0 and <= 0.1 eV/atom; polymorph ordering
   accuracy over every same-formula pair (pairs within 1 meV/atom in MP are ties, not scored), and
   over pairs closer than 20 meV/atom in MP; lattice error (relative volume error, mean |da/a|,
   |db/b|, |dc/c| vs MP's cell in the same setting); symmetry kept (spglib at 1e-3 before/after);
   core-seconds per relaxation (process CPU time of the relaxation itself; model loading
   excluded); relaxations that ended in another MP polymorph (StructureMatcher); failures.
5. GPAW (plain PBE, the platform's refinement engine, ``dft.refinement.refine_task``
   single_point): polymorph pairs of <= 8 sites without MP's Hubbard-U metals or f-block elements
   (``dft.energy_benchmark.gpaw_pair_materials``), ``--gpaw-pairs`` of them. Single points at
   **MP's geometry**: one DFT calculation per material serves every model, and MP's structure is a
   PBE minimum for these U-free compounds, close to GPAW's own (a GPAW relax would cost 10-50x).
   Per model: the fraction of pairs ordered as GPAW orders them and the MAE of the pair energy
   difference (model E_f difference vs GPAW energy-per-atom difference; references cancel within
   a formula); MP's own row shows how far MP's PBE agrees with this GPAW. The pairs are drawn from
   the full selection whatever ``--max-materials`` says (a fixed set, so finished single points
   stay in use), and every model relaxes their materials too. A material whose single point
   fails (e.g. no PAW setup for an element here: La) is a failed row with the reason in the JSON,
   and its pairs drop out. Cost measured in the recorded run (14 single points of 2-8 sites,
   600 eV, k-density 3.5/A^-1): 43-1017 core-s, mean 298; 2-28 min wall each at load 3-12 on the
   2 cores (one 6-site cell, 23 SCF iterations, timed out at 1800 s wall under load 12 and
   finished in 1017 core-s when rerun). 20 pairs (the default) are 24 single points, ~2 core-h.
   ``--gpaw-only`` runs this step alone (e.g. beside a relaxation run).
6. ``dft.model_metrics.rank_models`` picks fast / decider / phonon models (rule in its docstring).

Prints one table (rows = models) and writes ``--json`` (default benchmarks/results/energy_models.json)
and the table as Markdown next to it (``.md``, with the command and the choice), the JSON with the table, every metric, the selection rule and numbers, uptime at start and end and the wall
time; per-material rows go to ``<results-dir>/rows.jsonl`` (outside the tracked tree).
``--score-only`` skips missing relaxations / single points and scores what exists (partial numbers).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dft import model_metrics as mm  # noqa: E402
from dft.energy_benchmark import (  # noqa: E402
    gpaw_pair_materials, score_material_task, select_materials, selection_counts, whole_group_prefix)
from dft.hpc import ComputeConfig, read_result, run_tasks  # noqa: E402

SHARED = Path(os.environ.get("WYCRYST_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_MODELS = ("chgnet", "sevennet-0", "sevennet-l3i5", "sevennet-mf0")
CLOSE_PAIR = 0.020  # eV/atom


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return f"load average {os.getloadavg()}"


def digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_snapshot(path: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    cols = ["material_id", "formula_pretty", "nelements", "nsites", "formation_energy_per_atom",
            "energy_above_hull", "symmetry_number", "cif"]
    return {r["material_id"]: r for r in pq.read_table(path, columns=cols).to_pylist()}


def write_mp_cifs(snapshot: dict, ids, directory: Path) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for mid in ids:
        path = directory / f"{mid}.cif"
        if not path.exists():
            tmp = path.with_suffix(f".{os.getpid()}.tmp")  # two runs may share the directory
            tmp.write_text(snapshot[mid]["cif"])
            tmp.replace(path)
        paths[mid] = str(path)
    return paths


def check_models(models: list[str]) -> dict[str, str]:
    """model -> energy scale; a clear exit for an unknown model or missing weights."""
    from dft import pipeline, relax

    scales = {}
    for m in models:
        try:
            if hasattr(relax, "require_weights"):
                relax.require_weights(m)
            relax.get_relaxer(m)
        except (ValueError, FileNotFoundError) as exc:
            sys.exit(f"model {m!r}: {exc}")
        scales[m] = pipeline.ENERGY_SCALE.get(m, "mp_raw")
    return scales


# ----------------------------------------------------------------------------- phases


def batched_available() -> bool:
    from dft import hpc, pipeline

    return hasattr(pipeline, "relax_batch_task") and "batched" in hpc.run_tasks.__code__.co_varnames


def run_relaxations(models, ids, cif_paths, args, out: Path) -> dict[str, dict[str, dict]]:
    """model -> material -> relax row. Result files are keyed by model and material under a
    directory named by the relaxation settings (fmax, max_steps, primitive), NOT by the path
    (serial / batched): both run the same relaxer code and checks, so a run resumed on the other
    path keeps what is finished; each row says its ``relax_path`` and core-seconds are reported per
    path."""
    from dft.energy_benchmark import relax_batched_task, relax_serial_task

    settings = {"fmax": args.fmax, "max_steps": args.max_steps, "primitive": True}
    rdir = out / "relax" / digest(settings)
    rdir.mkdir(parents=True, exist_ok=True)
    (rdir / "settings.json").write_text(json.dumps(settings))
    tasks = {f"{m}|{mid}": {"cif_path": cif_paths[mid], "relaxer": m, **settings,
                            "out_cif": str(rdir / "cifs" / m / f"{mid}.cif")}
             for mid in ids for m in models}  # material-major: a partial run covers all models
    if args.score_only or args.gpaw_only:
        results = {k: r for k in tasks if (r := read_result(rdir, k)) is not None}
    elif args.relax_path == "batched":
        # a chunk = --batch materials x every model: one lockstep batch per model, chunks in order
        config = ComputeConfig(mode="local", max_workers=args.workers, threads_per_task=1,
                               batch_size=args.batch * len(models))
        results = run_tasks(relax_batched_task, tasks, config, rdir, log=log, batched=True)
    else:
        config = ComputeConfig(mode="local", max_workers=args.workers, chunk_size=len(models) * 2, threads_per_task=1)
        results = run_tasks(relax_serial_task, tasks, config, rdir, log=log)
    by_model: dict[str, dict[str, dict]] = {m: {} for m in models}
    for key, r in results.items():
        m, mid = key.split("|", 1)
        by_model[m][mid] = r
    return by_model


def run_scoring(models, ids, relaxed, snapshot, cif_paths, args, out: Path) -> dict[str, dict]:
    """material -> {"mp_e_hull_loo", "rows": {model: scored row}} for materials every model finished."""
    refs = str(Path(os.environ.get("WYCRYST_ELEMENTAL_REFS", SHARED / "mp-elemental-reference-entries.json.gz")))
    tasks = {}
    for mid in ids:
        if not all(mid in relaxed[m] for m in models):
            continue
        rows = [{**relaxed[m][mid], "relaxer": relaxed[m][mid].get("relaxer") or m, "model": m} for m in models]
        payload = {"material_id": mid, "formula": snapshot[mid]["formula_pretty"],
                   "mp_formation_energy": snapshot[mid]["formation_energy_per_atom"], "mp_cif_path": cif_paths[mid],
                   "snapshot": str(args.snapshot), "references": refs, "rows": rows}
        tasks[f"{mid}|{digest(rows)}"] = payload
    config = ComputeConfig(mode="local", max_workers=args.workers, chunk_size=20, threads_per_task=1)
    results = run_tasks(score_material_task, tasks, config, out / "scored", log=log)
    scored = {}
    for key, r in results.items():
        if "rows" not in r:
            log(f"scoring {key} failed: {r.get('reason')}")
            continue
        scored[r["material_id"]] = {"mp_e_hull_loo": r["mp_e_hull_loo"],
                                    "rows": {row["model"]: row for row in r["rows"]}}
    return scored


def run_gpaw(pair_ids, cif_paths, args, out: Path) -> dict[str, dict]:
    from dft.refinement import refine_task

    if not pair_ids:
        return {}
    settings: dict = {}  # the refinement engine's defaults: PBE, 600 eV, k-density 3.5/A^-1
    gdir = out / "gpaw" / digest({"settings": settings, "mode": "single_point"})
    tasks = {mid: {"cif_path": cif_paths[mid], "engine": "gpaw", "mode": "single_point",
                   "workdir": str(gdir / "work" / mid), "settings": settings, "timeout_s": args.gpaw_timeout}
             for mid in pair_ids}
    if args.score_only or args.relax_only:
        return {k: r for k in tasks if (r := read_result(gdir, k)) is not None}
    config = ComputeConfig(mode="local", max_workers=args.workers, chunk_size=1, threads_per_task=1)
    return run_tasks(refine_task, tasks, config, gdir, log=log)


# ----------------------------------------------------------------------------- metrics


def _mean(values):
    values = mm.finite_values(values)
    return statistics.fmean(values) if values else None


def summarize_model(model, scored, snapshot, gpaw_energy, pair_formulas, gpaw_scored=None) -> dict:
    """Metrics of one model over ``scored`` (the benchmark's materials); the GPAW columns over
    ``gpaw_scored`` (default ``scored``): the GPAW pair materials, which may lie beyond a
    ``--max-materials`` prefix."""
    rows = {mid: s["rows"][model] for mid, s in scored.items()}
    formulas = {mid: snapshot[mid]["formula_pretty"] for mid in rows}
    ef = {mid: r.get("formation_energy_per_atom") for mid, r in rows.items()}
    eh = {mid: r.get("e_above_hull") for mid, r in rows.items()}
    mp_ef = {mid: snapshot[mid]["formation_energy_per_atom"] for mid in rows}
    mp_eh = {mid: scored[mid]["mp_e_hull_loo"] for mid in rows}
    verdicts = Counter(r["verdict"] for r in rows.values())
    not_scored = [mid for mid, r in rows.items() if r["verdict"] in ("converged", "not_converged") and ef[mid] is None]
    ef_mae, n_ef = mm.mean_absolute_error(ef, mp_ef)
    eh_mae, _ = mm.mean_absolute_error(eh, mp_eh)
    order_all = mm.pair_ordering(mp_ef, ef, formulas)
    order_close = mm.pair_ordering(mp_ef, ef, formulas, close_within=CLOSE_PAIR)
    cpu = [r.get("cpu_seconds") for r in rows.values() if r["verdict"] in ("converged", "not_converged")]
    relaxed_into_rival = sum(1 for mid, r in rows.items()
                             if r.get("matched_material_id") and r["matched_material_id"] != mid)
    out = {
        "model": model,
        "n_materials": len(rows),
        "n_relaxations": len(rows),
        "verdicts": dict(verdicts),
        "n_failed": verdicts.get("failed", 0) + verdicts.get("exploded", 0) + len(not_scored),
        "n_not_scored": len(not_scored),
        "not_scored_notes": Counter((rows[m].get("energy_note") or "")[:80] for m in not_scored).most_common(5),
        "n_scored": n_ef,
        "ef_mae": ef_mae,
        "e_hull_mae": eh_mae,
        "f1_0": mm.stability_f1(eh, mp_eh, 0.0).as_dict(),
        "f1_0.1": mm.stability_f1(eh, mp_eh, 0.1).as_dict(),
        "ordering_accuracy": order_all.accuracy,
        "ordering": order_all.as_dict(),
        "ordering_close_accuracy": order_close.accuracy,
        "ordering_close": order_close.as_dict(),
        "volume_mare": _mean(abs(r["volume_error"]) for r in rows.values() if r.get("volume_error") is not None),
        "volume_mean_signed": _mean(r.get("volume_error") for r in rows.values()),
        "abc_mare": _mean(r.get("abc_error") for r in rows.values()),
        "symmetry_kept": _mean(float(bool(r.get("symmetry_kept"))) for r in rows.values()
                               if r["verdict"] in ("converged", "not_converged")),
        "core_seconds_per_relaxation": _mean(cpu),
        "core_seconds_median": statistics.median(mm.finite_values(cpu)) if mm.finite_values(cpu) else None,
        "core_seconds_by_path": {
            path: {"mean": _mean(r.get("cpu_seconds") for r in rows.values() if r.get("relax_path", "serial") == path),
                   "n": sum(1 for r in rows.values() if r.get("relax_path", "serial") == path)}
            for path in sorted({r.get("relax_path", "serial") for r in rows.values()})},
        "steps_mean": _mean(r.get("steps") for r in rows.values()),
        "relaxed_into_other_mp_polymorph": relaxed_into_rival,
    }
    if gpaw_energy:
        gpaw_scored = scored if gpaw_scored is None else gpaw_scored
        gef = {mid: s["rows"][model].get("formation_energy_per_atom") for mid, s in gpaw_scored.items()}
        ids = [m for m in gpaw_energy if m in gef]
        fm = {m: pair_formulas[m] for m in ids}
        out["gpaw_ordering"] = mm.pair_ordering(gpaw_energy, gef, fm).as_dict()
        mae, n = mm.pair_difference_mae(gpaw_energy, gef, fm)
        out["gpaw_pair_mae"], out["gpaw_n_pairs"] = mae, n
    return out


def fmt(x, spec=".3f", scale=1.0):
    return "-" if x is None else format(x * scale, spec)


def table(summaries: list[dict], mp_gpaw: dict | None) -> str:
    head = ["model", "n", "fail", "E_f MAE", "E_hull MAE", "F1@0", "F1@0.1", "order all", "order <20meV",
            "|dV/V|", "|da/a|", "sym kept", "core-s/relax", "GPAW order", "GPAW dE MAE"]
    lines = [head]
    for s in summaries:
        o, oc, go = s["ordering"], s["ordering_close"], s.get("gpaw_ordering") or {}
        lines.append([
            s["model"], str(s["n_materials"]), str(s["n_failed"]),
            fmt(s["ef_mae"], ".1f", 1000), fmt(s["e_hull_mae"], ".1f", 1000),
            fmt(s["f1_0"]["f1"]), fmt(s["f1_0.1"]["f1"]),
            f"{fmt(o['accuracy'], '.1%')} ({o['n_pairs']})", f"{fmt(oc['accuracy'], '.1%')} ({oc['n_pairs']})",
            fmt(s["volume_mare"], ".2%"), fmt(s["abc_mare"], ".2%"), fmt(s["symmetry_kept"], ".1%"),
            fmt(s["core_seconds_per_relaxation"], ".2f"),
            f"{fmt(go.get('accuracy'), '.1%')} ({go.get('n_pairs', 0)})" if go else "-",
            fmt(s.get("gpaw_pair_mae"), ".1f", 1000),
        ])
    if mp_gpaw:
        go = mp_gpaw["ordering"]
        lines.append(["MP (PBE/+U)", "", "", "", "", "", "", "", "", "", "", "", "",
                      f"{fmt(go['accuracy'], '.1%')} ({go['n_pairs']})", fmt(mp_gpaw["pair_mae"], ".1f", 1000)])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    text = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text) + "\n(MAEs in meV/atom; E_hull vs the snapshot hull without the material, MP's too, so " \
        "E_hull MAE = E_f MAE by construction; order = polymorph pairs ordered as MP orders them (n pairs); " \
        "GPAW = pairs ordered as GPAW PBE orders them (n) / MAE of the pair energy difference)"


def markdown_table(summaries: list[dict], mp_gpaw: dict | None) -> str:
    """The same table as :func:`table`, as Markdown (benchmarks/results/energy_models.md, README)."""
    head = ["model", "n", "failed", "E_f MAE", "E_hull MAE", "F1 @0", "F1 @0.1", "order all (pairs)",
            "order < 20 meV (pairs)", "\\|ΔV/V\\|", "\\|Δa/a\\|", "symmetry kept", "core-s / relax",
            "GPAW order (pairs)", "GPAW ΔE MAE"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        o, oc, go = s["ordering"], s["ordering_close"], s.get("gpaw_ordering") or {}
        cells = [s["model"], str(s["n_materials"]), str(s["n_failed"]), fmt(s["ef_mae"], ".1f", 1000),
                 fmt(s["e_hull_mae"], ".1f", 1000), fmt(s["f1_0"]["f1"]), fmt(s["f1_0.1"]["f1"]),
                 f"{fmt(o['accuracy'], '.1%')} ({o['n_pairs']})", f"{fmt(oc['accuracy'], '.1%')} ({oc['n_pairs']})",
                 fmt(s["volume_mare"], ".2%"), fmt(s["abc_mare"], ".2%"), fmt(s["symmetry_kept"], ".1%"),
                 fmt(s["core_seconds_per_relaxation"], ".2f"),
                 f"{fmt(go.get('accuracy'), '.1%')} ({go.get('n_pairs', 0)})" if go else "-",
                 fmt(s.get("gpaw_pair_mae"), ".1f", 1000)]
        lines.append("| " + " | ".join(cells) + " |")
    if mp_gpaw:
        go = mp_gpaw["ordering"]
        cells = ["MP (PBE/PBE+U)"] + [""] * 12 + [f"{fmt(go['accuracy'], '.1%')} ({go['n_pairs']})",
                                                   fmt(mp_gpaw["pair_mae"], ".1f", 1000)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated registry names")
    parser.add_argument("--n", type=int, default=None, help="materials (default: every polymorph group + 10%% fill)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-materials", type=int, default=None,
                        help="only the first N materials of the seeded order (cut at a polymorph group's end): "
                             "what a run stopped early finished; the GPAW pairs stay those of the full selection "
                             "and are relaxed by every model too")
    parser.add_argument("--gpaw-pairs", type=int, default=20, help="GPAW polymorph pairs (0: skip GPAW)")
    parser.add_argument("--gpaw-timeout", type=float, default=1800.0, help="s per GPAW single point")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--relax-path", choices=("serial", "batched"), default=None,
                        help="default: batched where dft.pipeline.relax_batch_task exists")
    parser.add_argument("--batch", type=int, default=40, help="materials per batched chunk (x models)")
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--results-dir", type=Path, default=REPO / ".wycryst" / "energy_models")
    parser.add_argument("--snapshot", type=Path, default=SHARED / "mp_snapshot" / "materials.parquet")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "energy_models.json")
    parser.add_argument("--score-only", action="store_true", help="no new relaxations or single points")
    parser.add_argument("--gpaw-only", action="store_true", help="no new relaxations; GPAW single points run")
    parser.add_argument("--relax-only", action="store_true",
                        help="relaxations run (the benchmark's and the GPAW pair materials'); no new single points")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    t0, up0 = time.perf_counter(), uptime()
    log(f"start: {up0}")

    if args.relax_path is None:
        args.relax_path = "batched" if batched_available() else "serial"
    elif args.relax_path == "batched" and not batched_available():
        sys.exit("--relax-path batched: this checkout has no dft.pipeline.relax_batch_task")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    scales = check_models(models)
    snapshot = load_snapshot(args.snapshot)
    selection = select_materials(list(snapshot.values()), n=args.n, seed=args.seed)
    all_ids = selection["material_ids"]
    formulas = {m: snapshot[m]["formula_pretty"] for m in all_ids}
    ids = all_ids if args.max_materials is None else whole_group_prefix(all_ids, formulas, args.max_materials)
    log(f"selection: {selection['counts']}")
    if len(ids) < len(all_ids):
        log(f"--max-materials {args.max_materials}: the first {len(ids)} of {len(all_ids)} (whole groups): "
            f"{selection_counts(ids, snapshot)}")
    out = args.results_dir.resolve()  # GPAW's worker runs in its job directory: paths must be absolute
    out.mkdir(parents=True, exist_ok=True)
    cif_paths = write_mp_cifs(snapshot, all_ids, out / "mp_cifs")
    # GPAW pairs come from the full selection whatever --max-materials says (a fixed set: finished
    # single points stay in use); every model relaxes them too, so they can be compared with GPAW
    from dft.spot_check import gpaw_setup_elements

    gpaw_sel = gpaw_pair_materials([snapshot[m] for m in all_ids], max_pairs=args.gpaw_pairs, seed=args.seed,
                                   setup_elements=gpaw_setup_elements() or None) if args.gpaw_pairs > 0 else None
    in_bench = set(ids)
    gpaw_extra = [m for m in (gpaw_sel["material_ids"] if gpaw_sel else []) if m not in in_bench]
    relax_ids = ids + gpaw_extra

    phases = {}
    t = time.perf_counter()
    relaxed = run_relaxations(models, relax_ids, cif_paths, args, out)
    phases["relax_wall_s"] = time.perf_counter() - t
    t = time.perf_counter()
    scored_all = run_scoring(models, relax_ids, relaxed, snapshot, cif_paths, args, out)
    phases["score_wall_s"] = time.perf_counter() - t
    scored = {m: scored_all[m] for m in ids if m in scored_all}
    log(f"{len(scored)}/{len(ids)} materials relaxed by every model and scored"
        + (f" (+ {sum(m in scored_all for m in gpaw_extra)}/{len(gpaw_extra)} GPAW pair materials beyond them)"
           if gpaw_extra else ""))

    t = time.perf_counter()
    gpaw = run_gpaw(gpaw_sel["material_ids"] if gpaw_sel else [], cif_paths, args, out)
    phases["gpaw_wall_s"] = time.perf_counter() - t
    gpaw_energy = {m: r["energy_per_atom"] for m, r in gpaw.items()
                   if r.get("verdict") == "single_point" and r.get("energy_per_atom") is not None}
    pair_formulas = {m: snapshot[m]["formula_pretty"] for m in gpaw_energy}

    gpaw_scored = {m: scored_all[m] for m in gpaw_energy if m in scored_all}
    summaries = [summarize_model(m, scored, snapshot, gpaw_energy, pair_formulas, gpaw_scored) for m in models]
    mp_gpaw = None
    if gpaw_energy:
        mp_ef = {m: snapshot[m]["formation_energy_per_atom"] for m in gpaw_energy}
        mae, n = mm.pair_difference_mae(gpaw_energy, mp_ef, pair_formulas)
        mp_gpaw = {"ordering": mm.pair_ordering(gpaw_energy, mp_ef, pair_formulas).as_dict(),
                   "pair_mae": mae, "n_pairs": n}
    choice = mm.rank_models({s["model"]: s for s in summaries})
    # compute in the stored results (process CPU time, whichever run made them): the load-independent cost
    relax_core_s = sum(r.get("cpu_seconds") or 0.0 for s in scored.values() for r in s["rows"].values())
    gpaw_core_s = sum(r.get("cpu_seconds") or 0.0 for r in gpaw.values())
    cost = (f"core-s in the stored results: {relax_core_s:.0f} for the {len(scored) * len(models)} relaxations "
            f"({relax_core_s / 3600:.2f} core-h), {gpaw_core_s:.0f} for {len(gpaw)} GPAW single points "
            f"({gpaw_core_s / 3600:.2f} core-h)")
    text = table(summaries, mp_gpaw)
    wall = time.perf_counter() - t0
    up1 = uptime()
    print(text)
    prefix = "" if len(ids) == len(all_ids) else f"the first {len(ids)} (--max-materials {args.max_materials}) of "
    print(f"\nmaterials: {len(scored)} scored of {prefix}{len(all_ids)} selected ({selection['rule']}); "
          f"scored: {selection_counts(list(scored), snapshot)}")
    if gpaw_sel:
        gsec = [r.get("cpu_seconds") for r in gpaw.values() if r.get("verdict") == "single_point"]
        print(f"GPAW: {len(gpaw_energy)}/{len(gpaw_sel['material_ids'])} single points, {gpaw_sel['n_pairs']} pairs "
              f"({len(gpaw_sel['formulas'])} formulas of {gpaw_sel['eligible_formulas']} eligible; excluded "
              f"{gpaw_sel['excluded']}), mean {fmt(_mean(gsec), '.0f')} core-s per single point")
    for k in ("decider", "fast", "phonon"):
        print(f"{k}: {choice['reasons'].get(k, choice.get(k))}")
    print(cost)
    print(f"wall {wall / 60:.1f} min; uptime at start: {up0}; at end: {up1}")

    report = {
        "table": text, "models": summaries, "energy_scales": scales, "choice": choice, "mp_vs_gpaw": mp_gpaw,
        "public_matbench_discovery": mm.PUBLIC_MATBENCH_DISCOVERY,
        "selection": {"rule": selection["rule"], "counts": selection["counts"], "seed": args.seed, "n": args.n,
                      "max_materials": args.max_materials, "benchmark_materials": len(ids),
                      "benchmark_counts": selection_counts(ids, snapshot), "scored": len(scored),
                      "scored_counts": selection_counts(list(scored), snapshot),
                      "gpaw_pair_materials_beyond_prefix": gpaw_extra},
        "gpaw": {k: v for k, v in (gpaw_sel or {}).items() if k != "material_ids"} | {
            "n_single_points": len(gpaw_energy),
            "core_seconds_per_single_point": _mean(r.get("cpu_seconds") for r in gpaw.values()),
            "failed": {m: r.get("reason") for m, r in gpaw.items() if r.get("verdict") != "single_point"},
            "geometry": "MP's structure (single point)",
            "settings": "dft.gpaw_engine defaults (PBE, 600 eV, k 3.5/A^-1)"},
        "settings": {"fmax": args.fmax, "max_steps": args.max_steps, "workers": args.workers,
                     "relax_path": args.relax_path, "batch_materials": args.batch,
                     "hull": "snapshot hull without the material itself (matbench-discovery style)",
                     "close_pair_eV": CLOSE_PAIR, "tie_tolerance_eV": mm.TIE_TOLERANCE},
        "core_seconds_stored": {"relaxations": round(relax_core_s, 1), "gpaw": round(gpaw_core_s, 1)},
        "wall_s": round(wall, 1), "phases_wall_s": {k: round(v, 1) for k, v in phases.items()},
        "uptime_start": up0, "uptime_end": up1, "cpus": os.cpu_count(), "score_only": args.score_only,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=str))
    command = "benchmarks/energy_models.py " + " ".join(sys.argv[1:])
    md = [f"# Energy models against MP's DFT\n\n`{command}`\n",
          f"Materials: {len(scored)} scored (every model finished) of {len(ids)} "
          f"({prefix or 'the full selection of '}{len(all_ids)}); {selection_counts(list(scored), snapshot)}.\n",
          "MAEs in meV/atom vs MP (E_hull against the snapshot hull without the material, MP's own too, so "
          "E_hull MAE = E_f MAE by construction); order = same-formula pairs ordered as MP orders them "
          "(ties within 1 meV/atom not scored); GPAW = pairs of the GPAW subset ordered as GPAW PBE (single "
          "points at MP's geometry) orders them, and the MAE of the pair energy difference.\n",
          markdown_table(summaries, mp_gpaw)]
    md += [f"- {k}: {choice['reasons'].get(k, choice.get(k))}" for k in ("decider", "fast", "phonon")]
    md.append(f"\n{cost}.")
    md.append(f"\nWall time of this command {wall / 60:.1f} min; uptime at start: {up0}; at end: {up1}\n")
    args.json.with_suffix(".md").write_text("\n".join(md))
    with open(out / "rows.jsonl", "w") as fh:
        for mid, s in scored_all.items():  # the benchmark's materials and GPAW pair materials beyond them
            fh.write(json.dumps({"material_id": mid, "in_benchmark": mid in in_bench,
                                 "formula": snapshot[mid]["formula_pretty"],
                                 "mp_formation_energy": snapshot[mid]["formation_energy_per_atom"],
                                 "mp_e_hull": snapshot[mid]["energy_above_hull"], "mp_e_hull_loo": s["mp_e_hull_loo"],
                                 "gpaw_energy_per_atom": gpaw_energy.get(mid), "rows": s["rows"]}, default=str) + "\n")
    log(f"wrote {args.json} and {out / 'rows.jsonl'}")


if __name__ == "__main__":
    main()
