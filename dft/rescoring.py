"""The energy-model cascade as plain functions: which genes the accurate model re-relaxes, how its
rows sit beside the fast model's, and ground-state ranks (with margins) by either model.

* :func:`rescore_candidates` picks, from the fast model's best trial per gene, the genes the
  decider re-relaxes (E_hull window and/or top-K per formula); every other gene comes back with
  its reason.
* :func:`rescored_rows` gives one row per gene: the decider's numbers where its relaxation
  produced an energy (``status`` "rescored"), else the fast model's numbers with the reason
  (``not_selected``, ``rescore_failed``, ``passthrough`` for rescorer "none"). The unprefixed
  energy columns always belong to the model named in ``energy_model``; the fast model's stay
  beside them as ``fast_*`` with ``fast_relaxer``. A row never carries energies of two models
  without naming both.
* :func:`rank_with_margin` ranks a gene among the distinct crystals of its formula
  (:func:`dft.matching.crystal_ranks`) and gives the margin to the lowest rival crystal.

No Dagster here; the asset ``rescored_structures`` reads, calls these, writes.
"""

from __future__ import annotations

import json

import polars as pl

from dft.model_choice import NO_RESCORER

USABLE_VERDICTS = ("converged", "not_converged")  # relaxations that carry a structure and energy

# the fast model's columns kept beside the decider's (source column -> column in the table)
FAST_COLUMNS = {
    "relaxer": "fast_relaxer", "trial": "fast_trial", "energy_per_atom": "fast_energy_per_atom",
    "formation_energy_per_atom": "fast_formation_energy_per_atom", "e_above_hull": "fast_e_above_hull",
    "sg_after": "fast_sg_after", "symmetry_kept": "fast_symmetry_kept", "verdict": "fast_verdict",
    "relaxed_cif": "fast_relaxed_cif", "lattice": "fast_lattice",
}
# columns a relaxation gives (the decider's replace the fast model's on a rescored row)
RELAX_COLUMNS = (
    "verdict", "reason", "energy", "energy_per_atom", "corrected_energy", "formation_energy_per_atom",
    "e_above_hull", "max_force", "steps", "converged", "sg_before", "sg_after", "symmetry_kept", "is_novel",
    "matched_material_id", "n_atoms", "lattice", "seconds", "cpu_seconds", "energy_note", "relaxed_cif",
    "cell", "novelty_note",
)


def rescore_candidates(best: pl.DataFrame, *, max_e_above_hull: float | None = 0.2,
                       top_k_per_formula: int | None = None) -> tuple[list[dict], list[tuple[dict, str]]]:
    """``(taken, skipped)`` from the fast model's best trial per gene (``relaxed_structures``
    rows). A gene is taken when its relaxation carries a structure and an E_f and it is within
    the window: fast E_hull <= ``max_e_above_hull``, or among the ``top_k_per_formula``
    lowest-E_f genes of its formula (either rule may be None = not used; both None = every gene).
    ``skipped``: every other row with the reason."""
    ranks = _rank_by_formula(best)
    taken, skipped = [], []
    for r in best.iter_rows(named=True):
        if r.get("verdict") not in USABLE_VERDICTS or not r.get("relaxed_cif"):
            skipped.append((r, f"fast relaxation gave no structure (verdict {r.get('verdict')})"))
            continue
        if r.get("formation_energy_per_atom") is None:
            skipped.append((r, f"fast model gave no E_f ({r.get('energy_note') or 'no energy'})"))
            continue
        hull, rank = r.get("e_above_hull"), ranks.get(r["gene_key"])
        by_hull = max_e_above_hull is not None and hull is not None and hull <= max_e_above_hull
        by_rank = top_k_per_formula is not None and rank is not None and rank <= top_k_per_formula
        if by_hull or by_rank or (max_e_above_hull is None and top_k_per_formula is None):
            taken.append(r)
        else:
            skipped.append((r, "outside the rescoring window: fast E_hull "
                            f"{None if hull is None else round(hull, 4)} > {max_e_above_hull}"
                            + (f" and rank {rank} in its formula > top {top_k_per_formula}"
                               if top_k_per_formula is not None else "")))
    return taken, skipped


def _rank_by_formula(best: pl.DataFrame) -> dict[str, int]:
    """gene_key -> rank (1 = lowest fast E_f) among the rows of its formula that have one."""
    out: dict[str, int] = {}
    have = best.filter(pl.col("formation_energy_per_atom").is_not_null()) if best.height else best
    for _, group in have.group_by("formula"):
        for i, g in enumerate(group.sort("formation_energy_per_atom")["gene_key"].to_list(), start=1):
            out[g] = i
    return out


def rescore_trials(taken: list[dict]) -> list[dict]:
    """The decider's starting points: each taken gene's fast-relaxed CIF as a trial
    (``dft.pipeline.relax_tasks`` input: gene columns + ``cif_path``)."""
    return [{"formula": r["formula"], "space_group": r["space_group"], "wyckoff": r["wyckoff"],
             "gene_key": r["gene_key"], "trial": r["trial"], "cif_path": r["relaxed_cif"]} for r in taken]


def _fast_part(row: dict) -> dict:
    return {new: row.get(old) for old, new in FAST_COLUMNS.items()}


def rescored_rows(best: pl.DataFrame, decided: list[dict], skipped: list[tuple[dict, str]], *,
                  rescorer: str) -> list[dict]:
    """One row per gene of ``best`` (the fast model's best trials): ``decided`` are the decider's
    scored relaxation rows (``dft.pipeline.score_relaxations`` output, ``gene_key`` each),
    ``skipped`` the genes not re-relaxed with the reason. Columns: the fast row's gene columns,
    the energy columns of the model in ``energy_model``, ``fast_*`` (:data:`FAST_COLUMNS`),
    ``rescorer``, ``status``, ``rescore_note`` and ``rescore_cpu_seconds`` (the decider's cost, also
    when it failed); the decider's own verdict/reason stay in
    ``rescore_verdict``/``rescore_reason`` when its numbers could not be used.
    ``symmetry_kept`` is the whole cascade's: the gene's space group kept by the fast relaxation
    and by the decider's."""
    by_gene = {r["gene_key"]: r for r in decided}
    why_skipped = {r["gene_key"]: why for r, why in skipped}
    out = []
    for fast in best.iter_rows(named=True):
        g = fast["gene_key"]
        row = {**fast, **_fast_part(fast), "rescorer": rescorer, "energy_model": fast.get("relaxer"),
               "best_trial": True, "rescore_verdict": None, "rescore_reason": None}
        d = by_gene.get(g)
        row["rescore_cpu_seconds"] = None if d is None else d.get("cpu_seconds")  # the cascade's extra cost
        if rescorer == NO_RESCORER:
            row.update(status="passthrough", rescore_note="rescorer none: the fast model's numbers")
        elif d is None:
            row.update(status="not_selected", rescore_note=why_skipped.get(g, "not rescored"))
        elif d.get("verdict") in USABLE_VERDICTS and d.get("formation_energy_per_atom") is not None:
            lattice = d.get("lattice")  # a dict from the relaxation; JSON text in the tables, as relaxed_structures'
            row.update({k: d.get(k) for k in RELAX_COLUMNS}, energy_model=rescorer, relaxer=rescorer, status="rescored",
                       lattice=lattice if lattice is None or isinstance(lattice, str) else json.dumps(lattice),
                       rescore_verdict=d.get("verdict"),
                       symmetry_kept=bool(d.get("symmetry_kept")) and bool(fast.get("symmetry_kept")),
                       rescore_note="" if d.get("verdict") == "converged" else f"decider not converged: {d.get('reason')}")
        else:
            why = d.get("reason") or d.get("energy_note") or "no energy"
            row.update(status="rescore_failed", rescore_verdict=d.get("verdict"), rescore_reason=why,
                       rescore_note=f"{rescorer} relaxation {d.get('verdict')}: {why}; the fast model's numbers kept")
        out.append(row)
    return out


def decided_models(rows: pl.DataFrame) -> str:
    """Which model decided how many rows, e.g. ``"sevennet-0: 12 genes; chgnet: 3 genes (not rescored)"``."""
    if rows is None or rows.is_empty() or "energy_model" not in rows.columns:
        return "no rows"
    counts = rows.group_by("energy_model").len().sort("len", descending=True).rows()
    rescorers = set(rows["rescorer"].drop_nulls().to_list()) if "rescorer" in rows.columns else set()
    return "; ".join(f"{m}: {n} gene{'s' if n != 1 else ''}" + ("" if m in rescorers else " (not rescored)")
                     for m, n in counts)


def rank_with_margin(rows: pl.DataFrame, keys, *, energy: str = "formation_energy_per_atom",
                     per_atom: str = "energy_per_atom", cif: str = "relaxed_cif") -> dict:
    """Ground-state rank of the genes ``keys`` among ``rows`` (one formula, one model), counted
    over distinct crystals (:func:`dft.matching.crystal_ranks`: genes that relaxed into one
    crystal share a rank), and the margin to the lowest *rival* crystal in meV/atom:
    ``margin_mev = (E_rival - E_mine) * 1000`` -- positive: the held-out crystal lies below every
    rival by that much (rank 1); negative: the best rival lies that much below it.
    Returns ``rank`` (None when no key is among the rows), ``crystals``, ``genes``,
    ``margin_mev`` (None without a rival) and ``rival`` ("formula SG n wyckoff" of that rival)."""
    from pymatgen.core import Structure

    from dft.matching import crystal_ranks

    keys = set(keys)
    same = rows.filter(pl.col(energy).is_not_null()).sort(energy)
    ranks = crystal_ranks([Structure.from_file(p) for p in same[cif].to_list()], same[per_atom].to_list())
    out = {"rank": None, "crystals": max(ranks, default=0), "genes": same.height, "margin_mev": None, "rival": None}
    mine = [(k, e) for g, k, e in zip(same["gene_key"].to_list(), ranks, same[energy].to_list()) if g in keys]
    if not mine:
        return out
    rank, e_mine = mine[0]
    rivals = [(e, r) for r, k, e in zip(same.iter_rows(named=True), ranks, same[energy].to_list()) if k != rank]
    out["rank"] = rank
    if rivals:
        e_rival, rival = rivals[0]  # sorted by energy: the lowest rival crystal
        out.update(margin_mev=round((e_rival - e_mine) * 1000.0, 2),
                   rival=f"{rival['formula']} SG {rival['space_group']} {rival['wyckoff']}")
    return out


def decided_best(relaxed: pl.DataFrame | None, rescored: pl.DataFrame | None) -> pl.DataFrame | None:
    """The rows reports judge on: the rescored table (one row per gene, each row's ``relaxer``
    = the model of its energies) where there is one, else the fast model's best trials."""
    if rescored is None or rescored.is_empty():
        return relaxed
    return rescored.with_columns(pl.col("energy_model").alias("relaxer"), pl.lit(True).alias("best_trial"))
