"""The S.U.N. list: stable, unique, novel candidates of a partition, and how they compare with a
published list.

* stable: E_hull <= ``max_e_above_hull`` on the MLIP's MP-compatible scale, space group kept;
* novel: not matched to a snapshot structure (``is_novel``; unknown counts as not novel);
* unique: one per distinct crystal -- genes that relaxed into one crystal
  (:func:`dft.matching.same_crystal`: tight StructureMatcher tolerances and relaxed energies within
  1 meV/atom; the default StructureMatcher merges rhombohedral and cubic BaTiO3) collapse into the
  lowest-E_f one.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import polars as pl


@dataclass
class SunSelection:
    candidates: pl.DataFrame  # best trial per gene, SG kept, with phonon and DFT columns
    stable: pl.DataFrame
    novel: pl.DataFrame
    unique: pl.DataFrame
    phonon_stable: pl.DataFrame
    listed: pl.DataFrame  # what the report lists (unique, or its phonon-stable part)


def unique_crystals(rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` (with ``relaxed_cif``, ``formula``, ``formation_energy_per_atom``,
    ``energy_per_atom``) with every row dropped that is the same crystal as a lower-E_f row of its
    formula (:func:`dft.matching.same_crystal`)."""
    from pymatgen.core import Structure

    from dft.matching import same_crystal

    kept, seen = [], []  # seen: (formula, structure, energy per atom)
    for row in rows.sort("formation_energy_per_atom", nulls_last=True).iter_rows(named=True):
        s = Structure.from_file(row["relaxed_cif"])
        if any(f == row["formula"] and same_crystal(o, s, e, row.get("energy_per_atom")) for f, o, e in seen):
            continue
        seen.append((row["formula"], s, row.get("energy_per_atom")))
        kept.append(row)
    return pl.DataFrame(kept, schema=rows.schema, orient="row") if kept else rows.head(0)


def select_sun(best: pl.DataFrame, phonons: pl.DataFrame, refined: pl.DataFrame, *, max_e_above_hull: float = 0.1,
               require_phonon_stable: bool = False) -> SunSelection:
    """The S.U.N. funnel of a partition. ``best``: its best trial per gene (``relaxed_structures``
    rows); ``phonons``: ``gene_key``, ``phonon_verdict``, ``min_frequency_thz``; ``refined``:
    ``gene_key``, ``dft_engine``, ``dft_verdict``, ``dft_formation_energy_per_atom``."""
    cand = (best.join(phonons, on="gene_key", how="left").join(refined, on="gene_key", how="left")
            .filter(pl.col("symmetry_kept")))
    stable = cand.filter(pl.col("e_above_hull").is_not_null() & (pl.col("e_above_hull") <= max_e_above_hull))
    novel = stable.filter(pl.col("is_novel").fill_null(False))
    unique = unique_crystals(novel)
    phonon_stable = unique.filter(pl.col("phonon_verdict") == "stable")
    return SunSelection(cand, stable, novel, unique, phonon_stable, phonon_stable if require_phonon_stable else unique)


def export_candidates(listed: pl.DataFrame, out_dir: Path, columns, *, target: str) -> list[dict]:
    """Copy each listed candidate's relaxed CIF to ``out_dir/cif/<formula>_SG<n>_<gene hash>.cif``
    (the folder is emptied first) and return its row with ``columns`` and the new ``cif`` path."""
    from dft.pipeline import gene_hash

    shutil.rmtree(out_dir, ignore_errors=True)
    (Path(out_dir) / "cif").mkdir(parents=True)
    rows = []
    for r in listed.iter_rows(named=True):
        cif = Path(out_dir) / "cif" / f"{r['formula']}_SG{r['space_group']}_{gene_hash(r['gene_key'])}.cif"
        shutil.copyfile(r["relaxed_cif"], cif)
        rows.append({**{k: r.get(k) for k in columns}, "target": target, "cif": str(cif)})
    return rows


def paper_comparison(published: list[str], candidates: pl.DataFrame, passed_by_formula: dict[str, bool],
                     listed_formulas) -> list[dict]:
    """One row per published formula: generated (sampled at all), passed the filters, relaxed, the
    lowest E_hull among its relaxed genes, that gene's phonon verdict, and whether it is in the
    S.U.N. list. Formulas are compared reduced (pymatgen)."""
    from pymatgen.core import Composition

    listed = set(listed_formulas)
    lowest = {}
    for r in candidates.sort("e_above_hull", nulls_last=True).iter_rows(named=True):
        lowest.setdefault(r["formula"], r)
    table = []
    for name in published:
        reduced = Composition(name).reduced_formula
        r = lowest.get(reduced)
        table.append({"paper formula": name, "generated": reduced in passed_by_formula,
                      "passed filters": bool(passed_by_formula.get(reduced)), "relaxed": r is not None,
                      "E_hull": None if r is None or r["e_above_hull"] is None else round(r["e_above_hull"], 3),
                      "phonons": None if r is None else r["phonon_verdict"], "in S.U.N. list": reduced in listed})
    return table
