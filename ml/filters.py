"""Reliability and feasibility filters on sampled Wyckoff genes (paper, "Automated DFT Workflow").

:func:`apply_filters` returns every input row with one boolean verdict column per rule, each rule
judged on its own (not only on the rows that survived the rules before it):

reliability
  ``formula_ok``        SMACT: some combination of allowed oxidation states is charge neutral and
                        passes the Pauling electronegativity test (``smact.screening.smact_validity``;
                        its default ICSD-24 oxidation-state set, all-metal compositions valid as
                        alloys — the settings under which the paper's eight new materials, with
                        Bi(II) and Ag(III), pass). One SMACT call per distinct formula.
  ``wyckoff_ok``        :func:`ml.genes.validate_gene`: letters exist in the space group,
                        multiplicities match, no DoF-0 site twice, sites reproduce the formula.
  ``ternary_ok``        exactly ``n_elements`` distinct elements (3: the PVAE is trained on and the
                        paper generates ternaries; a decoder that repeats an element slot gives a
                        binary or an element, e.g. "Te" from Te/Te/Te). ``None`` switches it off.
  ``unique_in_batch``   first row of its ``gene_key`` in input order (equivalent configurations
                        share one key; sampling already merges them, this checks again).
  ``novel``             ``gene_key`` not in ``known_gene_keys``. For a leave-one-out target the
                        target's own keys (:meth:`ml.targets.Target.gene_keys`) are always taken
                        out of the known set, so the held-out gene can be found again.
feasibility
  ``elements_ok``       every element in the list: ``config.elements`` if given, else the
                        campaign's list; no list (LOO without ``config.elements``) -> True.
  ``size_ok``           atoms per conventional cell <= ``max_atoms_per_cell`` and total DoF <=
                        ``max_total_dof``; invalid genes fail (no size to judge).
  ``energy_ok``         ``predicted_formation_energy`` <= ``max_predicted_formation_energy``.
  ``synthesizable_ok``  synthesizability score >= ``min_synthesizability``.
target
  ``target_formula_ok`` LOO with ``restrict_to_target_formula``: ground_state keeps the target's
                        reduced formula, polymorph the formula in the target space group
                        (paper Tables S3/S6). Campaigns, no target, or restriction off -> True.

``passed`` is the AND of all verdicts. ``reasons`` is a ``list[str]`` of machine-readable codes of
the rules a row fails (empty exactly when ``passed``); ``notes`` lists rules that were not
evaluated and so did not reject (e.g. ``synthesizability_not_evaluated`` when no model is given:
``synthesizability`` is then null and ``synthesizable_ok`` True) and keeps the text of an
unexpected error behind a reason code (``wyckoff_error: KeyError: ...``). Reason codes: see
:data:`REASONS`. Added number columns: ``atoms_per_cell``, ``total_dof`` (null for invalid genes)
and ``synthesizability`` (null when not scored).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from ml.genes import GeneError, gene_key, normalize_formula, validate_gene
from ml.targets import Target

# rule column -> the reason codes it can emit
REASONS: dict[str, tuple[str, ...]] = {
    "formula_ok": ("formula_unparseable", "smact_charge_neutrality", "smact_electronegativity"),
    "wyckoff_ok": ("wyckoff_<GeneError.reason>",),  # e.g. wyckoff_dof0_site_occupied_twice
    "ternary_ok": ("wrong_element_count",),
    "unique_in_batch": ("duplicate_in_batch",),
    "novel": ("known_gene",),
    "elements_ok": ("element_outside_list",),
    "size_ok": ("too_many_atoms", "too_many_dof", "size_unknown_invalid_gene"),
    "energy_ok": ("formation_energy_above_threshold", "formation_energy_missing"),
    "synthesizable_ok": ("synthesizability_below_threshold", "synthesizability_unscored"),
    "target_formula_ok": ("not_target_formula", "not_target_space_group"),
}
NOTES = ("formation_energy_not_evaluated", "synthesizability_not_evaluated")
RULES: tuple[str, ...] = tuple(REASONS)
FUNNEL_STAGES: tuple[tuple[str, str | None], ...] = (
    ("sampled", None),
    ("formula", "formula_ok"),
    ("wyckoff", "wyckoff_ok"),
    ("ternary", "ternary_ok"),
    ("unique", "unique_in_batch"),
    ("novel", "novel"),
    ("elements", "elements_ok"),
    ("size", "size_ok"),
    ("energy", "energy_ok"),
    ("synthesizable", "synthesizable_ok"),
    ("target_formula", "target_formula_ok"),
    ("passed", "passed"),
)
_ADDED = (*RULES, "passed", "reasons", "notes", "atoms_per_cell", "total_dof", "synthesizability")


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds of the filters. ``None`` for ``max_predicted_formation_energy`` or
    ``min_synthesizability`` switches that rule off (noted, not rejected)."""

    elements: tuple[str, ...] | None = None  # None: the campaign's list, or no restriction
    n_elements: int | None = 3  # distinct elements a gene must have; None: any
    max_atoms_per_cell: int | None = 50  # None: no limit
    max_total_dof: int | None = 5  # None: no limit
    max_predicted_formation_energy: float | None = 0.0  # eV/atom
    min_synthesizability: float | None = 0.5
    restrict_to_target_formula: bool = True
    smact_oxidation_states_set: str | None = None  # None: SMACT's default (ICSD-24 filter)
    smact_include_alloys: bool = True


def smact_verdict(formula: str, *, oxidation_states_set: str | None = None, include_alloys: bool = True) -> str | None:
    """``None`` when SMACT accepts the formula, else the reason code."""
    from pymatgen.core import Composition
    from smact.screening import smact_validity

    try:
        comp = Composition(normalize_formula(formula))
    except GeneError:
        return "formula_unparseable"
    kwargs = {"include_alloys": include_alloys, "oxidation_states_set": oxidation_states_set}
    with warnings.catch_warnings():  # pymatgen warns about noble gases lacking an electronegativity
        warnings.simplefilter("ignore", UserWarning)
        if smact_validity(comp, use_pauling_test=True, **kwargs):
            return None
        if smact_validity(comp, use_pauling_test=False, **kwargs):
            return "smact_electronegativity"
    return "smact_charge_neutrality"


def _gene_checks(formula, sg, wyckoff_text, with_key: bool) -> tuple:
    """(wyckoff reason or None, atoms/cell, total DoF, gene_key (if asked and valid) or None,
    elements, error text of an unexpected exception or None)."""
    try:
        wyckoff = json.loads(wyckoff_text) if isinstance(wyckoff_text, str) else dict(wyckoff_text or {})
        if not isinstance(wyckoff, dict):
            raise GeneError("empty_gene", str(wyckoff_text))
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        return "wyckoff_unparseable", None, None, None, (), f"{type(exc).__name__}: {exc}"[:300]
    elements = tuple(sorted(wyckoff))
    try:
        summary = validate_gene(formula or "", sg, wyckoff)
        if not formula:
            raise GeneError("composition_mismatch", "no formula")
        key = gene_key(formula, sg, wyckoff) if with_key else None
    except GeneError as exc:
        return f"wyckoff_{exc.reason}", None, None, None, elements, None
    except Exception as exc:  # a malformed row is a verdict (with the error's text), never a crash
        return "wyckoff_unparseable", None, None, None, elements, f"{type(exc).__name__}: {exc}"[:300]
    return None, summary.atoms_per_cell, summary.total_dof, key, elements, None


def _element_set(target: Target | None, config: FilterConfig) -> frozenset[str] | None:
    if config.elements is not None:
        return frozenset(config.elements)
    if target is not None and target.task == "campaign" and target.elements:
        return frozenset(target.elements)
    return None


def _score(synthesizability, rows: pl.DataFrame) -> np.ndarray:
    fn = getattr(synthesizability, "score", synthesizability)
    scores = np.asarray(fn(rows), dtype=np.float64).reshape(-1)
    if len(scores) != rows.height:
        raise ValueError(f"synthesizability returned {len(scores)} scores for {rows.height} rows")
    return scores


def apply_filters(sampled: pl.DataFrame, *, known_gene_keys: set[str], target: Target | None,
                  config: FilterConfig | None = None,
                  synthesizability: Callable[[pl.DataFrame], np.ndarray] | None = None) -> pl.DataFrame:
    """Every row of ``sampled`` (columns ``formula``, ``space_group``, ``wyckoff`` as canonical JSON
    text; optional ``gene_key`` — computed when absent — and ``predicted_formation_energy``) with
    the verdict columns, ``reasons``, ``notes``, ``passed`` and the size/score columns.

    ``synthesizability``: a :class:`ml.synthesizability.SynthModel` (its ``score`` is used) or any
    callable taking a DataFrame of the Wyckoff-valid rows (``formula``, ``space_group``,
    ``wyckoff``) and returning one score per row (NaN = could not score).
    """
    config = config or FilterConfig()
    missing = [c for c in ("formula", "space_group", "wyckoff") if c not in sampled.columns]
    if missing:
        raise ValueError(f"sampled genes lack column(s) {missing}")
    df = sampled.drop([c for c in _ADDED if c in sampled.columns]).with_row_index("_row")
    n = df.height
    formulas = df["formula"].to_list()
    sgs = df["space_group"].to_list()
    wyckoffs = df["wyckoff"].to_list()

    # --- formula: SMACT once per distinct formula
    smact_cache: dict[str | None, str | None] = {}
    formula_reason = []
    for f in formulas:
        if f not in smact_cache:
            smact_cache[f] = smact_verdict(f, oxidation_states_set=config.smact_oxidation_states_set,
                                           include_alloys=config.smact_include_alloys) if f else "formula_unparseable"
        formula_reason.append(smact_cache[f])

    # --- Wyckoff validity, size, key, elements: once per distinct gene text
    given_keys = df["gene_key"].cast(pl.String).to_list() if "gene_key" in df.columns else [None] * n
    gene_cache: dict[tuple, tuple] = {}
    checks = []
    for f, sg, w, given in zip(formulas, sgs, wyckoffs, given_keys):
        k = (f, sg, w if isinstance(w, str) else json.dumps(w, sort_keys=True), given is None)
        if k not in gene_cache:
            gene_cache[k] = _gene_checks(f, sg, w, with_key=given is None)
        checks.append(gene_cache[k])
    wyckoff_reason = [c[0] for c in checks]
    atoms = pl.Series("atoms_per_cell", [c[1] for c in checks], dtype=pl.Int64)
    dof = pl.Series("total_dof", [c[2] for c in checks], dtype=pl.Int64)
    # the given key (ml.sampling computes it with ml.genes.gene_key), else computed; an invalid
    # gene without one gets its raw text as key (as ml.sampling does)
    keys = pl.Series([given if given is not None else c[3] if c[3] is not None else f"{f}|{sg}|{w}"
                      for given, c, f, sg, w in zip(given_keys, checks, formulas, sgs, wyckoffs)], dtype=pl.String)
    formula_elements: dict[str, frozenset | None] = {f: _formula_elements(f) for f in set(formulas)}
    # the formula's elements (the Wyckoff sites' where the formula does not parse)
    n_distinct = [len(formula_elements[f] or c[4] or ()) if f else len(c[4] or ()) for c, f in zip(checks, formulas)]
    ternary_ok = [config.n_elements is None or n == config.n_elements for n in n_distinct]
    allowed = _element_set(target, config)
    if allowed is None:
        elements_ok = [True] * n
    else:  # the Wyckoff sites' elements and the formula's (they differ only in invalid genes)
        elements_ok = [_within(c[4], allowed) and (not f or _within(formula_elements[f], allowed))
                       for c, f in zip(checks, formulas)]

    # --- novelty: the LOO target's own keys are never "known"
    known = set(known_gene_keys)
    if target is not None and target.is_loo:
        known -= target.gene_keys()
    known_list = pl.Series("known", sorted(known), dtype=pl.String)

    # --- synthesizability on the Wyckoff-valid rows
    scores = np.full(n, np.nan)
    valid_rows = np.array([r is None for r in wyckoff_reason], dtype=bool)
    if synthesizability is not None and valid_rows.any():
        scores[valid_rows] = _score(synthesizability, df.filter(pl.Series(valid_rows)).select(
            "formula", "space_group", "wyckoff"))

    df = df.with_columns(
        pl.Series("_formula_reason", formula_reason, dtype=pl.String),
        pl.Series("_wyckoff_reason", wyckoff_reason, dtype=pl.String),
        keys.alias("gene_key"),
        atoms,
        dof,
        pl.Series("_elements_ok", elements_ok, dtype=pl.Boolean),
        pl.Series("_error", [None if c[5] is None else f"wyckoff_error: {c[5]}" for c in checks], dtype=pl.String),
        pl.Series("_ternary_ok", ternary_ok, dtype=pl.Boolean),
        pl.Series("synthesizability", scores, dtype=pl.Float64).fill_nan(None),
    )

    # --- vectorized verdicts
    max_atoms, max_dof = config.max_atoms_per_cell, config.max_total_dof
    if config.max_predicted_formation_energy is None or "predicted_formation_energy" not in df.columns:
        energy_ok, energy_reason = pl.lit(True), pl.lit(None, pl.String)
        energy_note = pl.lit("formation_energy_not_evaluated")
    else:
        ef = pl.col("predicted_formation_energy").cast(pl.Float64).fill_nan(None)
        energy_ok = (ef <= config.max_predicted_formation_energy).fill_null(False)
        energy_reason = (pl.when(ef.is_null()).then(pl.lit("formation_energy_missing"))
                         .when(~energy_ok).then(pl.lit("formation_energy_above_threshold")))
        energy_note = pl.lit(None, pl.String)
    if synthesizability is None or config.min_synthesizability is None:
        synth_ok, synth_reason = pl.lit(True), pl.lit(None, pl.String)
        synth_note = pl.lit("synthesizability_not_evaluated")
    else:
        sc = pl.col("synthesizability")
        synth_ok = (sc >= config.min_synthesizability).fill_null(False)
        synth_reason = (pl.when(sc.is_null()).then(pl.lit("synthesizability_unscored"))
                        .when(~synth_ok).then(pl.lit("synthesizability_below_threshold")))
        synth_note = pl.lit(None, pl.String)
    if target is not None and target.is_loo and config.restrict_to_target_formula:
        reduced = pl.Series([_reduced_or_none(f) for f in formulas], dtype=pl.String)
        df = df.with_columns(reduced.alias("_reduced"))
        formula_match = (pl.col("_reduced") == target.reduced_formula).fill_null(False)
        if target.task == "polymorph":
            sg_match = (pl.col("space_group").cast(pl.Int64, strict=False) == int(target.space_group)).fill_null(False)
            target_ok = formula_match & sg_match
            target_reason = (pl.when(~formula_match).then(pl.lit("not_target_formula"))
                             .when(~sg_match).then(pl.lit("not_target_space_group")))
        else:
            target_ok = formula_match
            target_reason = pl.when(~formula_match).then(pl.lit("not_target_formula"))
    else:
        target_ok, target_reason = pl.lit(True), pl.lit(None, pl.String)

    size_known = pl.col("atoms_per_cell").is_not_null()
    atoms_ok = pl.lit(True) if max_atoms is None else pl.col("atoms_per_cell") <= max_atoms
    dof_ok = pl.lit(True) if max_dof is None else pl.col("total_dof") <= max_dof
    df = df.with_columns(
        pl.col("_formula_reason").is_null().alias("formula_ok"),
        pl.col("_wyckoff_reason").is_null().alias("wyckoff_ok"),
        pl.col("_ternary_ok").alias("ternary_ok"),
        pl.col("gene_key").is_first_distinct().alias("unique_in_batch"),
        (~pl.col("gene_key").is_in(known_list)).alias("novel"),
        pl.col("_elements_ok").alias("elements_ok"),
        (size_known & atoms_ok & dof_ok).fill_null(False).alias("size_ok"),
        energy_ok.alias("energy_ok"),
        synth_ok.alias("synthesizable_ok"),
        target_ok.alias("target_formula_ok"),
        pl.concat_list(
            pl.col("_formula_reason"),
            pl.col("_wyckoff_reason"),
            pl.when(~pl.col("_ternary_ok")).then(pl.lit("wrong_element_count")),
            pl.when(~pl.col("gene_key").is_first_distinct()).then(pl.lit("duplicate_in_batch")),
            pl.when(pl.col("gene_key").is_in(known_list)).then(pl.lit("known_gene")),
            pl.when(~pl.col("_elements_ok")).then(pl.lit("element_outside_list")),
            pl.when(~size_known).then(pl.lit("size_unknown_invalid_gene")),
            pl.when(size_known & ~atoms_ok).then(pl.lit("too_many_atoms")),
            pl.when(size_known & ~dof_ok).then(pl.lit("too_many_dof")),
            energy_reason,
            synth_reason,
            target_reason,
        ).list.drop_nulls().alias("reasons"),
        pl.concat_list(energy_note, synth_note, pl.col("_error")).list.drop_nulls().alias("notes"),
    )
    df = df.with_columns(pl.all_horizontal(*RULES).alias("passed"))
    return df.sort("_row").drop([c for c in df.columns if c.startswith("_")])


def _within(elements, allowed: frozenset) -> bool:
    return bool(elements) and set(elements) <= allowed


def _formula_elements(formula: str | None) -> frozenset | None:
    from pymatgen.core import Composition

    if not formula:
        return None
    try:
        return frozenset(str(e) for e in Composition(formula).elements)
    except Exception:  # recorded: smact_verdict gives the same formula "formula_unparseable"
        return None


def _reduced_or_none(formula: str | None) -> str | None:
    if not formula:
        return None
    try:
        return normalize_formula(formula)
    except GeneError:
        return None


def funnel(filtered: pl.DataFrame) -> list[dict]:
    """Counts left after applying the rules one after another (sampled -> formula -> wyckoff ->
    ternary -> unique -> novel -> elements -> size -> energy -> synthesizable -> target formula -> passed):
    ``[{"stage", "rule", "remaining", "removed"}, ...]``, non-increasing."""
    out = []
    keep = pl.Series([True] * filtered.height, dtype=pl.Boolean)
    previous = filtered.height
    for stage, rule in FUNNEL_STAGES:
        if rule is not None:
            keep = keep & filtered[rule].fill_null(False)
        remaining = int(keep.sum())
        out.append({"stage": stage, "rule": rule, "remaining": remaining, "removed": previous - remaining})
        previous = remaining
    return out


RANKINGS = ("hits", "space_group_round_robin", "hits_then_space_groups")


def rank_genes(genes: pl.DataFrame, ranking: str = "hits", budget: int | None = None) -> pl.DataFrame:
    """Passed genes in the order they get trial structures (``space_group``, ``hits``,
    ``gene_key`` columns). Ties break on ``gene_key``, so the order is reproducible.

    ``hits``: most-sampled first. ``space_group_round_robin``: the most-hit gene of every space
    group first (groups by their best gene's hits), then each group's second, and so on.
    ``hits_then_space_groups``: the first half of ``budget`` by hits (a strong rival in the
    favourite space group, e.g. a second Pnma configuration, stays in), then the best gene of each
    space group not yet covered, then the rest by hits."""
    if ranking not in RANKINGS:
        raise ValueError(f"unknown ranking {ranking!r}; valid: {', '.join(RANKINGS)}")
    ordered = genes.sort(["hits", "gene_key"], descending=[True, False])
    if ranking == "hits":
        return ordered
    ordered = ordered.with_columns(
        pl.int_range(pl.len()).over("space_group").alias("_round"),
        pl.col("hits").max().over("space_group").alias("_group_best"))
    if ranking == "space_group_round_robin":
        return ordered.sort(["_round", "_group_best", "space_group", "hits", "gene_key"],
                            descending=[False, True, False, True, False]).drop("_round", "_group_best")
    head = ordered.head(max(0, (budget or 0) // 2))
    rest = ordered.slice(head.height)
    covered = head["space_group"].unique()
    firsts = rest.filter(~pl.col("space_group").is_in(covered) & (pl.col("_round") == 0))
    others = rest.filter(~pl.col("gene_key").is_in(firsts["gene_key"]))
    return pl.concat([head, firsts, others]).drop("_round", "_group_best")


# ---- task defaults and selection rules (what filtered_genes / trial_structures apply) ---------

# LOO partitions keep atoms <= 50 and no DoF limit: the paper's Table S3 lists the held-out CaTiO3
# Pnma gene (total DoF 7) among the genes it relaxed. Campaigns take their registry `selection`,
# by default the paper's atoms <= 50, DoF <= 5.
DEFAULT_MAX_ATOMS_PER_CELL = 50
CAMPAIGN_MAX_TOTAL_DOF = 5


def task_filter_config(target: Target, *, elements=None, max_atoms_per_cell: int | None = None,
                       max_total_dof: int | None = None, **thresholds) -> FilterConfig:
    """The filter thresholds for ``target``: explicit values win, else the task's defaults (a
    campaign's registry ``selection`` -- paper: atoms/cell <= 50, DoF <= 5 -- or, for
    leave-one-out targets, atoms/cell <= 50 and no DoF limit). ``elements``: None -> the campaign's
    list (campaigns) / no restriction (LOO). ``thresholds``: the other :class:`FilterConfig` fields."""
    campaign = target.task == "campaign"
    selection = target.selection if campaign else {}
    if max_atoms_per_cell is None:
        max_atoms_per_cell = int(selection.get("max_atoms_per_cell", DEFAULT_MAX_ATOMS_PER_CELL))
    if max_total_dof is None and campaign:
        max_total_dof = int(selection.get("max_total_dof", CAMPAIGN_MAX_TOTAL_DOF))
    if not elements:  # None (or an empty list): the campaign's list / no restriction
        elements = target.elements if campaign else None
    return FilterConfig(elements=tuple(elements) if elements else None,
                        max_atoms_per_cell=max_atoms_per_cell, max_total_dof=max_total_dof, **thresholds)


def selection_text(config: FilterConfig) -> str:
    """The size rule in words, e.g. ``atoms per cell <= 50, total DoF <= no limit``."""
    def limit(v):
        return "no limit" if v is None else v

    return f"atoms per cell <= {limit(config.max_atoms_per_cell)}, total DoF <= {limit(config.max_total_dof)}"


def held_out_summary(filtered: pl.DataFrame, gene_keys) -> dict:
    """Where a leave-one-out target's gene ended in ``filtered`` (the output of
    :func:`apply_filters` with ``hits``): sampled, passed, rank by hits (1 = most sampled; None
    when not sampled), the reasons it failed. Empty for a target without a gene."""
    keys = sorted(gene_keys or ())
    if not keys:
        return {}
    ranked = filtered.sort("hits", descending=True).with_row_index("rank", offset=1)
    row = ranked.filter(pl.col("gene_key").is_in(keys))
    if row.is_empty():
        return {"sampled": False, "passed": False, "rank_by_hits": None, "reasons": "not sampled"}
    return {"sampled": True, "passed": bool(row["passed"][0]), "rank_by_hits": int(row["rank"][0]),
            "reasons": ", ".join(row["reasons"][0]) or "-"}


def resolve_ranking(ranking: str, task: str) -> str:
    """``"auto"`` -> ``hits_then_space_groups`` for ground-state targets (the question is which
    symmetry wins, so every space group needs a candidate), ``hits`` otherwise; other values as
    they are (checked by :func:`rank_genes`)."""
    if ranking != "auto":
        return ranking
    return "hits_then_space_groups" if task == "ground_state" else "hits"
