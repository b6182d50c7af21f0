"""Fast Wyckoff genes with moyopy, accepted only where they must equal the spglib gene.

The gene is defined by spglib at MP's tolerances (``ml.genes.gene_from_cell``); spglib's
symmetry search is the cost of the gene table (on cubic lattices ~10-20 ms a cell). moyopy
(the Rust ``moyo``) finds the same symmetry ~5-20x faster, but it is a different program:

* At the same length tolerance (``symprec`` in Angstrom, as spglib's) it finds another space
  group for ~0.6 % of MP cells (mostly a supergroup). Measured on the 25,200-row snapshot:
  comparing with MP's own label (``symmetry_number``: MP ran spglib at 0.1) catches all but one,
  and a second search at half the tolerance catches that one; an input that moyo can reduce to
  a smaller primitive cell (an extra pure translation at 0.1) is left to spglib too.
  moyopy's ``angle_tolerance`` (5 degrees in radians) hangs on some cells, so the default
  metric tolerance is used and agreement is enforced by those checks instead.
* Within one space group both pick a standard setting and origin, but not always the same of
  the equivalent ones (the Euclidean normalizer): ~11 % of configurations that *have* distinct
  equivalent forms come out in another, equivalent form (same ``gene_key``, different letters).
  The letters are stored (``wyckoff``, ``wyckoff_letter_counts``), so a moyo gene is accepted only
  when its configuration has one form under every alternative setting (PyXtal's
  ``get_alternatives``, the same maps ``gene_key`` folds): then any origin choice gives the
  identical row. For cubic cells (where spglib's symmetry search is slowest) the alternative
  setting that turns moyo's letters into spglib's is learned per moyo transformation from rows
  spglib decided, and applied where it is pinned down (see ``_SETTING_MAPS``).

Everything else is handed back as a :class:`Fallback` with a reason, and the caller runs the
spglib path for that row, so the output is the spglib engine's by construction;
``benchmarks/gene_table_benchmark.py --agreement-all`` checks it on the whole snapshot.

Orbits are counted per (element, letter) from atom counts, not from moyo's ``orbits`` (which
may split an orbit when the input cell is a supercell): an orbit of letter L holds
multiplicity(L) atoms of the conventional cell.
"""

from __future__ import annotations

import functools
import json
from collections import Counter

import numpy as np

from ml.genes import (MP_SYMPREC, Gene, canonical_wyckoff, equivalent_configurations_of, reduced_formula,
                      wyckoff_json)
from ml.wyckoff import space_group_table

# The second, stricter search that a moyo space group must survive (fraction of symprec).
STABILITY_FACTOR = 0.5

FALLBACK_REASONS = (
    "moyo_error",  # moyopy raised
    "tolerance_adjusted",  # moyo had to change symprec to find a consistent group
    "no_space_group_label",  # no MP label to confirm the space group
    "space_group_differs_from_label",  # moyo's space group is not MP's
    "supercell_input",  # moyo reduces the input to a smaller primitive cell
    "orbit_count_not_integer",  # atoms per (element, letter) do not fill whole orbits
    "letter_not_in_space_group",
    "ambiguous_configuration",  # equivalent settings give other letters: origin choice matters
    "setting_not_learned",  # cubic: spglib's setting for this transformation not yet pinned down
    "space_group_unstable",  # another space group at STABILITY_FACTOR * symprec
    "invalid_gene",  # let spglib give today's exact rejection reason
)


class Fallback(Exception):
    """moyo's gene cannot be shown to equal spglib's; ``reason`` is one of FALLBACK_REASONS.

    ``observe(spglib_dataset)``, when set, lets the spglib run that replaces the row teach the
    cubic setting map (:func:`learn_setting`)."""

    def __init__(self, reason: str, detail: str = "", observe=None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.observe = observe


# Cubic groups: which alternative setting (letter permutation) turns moyo's letters into
# spglib's, per (Hall number, moyo's transformation from the input cell). A cubic metric has no
# free shape parameter, so that transformation fixes the input basis up to scale and rotation,
# and with it the symmetry operations spglib sees in the input basis. spglib's origin choice
# also follows the rounding of its operations' translations, which is exact only when an atom
# sits on the input origin; so a key exists only for cubic cells with an atom at (0, 0, 0).
# The map is learned in the running process from rows that went through spglib (each row
# narrows the candidate permutations to those consistent with its per-atom letters) and used
# only where every remaining candidate gives the same gene. Measured on the snapshot: 3,150
# cubic rows mapped, none differing from spglib, in three learning orders; the same scheme for
# non-cubic groups (free c/a, monoclinic angle ...) mapped ~1 % of them wrongly, and cubic cells
# without an atom at the origin 4 of ~300: those rows stay with spglib.
_CUBIC_FIRST = 195
_SETTING_MAPS: dict[tuple, list[dict[str, str]]] = {}


ORIGIN_ATOM_TOLERANCE = 1e-6  # fractional


def _setting_key(ds, frac_coords) -> tuple | None:
    frac = np.asarray(frac_coords, float)
    if np.abs(frac - np.round(frac)).max(axis=1).min() > ORIGIN_ATOM_TOLERANCE:
        return None  # no atom on the input origin
    linear = np.asarray(ds.std_linear, float) * 24
    origin = np.mod(np.asarray(ds.std_origin_shift, float), 1.0) * 48
    if np.abs(linear - np.round(linear)).max() > 1e-3 or np.abs(origin - np.round(origin)).max() > 0.05:
        return None  # not a rational transformation at this resolution: no key, spglib decides
    return (int(ds.hall_number), tuple(np.round(linear).astype(int).ravel().tolist()),
            tuple((np.round(origin).astype(int) % 48).tolist()))


def learn_setting(key: tuple, space_group: int, moyo_letters, spglib_ds) -> None:
    """Narrow the candidate permutations of ``key`` with one row's per-atom letters."""
    if int(spglib_ds.number) != space_group:
        return
    perms = _SETTING_MAPS.get(key)
    if perms is None:
        perms = list(space_group_table(space_group).alternatives)
    pairs = set(zip(moyo_letters, (str(w) for w in spglib_ds.wyckoffs)))
    _SETTING_MAPS[key] = [p for p in perms if all(p.get(m, m) == s for m, s in pairs)]


def _mapped(perm: dict[str, str], table, wyckoff: dict[str, list[str]]) -> str:
    out = {}
    for el, sites in wyckoff.items():
        letters = [perm.get(label.lstrip("0123456789"), label.lstrip("0123456789")) for label in sites]
        out[el] = [f"{table.multiplicity(x)}{x}" for x in letters]
    return wyckoff_json(out)


def _moyo_dataset(lattice, frac_coords, numbers, symprec: float):
    import moyopy

    cell = moyopy.Cell(np.asarray(lattice, float).tolist(), np.asarray(frac_coords, float).tolist(),
                       [int(z) for z in numbers])
    # Setting.spglib(): the smallest Hall number per space group, spglib's choice of setting.
    return moyopy.MoyoDataset(cell, symprec=symprec, setting=moyopy.Setting.spglib())


@functools.lru_cache(maxsize=65536)
def _is_unambiguous(space_group: int, wyckoff_text: str) -> bool:
    """True when every alternative setting maps the configuration onto itself."""
    return len(equivalent_configurations_of(space_group, wyckoff_text)) == 1


def moyo_gene(lattice, frac_coords, numbers, symbols, *, space_group_label: int | None,
              symprec: float = MP_SYMPREC) -> tuple[Gene, dict[str, int]]:
    """(gene, conventional-cell element counts) from moyopy, or raise :class:`Fallback`.

    ``numbers`` are atomic numbers, ``symbols`` the matching element symbols, and
    ``space_group_label`` the space group MP reports for the material (``None``: unknown, so
    the row falls back).
    """
    numbers = [int(z) for z in numbers]
    n_in = len(numbers)
    try:
        ds = _moyo_dataset(lattice, frac_coords, numbers, symprec)
    except Exception as exc:  # moyopy raises on cells it cannot analyse
        raise Fallback("moyo_error", str(exc)[:200]) from exc
    if abs(ds.symprec - symprec) > 1e-12:
        raise Fallback("tolerance_adjusted", f"moyo used symprec {ds.symprec}")
    sg = int(ds.number)
    if space_group_label is None:
        raise Fallback("no_space_group_label")
    if sg != int(space_group_label):
        raise Fallback("space_group_differs_from_label", f"moyo {sg}, label {space_group_label}")
    if len(ds.prim_std_cell.numbers) != n_in:
        raise Fallback("supercell_input", f"{n_in} atoms, primitive {len(ds.prim_std_cell.numbers)}")
    n_std = len(ds.std_cell.numbers)
    table = space_group_table(sg)
    per_site = Counter(zip(numbers, ds.wyckoffs))
    by_z = {z: s for z, s in zip(numbers, symbols)}
    wyckoff: dict[str, list[str]] = {}
    for (z, letter), k in sorted(per_site.items()):
        site = table.sites.get(letter)
        if site is None:
            raise Fallback("letter_not_in_space_group", f"{letter} in SG {sg}")
        atoms_in_conventional, rest = divmod(k * n_std, n_in)
        orbits, rest2 = divmod(atoms_in_conventional, site.multiplicity)
        if rest or rest2 or orbits == 0:
            raise Fallback("orbit_count_not_integer", f"{k} x {n_std}/{n_in} atoms on {site.multiplicity}{letter}")
        wyckoff.setdefault(by_z[z], []).extend([f"{site.multiplicity}{letter}"] * orbits)
    wyckoff = canonical_wyckoff(wyckoff)
    if not _is_unambiguous(sg, wyckoff_json(wyckoff)):
        key = _setting_key(ds, frac_coords) if sg >= _CUBIC_FIRST else None
        if key is None:
            raise Fallback("ambiguous_configuration")
        letters = [str(w) for w in ds.wyckoffs]

        def observe(spglib_ds, key=key, sg=sg, letters=letters):
            learn_setting(key, sg, letters, spglib_ds)

        perms = _SETTING_MAPS.get(key)
        images = {_mapped(p, table, wyckoff) for p in perms} if perms else set()
        if len(images) != 1:
            raise Fallback("setting_not_learned", observe=observe)
        wyckoff = json.loads(images.pop())
    try:
        stricter = _moyo_dataset(lattice, frac_coords, numbers, symprec * STABILITY_FACTOR).number
    except Exception as exc:
        raise Fallback("space_group_unstable", f"moyo failed at {symprec * STABILITY_FACTOR}: {exc}"[:200]) from exc
    if int(stricter) != sg:
        raise Fallback("space_group_unstable", f"{sg} at {symprec}, {stricter} at {symprec * STABILITY_FACTOR}")
    std_counts = Counter(by_z[int(z)] for z in ds.std_cell.numbers)
    try:
        formula = reduced_formula(dict(std_counts))
    except Exception as exc:
        raise Fallback("invalid_gene", str(exc)[:200]) from exc
    return Gene(formula, sg, wyckoff), dict(std_counts)
