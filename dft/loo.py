"""The leave-one-out verdict: was a held-out material rediscovered?

:func:`loo_verdict` judges one partition from its tables: the held-out gene (and its equivalent
configurations) sampled, passed the filters, relaxed, space group kept, relaxed lattice within
``lattice_tolerance`` of the registry's (experimental preferred), and for a ``ground_state`` target
ranked first by formation energy over the distinct crystals of its formula
(:func:`dft.matching.crystal_ranks`: genes that relaxed into one crystal share a rank). Where DFT
refined the held-out gene (:func:`apply_dft`) its lattice (relax mode) and -- with at least one
refined rival of the formula -- its DFT rank decide. ``recovered`` is true exactly when nothing is
listed in ``why_not``.
"""

from __future__ import annotations

import json

import polars as pl

ENERGY_VERDICTS = ("converged", "not_converged")  # relaxations that carry a usable structure


def loo_verdict(target, filtered: pl.DataFrame, best: pl.DataFrame, refined: pl.DataFrame | None = None, *,
                lattice_tolerance: float = 0.03) -> dict:
    """One report row for a leave-one-out ``target`` (:class:`ml.targets.Target`).

    ``filtered``: ``gene_key``, ``passed`` of the partition's filtered genes; ``best``: the best
    trial per gene of ``relaxed_structures`` (``relaxed_cif``, energies, ``symmetry_kept``,
    ``sg_after``); ``refined``: ``refined_structures`` rows that carry an energy (or empty/None)."""
    from pymatgen.core import Structure

    from dft.matching import compare_lattice, crystal_ranks

    keys = sorted(target.gene_keys())
    hit = filtered.filter(pl.col("gene_key").is_in(keys))
    row = {"target": target.partition, "task": target.task, "sampled": hit.height > 0,
           "passed": bool(hit.height and hit["passed"].any())}
    mine = best.filter(pl.col("gene_key").is_in(keys))
    row["relaxed"] = bool(mine.height and mine["verdict"][0] in ENERGY_VERDICTS)
    if row["relaxed"]:
        r = mine.row(0, named=True)
        row["sg_kept"] = bool(r["symmetry_kept"] and r["sg_after"] == target.space_group)
        row.update(formation_energy_per_atom=r["formation_energy_per_atom"], e_above_hull=r["e_above_hull"])
        reference, which = target.lattice()
        if reference:
            cmp = compare_lattice(Structure.from_file(r["relaxed_cif"]), reference, which, tolerance=lattice_tolerance)
            row.update(lattice_within_tolerance=cmp.within, lattice_max_error=cmp.max_relative_error,
                       lattice_reference=which, relaxed_lattice=json.dumps(cmp.relaxed),
                       reference_lattice=json.dumps(cmp.reference))
        same = best.filter((pl.col("formula") == target.reduced_formula)
                           & pl.col("formation_energy_per_atom").is_not_null()).sort("formation_energy_per_atom")
        ranks = crystal_ranks([Structure.from_file(p) for p in same["relaxed_cif"].to_list()],
                              same["energy_per_atom"].to_list())
        mine_ranks = [k for g, k in zip(same["gene_key"].to_list(), ranks) if g in keys]
        row.update(genes_of_formula_relaxed=same.height, crystals_of_formula_relaxed=max(ranks, default=0),
                   ground_state_rank=mine_ranks[0] if mine_ranks else None,
                   ground_state_rank_source="mlip", lattice_source="mlip")
        if refined is not None:
            apply_dft(row, refined, keys, target, lattice_tolerance=lattice_tolerance)
    row["why_not"] = "; ".join(why_not(row, target.task))
    row["recovered"] = not row["why_not"]
    return row


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
        cmp = compare_lattice(Structure.from_file(r["refined_cif"]), reference, which, tolerance=lattice_tolerance)
        row.update(dft_lattice_max_error=cmp.max_relative_error, dft_relaxed_lattice=json.dumps(cmp.relaxed),
                   lattice_within_tolerance=cmp.within, lattice_max_error=cmp.max_relative_error,
                   relaxed_lattice=json.dumps(cmp.relaxed), lattice_source="dft")
