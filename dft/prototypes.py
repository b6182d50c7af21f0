"""Prototype-seeded trial structures: a known crystal of the same Wyckoff pattern, re-elemented.

Random PyXtal trials are a weak start for genes with free coordinates: every one of them can
relax into a local minimum. Where the snapshot holds a material with the same space group and
Wyckoff configuration but other elements (e.g. another perovskite for a perovskite gene), its
relaxed coordinates and cell shape are a far better start: substitute the elements, rescale the
cell, relax it beside the random trials.

* **Pattern**: a gene with its elements replaced by anonymous slots, canonical over the space
  group's alternative settings (:func:`gene_pattern`): ``227|[["16c"], ["16d"], ["8b", "48f"]]``.
  Two genes of one pattern differ only by which element sits on which site list.
* **Element map** (:func:`element_maps`): a prototype element goes to the target element with the
  same site list (after the alternative setting that makes the two patterns coincide); when
  several elements share a site list every assignment is a candidate. The substituted structure's
  gene is checked to be the target gene (same :func:`ml.genes.gene_key`); a mismatch is a
  recorded verdict, never a silent trial.
* **Choice**: at most ``per_gene`` prototypes (default 2), closest in chemistry first: the sum
  over mapped element pairs of |Δ Mendeleev number| (Pettifor's chemical scale, pymatgen
  ``Element.mendeleev_no``), then the lower E_hull, then material_id. A LOO partition passes its
  held-out material ids (the target and its equivalent configurations) as ``exclude_ids``: they
  are never a prototype.
* **Cell**: the prototype's MP structure, symmetrized to its space group at MP's tolerance
  (``SpacegroupAnalyzer(symprec=0.1).get_refined_structure()``: exact symmetry, conventional
  standard cell), species substituted, shape kept, volume rescaled by :func:`scaled_volume`
  (``VOLUME_RULE``, chosen by measurement in ``benchmarks/prototype_volume.py``).
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ml.genes import GeneError, gene_key, normalize_formula
from ml.wyckoff import parse_site_label, space_group_table

ORIGIN_RANDOM = "random"
ORIGIN_PROTOTYPE = "prototype:"  # + material_id
DEFAULT_PER_GENE = 2
MP_SYMPREC = 0.1


def _site_key(label: str):
    mult, letter = parse_site_label(label)
    return (mult, letter)


def _mapped_lists(table, wyckoff: dict, perm: dict) -> dict[str, tuple[str, ...]]:
    out = {}
    for el, sites in wyckoff.items():
        mapped = []
        for label in sites:
            _, letter = parse_site_label(label)
            new = perm.get(letter, letter)
            mapped.append(f"{table.multiplicity(new)}{new}")
        out[el] = tuple(sorted(mapped, key=_site_key))
    return out


def gene_pattern(space_group: int, wyckoff: dict | str) -> str:
    """The gene with elements replaced by anonymous slots, canonical over alternative settings."""
    wyckoff = json.loads(wyckoff) if isinstance(wyckoff, str) else wyckoff
    table = space_group_table(int(space_group))
    best = min(json.dumps(sorted(_mapped_lists(table, wyckoff, perm).values())) for perm in table.alternatives)
    return f"{int(space_group)}|{best}"


def element_maps(space_group: int, prototype_wyckoff: dict, target_wyckoff: dict) -> list[dict[str, str]]:
    """Every prototype-element -> target-element map under which the prototype's configuration
    (in some alternative setting) is the target's; [] when the patterns differ."""
    table = space_group_table(int(space_group))
    target = {el: tuple(sorted(sites, key=_site_key)) for el, sites in target_wyckoff.items()}
    maps: dict[tuple, dict] = {}
    for perm in table.alternatives:
        proto = _mapped_lists(table, prototype_wyckoff, perm)
        if sorted(proto.values()) != sorted(target.values()):
            continue
        by_list: dict[tuple, tuple[list, list]] = {}
        for el, lst in proto.items():
            by_list.setdefault(lst, ([], []))[0].append(el)
        for el, lst in target.items():
            by_list[lst][1].append(el)
        groups = [(sorted(p), sorted(t)) for p, t in by_list.values()]
        for choice in itertools.product(*(itertools.permutations(t) for _, t in groups)):
            mapping = {p: t for (ps, _), ts in zip(groups, choice) for p, t in zip(ps, ts)}
            maps[tuple(sorted(mapping.items()))] = mapping
    return [maps[k] for k in sorted(maps)]


def chemical_distance(mapping: dict[str, str]) -> int:
    """Sum over mapped element pairs of |Δ Mendeleev number| (Pettifor's chemical scale)."""
    from pymatgen.core import Element

    return int(sum(abs(Element(a).mendeleev_no - Element(b).mendeleev_no) for a, b in mapping.items()))


# --- volume of the substituted cell ---------------------------------------------------------
# "atomic_volume": V_new = V_proto * sum_sites r(new)^3 / sum_sites r(old)^3 with pymatgen's
# empirical atomic radii (Slater 1964), a sum-of-atomic-volumes estimate; "covalent_volume" the
# same with ASE's covalent radii (Cordero 2008); "keep" the prototype's volume. Measured against
# MP's relaxed cells over snapshot ternaries and their closest prototype
# (benchmarks/prototype_volume.py, 277 targets): start-cell |volume/atom error| median 3.8 %
# (atomic) / 3.2 % (covalent) / 5.0 % (keep); max lattice-parameter error within 3 % for 61 % /
# 64 % / 48 %. A 7-point CHGNet volume scan starts closer (median 1.7 % vs 5.8 % for atomic on 16
# targets, 22 s each under load) but after a symmetry-kept CHGNet relaxation the starts end alike
# (10 targets: median lattice error 1.2 % keep, 1.2 % atomic, 1.4 % scan; 70 % within 3 % each),
# so the cheap estimate is the default.
VOLUME_RULE = "atomic_volume"
VOLUME_RULES = ("atomic_volume", "covalent_volume", "keep")


def _radius(symbol: str, kind: str = "atomic") -> float:
    if kind == "covalent":
        from ase.data import atomic_numbers, covalent_radii

        return float(covalent_radii[atomic_numbers[symbol]])
    from pymatgen.core import Element

    el = Element(symbol)
    r = el.atomic_radius or el.atomic_radius_calculated
    return float(r) if r else 1.5


def scaled_volume(structure, mapping: dict[str, str], rule: str = VOLUME_RULE) -> float:
    """Volume of ``structure`` (prototype species) after substituting ``mapping`` (module docstring)."""
    if rule not in VOLUME_RULES:
        raise ValueError(f"volume rule must be one of {VOLUME_RULES}, got {rule!r}")
    if rule == "keep":
        return float(structure.volume)
    kind = rule.split("_")[0]
    old = sum(_radius(site.specie.symbol, kind) ** 3 for site in structure)
    new = sum(_radius(mapping.get(site.specie.symbol, site.specie.symbol), kind) ** 3 for site in structure)
    return float(structure.volume) * new / old


def substituted_structure(cif: str, mapping: dict[str, str], *, rule: str = VOLUME_RULE):
    """The prototype's symmetrized conventional cell with ``mapping`` applied and its volume rescaled."""
    from pymatgen.core import Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    refined = SpacegroupAnalyzer(Structure.from_str(cif, fmt="cif"), symprec=MP_SYMPREC).get_refined_structure()
    volume = scaled_volume(refined, mapping, rule)
    out = refined.copy()
    out.replace_species({k: v for k, v in mapping.items()})
    out.scale_lattice(volume)
    return out


# --- the index of prototypes and the trials they seed -----------------------------------------
@dataclass(frozen=True)
class Prototype:
    material_id: str
    formula: str
    space_group: int
    wyckoff: dict = field(hash=False, compare=False)
    cif: str = field(default="", hash=False, compare=False, repr=False)
    e_above_hull: float | None = None


@dataclass
class PrototypeChoice:
    prototype: Prototype
    mapping: dict[str, str]
    distance: int


class PrototypeIndex:
    """Snapshot materials by gene pattern (rows: material_id, formula, space_group, wyckoff JSON,
    cif, optional energy_above_hull); ``exclude_ids`` never serve as a prototype."""

    def __init__(self, rows, exclude_ids=()):
        excluded = set(exclude_ids)
        self.by_pattern: dict[str, list[Prototype]] = {}
        for r in rows:
            if r["material_id"] in excluded or not r.get("cif"):
                continue
            w = json.loads(r["wyckoff"]) if isinstance(r["wyckoff"], str) else r["wyckoff"]
            try:
                pattern = gene_pattern(int(r["space_group"]), w)
            except (ValueError, KeyError):
                continue
            p = Prototype(r["material_id"], r["formula"], int(r["space_group"]), w, r["cif"],
                          r.get("energy_above_hull"))
            self.by_pattern.setdefault(pattern, []).append(p)

    def choose(self, formula: str, space_group: int, wyckoff: dict, per_gene: int = DEFAULT_PER_GENE
               ) -> list[PrototypeChoice]:
        """Up to ``per_gene`` prototypes of the gene, closest in chemistry first (module docstring);
        never a material of the gene itself (same formula and gene key)."""
        wyckoff = json.loads(wyckoff) if isinstance(wyckoff, str) else wyckoff
        try:
            own_key = gene_key(formula, space_group, wyckoff)
            pattern = gene_pattern(space_group, wyckoff)
        except (GeneError, ValueError, KeyError):
            return []
        reduced = normalize_formula(formula)
        choices = []
        for p in self.by_pattern.get(pattern, []):
            if p.formula == reduced and gene_key(p.formula, p.space_group, p.wyckoff) == own_key:
                continue  # the gene itself, known: not a prototype of itself
            maps = element_maps(space_group, p.wyckoff, wyckoff)
            if not maps:
                continue
            best = min(maps, key=lambda m: (chemical_distance(m), sorted(m.items())))
            choices.append(PrototypeChoice(p, best, chemical_distance(best)))
        choices.sort(key=lambda c: (c.distance, c.prototype.e_above_hull if c.prototype.e_above_hull is not None
                                    else float("inf"), c.prototype.material_id))
        return choices[:max(0, int(per_gene))]


def prototype_trials(gene: dict, index: PrototypeIndex, *, out_dir: Path, first_trial: int,
                     per_gene: int = DEFAULT_PER_GENE, min_distance: float = 0.5,
                     rule: str = VOLUME_RULE) -> list[dict]:
    """Trial rows (the ``trial_structures`` shape, ``origin`` = ``prototype:<material_id>``) of one
    gene (formula, space_group, wyckoff JSON, gene_key), numbered from ``first_trial``; CIFs under
    ``out_dir/<gene hash>/``. Verdicts: ok, too_close, prototype_mismatch (the substituted cell's
    gene is not this gene), prototype_failed (anything else)."""
    from dft.pipeline import gene_hash
    from dft.trials import min_interatomic_distance, space_group_of
    from ml.genes import gene_from_structure

    wyckoff = json.loads(gene["wyckoff"]) if isinstance(gene["wyckoff"], str) else gene["wyckoff"]
    rows = []
    for j, choice in enumerate(index.choose(gene["formula"], int(gene["space_group"]), wyckoff, per_gene)):
        start = time.perf_counter()
        trial = first_trial + j
        row = {"formula": gene["formula"], "space_group": int(gene["space_group"]),
               "wyckoff": gene["wyckoff"] if isinstance(gene["wyckoff"], str) else json.dumps(wyckoff, sort_keys=True),
               "gene_key": gene["gene_key"], "trial": trial, "seed": None,
               "origin": ORIGIN_PROTOTYPE + choice.prototype.material_id, "verdict": "ok", "reason": "",
               "min_distance": None, "space_group_built": None, "n_atoms": None, "cif_path": None}
        try:
            structure = substituted_structure(choice.prototype.cif, choice.mapping, rule=rule)
            built, _ = gene_from_structure(structure)
            if built.key != gene["gene_key"]:
                row.update(verdict="prototype_mismatch", reason=f"prototype_mismatch: built {built.key}")
            else:
                dmin = min_interatomic_distance(structure)
                row.update(min_distance=dmin, space_group_built=space_group_of(structure), n_atoms=len(structure))
                if dmin <= min_distance:
                    row.update(verdict="too_close", reason=f"too_close: {dmin:.3f} A <= {min_distance} A")
                path = Path(out_dir) / gene_hash(gene["gene_key"]) / f"trial_{trial}.cif"
                path.parent.mkdir(parents=True, exist_ok=True)
                structure.to(filename=str(path))
                row["cif_path"] = str(path)
        except Exception as exc:  # a broken CIF or a failed symmetry search is a verdict, not a crash
            row.update(verdict="prototype_failed", reason=f"prototype_failed: {type(exc).__name__}: {exc}")
        row["seconds"] = round(time.perf_counter() - start, 4)
        rows.append(row)
    return rows
