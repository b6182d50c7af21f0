"""The energy-model benchmark against MP's DFT as plain functions (``benchmarks/energy_models.py``
is the command line around them): which materials, how each model's relaxations are scored the way
a leave-one-out partition sees them, and which polymorph pairs GPAW checks.

* :func:`select_materials` -- a seeded, fixed selection from the snapshot: every formula with two
  or more polymorphs among cells of <= ``max_sites`` atoms (MP's cells are primitive; ``nsites``),
  as whole groups, plus single-polymorph ternaries and binaries (3:1); a smaller ``n`` takes a
  seeded subset of whole polymorph groups stratified by number of elements.
  :func:`whole_group_prefix` -- the first materials of that seeded order, cut at a group's end (what
  an interrupted run has finished is such a prefix; ``--max-materials`` of the benchmark).
* :func:`score_material_task` -- one material's relaxed rows (one per model) scored with the
  platform's own code (:func:`dft.pipeline.score_relaxations`: MP2020 for raw-scale models, E_f
  against MP's elemental references, E_hull against :class:`dft.energetics.SnapshotHull`) where the
  hull *excludes the material itself* (matbench-discovery style: the model predicts a material the
  hull has not seen, as in a leave-one-out partition); MP's own E_hull is recomputed against the
  same hull so both sides are defined alike. Novelty runs against MP's other polymorphs of the
  formula, so ``matched_material_id`` says when a relaxation ended in a rival crystal. Plus the
  lattice error against MP's cell.
* :func:`gpaw_pair_materials` -- the <= 8-atom polymorph groups GPAW (plain PBE) can judge: no
  element that gets a Hubbard U in MP's input set (MP's energies of their oxides/fluorides are
  PBE+U, and they are the magnetic 3d metals that a spin-unpolarized GPAW run misdescribes) and no
  f-block element (MP's PAW sets keep f electrons frozen for most); capped at ``max_pairs`` pairs.

Task functions take and return JSON-serializable dicts (:func:`dft.hpc.run_tasks`).
"""

from __future__ import annotations

import math
import random
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from functools import lru_cache

MAX_SITES = 20
FILL_FRACTION = 0.1  # share of single-polymorph materials in the selection
FILL_TERNARY_SHARE = 0.75  # of those: ternaries (rest binaries)
GPAW_MAX_SITES = 8
# MP's Hubbard-U metals (MPRelaxSet, for O and F compounds; pymatgen's table is checked in tests)
MP_U_ELEMENTS = frozenset({"Co", "Cr", "Fe", "Mn", "Mo", "Ni", "V", "W"})
F_BLOCK = frozenset({"Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu",
                     "Ac", "Th", "Pa", "U", "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr"})
_SYMBOL = re.compile(r"[A-Z][a-z]?")


def _stratum(nelements: int) -> str:
    return {2: "binary", 3: "ternary"}.get(int(nelements), "other")


def select_materials(rows: Sequence[Mapping], *, n: int | None = None, seed: int = 0, max_sites: int = MAX_SITES,
                     fill_fraction: float = FILL_FRACTION) -> dict:
    """The benchmark's materials from snapshot rows (material_id, formula_pretty, nelements, nsites,
    formation_energy_per_atom; rows without MP's energy are left out and counted).

    Polymorph groups: formulas with >= 2 materials of <= ``max_sites`` sites. ``n=None``: all of
    them, plus ``fill_fraction`` of the total as single-polymorph materials (``n = ceil(n_poly /
    (1 - fill_fraction))``). Smaller ``n``: ``n - round(fill_fraction * n)`` polymorph materials as a
    seeded subset of *whole* groups, stratified by number of elements (binary / ternary / other;
    each stratum's share of the polymorph materials; groups that would overshoot a stratum's share
    are skipped), the rest single-polymorph. Single-polymorph materials (<= ``max_sites`` sites,
    the only one of their formula there): 3/4 ternary, 1/4 binary, seeded.

    Returns ``{"material_ids": [...] (seeded order: any prefix is a random subset of the groups),
    "polymorph_formulas": [...], "rule": str, "counts": {...}}``."""
    # a row without MP's energy cannot be scored: left out, and counted
    no_energy = sum(1 for r in rows if r.get("formation_energy_per_atom", 0.0) is None)
    small = [r for r in rows if r["nsites"] is not None and r["nsites"] <= max_sites
             and r.get("formation_energy_per_atom", 0.0) is not None]
    groups: dict[str, list[str]] = defaultdict(list)
    nelem: dict[str, int] = {}
    for r in small:
        groups[r["formula_pretty"]].append(r["material_id"])
        nelem[r["formula_pretty"]] = int(r["nelements"])
    poly = {f: sorted(ids) for f, ids in groups.items() if len(ids) >= 2}
    singles = {f: ids[0] for f, ids in groups.items() if len(ids) == 1}
    n_poly_all = sum(len(ids) for ids in poly.values())
    rng = random.Random(seed)

    if n is None or n - round(fill_fraction * n) >= n_poly_all:
        chosen = sorted(poly)
        n_total = n if n is not None else math.ceil(n_poly_all / (1 - fill_fraction))
        rule = (f"all {len(poly)} formulas with >= 2 polymorphs of <= {max_sites} sites ({n_poly_all} materials), "
                f"plus {n_total - n_poly_all} single-polymorph materials (3/4 ternary, seed {seed})")
    else:
        target = n - round(fill_fraction * n)
        n_total = n
        strata: dict[str, list[str]] = defaultdict(list)
        for f in sorted(poly):
            strata[_stratum(nelem[f])].append(f)
        chosen = []
        for name in sorted(strata):
            formulas = strata[name]
            share = target * sum(len(poly[f]) for f in formulas) / n_poly_all
            rng.shuffle(formulas)
            taken = 0
            for f in formulas:
                if taken + len(poly[f]) <= share:
                    chosen.append(f)
                    taken += len(poly[f])
        rule = (f"seeded subset (seed {seed}) of whole polymorph groups stratified by number of elements "
                f"(binary / ternary / other, each its share of the {n_poly_all} polymorph materials of "
                f"{len(poly)} formulas with >= 2 polymorphs of <= {max_sites} sites; target {target}), "
                f"plus single-polymorph materials up to {n} (3/4 ternary)")
    n_poly = sum(len(poly[f]) for f in chosen)
    n_fill = max(0, n_total - n_poly)
    fill_ternary = [singles[f] for f in sorted(singles) if nelem[f] == 3]
    fill_binary = [singles[f] for f in sorted(singles) if nelem[f] == 2]
    k_ternary = min(len(fill_ternary), round(FILL_TERNARY_SHARE * n_fill))
    k_binary = min(len(fill_binary), n_fill - k_ternary)
    fill = rng.sample(fill_ternary, k_ternary) + rng.sample(fill_binary, k_binary)

    # seeded order: whole groups and single materials interleaved at random, so an interrupted
    # run's finished prefix is an unbiased subset
    units = [poly[f] for f in chosen] + [[m] for m in fill]
    rng.shuffle(units)
    ids = [m for unit in units for m in unit]
    by_id = {r["material_id"]: r for r in small}
    counts = {
        "materials": len(ids),
        "polymorph_formulas": len(chosen),
        "polymorph_materials": n_poly,
        "polymorph_formulas_available": len(poly),
        "polymorph_materials_available": n_poly_all,
        "single_polymorph_materials": len(fill),
        "by_nelements": {str(k): v for k, v in sorted(_count(by_id[m]["nelements"] for m in ids).items())},
        "ternary_fraction": round(sum(by_id[m]["nelements"] == 3 for m in ids) / max(len(ids), 1), 3),
        "left_out_without_mp_energy": no_energy,
    }
    return {"material_ids": ids, "polymorph_formulas": sorted(chosen), "rule": rule, "counts": counts}


def whole_group_prefix(material_ids: Sequence[str], formulas: Mapping[str, str], n: int) -> list[str]:
    """The first ``n`` materials of the seeded order (``select_materials``'s ``material_ids``),
    extended to the end of the polymorph group the cut falls in, so the prefix holds whole groups
    only. A group's members are contiguous in that order and no two units share a formula, so the
    group at the cut is the run of materials with the last one's formula. ``formulas``: material ->
    formula. ``n >= len(material_ids)``: all of them."""
    ids = list(material_ids)
    if n <= 0:
        return []
    end = min(n, len(ids))
    while end < len(ids) and formulas[ids[end]] == formulas[ids[end - 1]]:
        end += 1
    return ids[:end]


def selection_counts(material_ids: Sequence[str], rows: Mapping[str, Mapping]) -> dict:
    """Counts of a (sub)selection: materials, polymorph formulas (>= 2 members in it) and their
    materials, single materials, by number of elements, ternary fraction."""
    groups: dict[str, int] = defaultdict(int)
    for m in material_ids:
        groups[rows[m]["formula_pretty"]] += 1
    poly = {f: k for f, k in groups.items() if k >= 2}
    return {
        "materials": len(material_ids),
        "polymorph_formulas": len(poly),
        "polymorph_materials": sum(poly.values()),
        "polymorph_pairs": sum(k * (k - 1) // 2 for k in poly.values()),
        "single_polymorph_materials": len(material_ids) - sum(poly.values()),
        "by_nelements": {str(k): v for k, v in sorted(_count(rows[m]["nelements"] for m in material_ids).items())},
        "ternary_fraction": round(sum(rows[m]["nelements"] == 3 for m in material_ids) / max(len(material_ids), 1), 3),
    }


def _count(values) -> dict:
    out: dict = defaultdict(int)
    for v in values:
        out[int(v)] += 1
    return dict(out)


def gpaw_pair_materials(rows: Sequence[Mapping], *, max_pairs: int, seed: int = 0,
                        max_sites: int = GPAW_MAX_SITES, setup_elements=None) -> dict:
    """Materials whose same-formula pairs GPAW single points will judge.

    From ``rows`` (the benchmark's materials: material_id, formula_pretty, nsites): formulas with
    >= 2 materials of <= ``max_sites`` sites, no element of ``MP_U_ELEMENTS`` or ``F_BLOCK`` and,
    when ``setup_elements`` is given (``dft.spot_check.gpaw_setup_elements()``), only elements GPAW
    has a PAW setup for (Debian's gpaw-data lacks La, for one); the others are counted under
    ``excluded`` by reason. Formulas in seeded order, materials of a formula added (smallest
    cells first) while the number of pairs stays <= ``max_pairs``.
    Returns ``{"material_ids", "n_pairs", "formulas", "excluded": {reason: n formulas}}``."""
    groups: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for r in rows:
        if r["nsites"] <= max_sites:
            groups[r["formula_pretty"]].append((int(r["nsites"]), r["material_id"]))
    excluded: dict[str, int] = defaultdict(int)
    eligible = []
    for f in sorted(groups):
        if len(groups[f]) < 2:
            continue
        elements = set(_SYMBOL.findall(f))
        if setup_elements is not None and not elements <= set(setup_elements):
            excluded["no_gpaw_setup"] += 1
        elif elements & MP_U_ELEMENTS:
            excluded["mp_hubbard_u_element"] += 1
        elif elements & F_BLOCK:
            excluded["f_block_element"] += 1
        else:
            eligible.append(f)
    random.Random(seed).shuffle(eligible)
    ids, formulas, n_pairs = [], [], 0
    for f in eligible:
        members = [m for _, m in sorted(groups[f])]
        k = 1
        while k < len(members) and n_pairs + k <= max_pairs:  # adding the (k+1)-th member adds k pairs
            n_pairs += k
            k += 1
        if k >= 2:
            ids.extend(members[:k])
            formulas.append(f)
        if n_pairs >= max_pairs:
            break
    return {"material_ids": ids, "n_pairs": n_pairs, "formulas": formulas,
            "eligible_formulas": len(eligible), "excluded": dict(excluded)}


# ----------------------------------------------------------------------------- relaxation


def relax_serial_task(payload: dict) -> dict:
    """:func:`dft.pipeline.relax_task` (one structure, one model call per step), row marked
    ``relax_path: serial`` so core-seconds of the two paths are never mixed unknowingly."""
    from dft.pipeline import relax_task

    return {**relax_task(payload), "relax_path": "serial"}


def relax_batched_task(items):
    """:func:`dft.pipeline.relax_batch_task` (many structures in lockstep, one model call per
    step; ``run_tasks(..., batched=True)``), rows marked ``relax_path: batched``. Same relaxer
    settings, checks and result fields as the serial path; core-seconds are the structure's share
    of each batched model call (by atoms) plus its own optimizer work."""
    from dft.pipeline import relax_batch_task

    for key, row in relax_batch_task(items):
        yield key, {**row, "relax_path": "batched"}


# ----------------------------------------------------------------------------- scoring


@lru_cache(maxsize=2)
def _snapshot_entries(snapshot_path: str) -> tuple[dict, dict]:
    """(element set -> [(id, formula, E_f)], formula -> [(id, cif)]) of a snapshot parquet."""
    import pyarrow.parquet as pq

    table = pq.read_table(snapshot_path, columns=["material_id", "formula_pretty", "formation_energy_per_atom", "cif"])
    by_elements: dict[frozenset, list] = defaultdict(list)
    by_formula: dict[str, list] = defaultdict(list)
    for r in table.to_pylist():
        by_elements[frozenset(_SYMBOL.findall(r["formula_pretty"]))].append(
            (r["material_id"], r["formula_pretty"], r["formation_energy_per_atom"]))
        by_formula[r["formula_pretty"]].append((r["material_id"], r["cif"]))
    return dict(by_elements), dict(by_formula)


@lru_cache(maxsize=2)
def _references(path: str) -> dict:
    from dft.energetics import load_elemental_references

    return load_elemental_references(path)


def loo_hull(snapshot_path: str, elements, exclude_ids):
    """A :class:`dft.energetics.SnapshotHull` over the chemical system of ``elements`` (all its
    subsystems) without ``exclude_ids``."""
    from dft.energetics import SnapshotHull

    by_elements, _ = _snapshot_entries(str(snapshot_path))
    key = frozenset(elements)
    entries = [e for sub, rows in by_elements.items() if sub <= key for e in rows]
    return SnapshotHull(entries, exclude_ids=exclude_ids)


def score_material_task(payload: dict) -> dict:
    """Score one material's relaxations (payload: material_id, formula, mp_formation_energy,
    mp_cif_path, snapshot, references, rows = relax results each with ``relaxer`` and
    ``relaxed_cif``) -> {"mp_e_hull_loo", "rows": scored rows + lattice errors}."""
    import warnings

    from pymatgen.core import Structure

    from dft.energetics import NoveltyChecker
    from dft.model_metrics import lattice_errors
    from dft.pipeline import score_relaxations

    mid, formula = payload["material_id"], payload["formula"]
    snapshot = str(payload["snapshot"])
    hull = loo_hull(snapshot, _SYMBOL.findall(formula), {mid})
    _, by_formula = _snapshot_entries(snapshot)
    novelty = NoveltyChecker([(m, formula, cif) for m, cif in by_formula.get(formula, [])], exclude_ids={mid})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp_e_hull = hull.e_above_hull(formula, payload["mp_formation_energy"])
        scored = score_relaxations(payload["rows"], references=_references(str(payload["references"])),
                                   hull=hull, novelty=novelty)
        reference = Structure.from_file(payload["mp_cif_path"])
        for row in scored:
            row["volume_error"] = row["abc_error"] = None
            if row.get("relaxed_cif") and row["verdict"] in ("converged", "not_converged"):
                try:
                    err = lattice_errors(Structure.from_file(row["relaxed_cif"]), reference)
                    row["volume_error"], row["abc_error"] = err["volume"], err["abc"]
                except Exception as exc:  # a row, not a crash
                    row["energy_note"] = (row.get("energy_note") or "") + f"; lattice_failed: {type(exc).__name__}"
    return {"material_id": mid, "mp_e_hull_loo": mp_e_hull, "rows": scored}

