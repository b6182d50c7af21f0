"""Energetics on the Materials Project scale: MP2020-corrected energies, formation energies,
energy above the convex hull of a snapshot, and structural novelty against a snapshot.

The scheme follows matbench-discovery: a total energy (from an MLIP trained on MP energies, or a
VASP run with MP input sets) is wrapped in a ``ComputedStructureEntry`` carrying the parameters
that ``MaterialsProject2020Compatibility`` checks (run type, Hubbard U values, POTCAR symbols of
``MPRelaxSet``), corrected, and turned into a formation energy with MP's elemental reference
energies. The hull is built from the snapshot's own (already corrected) MP formation energies, with
every element at zero. See ``SCHEME_NOTE`` for the caveats.

Plain pymatgen; no Dagster, no model loading. Data paths are always parameters.
"""

from __future__ import annotations

import gzip
import itertools
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Element, Structure

SCHEME_NOTE = """\
Energies on the Materials Project scale (as matbench-discovery computes them).
- Total energies come from an MLIP trained on MP (GGA/GGA+U) energies; they inherit the model's
  error (tens of meV/atom). CHGNet 0.3.0 is fitted to MP2020-*corrected* MPtrj energies, so its
  energies are used as they are (correcting again put CaTiO3 0.41 eV/atom below MP); models fitted
  to raw energies (SevenNet-0) are corrected as below (see dft.pipeline.ENERGY_SCALE).
- MaterialsProject2020Compatibility is applied to raw energies to a ComputedStructureEntry that claims MP's
  MPRelaxSet settings: run_type GGA+U with MP's U values (Co 3.32, Cr 3.7, Fe 5.3, Mn 3.9,
  Mo 4.38, Ni 6.2, V 3.25, W 6.2 eV) when O or F is the most electronegative element and such a
  metal is present, GGA otherwise; PBE POTCAR symbols of MPRelaxSet. The scheme adds anion
  corrections (oxide/peroxide/superoxide by O-O distances, S, F, Cl, Br, I, N, Se, Si, Sb, Te, H
  when they are anions) and GGA/GGA+U mixing corrections for the U metals in oxides/fluorides.
- Formation energies subtract MP's elemental reference energies per atom (lowest-energy MP entry
  per element, queried 2023-02-07); these are uncorrected GGA energies, consistent with MP2020.
- E_hull is measured against a PhaseDiagram of the snapshot's MP formation energies (already
  MP-corrected, MP's own mixing scheme; elements at 0 eV/atom). The snapshot is a subset of MP,
  so hulls can be shallower than MP's (E_hull from here <= MP's value); negative E_hull means a
  candidate would lie below the snapshot hull. Leave-one-out removes materials as if unpublished.
- GPAW (or any non-VASP) energies are NOT on this scale: they need GPAW's own elemental
  references and competing phases computed with the same settings; MP2020 does not apply.
"""

# U values (eV) of MP's input set, keyed by the most electronegative element (O or F):
# the same table that MaterialsProject2020Compatibility checks against.
_MP2020_ANION_U: dict[str, dict[str, float]] | None = None


def _mp_u_values() -> dict[str, dict[str, float]]:
    global _MP2020_ANION_U
    if _MP2020_ANION_U is None:
        from pymatgen.io.vasp.sets import MPRelaxSet

        _MP2020_ANION_U = {k: dict(v) for k, v in MPRelaxSet.CONFIG["INCAR"]["LDAUU"].items()}
    return _MP2020_ANION_U


# ----------------------------------------------------------------------------- references


def load_elemental_references(path: str | Path) -> dict[str, float]:
    """Energy per atom (eV) of each element's lowest-energy entry in a pymatgen ``ComputedEntry``
    JSON file (gzipped or plain): a dict ``{element: entry}`` or a list of entries."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        data = json.load(fh)
    entries = data.values() if isinstance(data, dict) else data
    refs: dict[str, float] = {}
    for entry in entries:
        comp = Composition(entry["composition"])
        if not comp.is_element:
            continue
        symbol = comp.elements[0].symbol
        e_per_atom = float(entry["energy"]) / comp.num_atoms
        if symbol not in refs or e_per_atom < refs[symbol]:
            refs[symbol] = e_per_atom
    if not refs:
        raise ValueError(f"no elemental entries in {path}")
    return refs


# ----------------------------------------------------------------------------- MP2020


@dataclass(frozen=True)
class CorrectedEnergy:
    """Result of ``mp_compatible_energy``. ``corrected_energy`` is None when MP2020 rejects the
    entry; ``reason`` then says why. ``correction`` is the total correction (eV, per cell)."""

    corrected_energy: float | None
    correction: float | None
    reason: str | None = None
    run_type: str = "GGA"
    hubbards: dict[str, float] = field(default_factory=dict)
    adjustments: tuple[tuple[str, float], ...] = ()

    @property
    def ok(self) -> bool:
        return self.corrected_energy is not None


def mp_run_parameters(composition: Composition) -> dict:
    """The ``ComputedEntry.parameters`` an MPRelaxSet run of this composition would carry:
    run type, Hubbard U values, POTCAR symbols."""
    from pymatgen.io.vasp.sets import MPRelaxSet

    comp = Composition(composition)
    elements = sorted(comp.elements, key=lambda el: el.X)
    most_electroneg = elements[-1].symbol
    u_table = _mp_u_values().get(most_electroneg, {})
    hubbards = {el.symbol: float(u_table[el.symbol]) for el in comp.elements if u_table.get(el.symbol)}
    potcars = MPRelaxSet.CONFIG["POTCAR"]

    def _symbol(el: str) -> str:
        spec = potcars.get(el)
        if isinstance(spec, dict):
            spec = spec.get("symbol")
        return f"PAW_PBE {spec or el}"

    return {
        "run_type": "GGA+U" if hubbards else "GGA",
        "is_hubbard": bool(hubbards),
        "hubbards": hubbards,
        "potcar_symbols": [_symbol(el.symbol) for el in comp.elements],
        "software": "vasp",
    }


def mp_compatible_energy(structure: Structure, total_energy: float) -> CorrectedEnergy:
    """MP2020-corrected total energy (eV per cell of ``structure``) of an MP-like raw energy.

    Never raises for an incompatible entry: returns ``corrected_energy=None`` with the reason."""
    from pymatgen.entries.compatibility import CompatibilityError, MaterialsProject2020Compatibility
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    params = mp_run_parameters(structure.composition)
    entry = ComputedStructureEntry(structure, float(total_energy), parameters=params)
    base = {"run_type": params["run_type"], "hubbards": params["hubbards"]}
    try:
        processed = MaterialsProject2020Compatibility(check_potcar=True).process_entry(
            entry, clean=True, on_error="raise"
        )
    except (CompatibilityError, ValueError, KeyError) as exc:
        return CorrectedEnergy(None, None, reason=f"MP2020 rejected entry: {exc}"[:500], **base)
    if processed is None:
        return CorrectedEnergy(None, None, reason="MP2020 rejected entry (no reason given)", **base)
    adjustments = tuple((adj.name, float(adj.value)) for adj in processed.energy_adjustments)
    return CorrectedEnergy(float(processed.energy), float(processed.correction), None,
                           adjustments=adjustments, **base)


def formation_energy_per_atom(composition: Composition | str, corrected_total_energy: float,
                              refs: Mapping[str, float]) -> float:
    """(E - sum_el n_el * mu_el) / N with ``refs`` from ``load_elemental_references``."""
    comp = Composition(composition)
    missing = [el.symbol for el in comp.elements if el.symbol not in refs]
    if missing:
        raise ValueError(f"no elemental reference energy for {missing}")
    e_refs = sum(amount * refs[el.symbol] for el, amount in comp.items())
    return (float(corrected_total_energy) - e_refs) / comp.num_atoms


# ----------------------------------------------------------------------------- snapshot input

_ELEMENT_SYMBOL = re.compile(r"[A-Z][a-z]?")


def _read_snapshot_columns(path: str | Path, columns: list[str]) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=columns).to_pylist()


def _parse_composition(formula_or_composition) -> Composition:
    if isinstance(formula_or_composition, Structure):
        return formula_or_composition.composition
    try:
        comp = Composition(formula_or_composition)
    except Exception as exc:  # pymatgen raises ValueError or KeyError-like errors
        raise ValueError(f"cannot parse composition {formula_or_composition!r}: {exc}") from exc
    if comp.num_atoms <= 0:
        raise ValueError(f"empty composition {formula_or_composition!r}")
    for el in comp.elements:
        if not isinstance(el, Element):
            raise ValueError(f"{el} in {formula_or_composition!r} is not a plain element")
    return comp


# ----------------------------------------------------------------------------- convex hull


class SnapshotHull:
    """Convex hull of a snapshot's MP formation energies, one ``PhaseDiagram`` per chemical
    system, built lazily and cached. Elements sit at 0 eV/atom.

    ``entries``: ``(material_id, formula, formation_energy_per_atom)`` triples; rows whose energy
    is None are skipped. ``exclude_ids``: materials treated as never published (leave-one-out).
    """

    def __init__(self, entries: Iterable[tuple[str, str, float | None]], exclude_ids: Iterable[str] = ()):
        excluded = set(exclude_ids)
        # formulas stay strings until a diagram needs them (parsing 25k Compositions costs seconds)
        self._by_elements: dict[frozenset[str], list[tuple[str, str, float]]] = defaultdict(list)
        self.known_elements: set[str] = set()
        for material_id, formula, ef in entries:
            if ef is None:
                continue
            key = frozenset(_ELEMENT_SYMBOL.findall(formula))
            self.known_elements.update(key)
            if material_id in excluded:
                continue
            self._by_elements[key].append((material_id, formula, float(ef)))
        self.excluded_ids = frozenset(excluded)
        self._diagrams: dict[frozenset[str], PhaseDiagram] = {}

    @classmethod
    def from_parquet(cls, path: str | Path, exclude_ids: Iterable[str] = ()) -> SnapshotHull:
        rows = _read_snapshot_columns(path, ["material_id", "formula_pretty", "formation_energy_per_atom"])
        return cls(((r["material_id"], r["formula_pretty"], r["formation_energy_per_atom"]) for r in rows),
                   exclude_ids=exclude_ids)

    def phase_diagram(self, elements: Iterable[str]) -> PhaseDiagram:
        key = frozenset(elements)
        unknown = sorted(key - self.known_elements)
        if unknown:
            raise ValueError(f"element(s) {unknown} do not occur in the snapshot; no hull for them")
        if key not in self._diagrams:
            entries = [PDEntry(Composition(el), 0.0, name=el) for el in sorted(key)]
            for size in range(1, len(key) + 1):
                for subset in itertools.combinations(sorted(key), size):
                    for material_id, formula, ef in self._by_elements.get(frozenset(subset), ()):
                        comp = Composition(formula)
                        entries.append(PDEntry(comp, ef * comp.num_atoms, name=material_id))
            self._diagrams[key] = PhaseDiagram(entries)
        return self._diagrams[key]

    def e_above_hull(self, formula_or_composition, formation_energy_per_atom: float) -> float:
        """Energy above the snapshot hull (eV/atom); negative below it."""
        comp = _parse_composition(formula_or_composition)
        diagram = self.phase_diagram(el.symbol for el in comp.elements)
        entry = PDEntry(comp, float(formation_energy_per_atom) * comp.num_atoms, name="candidate")
        _, e_hull = diagram.get_decomp_and_e_above_hull(entry, allow_negative=True)
        return float(e_hull)

    def hull_energy_per_atom(self, formula_or_composition) -> float:
        """Formation energy per atom of the hull at this composition."""
        comp = _parse_composition(formula_or_composition)
        diagram = self.phase_diagram(el.symbol for el in comp.elements)
        return float(diagram.get_hull_energy_per_atom(comp))


# ----------------------------------------------------------------------------- novelty


class NoveltyChecker:
    """Structural novelty against a snapshot: a structure is *not* novel when pymatgen's
    ``StructureMatcher`` with its default tolerances (ltol=0.2, stol=0.3, angle_tol=5 deg,
    primitive_cell=True, scale=True: volume-normalised, so a uniformly strained relaxation still
    matches) finds a snapshot structure of the same reduced formula that matches it.

    ``rows``: ``(material_id, reduced_formula, cif)`` triples (MP's ``formula_pretty`` is pymatgen's
    reduced formula); CIFs are parsed lazily, only for the reduced formulas asked about, and cached. ``exclude_ids``: treated as never published.
    """

    def __init__(self, rows: Iterable[tuple[str, str, str]], exclude_ids: Iterable[str] = ()):
        excluded = set(exclude_ids)
        self._cifs: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for material_id, formula, cif in rows:
            if material_id in excluded or not cif:
                continue
            self._cifs[formula].append((material_id, cif))
        self.excluded_ids = frozenset(excluded)
        self._parsed: dict[str, list[tuple[str, Structure]]] = {}
        self.parse_failures: dict[str, str] = {}
        from pymatgen.analysis.structure_matcher import StructureMatcher

        self.matcher = StructureMatcher()

    @classmethod
    def from_parquet(cls, path: str | Path, exclude_ids: Iterable[str] = ()) -> NoveltyChecker:
        rows = _read_snapshot_columns(path, ["material_id", "formula_pretty", "cif"])
        return cls(((r["material_id"], r["formula_pretty"], r["cif"]) for r in rows), exclude_ids=exclude_ids)

    def references(self, reduced_formula: str) -> list[tuple[str, Structure]]:
        if reduced_formula not in self._parsed:
            parsed = []
            for material_id, cif in self._cifs.get(reduced_formula, ()):
                try:
                    parsed.append((material_id, Structure.from_str(cif, fmt="cif")))
                except Exception as exc:  # a bad CIF is recorded, never fatal
                    self.parse_failures[material_id] = f"{type(exc).__name__}: {exc}"[:300]
            self._parsed[reduced_formula] = parsed
        return self._parsed[reduced_formula]

    def match(self, structure: Structure) -> tuple[bool | None, str | None]:
        """``(is_novel, matched_material_id)``; the first matching snapshot material wins.
        ``is_novel`` is None (unknown) when nothing matched but a snapshot structure of the same
        reduced formula could not be parsed (see :meth:`check` for the reason)."""
        novel, material_id, _ = self.check(structure)
        return novel, material_id

    def check(self, structure: Structure) -> tuple[bool | None, str | None, str]:
        """``(is_novel, matched_material_id, note)``. A match is a match (``False``, its id);
        without one the candidate is novel (``True``) only when every snapshot structure of its
        reduced formula was parsed: a reference that failed to parse could be the same crystal,
        so the answer is then unknown (``None``) and ``note`` names the unparsed references."""
        formula = structure.composition.reduced_formula
        for material_id, reference in self.references(formula):
            if self.matcher.fit(structure, reference):
                return False, material_id, ""
        unparsed = {mid: self.parse_failures[mid] for mid, _ in self._cifs.get(formula, ())
                    if mid in self.parse_failures}
        if unparsed:
            listed = "; ".join(f"{mid}: {why}" for mid, why in sorted(unparsed.items())[:3])
            return None, None, (f"novelty unknown: {len(unparsed)} snapshot structure(s) of {formula} "
                                f"could not be parsed ({listed})")
        return True, None, ""
