"""Build the Wyckoff gene table of a snapshot: CIF -> cell -> gene -> features, in parallel.

Every input row ends in exactly one of the two outputs: a gene row or a rejection row with a
machine-readable ``reason`` (cif_parse_error, partial_occupancy, unknown_element,
element_outside_encoding, symmetry_failed, multiplicity_mismatch, dof0_site_occupied_twice,
composition_mismatch, ...). Nothing is dropped.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed

from ml.cif import CifError, parse_cif
from ml.encoding import check_vocabulary, gene_features
from ml.elements import element_index
from ml.genes import MP_ANGLE_TOLERANCE, MP_SYMPREC, GeneError, gene_from_cell
from ml.wyckoff import all_tables, install_tables

GENE_COLUMNS = (
    "material_id",
    "formula",
    "space_group",
    "wyckoff",
    "gene_key",
    "multiplicities",
    "total_dof",
    "atoms_per_cell",
    "n_elements",
    "slot_elements",
    "element_index",
    "element_count",
    "element_fraction",
    "element_descriptors",
    "wyckoff_letter_counts",
    "sg_index",
)
REJECTION_COLUMNS = ("material_id", "reason", "detail")

_EMPTY_FEATURES = {
    "slot_elements": None,
    "element_index": None,
    "element_count": None,
    "element_fraction": None,
    "element_descriptors": None,
    "wyckoff_letter_counts": None,
    "sg_index": None,
}


def gene_row(material_id: str, cif: str, symprec: float = MP_SYMPREC,
             angle_tolerance: float = MP_ANGLE_TOLERANCE) -> tuple[dict | None, dict | None]:
    """One snapshot row -> (gene row, None) or (None, rejection row)."""
    try:
        cell = parse_cif(cif)
        check_vocabulary(cell.species)
        index = element_index()
        numbers = [index[s] + 1 for s in cell.species]
        gene, summary = gene_from_cell(cell.lattice, cell.frac_coords, numbers,
                                       symprec=symprec, angle_tolerance=angle_tolerance)
        features = gene_features(gene, summary) or _EMPTY_FEATURES
    except (CifError, GeneError) as exc:
        return None, {"material_id": material_id, "reason": exc.reason, "detail": exc.detail[:500]}
    except Exception as exc:  # anything unforeseen is still a recorded verdict, never a crash
        return None, {"material_id": material_id, "reason": "unexpected_error",
                      "detail": f"{type(exc).__name__}: {exc}"[:500]}
    row = {
        "material_id": material_id,
        "formula": gene.formula,
        "space_group": gene.space_group,
        "wyckoff": gene.wyckoff_json,
        "gene_key": gene.key,
        "multiplicities": json.dumps(summary.multiplicities),
        "total_dof": summary.total_dof,
        "atoms_per_cell": summary.atoms_per_cell,
        "n_elements": len(gene.wyckoff),
        **features,
    }
    return row, None


def _init_worker(tables) -> None:
    warnings.filterwarnings("ignore")
    install_tables(tables)


def _chunk_worker(args) -> tuple[list[dict], list[dict]]:
    ids, cifs, symprec, angle_tolerance = args
    warnings.filterwarnings("ignore")
    genes, rejections = [], []
    for mid, cif in zip(ids, cifs):
        g, r = gene_row(mid, cif, symprec, angle_tolerance)
        (genes if g is not None else rejections).append(g if g is not None else r)
    return genes, rejections


def build_gene_table(
    material_ids: Sequence[str],
    cifs: Sequence[str],
    *,
    processes: int | None = None,
    chunk_size: int = 400,
    symprec: float = MP_SYMPREC,
    angle_tolerance: float = MP_ANGLE_TOLERANCE,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[list[dict], list[dict]]:
    """All rows -> (gene rows, rejection rows), over ``processes`` worker processes.

    ``progress(done, total, seconds)`` is called as chunks finish. Workers are started with
    ``spawn`` (safe under a threaded host such as a Dagster run worker).
    """
    if len(material_ids) != len(cifs):
        raise ValueError("material_ids and cifs differ in length")
    n = len(material_ids)
    processes = processes or min(os.cpu_count() or 1, 8)
    # Largest CIFs first, in smaller chunks at the end: no worker is left with a slow tail.
    order = sorted(range(n), key=lambda i: -len(cifs[i] or ""))
    chunks = []
    i = 0
    while i < n:
        size = chunk_size if i < n * 0.8 else max(chunk_size // 8, 10)
        idx = order[i : i + size]
        chunks.append(([material_ids[j] for j in idx], [cifs[j] for j in idx], symprec, angle_tolerance))
        i += size
    genes: list[dict] = []
    rejections: list[dict] = []
    start = time.perf_counter()
    done = 0

    def collect(result, chunk) -> None:
        nonlocal done
        g, r = result
        genes.extend(g)
        rejections.extend(r)
        done += len(chunk[0])
        if progress:
            progress(done, n, time.perf_counter() - start)

    if processes <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            collect(_chunk_worker(chunk), chunk)
    else:
        with ProcessPoolExecutor(max_workers=processes, mp_context=mp.get_context("spawn"),
                                 initializer=_init_worker, initargs=(all_tables(),)) as pool:
            futures = {pool.submit(_chunk_worker, chunk): chunk for chunk in chunks}
            for future in as_completed(futures):
                collect(future.result(), futures[future])
    rank = {mid: k for k, mid in enumerate(material_ids)}  # output in input order
    genes.sort(key=lambda row: rank[row["material_id"]])
    rejections.sort(key=lambda row: rank[row["material_id"]])
    return genes, rejections
