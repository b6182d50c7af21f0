"""Wyckoff-position tables of the 230 space groups, read from PyXtal (never hand-written).

Everything here is keyed by (space group number, Wyckoff letter) in the ITA standard setting
that PyXtal and spglib's standardized cells use. Tables are built lazily per space group and
cached per process, so worker processes pay only for the groups they meet.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

# PyXtal labels the 27th Wyckoff position (space groups 47 and 123, 191, 221 ...) 'A'.
WYCKOFF_LETTERS: tuple[str, ...] = tuple("abcdefghijklmnopqrstuvwxyz") + ("A",)
N_LETTERS = len(WYCKOFF_LETTERS)
LETTER_INDEX = {letter: i for i, letter in enumerate(WYCKOFF_LETTERS)}
N_SPACE_GROUPS = 230

_LABEL = re.compile(r"^(\d+)([a-zA-Z])$")


@dataclass(frozen=True)
class SiteInfo:
    letter: str
    multiplicity: int  # in the conventional cell
    dof: int  # free coordinates of the site


@dataclass(frozen=True)
class SpaceGroupTable:
    number: int
    symbol: str
    sites: dict[str, SiteInfo]
    # each alternative setting as a letter permutation {letter: letter'} (identity included)
    alternatives: tuple[dict[str, str], ...]

    def multiplicity(self, letter: str) -> int:
        return self.sites[letter].multiplicity

    def dof(self, letter: str) -> int:
        return self.sites[letter].dof


def _check_number(number: int) -> int:
    n = int(number)
    if not 1 <= n <= N_SPACE_GROUPS:
        raise ValueError(f"space group number must be 1..230, got {number!r}")
    return n


_TABLES: dict[int, SpaceGroupTable] = {}


def space_group_table(number: int) -> SpaceGroupTable:
    """The Wyckoff table of one space group, from ``pyxtal.symmetry.Group`` (cached)."""
    n = _check_number(number)
    table = _TABLES.get(n)
    if table is None:
        table = _TABLES[n] = _build_table(n)
    return table


def all_tables() -> dict[int, SpaceGroupTable]:
    """All 230 tables (builds the missing ones; ~2 s once per process)."""
    return {n: space_group_table(n) for n in range(1, N_SPACE_GROUPS + 1)}


def cached_all_tables() -> dict[int, SpaceGroupTable]:
    """:func:`all_tables`, kept on disk between processes (building them from PyXtal costs
    seconds of CPU; a gene-table build needs them all). The file is keyed by the PyXtal
    version and lives in ``$WYCRYST_CACHE`` (default ``~/.cache/wycryst``); any problem with
    it falls back to building the tables."""
    import os
    import pickle
    from importlib.metadata import version
    from pathlib import Path

    if len(_TABLES) == N_SPACE_GROUPS:
        return dict(_TABLES)
    try:
        folder = Path(os.environ.get("WYCRYST_CACHE", Path.home() / ".cache" / "wycryst"))
        path = folder / f"wyckoff_tables-pyxtal{version('pyxtal')}-v1.pkl"
    except Exception:
        return all_tables()
    try:
        tables = pickle.loads(path.read_bytes())
        if isinstance(tables, dict) and sorted(tables) == list(range(1, N_SPACE_GROUPS + 1)) and all(
            isinstance(t, SpaceGroupTable) for t in tables.values()
        ):
            install_tables(tables)
            return tables
    except Exception:
        pass
    tables = all_tables()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(pickle.dumps(tables))
        tmp.replace(path)
    except OSError:
        pass
    return tables


def install_tables(tables: dict[int, SpaceGroupTable]) -> None:
    """Prefill this process's cache, e.g. in a worker process from its parent's tables."""
    _TABLES.update(tables)


def _build_table(n: int) -> SpaceGroupTable:
    from pyxtal.symmetry import Group

    group = Group(n)
    sites = {
        wp.letter: SiteInfo(wp.letter, int(wp.multiplicity), int(wp.get_dof())) for wp in group
    }
    alternatives: list[dict[str, str]] = []
    table = group.get_alternatives() or {}
    transformed = table.get("Transformed WP") or []
    identity = sorted(sites, key=LETTER_INDEX.__getitem__)
    for row in transformed:
        image = row.split()
        if sorted(image) != sorted(identity):
            continue  # a malformed row would silently corrupt equivalence: skip it
        alternatives.append(dict(zip(identity, image)))
    if not any(all(k == v for k, v in alt.items()) for alt in alternatives):
        alternatives.insert(0, {letter: letter for letter in identity})
    return SpaceGroupTable(n, str(group.symbol), sites, tuple(alternatives))


def parse_site_label(label: str) -> tuple[int, str]:
    """'8d' -> (8, 'd'). Raises ValueError for anything else."""
    m = _LABEL.match(label.strip())
    if not m:
        raise ValueError(f"not a Wyckoff label: {label!r}")
    return int(m.group(1)), m.group(2)


def site_label(space_group: int, letter: str) -> str:
    """'d' in SG 62 -> '8d' (multiplicity from the table)."""
    return f"{space_group_table(space_group).multiplicity(letter)}{letter}"


@functools.lru_cache(maxsize=None)
def multiplicity_matrix() -> np.ndarray:
    """(230, 27) int array: multiplicity of each letter per space group, 0 where absent."""
    out = np.zeros((N_SPACE_GROUPS, N_LETTERS), dtype=np.int32)
    for n in range(1, N_SPACE_GROUPS + 1):
        for letter, info in space_group_table(n).sites.items():
            out[n - 1, LETTER_INDEX[letter]] = info.multiplicity
    return out


@functools.lru_cache(maxsize=None)
def dof_matrix() -> np.ndarray:
    """(230, 27) int array: DoF of each letter per space group, -1 where absent."""
    out = np.full((N_SPACE_GROUPS, N_LETTERS), -1, dtype=np.int32)
    for n in range(1, N_SPACE_GROUPS + 1):
        for letter, info in space_group_table(n).sites.items():
            out[n - 1, LETTER_INDEX[letter]] = info.dof
    return out
