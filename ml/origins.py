"""Origin points of latent-space sampling, by task (paper: Ground State / Polymorph CSP tasks
and the generation campaign).

* ``ground_state``: ``scope="stoichiometry"`` (default) — training ternaries of the target's
  stoichiometry, i.e. its anonymous formula (ABC3 for CaTiO3), the target formula's own genes
  included: the paper's Fig. S1 reference points are "all materials with the same stoichiometry",
  and with element-constrained decoding (:mod:`ml.sampling`) these prototypes carry the structure
  while the target supplies the elements. ``scope="formula"`` — only genes with the target's
  reduced formula; when there are none, genes of the same anonymous formula sharing an element.
* ``polymorph``: training ternaries in the target's space group.
* ``campaign``: training ternaries made only of the campaign's elements.

Every task can take a stability limit on its origins (``max_e_above_hull``; ``GROUND_STATES`` = 0
keeps the snapshot's ground states only); none has one by default. Measured on held-out campaigns
(benchmarks/results/generator_yield_campaign.md, 2026-11-30 evening), ground-state origins raise the
S.U.N. rate of a random draw of passed genes (157 -> 179 of 600). They lower it on the ranked `hits`
budget that a campaign ships (119 -> 104 S.U.N., 66 -> 55 phonon-stable of 300), so campaigns keep
every origin.
"""

from __future__ import annotations

import polars as pl

from ml.targets import Target


def _anonymous(formula: str) -> str:
    from pymatgen.core import Composition

    return Composition(formula).anonymized_formula


ORIGIN_SCOPES = ("stoichiometry", "formula")
GROUND_STATES = 0.0  # eV/atom: the limit that keeps only the snapshot's ground states
_HULL_TOLERANCE = 1e-6  # eV/atom: round-off (one snapshot row sits in (0, 1e-6])


def origin_genes(train: pl.DataFrame, target: Target, scope: str = "stoichiometry",
                 max_e_above_hull: float | None = None) -> tuple[pl.DataFrame, str]:
    """(origin rows of ``train``, how they were chosen). ``train`` is a gene table (with
    ``energy_above_hull`` when a limit applies). ``max_e_above_hull``: origins above it (eV/atom)
    are dropped; None -- no limit (the default for every task: module docstring)."""
    rows, how = _task_origins(train, target, scope)
    if max_e_above_hull is None:
        return rows, how
    if "energy_above_hull" not in rows.columns:
        raise ValueError("an origin E_hull limit needs the gene table's energy_above_hull column")
    e = pl.col("energy_above_hull").cast(pl.Float64)
    kept = rows.filter(e.is_not_null() & (e <= float(max_e_above_hull) + _HULL_TOLERANCE))
    limit = "ground states (E_hull = 0)" if max_e_above_hull == 0 else f"E_hull <= {max_e_above_hull:g} eV/atom"
    return kept, f"{how}, {limit}: {kept.height} of {rows.height}"


def _task_origins(train: pl.DataFrame, target: Target, scope: str) -> tuple[pl.DataFrame, str]:
    if scope not in ORIGIN_SCOPES:
        raise ValueError(f"origin scope must be one of {ORIGIN_SCOPES}, got {scope!r}")
    ternary = train.filter(pl.col("n_elements") == 3)
    if target.task == "ground_state" and scope == "stoichiometry":
        anon = _anonymous(target.reduced_formula)
        formulas = ternary["formula"].unique().to_list()
        keep = sorted(f for f in formulas if _anonymous(f) == anon)
        same = ternary.filter(pl.col("formula") == target.reduced_formula).height
        return ternary.filter(pl.col("formula").is_in(keep)), (
            f"training ternaries of stoichiometry {anon} ({same} with formula {target.reduced_formula})"
        )
    if target.task == "ground_state":
        same = ternary.filter(pl.col("formula") == target.reduced_formula)
        if same.height:
            return same, f"training genes with formula {target.reduced_formula}"
        from pymatgen.core import Composition

        anon = _anonymous(target.reduced_formula)
        elements = {str(e) for e in Composition(target.reduced_formula).elements}
        formulas = ternary["formula"].unique().to_list()
        keep = [f for f in formulas if _anonymous(f) == anon
                and elements & {str(e) for e in Composition(f).elements}]
        return ternary.filter(pl.col("formula").is_in(keep)), (
            f"no training gene of {target.reduced_formula}: anonymous formula {anon} sharing an element"
        )
    if target.task == "polymorph":
        return ternary.filter(pl.col("space_group") == target.space_group), (
            f"training ternaries in space group {target.space_group}"
        )
    allowed = set(target.elements)
    mask = ternary["slot_elements"].map_elements(lambda els: set(els) <= allowed, return_dtype=pl.Boolean)
    return ternary.filter(mask), f"training ternaries made only of {len(allowed)} campaign elements"


ELEMENT_CONSTRAINTS = ("task", "none")


def allowed_elements(target: Target, constraint: str = "task") -> tuple[str, ...] | None:
    """Elements the decoder's element slots may take: ``"task"`` -- a campaign's element list, a
    leave-one-out target's own elements; ``"none"`` -- any of the 94 (None)."""
    if constraint not in ELEMENT_CONSTRAINTS:
        raise ValueError(f"element constraint must be one of {ELEMENT_CONSTRAINTS}, got {constraint!r}")
    if constraint == "none":
        return None
    if target.task == "campaign":
        return tuple(target.elements)
    from pymatgen.core import Composition

    return tuple(sorted(str(e) for e in Composition(target.reduced_formula).elements))


def perturbations_per_origin(requested: int, max_latent_points: int, n_origins: int) -> int:
    """Perturbations per origin: ``requested``, fewer when ``n_origins x requested`` would pass
    ``max_latent_points`` (many origins then get fewer samples each), at least one."""
    if n_origins <= 0:
        return 0
    return max(1, min(int(requested), int(max_latent_points) // int(n_origins)))
