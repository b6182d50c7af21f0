"""One partition's generator report: metrics (:mod:`ml.generator_metrics`) on the rows the
platform has, with the facts only the relaxed structure files hold (:mod:`dft.structure_facts`),
and the trace of named materials through the funnel (:mod:`ml.funnel_trace`).

Plain functions over polars frames; the Dagster asset reads the tables and writes the results.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import polars as pl

from ml.funnel_trace import trace_formulas
from ml.generator_metrics import MetricsConfig, generator_metrics
from ml.selection import SELECTIONS, rank_for_budget
from ml.targets import Target

TABLES = ("filtered_genes", "trial_structures", "relaxed_structures", "phonon_verdicts")


@dataclass
class GeneratorReport:
    metrics: pl.DataFrame  # ml.generator_metrics.METRIC_SCHEMA rows
    trace: pl.DataFrame | None  # ml.funnel_trace.TRACE_SCHEMA rows (None: the target names no materials)
    selection: str  # the rule that chose the relaxation sample
    selection_seed: int | None
    budget: int  # genes selected for relaxation


def _selection_of(trials: pl.DataFrame | None) -> tuple[str | None, int | None]:
    """The (rule, seed) recorded in trial_structures rows, when there is exactly one."""
    if trials is None or "selection" not in trials.columns or trials.is_empty():
        return None, None
    rules = trials["selection"].drop_nulls().unique().to_list()
    seeds = trials["selection_seed"].drop_nulls().unique().to_list() if "selection_seed" in trials.columns else []
    return (rules[0] if len(rules) == 1 else None), (int(seeds[0]) if len(seeds) == 1 else None)


def best_relaxed_with_facts(relaxed: pl.DataFrame | None) -> pl.DataFrame | None:
    """Best trial per gene with ``min_distance_relaxed`` and ``crystal_id`` joined on."""
    from dft.structure_facts import relaxed_structure_facts

    if relaxed is None:
        return None
    best = relaxed.filter(pl.col("best_trial").fill_null(False)) if "best_trial" in relaxed.columns else relaxed
    if best.is_empty():
        return best
    return best.join(relaxed_structure_facts(best), on="gene_key", how="left")


def generator_report(tables: dict[str, pl.DataFrame | None], *, target: Target,
                     config: MetricsConfig | None = None) -> GeneratorReport:
    """``tables``: this partition's rows of :data:`TABLES` (a missing table: None or absent)."""
    config = config or MetricsConfig()
    filtered, trials, relaxed, phonons = (tables.get(t) for t in TABLES)
    rule, seed = _selection_of(trials)
    config = replace(config, loo=target.is_loo, selection=config.selection or rule)
    best = best_relaxed_with_facts(relaxed)
    metrics = generator_metrics(filtered, trials, best, phonons, config)
    budget = 0 if trials is None else int(trials["gene_key"].n_unique())
    trace = None
    names = target.raw.get("published_phonon_stable") or []
    if names:
        ranked = None
        if filtered is not None and rule in SELECTIONS:
            passed = filtered.filter(pl.col("passed").fill_null(False))
            ranked = rank_for_budget(passed, rule, budget=budget, seed=seed or 0)
        decided = metrics.filter(pl.col("metric").str.starts_with("sun_rate"))["decided_by"]
        trace = trace_formulas(names, filtered, ranked, trials, best, phonons, budget=budget,
                               energy_column=config.energy_column, stable_threshold=config.metasun_threshold,
                               decided_by=decided[0] if decided.len() else "", selection=rule or "")
    return GeneratorReport(metrics, trace, config.selection or "unknown", seed, budget)
