"""The leave-one-out verdict: was a held-out material rediscovered?

:func:`loo_verdict` judges one partition from its tables: the held-out gene (and its equivalent
configurations) sampled, passed the filters, relaxed, space group kept, relaxed lattice within
``lattice_tolerance`` of the registry's (experimental preferred), and for a ``ground_state`` target
ranked first by formation energy over the distinct crystals of its formula
(:func:`dft.matching.crystal_ranks`: genes that relaxed into one crystal share a rank). Where DFT
refined the held-out gene (:func:`apply_dft`) its lattice (relax mode) and -- with at least one
refined rival of the formula -- its DFT rank decide. Before DFT, the energy-model cascade's
decider (``rescored_structures``) decides where it rescored the held-out gene; the fast model's
rank and margin are reported beside it. ``recovered`` is true exactly when nothing is
listed in ``why_not``.
"""

from __future__ import annotations

import json

import polars as pl

ENERGY_VERDICTS = ("converged", "not_converged")  # relaxations that carry a usable structure


def loo_verdict(target, filtered: pl.DataFrame, best: pl.DataFrame, refined: pl.DataFrame | None = None,
                rescored: pl.DataFrame | None = None, *, lattice_tolerance: float = 0.03) -> dict:
    """One report row for a leave-one-out ``target`` (:class:`ml.targets.Target`).

    ``filtered``: ``gene_key``, ``passed`` of the partition's filtered genes; ``best``: the fast
    model's best trial per gene (``relaxed_structures``: ``relaxed_cif``, energies,
    ``symmetry_kept``, ``sg_after``, ``relaxer``, the trial's ``origin`` -> ``best_trial_origin``);
    ``rescored``: the decider's rows (``rescored_structures``; None/empty: no rescoring); ``refined``: ``refined_structures`` rows
    that carry an energy (or empty/None).

    The ground-state rank is given by both models (``ground_state_rank_fast`` / ``_decider``, with
    the margin to the lowest rival crystal in meV/atom, :func:`dft.rescoring.rank_with_margin`);
    the decider's decides when it rescored the held-out gene (rivals: the genes it rescored),
    else the fast model's, noted in ``ground_state_rank_note``. SG, lattice, E_f and E_hull are
    the deciding model's (``energy_model``, ``lattice_source``)."""
    keys = sorted(target.gene_keys())
    hit = filtered.filter(pl.col("gene_key").is_in(keys))
    row = {"target": target.partition, "task": target.task, "sampled": hit.height > 0,
           "passed": bool(hit.height and hit["passed"].any())}
    mine = best.filter(pl.col("gene_key").is_in(keys))
    row["relaxed"] = bool(mine.height and mine["verdict"][0] in ENERGY_VERDICTS)
    if row["relaxed"]:
        _judge(row, target, keys, best, mine.row(0, named=True), rescored, lattice_tolerance)
        if refined is not None:
            apply_dft(row, refined, keys, target, lattice_tolerance=lattice_tolerance)
    row["why_not"] = "; ".join(why_not(row, target.task))
    row["recovered"] = not row["why_not"]
    return row


def _judge(row: dict, target, keys, best: pl.DataFrame, fast: dict, rescored: pl.DataFrame | None,
           lattice_tolerance: float) -> None:
    """SG kept, lattice, energies and the ranks by both models for a relaxed held-out gene."""
    from pymatgen.core import Structure

    from dft.matching import compare_lattice
    from dft.rescoring import rank_with_margin

    decided = None
    if rescored is not None and rescored.height:
        decided = rescored.filter((pl.col("status") == "rescored") & (pl.col("formula") == target.reduced_formula))
    mine = decided.filter(pl.col("gene_key").is_in(keys)) if decided is not None else None
    r = mine.row(0, named=True) if mine is not None and mine.height else fast
    model = r.get("energy_model") or r["relaxer"]
    row.update(sg_kept=bool(r["symmetry_kept"] and r["sg_after"] == target.space_group), energy_model=model,
               formation_energy_per_atom=r["formation_energy_per_atom"], e_above_hull=r["e_above_hull"],
               fast_model=fast["relaxer"], fast_formation_energy_per_atom=fast["formation_energy_per_atom"],
               fast_e_above_hull=fast["e_above_hull"], lattice_source=model, best_trial_origin=fast.get("origin"))
    reference, which = target.lattice()
    if reference:
        cmp = compare_lattice(Structure.from_file(r["relaxed_cif"]), reference, which, tolerance=lattice_tolerance,
                              space_group=target.space_group)
        row.update(lattice_within_tolerance=cmp.within, lattice_max_error=cmp.max_relative_error,
                   lattice_reference=which, relaxed_lattice=json.dumps(cmp.relaxed),
                   reference_lattice=json.dumps(cmp.reference))
    same = best.filter(pl.col("formula") == target.reduced_formula)
    by_fast = rank_with_margin(same, keys)
    row.update(genes_of_formula_relaxed=by_fast["genes"], crystals_of_formula_relaxed=by_fast["crystals"],
               ground_state_rank_fast=by_fast["rank"], ground_state_margin_mev_fast=by_fast["margin_mev"],
               nearest_rival_fast=by_fast["rival"])
    if mine is not None and mine.height:
        by_decider = rank_with_margin(decided, keys)
        row.update(decider_model=model, ground_state_rank_decider=by_decider["rank"],
                   ground_state_margin_mev_decider=by_decider["margin_mev"], nearest_rival_decider=by_decider["rival"],
                   decider_genes_of_formula=by_decider["genes"], ground_state_rank=by_decider["rank"],
                   ground_state_rank_source=model,
                   ground_state_rank_note=f"{model} rescored {by_decider['genes']} of the {by_fast['genes']} relaxed "
                   f"genes of {target.reduced_formula} (rivals outside its window are not ranked by it)")
    else:
        why = "no rescored_structures rows"
        if rescored is not None and rescored.height:
            held = rescored.filter(pl.col("gene_key").is_in(keys))
            why = (f"held-out gene not rescored ({held['status'][0]}: {held['rescore_note'][0]})" if held.height
                   else "held-out gene not in rescored_structures")
            row["decider_model"] = ",".join(sorted(set(rescored["rescorer"].drop_nulls().to_list())))
        row.update(ground_state_rank=by_fast["rank"], ground_state_rank_source=fast["relaxer"],
                   ground_state_rank_note=f"fast model's rank: {why}")


def why_not(row: dict, task: str) -> list[str]:
    """The reasons a report row is not a rediscovery, in the order of the pipeline."""
    why = []
    for name, label in (("sampled", "not sampled"), ("passed", "filtered out"), ("relaxed", "not relaxed"),
                        ("sg_kept", "space group not kept"), ("lattice_within_tolerance", "lattice off")):
        if not row.get(name):
            why.append(label + (f" ({row.get('lattice_source')})" if name == "lattice_within_tolerance" else ""))
    if task == "ground_state" and row.get("ground_state_rank") != 1:
        why.append(f"ground-state rank {row.get('ground_state_rank')} ({row.get('ground_state_rank_source')})")
    return why


def apply_dft(row: dict, refined: pl.DataFrame, keys, target, *, lattice_tolerance: float = 0.03) -> None:
    """Where DFT refined the held-out gene, its rank among the refined genes of the formula (two or
    more) and its DFT-relaxed lattice replace the MLIP's (the paper judges on DFT-refined cells)."""
    from pymatgen.core import Structure

    from dft.matching import compare_lattice

    if refined is None or refined.is_empty():
        return
    mine = refined.filter(pl.col("gene_key").is_in(list(keys)))
    if mine.is_empty():
        return
    same = refined.filter(pl.col("formula") == target.reduced_formula)
    r = mine.row(0, named=True)
    row.update(dft_engine=r["engine"], dft_genes_of_formula=same.height, dft_ground_state_rank=r["rank_in_formula"],
               dft_relative_energy_per_atom=r["relative_energy_per_atom"])
    if same.height >= 2:
        row.update(ground_state_rank=r["rank_in_formula"], genes_of_formula_relaxed=same.height,
                   ground_state_rank_source="dft")
    reference, which = target.lattice()
    if reference and r["mode"] == "relax" and r["refined_cif"] and r["verdict"] in ENERGY_VERDICTS:
        cmp = compare_lattice(Structure.from_file(r["refined_cif"]), reference, which, tolerance=lattice_tolerance,
                              space_group=target.space_group)
        row.update(dft_lattice_max_error=cmp.max_relative_error, dft_relaxed_lattice=json.dumps(cmp.relaxed),
                   lattice_within_tolerance=cmp.within, lattice_max_error=cmp.max_relative_error,
                   relaxed_lattice=json.dumps(cmp.relaxed), lattice_source="dft")
