"""Where named materials (the paper's phonon-stable eight, say) sit in a partition's funnel.

:func:`trace_formulas` follows every gene of each formula through sampling, the filters, the
relaxation budget (its rank under the partition's selection rule), PyXtal trials, relaxation,
E_hull, novelty and phonons, and reports the furthest gene of each formula: the stage where it
stops (:data:`STAGES`) and why, in words a reader can check against the tables.
"""

from __future__ import annotations

from collections import Counter

import polars as pl

from ml.genes import GeneError, normalize_formula

STAGES = (
    "not sampled",
    "rejected by the filters",
    "outside the relaxation budget",
    "no buildable trial",
    "relaxation gave no energy",
    "above the stability threshold",
    "matches a known structure",
    "phonons not computed",
    "phonon calculation failed",
    "phonon-unstable",
    "phonon-stable (end of the funnel)",
)
TRACE_SCHEMA = {
    "formula": pl.String, "genes_sampled": pl.Int64, "space_groups_sampled": pl.String, "genes_passed": pl.Int64,
    "filter_reasons": pl.String, "best_rank": pl.Int64, "passed_total": pl.Int64, "budget": pl.Int64,
    "relaxed": pl.Boolean, "e_above_hull": pl.Float64, "novel": pl.Boolean, "symmetry_kept": pl.Boolean,
    "phonon_verdict": pl.String, "furthest_gene": pl.String, "stops_at": pl.String, "why": pl.String,
}


def _reduced(formula) -> str | None:
    try:
        return normalize_formula(formula) if formula else None
    except GeneError:
        return None


def _index(df: pl.DataFrame | None, key: str = "gene_key") -> dict:
    return {} if df is None else {r[key]: r for r in df.iter_rows(named=True)}


def trace_formulas(formulas, filtered: pl.DataFrame | None, ranked: pl.DataFrame | None,
                   trials: pl.DataFrame | None, relaxed_best: pl.DataFrame | None, phonons: pl.DataFrame | None,
                   *, budget: int, energy_column: str = "e_above_hull", stable_threshold: float = 0.1,
                   decided_by: str = "", selection: str = "") -> pl.DataFrame:
    """One row per formula (:data:`TRACE_SCHEMA`). ``ranked``: the partition's passed genes in
    budget order with ``selection_rank`` (:func:`ml.selection.rank_for_budget`); ``budget``: how
    many genes were selected; ``relaxed_best``: one relaxed row per gene."""
    by_formula: dict[str, list[dict]] = {}
    if filtered is not None:
        for r in filtered.iter_rows(named=True):
            red = _reduced(r["formula"])
            if red:
                by_formula.setdefault(red, []).append(r)
    ranks = {} if ranked is None else dict(zip(ranked["gene_key"].to_list(), ranked["selection_rank"].to_list()))
    passed_total = 0 if ranked is None else ranked.height
    trial_rows: dict[str, list[dict]] = {}
    for r in ([] if trials is None else trials.iter_rows(named=True)):
        trial_rows.setdefault(r["gene_key"], []).append(r)
    best = _index(relaxed_best)
    phon = _index(phonons)

    def gene_stage(g: dict) -> tuple[int, str, dict]:
        k = g["gene_key"]
        facts = {"rank": ranks.get(k)}
        if not g.get("passed"):
            reasons = ", ".join(g.get("reasons") or []) or "not passed"
            return 1, f"filters: {reasons}", facts
        if k not in trial_rows:
            return 2, f"rank {ranks.get(k)} of {passed_total} passed genes by {selection or 'the selection'}; " \
                      f"budget {budget}", facts
        if not any(t["verdict"] == "ok" for t in trial_rows[k]):
            why = "; ".join(sorted({f"{t['verdict']}: {t.get('reason') or ''}".strip(": ") for t in trial_rows[k]}))
            return 3, f"PyXtal: {why}", facts
        b = best.get(k)
        e = None if b is None else b.get(energy_column)
        if b is None or e is None:
            return 4, "no relaxed energy" + (f" ({b.get('verdict')}: {b.get('energy_note') or b.get('reason') or ''})"
                                             if b is not None else ""), facts
        facts.update(relaxed=True, e=e, novel=b.get("is_novel"),
                     kept=None if b.get("sg_after") is None else b["sg_after"] == b["space_group"])
        if e > stable_threshold:
            return 5, f"E_hull {e:.3f} > {stable_threshold:g} eV/atom by {decided_by}", facts
        if not b.get("is_novel"):
            return 6, f"relaxed structure matches {b.get('matched_material_id')}", facts
        p = phon.get(k)
        facts["phonon"] = None if p is None else p["verdict"]
        if p is None or p["verdict"] == "skipped":
            return 7, "phonons not computed" + (f": {p.get('reason')}" if p is not None else ""), facts
        if p["verdict"] == "failed":
            return 8, f"phonons failed: {p.get('reason') or ''}", facts
        if p["verdict"] == "unstable":
            return 9, f"imaginary mode {p.get('min_frequency_thz')} THz at {p.get('where_min')}", facts
        return 10, f"E_hull {e:.3f} eV/atom, novel, phonon-stable", facts

    out = []
    for formula in formulas:
        red = _reduced(formula) or str(formula)
        genes = by_formula.get(red, [])
        row = {"formula": formula, "genes_sampled": len(genes),
               "space_groups_sampled": ", ".join(str(s) for s in sorted({g["space_group"] for g in genes})),
               "genes_passed": sum(bool(g.get("passed")) for g in genes), "passed_total": passed_total,
               "budget": budget, "relaxed": False}
        reasons = Counter(reason for g in genes for reason in (g.get("reasons") or []))
        row["filter_reasons"] = ", ".join(f"{r} x{n}" for r, n in reasons.most_common()) or None
        if not genes:
            row.update(stops_at=STAGES[0], why="the decoder never produced this formula")
            out.append(row)
            continue
        # the furthest gene; ties: best rank, then lowest E_hull, then most hits
        staged = [(gene_stage(g), g) for g in genes]
        (stage, why, facts), g = max(staged, key=lambda sg: (
            sg[0][0], -(sg[0][2].get("rank") or 10**12), -(sg[0][2].get("e") if sg[0][2].get("e") is not None else 1e9),
            sg[1].get("hits") or 0))
        passed_ranks = [ranks[x["gene_key"]] for x in genes if x["gene_key"] in ranks]
        row.update(best_rank=min(passed_ranks) if passed_ranks else None, relaxed=bool(facts.get("relaxed")),
                   e_above_hull=facts.get("e"), novel=facts.get("novel"), symmetry_kept=facts.get("kept"),
                   phonon_verdict=facts.get("phonon"), stops_at=STAGES[stage], why=why,
                   furthest_gene=f"SG {g['space_group']} {g['wyckoff']}")
        out.append(row)
    return pl.DataFrame([{k: r.get(k) for k in TRACE_SCHEMA} for r in out], schema=TRACE_SCHEMA, orient="row")
