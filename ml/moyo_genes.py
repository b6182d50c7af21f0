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
  That choice does not matter: both engines write a gene in its *canonical* configuration
  (``ml.genes.canonical_configuration``, the smallest canonical JSON over PyXtal's alternative
  settings, the same maps and the same representative ``gene_key`` is built from), so once the
  space group is confirmed, moyo's gene is the spglib engine's whatever origin either chose.

Why the canonical form is what is stored (``wyckoff``, ``wyckoff_letter_counts``): the design
(``DESIGN.md`` section 3) stores genes as canonical JSON after canonicalisation over the space
group's alternative settings; the PVAE's training data then no longer depends on an arbitrary
origin choice inside spglib or moyo (a new spglib release or another engine cannot silently
change its inputs); and equivalent crystals get one representation. Multiplicities, DoF and
atom counts are the same for every equivalent form (each alternative setting maps a letter onto
one of the same multiplicity and DoF), so only the letters move.

Every row whose space group or orbits cannot be confirmed is handed back as a
:class:`Fallback` with a reason, and the caller runs the spglib path for that row, so the output
is the spglib engine's by construction; ``benchmarks/gene_table_benchmark.py --agreement-all``
checks it on the whole snapshot.

Orbits are counted per (element, letter) from atom counts, not from moyo's ``orbits`` (which
may split an orbit when the input cell is a supercell): an orbit of letter L holds
multiplicity(L) atoms of the conventional cell.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ml.genes import MP_SYMPREC, Gene, canonical_configuration, reduced_formula
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
    "space_group_unstable",  # another space group at STABILITY_FACTOR * symprec
    "invalid_gene",  # let spglib give today's exact rejection reason
)


class Fallback(Exception):
    """moyo's gene cannot be shown to equal spglib's; ``reason`` is one of FALLBACK_REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _moyo_dataset(lattice, frac_coords, numbers, symprec: float):
    import moyopy

    cell = moyopy.Cell(np.asarray(lattice, float).tolist(), np.asarray(frac_coords, float).tolist(),
                       [int(z) for z in numbers])
    # Setting.spglib(): the smallest Hall number per space group, spglib's choice of setting.
    return moyopy.MoyoDataset(cell, symprec=symprec, setting=moyopy.Setting.spglib())


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
    wyckoff = canonical_configuration(sg, wyckoff)  # moyo's origin choice does not matter
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
