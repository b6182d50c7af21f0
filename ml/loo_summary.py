"""Where a leave-one-out partition failed, and rates over many partitions (the LOO benchmark).

A benchmark row is a dict per partition: ``task``, ``crystal_system``, ``chemistry`` and what the
stages recorded -- ``error`` / ``error_stage`` (a run that raised), ``sampled``, ``passed``,
``reasons`` (filter reason codes of the held-out gene), ``in_budget`` (its gene got trial
structures; None when the structure stage was not run), ``trials_ok``, ``relaxed``, ``sg_kept``,
``lattice_ok``, ``lattice_err``, ``same_crystal`` (the held-out gene's relaxed structure is the
material's crystal), ``arrangement_found`` / ``arrangement_origin`` / ``arrangement_above_mev`` /
``arrangement_trials`` (where it is not: whether another trial of the gene relaxed into the
material's arrangement, and how far above the gene's best), ``gs_rank`` (ground-state rank among
the formula's relaxed crystals), ``recovered`` -- the energy-model cascade's figures (the decider's where it rescored the
held-out gene; ``decided_by`` names the model) -- and the fast model's alone beside them
(``*_fast``, :func:`model_figures`).

:func:`failure_stage` names the first stage that lost the held-out gene, in pipeline order:
training / origins / sampling -> filters -> trial_budget -> trials -> relaxation -> symmetry ->
lattice -> ranking; ``None`` when recovered (or, without structures, when it passed); ``not run``
when the benchmark stopped before a stage that decides (a partial run: no sampling or filter
verdict yet, or structures planned -- ``structures_planned`` -- but not run).
"""

from __future__ import annotations

from collections.abc import Iterable

NOT_RUN = "not run"
STAGES = ("training", "origins", "sampling", "filters", "trial_budget", "trials", "relaxation", "symmetry",
          "lattice", "ranking", NOT_RUN)


def failure_stage(row: dict) -> tuple[str | None, str]:
    """(stage, reason) of the first loss of the held-out gene; (None, "") when nothing was lost."""
    if row.get("error"):
        return row.get("error_stage") or "training", str(row["error"])
    if row.get("sampled") is None:
        return NOT_RUN, "sampling not run"
    if not row.get("sampled"):
        return "sampling", "held-out gene never decoded"
    if row.get("passed") is None:
        return NOT_RUN, "filters not run"
    if not row.get("passed"):
        return "filters", ", ".join(row.get("reasons") or []) or "filtered out"
    if row.get("in_budget") is None:
        return (NOT_RUN, "structures not run") if row.get("structures_planned") else (None, "")
    if not row["in_budget"]:
        return "trial_budget", f"rank {row.get('rank_by_hits')} by hits; not among the genes given trials"
    if not row.get("trials_ok"):
        return "trials", "no trial structure built"
    if not row.get("relaxed"):
        return "relaxation", "no relaxed trial"
    if not row.get("sg_kept"):
        return "symmetry", f"space group after relaxation {row.get('sg_after')}"
    by = f" ({row['decided_by']})" if row.get("decided_by") else ""
    if not row.get("lattice_ok"):
        err = row.get("lattice_err")
        what = {True: "; the held-out crystal, its cell off", False: "; another crystal than the held-out "
                "material's (same gene, other positions)"}.get(row.get("same_crystal"), "")
        if row.get("same_crystal") is False and row.get("arrangement_found") is not None:
            what += (f"; the material's arrangement relaxed too ({row.get('arrangement_origin')}) but "
                     f"{row.get('arrangement_above_mev')} meV/atom above the gene's best (fast model)"
                     if row["arrangement_found"] else
                     f"; none of the gene's {row.get('arrangement_trials')} relaxed trials is the material's arrangement")
        return "lattice", f"max lattice error {err:.3f}{by}{what}" if isinstance(err, float) else "no lattice comparison"
    if row.get("task") == "ground_state" and row.get("gs_rank") != 1:
        return "ranking", f"ground-state rank {row.get('gs_rank')}{by}"
    return None, ""


def model_figures(report: dict, fast: dict | None = None) -> dict:
    """A benchmark row's structure-stage fields by model, from a ``loo_report`` row (``report``:
    the cascade's verdict, :func:`dft.loo.loo_verdict` with the decider's rows) and the fast
    model's own verdict on the same relaxations (``fast``: ``loo_verdict`` without the decider;
    None when ``report`` was judged without a decider, e.g. a run before the cascade or with
    rescorer "none": then both sets of columns are the report's).

    Unsuffixed (``sg_kept``, ``lattice_ok``, ``lattice_err``, ``gs_rank``, ``recovered``): the
    cascade's, from the model named in ``decided_by`` (the decider where it rescored the held-out
    gene, else the fast model); ``*_fast``: the fast model alone; ``margin_fast_mev`` /
    ``margin_decider_mev``: the held-out crystal's margin to the lowest rival crystal of its
    formula by each model (meV/atom, positive = below every rival); ``decider_rescored``: whether
    the decider rescored the held-out gene (None: no decider ran)."""
    decider_ran = (report.get("decider_model") or "none") != "none"
    rescored = report.get("ground_state_rank_decider") is not None or (
        decider_ran and report.get("energy_model") == report.get("decider_model"))
    own = report if fast is None else fast
    return {
        "decided_by": report.get("energy_model") or report.get("lattice_source"),
        "decider_rescored": rescored if decider_ran else None,
        "sg_kept": report.get("sg_kept"), "lattice_ok": report.get("lattice_within_tolerance"),
        "lattice_err": report.get("lattice_max_error"), "gs_rank": report.get("ground_state_rank"),
        "recovered": report.get("recovered"),
        "sg_kept_fast": own.get("sg_kept"), "lattice_err_fast": own.get("lattice_max_error"),
        "gs_rank_fast": report.get("ground_state_rank_fast", own.get("ground_state_rank_fast",
                                                                         own.get("ground_state_rank"))),
        "recovered_fast": own.get("recovered"),
        "margin_fast_mev": report.get("ground_state_margin_mev_fast", own.get("ground_state_margin_mev_fast")),
        "margin_decider_mev": report.get("ground_state_margin_mev_decider"),
    }


def _rate(values: list) -> str:
    known = [bool(v) for v in values if v is not None]
    return f"{sum(known)}/{len(known)}" if known else "-"


def rates(rows: Iterable[dict], by: str | None, fields=("sampled", "passed", "recovered")) -> list[dict]:
    """Per value of ``by`` (or overall when None): n and 'k/m' for every field (rows where a field
    is None -- e.g. ``recovered`` without structures -- are left out of that field's m)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault("all" if by is None else str(r.get(by)), []).append(r)
    return [{by or "group": name, "n": len(rs), **{f: _rate([r.get(f) for r in rs]) for f in fields}}
            for name, rs in sorted(groups.items())]


def stage_counts(rows: Iterable[dict]) -> list[dict]:
    """How many partitions lost their held-out gene at each stage (pipeline order)."""
    counts: dict[str, int] = {}
    for r in rows:
        stage, _ = failure_stage(r)
        counts[stage or "none"] = counts.get(stage or "none", 0) + 1
    order = [*STAGES, "none"]
    return [{"stage": s, "partitions": counts[s]} for s in order if s in counts]


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "_(none)_"
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            cells.append("-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
