"""Wyckoff genes: composition + space group + Wyckoff site occupancy.

A gene is ``Gene(formula="CaTiO3", space_group=62, wyckoff={"Ca": ("4c",), "Ti": ("4b",),
"O": ("4c", "8d")})``. Its canonical JSON sorts elements and sites, so two genes are equal when
their strings are; :func:`gene_key` additionally folds the equivalent Wyckoff configurations of
the space group's alternative settings (PyXtal ``Group.get_alternatives``) into one key — the
paper's Table 3 (CaTiO3 SG 62 with Ti on 4a or 4b is one gene).

Genes come from structures through spglib at MP's tolerances (symprec 0.1, angle 5 deg), the
same symmetry search that pymatgen's ``SpacegroupAnalyzer(symprec=0.1)`` runs.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ml.wyckoff import LETTER_INDEX, N_SPACE_GROUPS, parse_site_label, space_group_table

MP_SYMPREC = 0.1
MP_ANGLE_TOLERANCE = 5.0


class GeneError(ValueError):
    """A structure or gene that is not a valid Wyckoff gene; ``reason`` is machine-readable."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _site_sort_key(label: str):
    try:
        mult, letter = parse_site_label(label)
    except ValueError:
        return (999, 0, label)  # unparseable labels sort last; validate_gene reports them
    return (LETTER_INDEX.get(letter, 99), mult, label)


def canonical_wyckoff(wyckoff: dict) -> dict[str, list[str]]:
    """Elements sorted by symbol, each element's site labels sorted by Wyckoff letter."""
    return {el: sorted((str(s) for s in sites), key=_site_sort_key) for el, sites in sorted(wyckoff.items())}


def wyckoff_json(wyckoff: dict) -> str:
    """Canonical JSON text, e.g. ``{"Ba": ["3a"], "O": ["9b"], "Ti": ["3a"]}``."""
    return json.dumps(canonical_wyckoff(wyckoff))


@dataclass(frozen=True)
class Gene:
    formula: str
    space_group: int
    wyckoff: dict = field(hash=False, compare=False)

    @property
    def wyckoff_json(self) -> str:
        return wyckoff_json(self.wyckoff)

    @property
    def key(self) -> str:
        return gene_key(self.formula, self.space_group, self.wyckoff)

    def __eq__(self, other) -> bool:  # equality is configuration equality, not dict identity
        return (
            isinstance(other, Gene)
            and self.formula == other.formula
            and self.space_group == other.space_group
            and self.wyckoff_json == other.wyckoff_json
        )

    def __hash__(self) -> int:
        return hash((self.formula, self.space_group, self.wyckoff_json))

    @classmethod
    def from_json(cls, formula: str, space_group: int, wyckoff: str | dict) -> "Gene":
        w = json.loads(wyckoff) if isinstance(wyckoff, str) else wyckoff
        return cls(formula, int(space_group), canonical_wyckoff(w))


def _checked_site(table, element: str, label: str) -> tuple[int, str]:
    """(multiplicity as written, letter) of a site label whose letter exists in ``table``."""
    try:
        mult, letter = parse_site_label(label)
    except ValueError as exc:
        raise GeneError("bad_wyckoff_label", f"{element}: {label!r}") from exc
    if letter not in table.sites:
        raise GeneError("letter_not_in_space_group", f"{element} {label} in SG {table.number}")
    return mult, letter


def equivalent_configurations(space_group: int, wyckoff: dict) -> list[str]:
    """Canonical JSON of every equivalent configuration (one per alternative setting), unique."""
    table = space_group_table(space_group)
    # labels parsed and checked once; each image is written in canonical form directly
    # (elements by symbol, sites by letter; a letter fixes its multiplicity)
    parsed = [(el, [_checked_site(table, el, str(label))[1] for label in sites])
              for el, sites in sorted(wyckoff.items())]
    seen: dict[str, None] = {}
    for perm in table.alternatives:
        image = {}
        for el, letters in parsed:
            mapped = sorted((perm.get(letter, letter) for letter in letters), key=LETTER_INDEX.__getitem__)
            image[el] = [f"{table.multiplicity(letter)}{letter}" for letter in mapped]
        seen.setdefault(json.dumps(image), None)
    return list(seen)


@functools.lru_cache(maxsize=65536)
def equivalent_configurations_of(space_group: int, wyckoff_text: str) -> tuple[str, ...]:
    """:func:`equivalent_configurations` of a canonical JSON configuration (cached)."""
    return tuple(equivalent_configurations(space_group, json.loads(wyckoff_text)))


def gene_key(formula: str, space_group: int, wyckoff: dict) -> str:
    """One key for a gene and all its equivalent configurations: ``formula|sg|min(json)``,
    the formula normalized to pymatgen's reduced formula."""
    configurations = equivalent_configurations_of(int(space_group), wyckoff_json(wyckoff))
    return f"{normalize_formula(formula)}|{int(space_group)}|{min(configurations)}"


def reduced_formula(counts: dict[str, float]) -> str:
    """pymatgen's reduced formula of element counts (elements ordered by electronegativity)."""
    return _reduced_formula_of(tuple(sorted(counts.items())))


@functools.lru_cache(maxsize=65536)
def _reduced_formula_of(items: tuple) -> str:
    from pymatgen.core import Composition

    return Composition(dict(items)).reduced_formula


@functools.lru_cache(maxsize=65536)
def normalize_formula(formula: str) -> str:
    """Any spelling of a formula -> pymatgen's reduced formula ('CuInS2' -> 'InCuS2')."""
    from pymatgen.core import Composition, Element

    try:
        comp = Composition(formula)
    except Exception as exc:
        raise GeneError("unknown_element", f"{formula}: {exc}") from exc
    bad = [str(el) for el in comp.elements if not Element.is_valid_symbol(str(el))]
    if bad or not comp.elements:
        raise GeneError("unknown_element", f"{formula}: {bad or 'no elements'}")
    return comp.reduced_formula


@dataclass(frozen=True)
class GeneSummary:
    """Derived numbers of a valid gene."""

    multiplicities: dict[str, list[int]]  # per element, aligned with the canonical site order
    counts: dict[str, int]  # atoms per element in the conventional cell
    atoms_per_cell: int
    total_dof: int


def validate_gene(formula: str, space_group: int, wyckoff: dict) -> GeneSummary:
    """Check a gene; return its summary or raise :class:`GeneError` with the reason.

    Rules: a space group 1..230; every label parses, its letter exists in the space group and
    its multiplicity matches the table; no DoF-0 position is occupied twice (two atoms on the
    same fixed point); the multiplicities reproduce the formula.
    """
    try:
        sg = int(space_group)
    except (TypeError, ValueError):
        raise GeneError("space_group_out_of_range", repr(space_group)) from None
    if not 1 <= sg <= N_SPACE_GROUPS:
        raise GeneError("space_group_out_of_range", str(space_group))
    if not wyckoff or any(not sites for sites in wyckoff.values()):
        raise GeneError("empty_gene", json.dumps(wyckoff))
    table = space_group_table(sg)
    canon = {}
    fixed_sites: Counter = Counter()
    total_dof = 0
    counts: dict[str, int] = {}
    for el, sites in canonical_wyckoff(wyckoff).items():
        mults = []
        for label in sites:
            mult, letter = _checked_site(table, el, label)
            info = table.sites[letter]
            if info.multiplicity != mult:
                raise GeneError(
                    "multiplicity_mismatch", f"{el} {label}: SG {sg} {letter} has multiplicity {info.multiplicity}"
                )
            if info.dof == 0:
                fixed_sites[letter] += 1
            total_dof += info.dof
            mults.append(mult)
        canon[el] = mults
        counts[el] = sum(mults)
    doubled = sorted(letter for letter, n in fixed_sites.items() if n > 1)
    if doubled:
        raise GeneError("dof0_site_occupied_twice", f"SG {sg}: {','.join(doubled)}")
    try:
        formula_from_sites = reduced_formula(counts)
    except Exception as exc:  # unknown element symbol
        raise GeneError("unknown_element", str(exc)) from exc
    if formula and formula_from_sites != normalize_formula(formula):
        raise GeneError("composition_mismatch", f"sites give {formula_from_sites}, formula is {formula}")
    return GeneSummary(canon, counts, sum(counts.values()), total_dof)


def spglib_dataset(lattice, frac_coords, numbers, *, symprec: float = MP_SYMPREC,
                   angle_tolerance: float = MP_ANGLE_TOLERANCE):
    """spglib's symmetry dataset of a cell; :class:`GeneError` ``symmetry_failed`` if none."""
    import spglib

    try:
        ds = spglib.get_symmetry_dataset(
            (np.asarray(lattice, float), np.asarray(frac_coords, float), np.asarray(numbers, dtype=int)),
            symprec=symprec,
            angle_tolerance=angle_tolerance,
        )
    except Exception as exc:  # spglib raises SpglibError on degenerate cells
        raise GeneError("symmetry_failed", str(exc)) from exc
    if ds is None:
        raise GeneError("symmetry_failed", "spglib found no symmetry dataset")
    return ds


def gene_from_dataset(ds, numbers) -> tuple[Gene, GeneSummary]:
    """Gene from spglib's dataset of a cell with atomic ``numbers`` (see :func:`gene_from_cell`)."""
    from ml.elements import vocabulary

    symbols = vocabulary()
    numbers = np.asarray(numbers, dtype=int)
    sg = int(ds.number)
    table = space_group_table(sg)
    orbits = np.asarray(ds.crystallographic_orbits)
    wyckoff: dict[str, list[str]] = {}
    for rep in np.unique(orbits):
        letter = str(ds.wyckoffs[rep])
        if letter not in table.sites:
            raise GeneError("letter_not_in_space_group", f"spglib letter {letter} in SG {sg}")
        symbol = symbols[int(numbers[rep]) - 1]
        wyckoff.setdefault(symbol, []).append(f"{table.multiplicity(letter)}{letter}")
    std_counts = Counter(symbols[int(z) - 1] for z in ds.std_types)
    formula = reduced_formula(dict(std_counts))
    summary = validate_gene(formula, sg, wyckoff)  # raises on DoF-0 doubles, bad composition
    if summary.counts != dict(std_counts):
        raise GeneError(
            "multiplicity_mismatch",
            f"sites give {summary.counts}, conventional cell has {dict(std_counts)}",
        )
    return Gene(formula, sg, canonical_wyckoff(wyckoff)), summary


def gene_from_cell(lattice, frac_coords, numbers, *, symprec: float = MP_SYMPREC,
                   angle_tolerance: float = MP_ANGLE_TOLERANCE) -> tuple[Gene, GeneSummary]:
    """Gene of a periodic cell (lattice rows in Angstrom, fractional coordinates, atomic numbers).

    spglib finds the space group and the Wyckoff letter of each crystallographic orbit in the
    standardized setting; each orbit is one occupied site. Multiplicities come from PyXtal's
    table and must reproduce the standardized conventional cell's composition.
    """
    ds = spglib_dataset(lattice, frac_coords, numbers, symprec=symprec, angle_tolerance=angle_tolerance)
    return gene_from_dataset(ds, numbers)


def gene_from_structure(structure, **kwargs) -> tuple[Gene, GeneSummary]:
    """Gene of a pymatgen ``Structure`` (ordered)."""
    if not structure.is_ordered:
        raise GeneError("disordered_structure", structure.composition.formula)
    return gene_from_cell(
        structure.lattice.matrix, structure.frac_coords, [site.specie.Z for site in structure], **kwargs
    )
