"""Build the Wyckoff gene table of a snapshot: CIF -> cell -> gene -> features, in parallel.

Symmetry comes from moyopy where its gene provably equals spglib's (:mod:`ml.moyo_genes`), and
from spglib (:func:`ml.genes.gene_from_cell`, the definition) for every other row; the number
of rows that fell back, by reason, is reported.

Every input row ends in exactly one of the two outputs: a gene row or a rejection row with a
machine-readable ``reason`` (cif_parse_error, partial_occupancy, unknown_element,
element_outside_encoding, symmetry_failed, multiplicity_mismatch, dof0_site_occupied_twice,
composition_mismatch, ...). Nothing is dropped.
"""

from __future__ import annotations

import functools
import json
import multiprocessing as mp
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed

from ml.cif import CifError, parse_cif
from ml.encoding import check_vocabulary, gene_features
from ml.elements import element_index
from ml.genes import (MP_ANGLE_TOLERANCE, MP_SYMPREC, Gene, GeneError, gene_from_dataset, spglib_dataset,
                      validate_gene)
from ml.moyo_genes import Fallback, moyo_gene
from ml.wyckoff import cached_all_tables, install_tables

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


ENGINES = ("moyo", "spglib")


@functools.lru_cache(maxsize=65536)
def _gene_columns(formula: str, space_group: int, wyckoff_text: str) -> tuple[dict[str, int], dict]:
    """(conventional-cell element counts, every column that follows from the gene alone),
    validated once per distinct gene; raises :class:`GeneError` for an invalid one."""
    gene = Gene.from_json(formula, space_group, wyckoff_text)
    summary = validate_gene(gene.formula, gene.space_group, gene.wyckoff)
    features = gene_features(gene, summary) or _EMPTY_FEATURES
    return summary.counts, {
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


def gene_row_with_engine(
    material_id: str,
    cif: str,
    symprec: float = MP_SYMPREC,
    angle_tolerance: float = MP_ANGLE_TOLERANCE,
    *,
    engine: str = "spglib",
    space_group_label: int | None = None,
) -> tuple[dict | None, dict | None, str | None]:
    """One snapshot row -> (gene row, rejection row, fallback reason).

    ``engine="spglib"`` is the definition (``gene_from_cell``). ``engine="moyo"`` tries
    :func:`ml.moyo_genes.moyo_gene` first and runs the spglib path for the row wherever moyo's
    gene cannot be shown to equal it; the third value then names why (else ``None``).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    fallback = None
    try:
        cell = parse_cif(cif)
        check_vocabulary(cell.species)
        index = element_index()
        numbers = [index[s] + 1 for s in cell.species]
        gene = observe = None
        if engine == "moyo":
            try:
                gene, std_counts = moyo_gene(cell.lattice, cell.frac_coords, numbers, cell.species,
                                             space_group_label=space_group_label, symprec=symprec)
                try:
                    if _gene_columns(gene.formula, gene.space_group, gene.wyckoff_json)[0] != std_counts:
                        raise Fallback("invalid_gene", "sites do not give the conventional cell")
                except GeneError as exc:
                    raise Fallback("invalid_gene", exc.reason) from exc
            except Fallback as exc:
                gene, fallback, observe = None, exc.reason, exc.observe
        if gene is None:
            ds = spglib_dataset(cell.lattice, cell.frac_coords, numbers,
                                symprec=symprec, angle_tolerance=angle_tolerance)
            if observe is not None:
                observe(ds)
            gene, _ = gene_from_dataset(ds, numbers)
        _, columns = _gene_columns(gene.formula, gene.space_group, gene.wyckoff_json)
    except (CifError, GeneError) as exc:
        return None, {"material_id": material_id, "reason": exc.reason, "detail": exc.detail[:500]}, fallback
    except Exception as exc:  # anything unforeseen is still a recorded verdict, never a crash
        return None, {"material_id": material_id, "reason": "unexpected_error",
                      "detail": f"{type(exc).__name__}: {exc}"[:500]}, fallback
    return {"material_id": material_id, **columns}, None, fallback


def gene_row(material_id: str, cif: str, symprec: float = MP_SYMPREC,
             angle_tolerance: float = MP_ANGLE_TOLERANCE, *, engine: str = "spglib",
             space_group_label: int | None = None) -> tuple[dict | None, dict | None]:
    """One snapshot row -> (gene row, None) or (None, rejection row)."""
    row, rejection, _ = gene_row_with_engine(material_id, cif, symprec, angle_tolerance,
                                             engine=engine, space_group_label=space_group_label)
    return row, rejection


def _init_worker(tables) -> None:
    warnings.filterwarnings("ignore")
    install_tables(tables)


def _chunk_worker(args) -> tuple[list[dict], list[dict], Counter]:
    ids, cifs, labels, symprec, angle_tolerance, engine = args
    warnings.filterwarnings("ignore")
    genes, rejections = [], []
    fallbacks: Counter = Counter()
    for mid, cif, label in zip(ids, cifs, labels):
        g, r, fb = gene_row_with_engine(mid, cif, symprec, angle_tolerance, engine=engine, space_group_label=label)
        (genes if g is not None else rejections).append(g if g is not None else r)
        if fb is not None:
            fallbacks[fb] += 1
    return genes, rejections, fallbacks


def build_gene_table(
    material_ids: Sequence[str],
    cifs: Sequence[str],
    *,
    processes: int | None = None,
    chunk_size: int = 400,
    symprec: float = MP_SYMPREC,
    angle_tolerance: float = MP_ANGLE_TOLERANCE,
    progress: Callable[[int, int, float], None] | None = None,
    engine: str = "moyo",
    space_groups: Sequence[int | None] | None = None,
    stats: dict | None = None,
) -> tuple[list[dict], list[dict]]:
    """All rows -> (gene rows, rejection rows), over ``processes`` worker processes.

    ``engine="moyo"`` (default) is the fast symmetry engine with a per-row spglib fallback
    (:mod:`ml.moyo_genes`); it needs ``space_groups``, the space group MP reports per row
    (``symmetry_number``), to confirm moyo's group: rows without one fall back. ``"spglib"``
    runs the definition on every row. Both give the same rows. ``stats``, if given, is filled
    with ``engine``, ``rows``, ``fallback_rows`` and ``fallbacks_by_reason``.

    ``progress(done, total, seconds)`` is called as chunks finish. Workers are started with
    ``spawn`` (safe under a threaded host such as a Dagster run worker).
    """
    if len(material_ids) != len(cifs):
        raise ValueError("material_ids and cifs differ in length")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    labels = list(space_groups) if space_groups is not None else [None] * len(cifs)
    if len(labels) != len(cifs):
        raise ValueError("space_groups and cifs differ in length")
    n = len(material_ids)
    processes = processes or min(os.cpu_count() or 1, 8)
    # Largest CIFs first, in smaller chunks at the end: no worker is left with a slow tail.
    order = sorted(range(n), key=lambda i: -len(cifs[i] or ""))
    chunks = []
    i = 0
    while i < n:
        size = chunk_size if i < n * 0.8 else max(chunk_size // 8, 10)
        idx = order[i : i + size]
        chunks.append(([material_ids[j] for j in idx], [cifs[j] for j in idx],
                       [None if labels[j] is None else int(labels[j]) for j in idx], symprec, angle_tolerance, engine))
        i += size
    genes: list[dict] = []
    rejections: list[dict] = []
    fallbacks: Counter = Counter()
    start = time.perf_counter()
    done = 0

    def collect(result, chunk) -> None:
        nonlocal done
        g, r, fb = result
        genes.extend(g)
        rejections.extend(r)
        fallbacks.update(fb)
        done += len(chunk[0])
        if progress:
            progress(done, n, time.perf_counter() - start)

    if processes <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            collect(_chunk_worker(chunk), chunk)
    else:
        with ProcessPoolExecutor(max_workers=processes, mp_context=mp.get_context("spawn"),
                                 initializer=_init_worker, initargs=(cached_all_tables(),)) as pool:
            futures = {pool.submit(_chunk_worker, chunk): chunk for chunk in chunks}
            for future in as_completed(futures):
                collect(future.result(), futures[future])
    rank = {mid: k for k, mid in enumerate(material_ids)}  # output in input order
    genes.sort(key=lambda row: rank[row["material_id"]])
    rejections.sort(key=lambda row: rank[row["material_id"]])
    if stats is not None:
        stats.update(engine=engine, rows=n, fallback_rows=sum(fallbacks.values()),
                     fallbacks_by_reason=dict(fallbacks.most_common()))
    return genes, rejections
