"""Which relaxed candidates go on to the expensive stages: phonons and DFT refinement.

Plain functions over the ``relaxed_structures`` rows (polars frames of the best trial per gene);
every candidate that is not taken comes back with its reason, so a stage records a ``skipped``
row for it instead of dropping it.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

REFINE_MODES = ("auto", "relax", "single_point")


def _by_hull(best: pl.DataFrame, max_e_above_hull: float | None) -> tuple[pl.DataFrame, list[tuple[dict, str]]]:
    """(rows with E_hull <= the limit -- all of them when None --, the others with a reason)."""
    if max_e_above_hull is None:
        return best, []
    ok = pl.col("e_above_hull").is_not_null() & (pl.col("e_above_hull") <= max_e_above_hull)
    out = [(r, f"MLIP E_hull {r['e_above_hull']} above {max_e_above_hull}") for r in best.filter(~ok).iter_rows(named=True)]
    return best.filter(ok), out


def phonon_candidates(best: pl.DataFrame, *, max_e_above_hull: float | None = 0.2, only_novel: bool = False,
                      max_structures: int = 10) -> tuple[list[dict], list[tuple[dict, str]]]:
    """``(taken, skipped)``: the best trial per gene in the given order (lowest E_hull first),
    within ``max_e_above_hull`` (None: no limit), novel only when asked, at most
    ``max_structures``; every other row with the reason it was not taken."""
    keep, skipped = _by_hull(best, max_e_above_hull)
    taken = []
    for r in keep.iter_rows(named=True):
        if only_novel and not r.get("is_novel"):
            skipped.append((r, f"not novel (is_novel {r.get('is_novel')}; only_novel)"))
        elif len(taken) >= max_structures:
            skipped.append((r, f"beyond max_structures {max_structures}"))
        else:
            taken.append(r)
    return taken, skipped


def same_crystal_label(row: dict, chosen: list) -> str | None:
    """The label of an already chosen candidate whose relaxed structure is the same crystal as
    ``row``'s (:func:`dft.matching.same_crystal`, relaxed energies per atom compared), else None --
    ``row`` is then appended to ``chosen`` (a list of (formula, structure, energy, label))."""
    from pymatgen.core import Structure

    from dft.matching import same_crystal

    structure = Structure.from_file(row["relaxed_cif"])
    energy = row.get("energy_per_atom")
    for formula, other, other_energy, label in chosen:
        if formula == row["formula"] and same_crystal(structure, other, energy, other_energy):
            return label
    chosen.append((row["formula"], structure, energy, f"{row['formula']} SG {row['space_group']} {row['wyckoff']}"))
    return None


def refinement_candidates(best: pl.DataFrame, *, max_structures: int = 3, max_e_above_hull: float | None = 0.1,
                          max_atoms: int = 24, mode: str = "auto", relax_max_atoms: int = 8,
                          primitive_atoms: Callable[[str], int] | None = None,
                          ) -> tuple[list[tuple[dict, str]], list[tuple[dict, str]]]:
    """``(taken, skipped)`` for DFT refinement: ``taken`` = (row, mode) of the first
    ``max_structures`` converged candidates in the given order (lowest MLIP E_hull first) within
    ``max_e_above_hull`` (None: no limit), one per distinct crystal (genes that relaxed into one
    crystal are refined once), with at most ``max_atoms`` atoms in the primitive cell; ``mode``
    "auto" relaxes primitive cells of <= ``relax_max_atoms`` atoms and takes a single point for the
    larger ones. ``skipped`` = (row, reason) for every other row. ``primitive_atoms(cif)``: the
    primitive cell's size (default: :func:`dft.relax.primitive_cell` of the CIF)."""
    if mode not in REFINE_MODES:
        raise ValueError(f"mode must be one of {REFINE_MODES}, got {mode!r}")
    primitive_atoms = primitive_atoms or _primitive_atoms
    keep, skipped = _by_hull(best, max_e_above_hull)
    taken, chosen = [], []
    for row in keep.iter_rows(named=True):
        if len(taken) >= max_structures:
            skipped.append((row, f"beyond max_structures {max_structures}"))
            continue
        same = same_crystal_label(row, chosen)
        if same:  # e.g. a P2_1/c gene that relaxed into a Pnma one: refine that crystal once
            skipped.append((row, f"same crystal as {same} (dft.matching.same_crystal)"))
            continue
        n_prim = primitive_atoms(row["relaxed_cif"])
        if n_prim > max_atoms:
            skipped.append((row, f"{n_prim} atoms in the primitive cell > max_atoms {max_atoms}"))
            continue
        taken.append((row, mode if mode != "auto" else ("relax" if n_prim <= relax_max_atoms else "single_point")))
    return taken, skipped


def _primitive_atoms(cif: str) -> int:
    from pymatgen.core import Structure

    from dft.relax import primitive_cell

    return len(primitive_cell(Structure.from_file(cif)))


def rank_in_formula(df: pl.DataFrame, column: str) -> dict[str, int]:
    """gene_key -> rank (1 = lowest ``column``) among the rows of the same formula; rows without
    a value are not ranked."""
    out = {}
    for _, group in df.filter(pl.col(column).is_not_null()).group_by("formula"):
        for i, g in enumerate(group.sort(column)["gene_key"].to_list(), start=1):
            out[g] = i
    return out
