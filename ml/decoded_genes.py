"""Distinct decoded rows -> gene table, vectorized (no Python call per row).

The input is what :func:`ml.sampling.sample_decoded` returns: one packed int32 row per distinct
decoded gene (element index per slot, -1 for empty; atoms per slot; sites per Wyckoff letter per
slot; space group) with its hits and summed predicted properties. The output is the same table
as the per-row reference :func:`ml.sampling.genes_from_decoded`, with the same rules:

* the Wyckoff text is the canonical JSON of ``ml.genes.wyckoff_json`` (elements sorted by
  symbol, two slots of one element merged, sites sorted by letter);
* the formula is pymatgen's reduced formula of the decoded cell counts ("" when no atom is left);
* ``gene_key`` is ``ml.genes.gene_key``: normalized formula | space group | the smallest canonical
  JSON over the space group's alternative settings (PyXtal ``Group.get_alternatives``); a row
  with no atom keys as ``|sg|text``, a row using a letter its space group lacks as
  ``formula|sg|text`` (its own key: the filters give the reason).

How the per-row work is avoided:

* every per-space-group table (letter multiplicities, the alternative settings as letter
  permutations, the string order of the site labels) is built once per process from the cached
  PyXtal tables (:mod:`ml.wyckoff`);
* a canonical JSON compares like the sequence of its site labels (elements in a fixed order, the
  same number of sites per element in every setting, and no label is a prefix of another), so
  each setting becomes a short vector of integers — the labels' ranks as base-32 digits, 12 per
  int64 — and the smallest JSON is a lexicographic argmin over integer vectors, per space group
  for all its rows at once;
* text is built once per distinct (space group, element, site multiset) block and per distinct
  composition, and rows are assembled from those pieces with polars string columns.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from ml.elements import vocabulary
from ml.row_hash import unique_rows
from ml.wyckoff import N_LETTERS, N_SPACE_GROUPS, WYCKOFF_LETTERS, all_tables, multiplicity_matrix

N_SLOTS = 3
DIGITS = 12  # base-32 digits (site-label ranks < 27) per int64 of a setting's comparison vector
_EMPTY = np.iinfo(np.int32).max  # sort key of an empty slot: after every element


@dataclass(frozen=True)
class SettingTables:
    """Per space group (index sg - 1): ``inverse`` (230, A, 27) letter index read by each of the
    up to A alternative settings (identity-padded), ``n_alternatives`` (230,), ``label_rank``
    (230, 27) rank of each letter's site label ("4c") in string order among the group's labels."""

    inverse: np.ndarray
    n_alternatives: np.ndarray
    label_rank: np.ndarray


@functools.lru_cache(maxsize=1)
def setting_tables() -> SettingTables:
    """Built once per process from :func:`ml.wyckoff.all_tables` (PyXtal groups, cached)."""
    tables = all_tables()
    width = max(len(t.alternatives) for t in tables.values())
    inverse = np.tile(np.arange(N_LETTERS, dtype=np.intp), (N_SPACE_GROUPS, width, 1))
    n_alt = np.zeros(N_SPACE_GROUPS, dtype=np.int64)
    rank = np.zeros((N_SPACE_GROUPS, N_LETTERS), dtype=np.int64)
    letter_index = {letter: i for i, letter in enumerate(WYCKOFF_LETTERS)}
    for n, table in tables.items():
        n_alt[n - 1] = len(table.alternatives)
        for a, perm in enumerate(table.alternatives):
            for old, new in perm.items():  # setting a puts the old letter's sites on the new letter
                inverse[n - 1, a, letter_index[new]] = letter_index[old]
        labels = sorted(f"{info.multiplicity}{letter}" for letter, info in table.sites.items())
        for r, label in enumerate(labels):
            rank[n - 1, letter_index[label.lstrip("0123456789")]] = r
    return SettingTables(inverse, n_alt, rank)


@functools.lru_cache(maxsize=1)
def _span_weights() -> np.ndarray:
    """(13, 13) int64: sum of 32**(DIGITS-1-p) for p in [lo, hi) — the weight of a run of one
    label over positions lo..hi-1 of a 12-digit chunk."""
    out = np.zeros((DIGITS + 1, DIGITS + 1), dtype=np.int64)
    for lo in range(DIGITS + 1):
        for hi in range(lo, DIGITS + 1):
            out[lo, hi] = sum(32 ** (DIGITS - 1 - p) for p in range(lo, hi))
    return out


@functools.lru_cache(maxsize=1)
def _symbol_order() -> tuple[np.ndarray, np.ndarray]:
    """(rank of each vocabulary symbol in string order, (94,) object array of JSON-quoted symbols)."""
    symbols = vocabulary()
    order = np.empty(len(symbols), dtype=np.int32)
    order[np.argsort(np.asarray(symbols, dtype=object), kind="stable")] = np.arange(len(symbols))
    return order, np.asarray(symbols, dtype=object)


def _unpack(keys: np.ndarray):
    a = N_SLOTS
    keys = np.asarray(keys, dtype=np.int32)
    return (keys[:, :a], keys[:, a:2 * a], keys[:, 2 * a:2 * a + a * N_LETTERS].reshape(-1, a, N_LETTERS),
            keys[:, -1])


def merged_slots(element: np.ndarray, counts: np.ndarray, letters: np.ndarray):
    """Slots sorted by element symbol with the slots of one element merged (sites and atoms
    added), as ``ml.genes.canonical_wyckoff`` sees them; empty slots (-1) last."""
    order_of_symbol, _ = _symbol_order()
    key = np.where(element >= 0, order_of_symbol[np.clip(element, 0, None)], _EMPTY)
    order = np.argsort(key, axis=1, kind="stable")
    element = np.take_along_axis(element, order, 1)
    counts = np.take_along_axis(counts, order, 1)  # new arrays: merged in place below
    letters = np.take_along_axis(letters, order[:, :, None], 1)
    head = np.zeros(element.shape, dtype=np.intp)
    sorted_element = element.copy()
    for s in range(1, N_SLOTS):
        dup = (sorted_element[:, s] >= 0) & (sorted_element[:, s] == sorted_element[:, s - 1])
        head[:, s] = np.where(dup, head[:, s - 1], s)
        rows = np.flatnonzero(dup)
        if len(rows):
            letters[rows, head[rows, s]] += letters[rows, s]
            counts[rows, head[rows, s]] += counts[rows, s]
            element[rows, s], counts[rows, s], letters[rows, s] = -1, 0, 0
    if (head != np.arange(N_SLOTS)).any():  # holes left by merged slots: empty slots last again
        key = np.where(element >= 0, order_of_symbol[np.clip(element, 0, None)], _EMPTY)
        order = np.argsort(key, axis=1, kind="stable")
        element = np.take_along_axis(element, order, 1)
        counts = np.take_along_axis(counts, order, 1)
        letters = np.take_along_axis(letters, order[:, :, None], 1)
    return element, counts, letters


def canonical_letters(space_group: np.ndarray, letters: np.ndarray, max_cells: int = 1 << 16) -> np.ndarray:
    """(N, 3, 27) site counts per merged slot -> the counts in the alternative setting whose
    canonical JSON is smallest (``ml.genes.gene_key``'s choice); rows must only use letters of
    their space group."""
    tables = setting_tables()
    weights = _span_weights()
    mult = multiplicity_matrix()
    out = letters.copy()
    for sg in np.unique(space_group):
        n_alt = int(tables.n_alternatives[sg - 1])
        if n_alt == 1:
            continue
        rows_all = np.flatnonzero(space_group == sg)
        present = np.flatnonzero(mult[sg - 1] > 0)  # the group's letters, in letter order
        position = np.zeros(N_LETTERS, dtype=np.intp)
        position[present] = np.arange(len(present))
        inverse = position[tables.inverse[sg - 1, :n_alt][:, present]]  # (A, k) within `present`
        rank = tables.label_rank[sg - 1, present]  # (k,)
        step = max(1, max_cells // n_alt)
        for start in range(0, len(rows_all), step):
            rows = rows_all[start:start + step]
            own = letters[rows][:, :, present].astype(np.int16)
            mapped = own[:, :, inverse].transpose(0, 2, 1, 3)  # (n, A, 3, k)
            cum = np.cumsum(mapped, axis=-1, dtype=np.int16)
            prev = cum - mapped
            n_chunks = max(1, -(-int(cum[..., -1].max()) // DIGITS))
            digits = []
            for w in range(n_chunks):  # chunk w holds sites w*12 .. w*12+11 of each slot
                lo = np.clip(prev - w * DIGITS, 0, DIGITS)
                hi = np.clip(cum - w * DIGITS, 0, DIGITS)
                digits.append(weights[lo, hi] @ rank)  # (n, A, 3)
            vec = np.stack(digits, axis=-1).reshape(len(rows), n_alt, -1)  # slot-major, then chunk
            alive = np.ones((len(rows), n_alt), dtype=bool)
            for d in range(vec.shape[-1]):  # lexicographic argmin over the settings
                v = np.where(alive, vec[:, :, d], np.iinfo(np.int64).max)
                alive &= v == v.min(axis=1, keepdims=True)
            best = alive.argmax(axis=1)
            chosen = np.zeros((len(rows), N_SLOTS, N_LETTERS), dtype=letters.dtype)
            chosen[:, :, present] = mapped[np.arange(len(rows)), best]
            out[rows] = chosen
    return out


@functools.lru_cache(maxsize=1)
def _label_json() -> pl.Series:
    """(230 * 27,) JSON-quoted site labels, index (sg - 1) * 27 + letter: '"4c"' ('"0x"' for a
    letter the group lacks, as the reference writes it)."""
    mult = multiplicity_matrix()
    return pl.Series([f'"{mult[g, j]}{WYCKOFF_LETTERS[j]}"' for g in range(N_SPACE_GROUPS) for j in range(N_LETTERS)],
                     dtype=pl.String)


def _site_lists(space_group: np.ndarray, letters: np.ndarray) -> pl.Series:
    """(N,) JSON site lists '["4c", "8d"]' of (space group, site counts per letter) rows: one
    label per site, in letter order, joined by polars."""
    n = len(space_group)
    counts = letters.reshape(n * N_LETTERS)
    label = (np.repeat(np.asarray(space_group, dtype=np.int64) - 1, N_LETTERS) * N_LETTERS
             + np.tile(np.arange(N_LETTERS), n))
    owner = np.repeat(np.arange(n), N_LETTERS)
    sites = pl.DataFrame({"row": np.repeat(owner, counts), "label": _label_json().gather(np.repeat(label, counts))})
    joined = sites.group_by("row").agg(pl.col("label").str.join(", "))
    out = pl.DataFrame({"row": np.arange(n)}).join(joined, on="row", how="left")
    return out.select(pl.concat_str([pl.lit("["), pl.col("label").fill_null(""), pl.lit("]")])).to_series()


def _block_texts(space_group, element, letters) -> pl.Series:
    """Text '"O": ["4c", "8d"]' of every slot ((N*3,) series, null for an empty slot): the site
    list is written once per distinct (space group, site counts), the symbol added by polars."""
    _, quoted = _symbol_order()
    n = len(space_group)
    present = element.reshape(-1) >= 0
    flat_sg = np.repeat(np.asarray(space_group), N_SLOTS)[present]
    flat_lt = letters.reshape(n * N_SLOTS, N_LETTERS)[present]
    wide = flat_lt.max(initial=0) > 255 or flat_lt.min(initial=0) < 0
    rows = np.zeros((len(flat_sg), 4 + N_LETTERS * (4 if wide else 1)), dtype=np.uint8)
    rows[:, :2] = flat_sg.astype("<u2").view(np.uint8).reshape(-1, 2)
    rows[:, 4:] = flat_lt.astype("<i4" if wide else np.uint8).view(np.uint8).reshape(len(flat_sg), -1)
    first, inverse = unique_rows(rows)
    lists = _site_lists(flat_sg[first], flat_lt[first])
    symbols = pl.Series([json.dumps(s) + ": " for s in quoted], dtype=pl.String)
    text = pl.DataFrame({"symbol": symbols.gather(element.reshape(-1)[present]),
                         "sites": lists.gather(inverse)}).select(pl.concat_str(["symbol", "sites"])).to_series()
    out = pl.Series([None], dtype=pl.String).gather(np.zeros(n * N_SLOTS, dtype=np.int64))
    return out.scatter(np.flatnonzero(present), text)


def _wyckoff_text(blocks: pl.Series) -> pl.Series:
    """(N*3,) slot texts -> (N,) canonical JSON '{"Ca": ["4c"], "O": ["4c", "8d"], "Ti": ["4b"]}'."""
    n = len(blocks) // N_SLOTS
    idx = np.arange(n) * N_SLOTS
    cols = [blocks.gather(idx + s).alias(f"s{s}") for s in range(N_SLOTS)]
    return pl.DataFrame(cols).select(
        pl.concat_str([pl.lit("{"), pl.concat_str([f"s{s}" for s in range(N_SLOTS)], separator=", ",
                                                   ignore_nulls=True), pl.lit("}")])).to_series()


@functools.lru_cache(maxsize=1)
def _formula_order() -> tuple[list[int], list[float], list[str], dict[str, str]]:
    """Per vocabulary element: its rank in pymatgen's formula order (``_symbol_sort_order``:
    electronegativity, no electronegativity last, then symbol), its electronegativity ``X`` (NaN
    where pymatgen has none) and its symbol; and pymatgen's special formulas. All from pymatgen."""
    import warnings

    from pymatgen.core.composition import Composition, _symbol_sort_order
    from pymatgen.core.periodic_table import get_el_sp

    symbols = list(vocabulary())
    rank = [0] * len(symbols)
    for r, sym in enumerate(_symbol_sort_order(symbols)):
        rank[symbols.index(sym)] = r
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No Pauling electronegativity for He" etc.
        x = [float(get_el_sp(sym).X) for sym in symbols]
    return rank, x, symbols, dict(Composition.special_formulas)


def _reduce_ratio(amounts: dict[int, int], rank, x, symbols, special) -> str:
    """pymatgen's ``reduce_formula`` of element index -> positive integer amount followed by
    ``Composition.special_formulas``, with pymatgen's steps: divide by the gcd, formula order,
    then the last two elements written as a polyanion ``(AB)n`` when their electronegativities
    differ by less than 1.65 and their own gcd ``n`` is not 1, amounts of one left out. ~15x
    cheaper than the call (no Element lookups; sorts of three items)."""
    g = math.gcd(*amounts.values())
    if g > 1:
        amounts = {e: a // g for e, a in amounts.items()}
    order = sorted(amounts, key=rank.__getitem__)
    poly = ""
    if len(order) >= 3 and x[order[-1]] - x[order[-2]] < 1.65:  # False for a NaN, as in pymatgen
        a, b = amounts[order[-2]], amounts[order[-1]]
        n = math.gcd(a, b)
        if n != 1:
            poly = f"({symbols[order[-2]]}{_amount(a // n)}{symbols[order[-1]]}{_amount(b // n)}){n}"
            order = order[:-2]
    formula = "".join(f"{symbols[e]}{_amount(amounts[e])}" for e in order) + poly
    return special.get(formula, formula)


def _amount(n: int) -> str:
    return "" if n == 1 else str(n)


def reduced_formulas(element: np.ndarray, counts: np.ndarray) -> tuple[list[str], np.ndarray]:
    """pymatgen's reduced formula of each row's (element, atoms) slots, "" without atoms:
    (distinct formulas, row -> index). Rows are divided by the gcd of their counts first (the
    reduced formula depends on the ratios only), then each distinct ratio is written by
    :func:`_reduce_ratio`, pymatgen's ``reduce_formula`` + ``Composition.special_formulas`` on
    pymatgen's own element order and electronegativities (``Composition.reduced_formula``'s
    steps; checked against it by the tests)."""
    rank, x, symbols, special = _formula_order()
    counts = np.where(element >= 0, np.clip(counts, 0, None), 0)
    g = np.gcd.reduce(counts, axis=1)
    ratio = counts // np.where(g > 0, g, 1)[:, None]
    first, inverse = unique_rows(np.concatenate([np.where(ratio > 0, element, -1), ratio], axis=1))
    out = []
    for els, cnts in zip(element[first].tolist(), ratio[first].tolist()):
        amounts: dict[int, int] = {}
        for e, c in zip(els, cnts):
            if c > 0:  # two slots of one element add up
                amounts[e] = amounts.get(e, 0) + c
        out.append(_reduce_ratio(amounts, rank, x, symbols, special) if amounts else "")
    return out, inverse


@dataclass
class GeneRows:
    """One row per distinct decoded row: formula, wyckoff text and gene_key (polars columns),
    plus counts of the rows that are not valid configurations (kept, with their own keys)."""

    frame: pl.DataFrame
    rows_without_atoms: np.ndarray  # bool (N,)
    rows_letter_outside_space_group: np.ndarray  # bool (N,)


def gene_rows(keys: np.ndarray) -> GeneRows:
    """Packed distinct decoded rows (N, 88) -> formula, space_group, wyckoff, gene_key per row."""
    if len(keys) == 0:
        frame = pl.DataFrame(schema={"formula": pl.String, "space_group": pl.Int32, "wyckoff": pl.String,
                                     "gene_key": pl.String})
        return GeneRows(frame, np.zeros(0, bool), np.zeros(0, bool))
    element, counts, letters, space_group = _unpack(np.asarray(keys))
    element, counts, letters = merged_slots(element, counts, letters)
    n = len(space_group)
    mult = multiplicity_matrix()
    outside = ((letters > 0) & (mult[space_group - 1][:, None, :] == 0) & (element >= 0)[:, :, None]).any(axis=(1, 2))
    formulas, formula_index = reduced_formulas(element, counts)
    has_atoms = np.asarray([bool(f) for f in formulas], dtype=bool)[formula_index]
    canonical = has_atoms & ~outside
    key_letters = letters.copy()
    if canonical.any():
        key_letters[canonical] = canonical_letters(space_group[canonical], letters[canonical])
    blocks = _block_texts(np.concatenate([space_group, space_group]), np.concatenate([element, element]),
                          np.concatenate([letters, key_letters]))
    texts = _wyckoff_text(blocks)
    # gene_key's normalize_formula(formula) is the identity on a reduced formula (it parses the
    # text back to the same reduced ratios): the formula column serves as the key's formula
    frame = pl.DataFrame({
        "formula": pl.Series(formulas, dtype=pl.String).gather(formula_index),
        "space_group": pl.Series(space_group, dtype=pl.Int32),
        "wyckoff": texts[:n],
        "key_text": texts[n:],
    }).select(
        "formula", "space_group", "wyckoff",
        pl.concat_str(["formula", pl.col("space_group").cast(pl.String), "key_text"], separator="|").alias("gene_key"),
    )
    return GeneRows(frame, ~has_atoms, has_atoms & outside)


def _json_list(col: str) -> pl.Expr:
    """``json.dumps(list_of_strings)`` of a list column (the strings hold no backslash)."""
    quoted = pl.lit('"') + pl.element().str.replace_all('"', '\\"', literal=True) + pl.lit('"')
    return pl.concat_str([pl.lit("["), pl.col(col).list.eval(quoted).list.join(", "), pl.lit("]")])


def merge_by_gene_key(df: pl.DataFrame, configurations_json: pl.Expr) -> pl.DataFrame:
    """Decoded configurations (``formula``, ``space_group``, ``wyckoff``, ``gene_key``, ``hits``,
    ``ef_sum``, ``gap_sum``) -> one row per gene: equivalent configurations merged by ``gene_key``
    (the most-hit configuration names the gene), hits summed, hit-weighted mean predicted E_f and
    band gap, the configurations as a JSON list (``configurations_json``, an expression over the
    list column ``configurations``), most hits first. Both sampling paths build their table here."""
    return (
        df.sort(["hits", "wyckoff"], descending=[True, False])
        .group_by("gene_key", maintain_order=True)
        .agg(
            pl.col("formula").first(), pl.col("space_group").first(), pl.col("wyckoff").first(),
            pl.col("hits").sum(), pl.col("wyckoff").alias("configurations"),
            (pl.col("ef_sum").sum() / pl.col("hits").sum()).alias("predicted_formation_energy"),
            (pl.col("gap_sum").sum() / pl.col("hits").sum()).alias("predicted_band_gap"),
        )
        .with_columns(pl.col("configurations").list.len().alias("n_configurations"), configurations_json)
        .sort(["hits", "gene_key"], descending=[True, False])
        .select("formula", "space_group", "wyckoff", "gene_key", "hits", "n_configurations", "configurations",
                "predicted_formation_energy", "predicted_band_gap")
    )


def genes_table(keys, hits, ef_sum, gap_sum) -> tuple[pl.DataFrame, dict]:
    """Distinct decoded rows -> (one row per gene, equivalent configurations merged by gene_key;
    counts of invalid rows). Same table as ``ml.sampling.genes_from_decoded``."""
    rows = gene_rows(keys)
    hits = np.asarray(hits, dtype=np.int64)
    df = rows.frame.with_columns(pl.Series("hits", hits, dtype=pl.Int64),
                                 pl.Series("ef_sum", np.asarray(ef_sum, dtype=np.float64)),
                                 pl.Series("gap_sum", np.asarray(gap_sum, dtype=np.float64)))
    table = merge_by_gene_key(df, _json_list("configurations").alias("configurations"))
    stats = {
        "decoded_rows_without_atoms": int(rows.rows_without_atoms.sum()),
        "decoded_points_without_atoms": int(hits[rows.rows_without_atoms].sum()),
        "decoded_rows_letter_outside_space_group": int(rows.rows_letter_outside_space_group.sum()),
        "decoded_points_letter_outside_space_group": int(hits[rows.rows_letter_outside_space_group].sum()),
    }
    return table, stats
