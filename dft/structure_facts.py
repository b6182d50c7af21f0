"""Facts read from relaxed structure files that generator metrics need: the shortest
interatomic distance after relaxation and which relaxed genes are one crystal.

A missing or unreadable file is a null fact with a note, never an error.
"""

from __future__ import annotations

import polars as pl

FACT_SCHEMA = {"gene_key": pl.String, "min_distance_relaxed": pl.Float64, "crystal_id": pl.Int64,
               "structure_note": pl.String}


def relaxed_structure_facts(best: pl.DataFrame, *, cif_column: str = "relaxed_cif",
                            energy_column: str = "energy_per_atom") -> pl.DataFrame:
    """One row per relaxed gene of ``best`` (one row per gene): ``min_distance_relaxed`` (A,
    periodic images included) and ``crystal_id`` (:func:`dft.matching.distinct_crystal_ids` with
    the rows' energies per atom; a gene whose file cannot be read is its own crystal)."""
    from pymatgen.core import Structure

    from dft.matching import distinct_crystal_ids
    from dft.trials import min_interatomic_distance

    rows, structures, energies, readable = [], [], [], []
    for r in best.iter_rows(named=True):
        fact = {"gene_key": r["gene_key"], "min_distance_relaxed": None, "crystal_id": None, "structure_note": None}
        path = r.get(cif_column)
        try:
            if not path:
                raise FileNotFoundError("no relaxed structure file")
            s = Structure.from_file(path)
            fact["min_distance_relaxed"] = min_interatomic_distance(s)
            structures.append(s)
            energies.append(r.get(energy_column))
            readable.append(len(rows))
        except Exception as exc:  # a missing / broken file is a noted null, not a crash
            fact["structure_note"] = f"{type(exc).__name__}: {exc}"[:200]
        rows.append(fact)
    ids = distinct_crystal_ids(structures, energies)
    offset = max(ids, default=-1) + 1
    for i, crystal in zip(readable, ids):
        rows[i]["crystal_id"] = crystal
    for r in rows:
        if r["crystal_id"] is None:
            r["crystal_id"], offset = offset, offset + 1
    return pl.DataFrame(rows, schema=FACT_SCHEMA, orient="row")
