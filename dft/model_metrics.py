"""How well an energy model agrees with a reference (MP's DFT, or GPAW): the metrics of
``benchmarks/energy_models.py`` and the rule that picks the platform's models from them.

Plain functions over plain mappings (material id -> number / formula), so the cascade can score
its own rows with them:

* :func:`mean_absolute_error` over the ids both sides define;
* :func:`stability_f1`: stable/unstable classification at an E_hull threshold, stable
  (E_hull <= threshold) the positive class, as matbench-discovery counts it;
* :func:`pair_ordering`: for every pair of same-formula materials, does the model order them as
  the reference does; optionally only pairs whose reference gap is below ``close_within``;
* :func:`pair_difference_mae`: MAE of the pair energy differences (references cancel within a
  formula, so this compares two engines on different scales, e.g. an MLIP against GPAW);
* :func:`lattice_errors`: relative volume error and mean absolute relative error of a, b, c;
* :func:`rank_models`: which model relaxes every trial (fast), which decides (E_hull, ranks)
  and which runs phonons, each with the reason.

Conventions (documented where they are decided):

* Reference ties: a pair whose reference energies differ by less than ``TIE_TOLERANCE`` (1 meV/atom,
  the platform's "same crystal" energy tolerance, ``dft.matching``) has no order to reproduce; it
  is counted in ``n_ties`` and left out of the accuracy.
* A model that gives a pair exactly equal energies (e.g. both relaxed into one crystal) has not
  ordered it: the pair counts as disagreeing.
* A pair with a missing prediction (failed relaxation, rejected scoring) is counted in
  ``n_missing`` and left out; the caller reports failures separately.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import asdict, dataclass

TIE_TOLERANCE = 1e-3  # eV/atom; reference pairs closer than this are ties (no order)

# Public matbench-discovery figures (leaderboard, as quoted in issue 13 and DESIGN.md) for the models
# whose weights ship in wheels here: F1 (stable/unstable at E_hull 0), energy MAE (eV/atom) and
# kappa_SRME (thermal conductivity from phonons; lower is better). None: not published for that
# model. Used only where nothing was measured here (phonons).
PUBLIC_MATBENCH_DISCOVERY: dict[str, dict[str, float | None]] = {
    "chgnet": {"f1": 0.613, "energy_mae": 0.063, "kappa_srme": 1.72},
    "sevennet-0": {"f1": 0.724, "energy_mae": 0.048, "kappa_srme": 0.76},
    "sevennet-l3i5": {"f1": 0.760, "energy_mae": 0.044, "kappa_srme": 0.55},
    "sevennet-mf0": {"f1": None, "energy_mae": None, "kappa_srme": None},
}


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def mean_absolute_error(predicted: Mapping[Hashable, float | None],
                        reference: Mapping[Hashable, float | None]) -> tuple[float | None, int]:
    """``(MAE, n)`` over the ids where both values are finite numbers; ``(None, 0)`` when none."""
    diffs = [abs(predicted[k] - reference[k]) for k in predicted
             if k in reference and _finite(predicted[k]) and _finite(reference[k])]
    return (sum(diffs) / len(diffs) if diffs else None), len(diffs)


@dataclass(frozen=True)
class F1Score:
    """Stable (E_hull <= threshold) is the positive class. precision / recall are None when
    undefined (nothing predicted / nothing truly stable); F1 = 2 TP / (2 TP + FP + FN), None only
    when there is no positive on either side."""

    threshold: float
    n: int
    tp: int
    fp: int
    fn: int
    tn: int
    precision: float | None
    recall: float | None
    f1: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def stability_f1(predicted_e_hull: Mapping[Hashable, float | None],
                 reference_e_hull: Mapping[Hashable, float | None], threshold: float = 0.0) -> F1Score:
    """F1 of the stable/unstable call at ``E_hull <= threshold`` (eV/atom) over the ids both sides
    define."""
    tp = fp = fn = tn = 0
    for k, pred in predicted_e_hull.items():
        ref = reference_e_hull.get(k)
        if not (_finite(pred) and _finite(ref)):
            continue
        p, r = pred <= threshold, ref <= threshold
        tp += p and r
        fp += p and not r
        fn += r and not p
        tn += not p and not r
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None  # = 2PR/(P+R); 0 when tp = 0
    return F1Score(threshold, tp + fp + fn + tn, tp, fp, fn, tn, precision, recall, f1)


def polymorph_pairs(formulas: Mapping[Hashable, str]) -> list[tuple[Hashable, Hashable]]:
    """Every unordered pair of ids with the same (reduced) formula, ids sorted within a formula."""
    groups: dict[str, list] = defaultdict(list)
    for k, formula in formulas.items():
        groups[formula].append(k)
    pairs = []
    for formula in sorted(groups):
        pairs.extend(itertools.combinations(sorted(groups[formula], key=str), 2))
    return pairs


@dataclass(frozen=True)
class PairOrdering:
    """``accuracy = n_agree / n_pairs`` over the scored pairs (None when there are none)."""

    n_pairs: int
    n_agree: int
    accuracy: float | None
    n_ties: int  # reference gap < tie_tolerance: not scored
    n_missing: int  # a prediction missing: not scored
    close_within: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def pair_ordering(reference: Mapping[Hashable, float | None], predicted: Mapping[Hashable, float | None],
                  formulas: Mapping[Hashable, str], *, close_within: float | None = None,
                  tie_tolerance: float = TIE_TOLERANCE) -> PairOrdering:
    """Does ``predicted`` order each same-formula pair as ``reference`` does (energies per atom,
    e.g. E_f: within one formula the elemental references cancel)? ``close_within`` (eV/atom):
    score only pairs whose reference gap is below it. Ids without a reference value are not
    pairs; see the module docstring for ties and missing predictions."""
    agree = scored = ties = missing = 0
    known = {k: f for k, f in formulas.items() if _finite(reference.get(k))}
    for a, b in polymorph_pairs(known):
        gap = reference[a] - reference[b]
        if abs(gap) < tie_tolerance:
            ties += 1
            continue
        if close_within is not None and abs(gap) >= close_within:
            continue
        pa, pb = predicted.get(a), predicted.get(b)
        if not (_finite(pa) and _finite(pb)):
            missing += 1
            continue
        scored += 1
        agree += (pa - pb) * gap > 0
    return PairOrdering(scored, agree, agree / scored if scored else None, ties, missing, close_within)


def pair_difference_mae(reference: Mapping[Hashable, float | None], predicted: Mapping[Hashable, float | None],
                        formulas: Mapping[Hashable, str]) -> tuple[float | None, int]:
    """``(MAE, n)`` of ``(E_a - E_b)`` between ``predicted`` and ``reference`` over the same-formula
    pairs both define (eV/atom). Each side may carry its own constant per formula (MLIP on MP's
    scale vs GPAW's total energies): it cancels in the difference."""
    diffs = []
    for a, b in polymorph_pairs(formulas):
        values = (reference.get(a), reference.get(b), predicted.get(a), predicted.get(b))
        if all(_finite(v) for v in values):
            diffs.append(abs((values[2] - values[3]) - (values[0] - values[1])))
    return (sum(diffs) / len(diffs) if diffs else None), len(diffs)


def lattice_errors(relaxed, reference) -> dict[str, float]:
    """Relative error of ``relaxed`` (a pymatgen Structure) against ``reference``: ``volume``
    ((V - V_ref) / V_ref, per atom) and ``abc`` (mean of |a - a_ref| / a_ref over a, b, c).

    a, b, c are compared in one setting: the cells as given when both have the same number of
    sites (a symmetry-kept relaxation keeps its input cell), else both standard conventional cells
    (spglib at 0.1 A, as MP assigns symmetry)."""
    if len(relaxed) != len(reference):
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        relaxed = SpacegroupAnalyzer(relaxed, symprec=0.1).get_conventional_standard_structure()
        reference = SpacegroupAnalyzer(reference, symprec=0.1).get_conventional_standard_structure()
    v = relaxed.volume / len(relaxed)
    v_ref = reference.volume / len(reference)
    abc = [abs(x - y) / y for x, y in zip(relaxed.lattice.abc, reference.lattice.abc)]
    return {"volume": (v - v_ref) / v_ref, "abc": sum(abc) / 3}


# ----------------------------------------------------------------------------- choosing models

MAX_FAILURE_FRACTION = 0.05  # a model failing more relaxations than this is not eligible
FAST_ENOUGH_RATIO = 1.5  # a decider within 1.5x of the cheapest model's cost relaxes everything


def rank_models(summaries: Mapping[str, Mapping], *, public: Mapping[str, Mapping] = PUBLIC_MATBENCH_DISCOVERY,
                max_failure_fraction: float = MAX_FAILURE_FRACTION,
                fast_enough_ratio: float = FAST_ENOUGH_RATIO) -> dict:
    """Pick the platform's models from benchmark summaries.

    ``summaries``: model name -> mapping with ``e_hull_mae`` (eV/atom), ``ordering_accuracy``
    (all same-formula pairs), ``core_seconds_per_relaxation``, ``n_failed`` and ``n_relaxations``.

    The rule:

    1. Eligible: every metric defined and failures <= ``max_failure_fraction`` of relaxations.
    2. ``decider``: rank eligible models by E_hull MAE (ascending) and by polymorph ordering
       accuracy (descending), equal values sharing a rank; the smallest sum of the two ranks wins;
       ties go to the lower E_hull MAE, then the higher accuracy. The decider's energies decide E_hull and ground-state
       ranks, both of which these two metrics measure.
    3. ``fast``: the eligible model with the fewest core-seconds per relaxation -- unless the
       decider costs at most ``fast_enough_ratio`` x that, in which case the decider relaxes
       every trial (a cascade would save little and mix two models' geometries).
    4. ``phonon``: the lowest public kappa_SRME (``public``) among eligible models that have one
       (phonons were not measured here); none published: the decider.

    Returns ``{"decider", "fast", "phonon", "eligible", "ranks", "reasons"}``."""
    needed = ("e_hull_mae", "ordering_accuracy", "core_seconds_per_relaxation")
    eligible, reasons = [], {}
    for name, s in summaries.items():
        lacking = [k for k in needed if not _finite(s.get(k))]
        n_relax = s.get("n_relaxations") or 0
        failed = (s.get("n_failed") or 0) / n_relax if n_relax else 1.0
        if lacking:
            reasons[name] = f"not eligible: no {', '.join(lacking)}"
        elif failed > max_failure_fraction:
            reasons[name] = f"not eligible: {failed:.1%} of relaxations failed (> {max_failure_fraction:.0%})"
        else:
            eligible.append(name)
    if not eligible:
        return {"decider": None, "fast": None, "phonon": None, "eligible": [], "ranks": {}, "reasons": reasons}

    def rank(m, key, sign):  # competition ranking: equal values share a rank (1, 2, 2, 4)
        return 1 + sum(sign * summaries[o][key] < sign * summaries[m][key] for o in eligible)

    ranks = {m: {"e_hull_mae": rank(m, "e_hull_mae", 1), "ordering": rank(m, "ordering_accuracy", -1)}
             for m in eligible}
    decider = min(eligible, key=lambda m: (ranks[m]["e_hull_mae"] + ranks[m]["ordering"],
                                           summaries[m]["e_hull_mae"], -summaries[m]["ordering_accuracy"]))
    d = summaries[decider]
    reasons["decider"] = (f"{decider}: E_hull MAE {d['e_hull_mae'] * 1000:.1f} meV/atom (rank "
                          f"{ranks[decider]['e_hull_mae']}), polymorph ordering {d['ordering_accuracy']:.1%} "
                          f"(rank {ranks[decider]['ordering']}) -- smallest rank sum of {len(eligible)} eligible")

    cheapest = min(eligible, key=lambda m: summaries[m]["core_seconds_per_relaxation"])
    cost_ratio = d["core_seconds_per_relaxation"] / summaries[cheapest]["core_seconds_per_relaxation"]
    fast = decider if cost_ratio <= fast_enough_ratio else cheapest
    reasons["fast"] = (f"{fast}: {summaries[fast]['core_seconds_per_relaxation']:.2f} core-s/relaxation; the "
                       f"decider costs {cost_ratio:.2f}x the cheapest ({cheapest})"
                       + (f" <= {fast_enough_ratio}: the decider relaxes every trial" if fast == decider else ""))

    with_kappa = [m for m in eligible if _finite((public.get(m) or {}).get("kappa_srme"))]
    if with_kappa:
        phonon = min(with_kappa, key=lambda m: public[m]["kappa_srme"])
        reasons["phonon"] = (f"{phonon}: lowest public kappa_SRME {public[phonon]['kappa_srme']} among "
                             + ", ".join(f"{m} {public[m]['kappa_srme']}" for m in sorted(with_kappa))
                             + " (matbench-discovery; phonons not measured by this benchmark)")
    else:
        phonon = decider
        reasons["phonon"] = f"{phonon}: no public kappa_SRME for any eligible model; the decider"
    return {"decider": decider, "fast": fast, "phonon": phonon, "eligible": eligible, "ranks": ranks,
            "reasons": reasons}


def finite_values(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if _finite(v)]
