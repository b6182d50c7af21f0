"""Leave-one-out match: a relaxed structure's lattice against the registry's reference lattice.

The registry gives the conventional standard cell (hexagonal axes for trigonal groups), or a
rhombohedral primitive cell when the key ends in ``_rhombohedral``. The relaxed structure is put
in the same setting with spglib/pymatgen (``SpacegroupAnalyzer`` conventional standard or
primitive standard cell) and compared parameter by parameter; lengths are compared sorted
(a, b, c are labelled differently in different orthorhombic settings, e.g. Pnma vs Pbnm), angles
likewise. ``within`` is the relative tolerance (paper: within 3 %).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LatticeComparison:
    setting: str  # "conventional" | "rhombohedral"
    relaxed: dict
    reference: dict
    max_relative_error: float  # over the compared parameters
    errors: dict  # parameter -> relative error
    within: bool


def _params(lattice) -> dict:
    a, b, c = lattice.abc
    al, be, ga = lattice.angles
    return {"a": a, "b": b, "c": c, "alpha": al, "beta": be, "gamma": ga}


# symprec ladder for finding an expected space group: 0.1 is MP's own tolerance (a registry
# lattice drawn from MP is the conventional cell at 0.1; MP's relaxed cells can be lower in
# symmetry at 0.01, e.g. a spinel that is Fd-3m at 0.1 and R-3m at 0.01)
SYMPREC_LADDER = (0.01, 0.05, 0.1)


def standard_analyzer(structure, space_group: int | None = None, symprec: float = 0.01):
    """pymatgen ``SpacegroupAnalyzer`` at ``symprec``; when ``space_group`` is given and not found
    there, the first tolerance of :data:`SYMPREC_LADDER` above it that finds it (else ``symprec``'s)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    sga = SpacegroupAnalyzer(structure, symprec=symprec)
    if space_group is None or sga.get_space_group_number() == int(space_group):
        return sga
    for tol in (t for t in SYMPREC_LADDER if t > symprec):
        other = SpacegroupAnalyzer(structure, symprec=tol)
        if other.get_space_group_number() == int(space_group):
            return other
    return sga


def compare_lattice(structure, reference: dict, which: str, *, tolerance: float = 0.03,
                    symprec: float = 0.01, space_group: int | None = None,
                    closest_basis: bool = True) -> LatticeComparison:
    """Relaxed ``structure`` vs the registry lattice ``reference`` (name ``which``); with
    ``space_group`` (the target's), the cell is read at the tolerance that finds that group
    (:func:`standard_analyzer`), so a slightly distorted cell is compared in the target's setting.
    ``closest_basis``: also try every other basis of the relaxed lattice (:func:`_best_mapped_basis`)
    and keep the closer reading (False: the standard cell only, the behaviour before)."""
    sga = standard_analyzer(structure, space_group, symprec)
    if which.endswith("_rhombohedral"):
        cell = sga.get_primitive_standard_structure(international_monoclinic=False)
        p = _params(cell.lattice)
        relaxed = {"a": sorted([p["a"], p["b"], p["c"]])[1], "alpha": sorted([p["alpha"], p["beta"], p["gamma"]])[1]}
        ref = {k: float(reference[k]) for k in ("a", "alpha") if k in reference}
        setting = "rhombohedral"
    else:
        cell = sga.get_conventional_standard_structure()
        p = _params(cell.lattice)
        lengths = sorted([p["a"], p["b"], p["c"]])
        angles = sorted([p["alpha"], p["beta"], p["gamma"]])
        # registry shorthand: b and c default to a (cubic {"a"}, tetragonal/hexagonal {"a", "c"})
        a_ref = float(reference["a"])
        ref_lengths = sorted([a_ref, float(reference.get("b", a_ref)), float(reference.get("c", a_ref))])
        ref_angles = sorted(float(reference.get(k, 90.0)) for k in ("alpha", "beta", "gamma"))
        relaxed = dict(zip(("l1", "l2", "l3"), lengths)) | dict(zip(("ang1", "ang2", "ang3"), angles))
        ref = dict(zip(("l1", "l2", "l3"), ref_lengths)) | dict(zip(("ang1", "ang2", "ang3"), ref_angles))
        setting = "conventional"
        mapped = None if not closest_basis else _best_mapped_basis(cell.lattice, [a_ref, float(reference.get("b", a_ref)),
                                                   float(reference.get("c", a_ref))],
                                    [float(reference.get(k, 90.0)) for k in ("alpha", "beta", "gamma")])
        if mapped is not None and _worst(mapped, ref) < _worst(relaxed, ref):
            relaxed = mapped
    errors = {k: abs(relaxed[k] - ref[k]) / abs(ref[k]) for k in ref if k in relaxed and ref[k]}
    worst = max(errors.values()) if errors else float("nan")
    return LatticeComparison(setting, {k: round(v, 4) for k, v in relaxed.items()},
                             ref, worst, {k: round(v, 4) for k, v in errors.items()},
                             bool(errors) and worst <= tolerance)


def _worst(relaxed: dict, ref: dict) -> float:
    errs = [abs(relaxed[k] - ref[k]) / abs(ref[k]) for k in ref if k in relaxed and ref[k]]
    return max(errs) if errs else float("inf")


def _best_mapped_basis(lattice, ref_lengths, ref_angles, ltol: float = 0.2, atol: float = 15.0) -> dict | None:
    """The basis of ``lattice`` (a unimodular change of basis, pymatgen ``Lattice.find_all_mappings``)
    closest to the reference parameters, as sorted-parameter dict, or None. A conventional
    standard cell is unique for every crystal system but the triclinic one: its reduced cell
    jumps between settings (all-acute / all-obtuse angles, another shortest vector) under a
    1 % strain, which the sorted-parameter comparison alone reads as a 20-50 % error."""
    from pymatgen.core import Lattice

    reference = Lattice.from_parameters(*ref_lengths, *ref_angles)
    best, best_err = None, float("inf")
    ref = dict(zip(("l1", "l2", "l3"), sorted(ref_lengths))) | dict(zip(("ang1", "ang2", "ang3"), sorted(ref_angles)))
    try:
        mappings = list(lattice.find_all_mappings(reference, ltol=ltol, atol=atol, skip_rotation_matrix=True))
    except Exception:
        return None
    for _, _, scale in mappings:
        basis = Lattice(scale @ lattice.matrix)
        p = _params(basis)
        cand = dict(zip(("l1", "l2", "l3"), sorted([p["a"], p["b"], p["c"]]))) | dict(
            zip(("ang1", "ang2", "ang3"), sorted([p["alpha"], p["beta"], p["gamma"]])))
        err = _worst(cand, ref)
        if err < best_err:
            best, best_err = cand, err
    return best


# "Same crystal" for relaxed structures: StructureMatcher at tighter tolerances than its defaults
# (ltol 0.2, stol 0.3, angle_tol 5) and, where energies are known, equal energies. Geometry alone
# calls rhombohedral BaTiO3 (0.3 degree shear, Ti off-centre by ~0.1 A) the cubic perovskite even
# at these tolerances; the energies separate them (13 meV/atom with CHGNet), while two genes that
# relaxed into one minimum agree to well under 1 meV/atom.
SAME_CRYSTAL_MATCHER = {"ltol": 0.05, "stol": 0.1, "angle_tol": 1.0}
SAME_CRYSTAL_ENERGY_TOL = 1e-3  # eV/atom


def same_crystal(a, b, energy_a: float | None = None, energy_b: float | None = None) -> bool:
    """Whether two relaxed structures are one crystal (see SAME_CRYSTAL_MATCHER / _ENERGY_TOL)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    if energy_a is not None and energy_b is not None and abs(energy_a - energy_b) > SAME_CRYSTAL_ENERGY_TOL:
        return False
    return StructureMatcher(**SAME_CRYSTAL_MATCHER).fit(a, b)


def same_arrangement(relaxed, reference) -> bool:
    """Whether a relaxed structure is the reference material's crystal up to its cell: pymatgen's
    StructureMatcher at its default tolerances with volumes scaled (ltol 0.2, stol 0.3, angle_tol 5,
    primitive cells), looser than :func:`same_crystal` on purpose -- it reads a lattice loss, where
    the cell may be several percent off. Tells a lattice loss of the right crystal (cell off: the
    energy model) from a relaxation into another arrangement of the same Wyckoff gene (the trials)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return bool(StructureMatcher().fit(relaxed, reference))


def crystal_ranks(structures, energies=None) -> list[int]:
    """Energy ranks counted over distinct crystals: ``structures`` sorted by energy (lowest
    first; ``energies`` per atom, same order, optional); a structure that is the :func:`same_crystal`
    as a lower one shares that one's rank. Two genes that relax to one crystal -- an equivalent
    Wyckoff configuration, or a subgroup gene that relaxed into its supergroup's minimum -- are one
    candidate for a ground-state question, not two."""
    energies = list(energies) if energies is not None else [None] * len(structures)
    crystals: list = []  # (representative, energy, rank)
    ranks = []
    for s, e in zip(structures, energies):
        rank = next((r for rep, er, r in crystals if same_crystal(rep, s, er, e)), None)
        if rank is None:
            rank = len(crystals) + 1
            crystals.append((s, e, rank))
        ranks.append(rank)
    return ranks


def distinct_crystal_ids(structures, energies=None) -> list[int]:
    """A crystal id per structure (0, 1, ...; in order of first appearance): structures that are
    the :func:`same_crystal` as an earlier one share its id. Only structures of one reduced
    formula are compared (others cannot match), so n structures of n formulas cost no matching.
    ``energies`` per atom, optional, same order."""
    energies = list(energies) if energies is not None else [None] * len(structures)
    crystals: dict[str, list] = {}  # reduced formula -> [(representative, energy, id)]
    ids, next_id = [], 0
    for s, e in zip(structures, energies):
        group = crystals.setdefault(s.composition.reduced_formula, [])
        found = next((i for rep, er, i in group if same_crystal(rep, s, er, e)), None)
        if found is None:
            found, next_id = next_id, next_id + 1
            group.append((s, e, found))
        ids.append(found)
    return ids
