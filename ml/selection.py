"""Which passed genes get the relaxation budget: ranking rules over ``filtered_genes`` rows.

Every rule returns *all* the genes it is given, in the order they would get trial structures, so
the rank of any gene (a paper material that fell outside the budget, say) can be read off; the
budget is then the first ``budget`` rows. Orders are reproducible: ties break on ``gene_key`` and
the random rules draw from a keyed hash of ``(seed, gene_key)``, so a gene's draw does not depend
on which other genes are present, and the first 5 of a seeded sample are the first 5 of its 100.

Rules (:data:`SELECTIONS`):

``hits``, ``space_group_round_robin``, ``hits_then_space_groups``
    the existing rules of :func:`ml.filters.rank_genes` (most-sampled first, and two space-group
    mixes of it).
``random``
    a uniform random order of the distinct passed genes: the generator's intrinsic S.U.N. rate,
    measured without any ranking.
``random_by_hits``
    a random order drawn without replacement with probability proportional to ``hits``
    (Efraimidis-Spirakis keys ``u ** (1 / hits)``): the same as drawing raw samples at random and
    dropping repeats, which is how the WyFormer DFT evaluation chose the structures it relaxed
    (``dataset.sample(...)`` of the raw samples, then unique, then novel).
``predicted_formation_energy``
    lowest PVAE-predicted E_f first (ties: more hits first).
``synthesizability``
    highest synthesizability score first (unscored genes last).
``chemical_system_round_robin``
    diversity-aware: within each chemical system the genes are ordered by predicted E_f; round
    ``r`` takes the ``r``-th gene of every system, systems ordered by their best predicted E_f
    (so a budget covers as many chemical systems as it can, each with its most promising gene).
"""

from __future__ import annotations

import hashlib
import math
from typing import Literal, get_args

import polars as pl

from ml.filters import RANKINGS, rank_genes

Selection = Literal["hits", "space_group_round_robin", "hits_then_space_groups", "random", "random_by_hits",
                    "predicted_formation_energy", "synthesizability", "chemical_system_round_robin"]
SELECTIONS: tuple[str, ...] = get_args(Selection)
# the rules a yield benchmark compares on one budget (the two space-group mixes of hits are
# ground-state tools; random_by_hits is the anchors' protocol, random the plain intrinsic rate)
COMPARED_SELECTIONS: tuple[str, ...] = ("random", "random_by_hits", "hits", "predicted_formation_energy",
                                        "synthesizability", "chemical_system_round_robin")


def _unit_draw(seed: int, gene_key: str) -> float:
    """A number in (0, 1) from a keyed hash of (seed, gene_key): uniform and independent per gene."""
    digest = hashlib.sha256(f"{int(seed)}|{gene_key}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") + 0.5) / 2.0**64


def chemical_system(formula: str | None) -> str | None:
    """Elements of a formula, sorted and joined by '-' (``'Bi-Ge-Te'``); None when unparseable."""
    from pymatgen.core import Composition

    if not formula:
        return None
    try:
        return "-".join(sorted(str(e) for e in Composition(formula).elements))
    except Exception:
        return None


def _need(genes: pl.DataFrame, rule: str, *columns: str) -> None:
    missing = [c for c in columns if c not in genes.columns]
    if missing:
        raise ValueError(f"selection {rule!r} needs column(s) {missing} in the passed genes")


def rank_for_budget(genes: pl.DataFrame, rule: str = "hits", *, budget: int | None = None,
                    seed: int = 0) -> pl.DataFrame:
    """``genes`` (columns ``gene_key``, ``space_group``, ``hits``, plus ``formula``,
    ``predicted_formation_energy`` or ``synthesizability`` where the rule needs them) in budget
    order, with a 1-based ``selection_rank`` column. ``budget`` matters only to
    ``hits_then_space_groups`` (its first half goes by hits)."""
    if rule not in SELECTIONS:
        raise ValueError(f"unknown selection {rule!r}; valid: {', '.join(SELECTIONS)}")
    _need(genes, rule, "gene_key", "hits")
    if rule in RANKINGS:
        ordered = rank_genes(genes, rule, budget=budget)
    elif rule in ("random", "random_by_hits"):
        keys = genes["gene_key"].to_list()
        if rule == "random":
            draw = [_unit_draw(seed, k) for k in keys]
        else:  # Efraimidis-Spirakis: the largest u**(1/w) first == the largest log(u)/w first
            draw = [math.log(_unit_draw(seed, k)) / max(float(h or 0), 1e-12)
                    for k, h in zip(keys, genes["hits"].to_list())]
        ordered = genes.with_columns(pl.Series("_draw", draw, dtype=pl.Float64)).sort(
            ["_draw", "gene_key"], descending=[True, False]).drop("_draw")
    elif rule == "predicted_formation_energy":
        _need(genes, rule, "predicted_formation_energy")
        ordered = genes.sort(["predicted_formation_energy", "hits", "gene_key"], descending=[False, True, False],
                             nulls_last=True)
    elif rule == "synthesizability":
        _need(genes, rule, "synthesizability")
        ordered = genes.sort(["synthesizability", "hits", "gene_key"], descending=[True, True, False],
                             nulls_last=True)
    else:  # chemical_system_round_robin
        _need(genes, rule, "formula", "predicted_formation_energy")
        systems = [chemical_system(f) or "" for f in genes["formula"].to_list()]
        ordered = (genes.with_columns(pl.Series("_system", systems, dtype=pl.String))
                   .sort(["predicted_formation_energy", "hits", "gene_key"], descending=[False, True, False],
                         nulls_last=True)
                   .with_columns(pl.int_range(pl.len()).over("_system").alias("_round"),
                                 pl.col("predicted_formation_energy").min().over("_system").alias("_system_best"))
                   .sort(["_round", "_system_best", "_system", "predicted_formation_energy", "gene_key"],
                         nulls_last=True)
                   .drop("_system", "_round", "_system_best"))
    return ordered.with_row_index("selection_rank", offset=1).with_columns(pl.col("selection_rank").cast(pl.Int64))
