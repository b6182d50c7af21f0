"""Where a leave-one-out partition failed, and rates over many partitions (the LOO benchmark).

A benchmark row is a dict per partition: ``task``, ``crystal_system``, ``chemistry`` and what the
stages recorded -- ``error`` / ``error_stage`` (a run that raised), ``sampled``, ``passed``,
``reasons`` (filter reason codes of the held-out gene), ``in_budget`` (its gene got trial
structures; None when the structure stage was not run), ``trials_ok``, ``relaxed``, ``sg_kept``,
``lattice_ok``, ``lattice_err``, ``gs_rank`` (ground-state rank among the formula's relaxed
crystals), ``recovered``.

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
    if not row.get("lattice_ok"):
        err = row.get("lattice_err")
        return "lattice", f"max lattice error {err:.3f}" if isinstance(err, float) else "no lattice comparison"
    if row.get("task") == "ground_state" and row.get("gs_rank") != 1:
        return "ranking", f"ground-state rank {row.get('gs_rank')}"
    return None, ""


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
