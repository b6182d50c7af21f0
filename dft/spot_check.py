"""GPAW spot check of the MLIP's stability calls: does PBE put a candidate below the same hull?

A candidate's MLIP E_hull is its energy above the snapshot hull, whose facets are MP phases. PBE
(GPAW) cannot use MP's energies (another code, other PAW setups, no MP2020 corrections), but it
can recompute the *reaction*: the candidate against the snapshot phases it would decompose into,
every energy from GPAW with one setting::

    dE_PBE = E(candidate) - sum_i f_i E(phase_i)        (eV/atom; f_i atom fractions, sum 1)

where the phases are the snapshot hull's decomposition at the candidate's composition (pymatgen
``PhaseDiagram.get_decomposition``), compounds and elements alike computed at their MP geometry
(single points; MP's PBE cells are near GPAW-PBE's minimum). The candidate's GPAW energy comes
from ``refined_structures`` (relaxed when its primitive cell has <= 8 atoms, else a single point
at the MLIP geometry, which can only raise its energy). The MLIP calls a candidate stable when
E_hull <= t; PBE when dE_PBE <= t; :func:`spot_check_agreement` counts how often they agree.

Both MLIP E_hull and MP's hull are on MP2020's corrected scale; raw PBE reaction energies are
not. :func:`mp2020_correction_per_atom` gives each side the correction MP2020 would apply to a GGA
run of that structure (anion corrections for Se, Te, ... depend on composition, so they cancel
between a selenide and selenide phases but not against elemental Se); ``dE_PBE+MP2020`` is the
call compared with the MLIP's, the raw one is shown beside it.

Caveats, stated in the output: the decomposition is the MLIP-era hull's (a phase PBE would put on
the hull but MP does not is not tried); a single point at the MLIP geometry is an upper bound of
the candidate's PBE energy (it can only make PBE call it less stable).

Affordability (2 cores): :func:`affordable_order` ranks checkable candidates by the largest
primitive cell in their reaction (candidate and phases), then by the atoms to compute; taking the
first N biases the check towards small, high-symmetry cells and simple decompositions.

A candidate is checkable when GPAW has a PAW setup for each of its elements (Debian's
gpaw-data has none for most lanthanides, e.g. Tb, Tm) and every decomposition phase has a
structure: the snapshot's, or for an element the snapshot lacks, GPAW's own reference state where
ASE can build one (not B, Ga, Se, Te: :func:`dft.gpaw_engine.reference_atoms`); others are listed
with the reason.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import polars as pl

DEFAULT_SETUP_DIRS = ("/usr/share/gpaw-setups",)
_SETUP_FILE = re.compile(r"^([A-Z][a-z]?)\.(?:[^.]+\.)?PBE(?:\.gz)?$")
PLAN_SCHEMA = {"gene_key": pl.String, "formula": pl.String, "space_group": pl.Int64, "n_atoms": pl.Int64,
               "mlip_model": pl.String, "mlip_e_above_hull": pl.Float64, "fast_model": pl.String,
               "fast_e_above_hull": pl.Float64, "checkable": pl.Boolean, "reason": pl.String, "phases": pl.String,
               "reaction_max_atoms": pl.Int64, "reaction_atoms": pl.Int64}


def gpaw_setup_elements(setup_dirs: Iterable[str | Path] | None = None) -> frozenset[str]:
    """Elements with a PBE PAW setup in GPAW's setup directories (``GPAW_SETUP_PATH``, colon
    separated, else Debian's ``/usr/share/gpaw-setups``)."""
    if setup_dirs is None:
        env = os.environ.get("GPAW_SETUP_PATH")
        setup_dirs = env.split(":") if env else DEFAULT_SETUP_DIRS
    found = set()
    for d in setup_dirs:
        p = Path(d)
        if p.is_dir():
            found |= {m.group(1) for f in p.iterdir() if (m := _SETUP_FILE.match(f.name))}
    return frozenset(found)


def hull_phases(hull, formula: str) -> list[dict]:
    """The snapshot hull's decomposition at ``formula``'s composition: ``[{"name", "formula",
    "fraction"}]`` (``name`` a material id, or the element symbol for the hull's own elemental
    end points), fractions of atoms summing to 1."""
    from pymatgen.core import Composition

    comp = Composition(formula)
    diagram = hull.phase_diagram(el.symbol for el in comp.elements)
    decomposition = diagram.get_decomposition(comp)
    return [{"name": e.name, "formula": e.composition.reduced_formula, "fraction": float(f)}
            for e, f in sorted(decomposition.items(), key=lambda kv: -kv[1])]


def gpaw_reference_elements(elements: Iterable[str]) -> frozenset[str]:
    """The elements among ``elements`` that :func:`dft.gpaw_engine.reference_atoms` can build a
    reference state for (ASE's reference crystal, or the X2 molecule)."""
    from dft.gpaw_engine import reference_atoms

    ok = set()
    for el in set(elements):
        try:
            reference_atoms(el)
            ok.add(el)
        except ValueError:
            pass
    return frozenset(ok)


def plan_spot_check(candidates: pl.DataFrame, hull, *, setup_elements: Iterable[str],
                    element_materials: Mapping[str, str], have_structure: Iterable[str],
                    reference_elements: Iterable[str] = (),
                    phase_atoms: Callable[[str], int | None] | None = None,
                    element_offsets: Mapping[str, float] | None = None) -> pl.DataFrame:
    """Which candidates (rows with ``gene_key``, ``formula``, ``e_above_hull``; optional
    ``energy_model``, ``fast_e_above_hull``, ``fast_relaxer``, ``space_group``, ``n_atoms`` = the
    candidate's primitive atoms) can be checked, and the phases to compute for each (JSON; ``name``
    a material id, or ``element:<symbol>``; ``n_atoms`` from ``phase_atoms(name)`` when given, and
    ``reaction_max_atoms`` / ``reaction_atoms`` = the largest cell / all atoms of candidate and
    phases, the cost :func:`affordable_order` sorts by). ``element_offsets[symbol]``: the snapshot's
    E_f (eV/atom) of ``element_materials[symbol]`` -- the hull's end point is the element's ground
    state at 0, so a metastable stand-in polymorph's PBE energy is lowered by it (phase ``offset``,
    :func:`reaction_energy`).
    An elemental end point of the hull becomes ``element_materials[symbol]`` (the snapshot's
    lowest-energy structure of that element) or, where the snapshot has none, GPAW's own
    reference state for the elements in ``reference_elements`` (:func:`gpaw_reference_elements`).
    ``have_structure``: material ids the snapshot has a structure for."""
    import json

    from pymatgen.core import Composition

    setups, have, refs = set(setup_elements), set(have_structure), set(reference_elements)
    rows = []
    for r in candidates.iter_rows(named=True):
        row = {"gene_key": r["gene_key"], "formula": r["formula"], "space_group": r.get("space_group"),
               "n_atoms": r.get("n_atoms"), "mlip_model": r.get("energy_model") or r.get("relaxer"),
               "mlip_e_above_hull": r.get("e_above_hull"), "fast_model": r.get("fast_relaxer"),
               "fast_e_above_hull": r.get("fast_e_above_hull"), "checkable": False, "reason": None, "phases": None,
               "reaction_max_atoms": None, "reaction_atoms": None}
        elements = sorted(el.symbol for el in Composition(r["formula"]).elements)
        lacking = [e for e in elements if e not in setups]
        if lacking:
            row["reason"] = f"no GPAW PBE setup for {', '.join(lacking)}"
            rows.append(row)
            continue
        try:
            phases = hull_phases(hull, r["formula"])
        except ValueError as exc:  # an element the snapshot does not have: no hull to check against
            row["reason"] = f"no snapshot hull: {exc}"
            rows.append(row)
            continue
        for p in phases:
            comp = Composition(p["formula"])
            if not comp.is_element or p["name"] in have:
                continue
            symbol = comp.elements[0].symbol  # an elemental phase without a structure of its own
            if element_materials.get(symbol) in have:
                p["name"] = element_materials[symbol]
                p["offset"] = float((element_offsets or {}).get(symbol) or 0.0)
            elif symbol in refs:
                p["name"] = f"element:{symbol}"
        absent = [p["name"] for p in phases if p["name"] not in have and not p["name"].startswith("element:")]
        if absent:
            what = [f"elemental {a} (no structure in the snapshot, no ASE reference state)" if a in elements else a
                    for a in absent]
            row["reason"] = f"no snapshot structure for phase(s) {', '.join(what)}"
        else:
            row["checkable"] = True
            if phase_atoms is not None:
                for p in phases:
                    p["n_atoms"] = phase_atoms(p["name"])
                sizes = [p["n_atoms"] for p in phases] + [r.get("n_atoms")]
                if None not in sizes:
                    row["reaction_max_atoms"], row["reaction_atoms"] = max(sizes), sum(sizes)
        row["phases"] = json.dumps(phases)
        rows.append(row)
    return pl.DataFrame(rows, schema=PLAN_SCHEMA, orient="row")


def affordable_order(plan: pl.DataFrame) -> pl.DataFrame:
    """The checkable rows of a plan, cheapest first: by the largest primitive cell in the reaction
    (GPAW's cost grows ~N^2-N^3 with it), then by all atoms to compute, then by MLIP E_hull; rows
    without sizes last. The bias of taking the first N: small, high-symmetry cells."""
    return (plan.filter(pl.col("checkable"))
            .sort(["reaction_max_atoms", "reaction_atoms", "mlip_e_above_hull"], nulls_last=True))


def phase_atoms_of(name: str, cifs: Mapping[str, str]) -> int | None:
    """Atoms GPAW computes for a plan phase: the primitive cell of the snapshot structure
    (``cifs[material_id]``), or the reference state's cell for ``element:<symbol>``."""
    if name.startswith("element:"):
        from dft.gpaw_engine import reference_atoms

        return len(reference_atoms(name.split(":", 1)[1])[0]["numbers"])
    if not cifs.get(name):
        return None
    from pymatgen.core import Structure

    from dft.relax import primitive_cell

    return len(primitive_cell(Structure.from_str(cifs[name], fmt="cif")))


def mp2020_correction_per_atom(structure) -> tuple[float | None, str]:
    """(eV/atom, note): MP2020's correction of a GGA run of ``structure``
    (:func:`dft.energetics.mp_compatible_energy`; energy-independent anion/GGA+U terms), to put a
    plain-PBE energy on the MLIP hull's scale. None with the reason where MP2020 would apply +U
    (plain PBE here is no GGA+U run) or rejects the entry."""
    from dft.energetics import mp_compatible_energy

    out = mp_compatible_energy(structure, 0.0)
    if not out.ok:
        return None, out.reason or "MP2020 rejected"
    if out.run_type != "GGA":
        return None, f"MP would run {structure.composition.reduced_formula} as {out.run_type}; plain PBE here"
    return out.correction / len(structure), ", ".join(f"{n} {v:+.3f}" for n, v in out.adjustments)


def spot_check_task(payload: dict) -> dict:
    """One spot-check task for :func:`dft.hpc.run_tasks`: ``kind`` "candidate" (a
    :func:`dft.refinement.refine_task` payload) or "phase" (:func:`phase_energy_task`); either
    result gains ``mp2020_correction_per_atom`` (+ note) of the structure it computed."""
    from pymatgen.core import Structure

    kind = payload.get("kind", "phase")
    if kind == "candidate":
        from dft.refinement import refine_task

        out = refine_task(payload)
        structure = Structure.from_file(out.get("refined_cif") or payload["cif_path"])
    else:
        out = phase_energy_task(payload)
        structure = Structure.from_str(payload["cif"], fmt="cif") if payload.get("cif") else None
    if structure is None:  # an element's reference state: MP2020 has no elemental corrections
        out["mp2020_correction_per_atom"], out["mp2020_note"] = 0.0, "element"
    else:
        out["mp2020_correction_per_atom"], out["mp2020_note"] = mp2020_correction_per_atom(structure)
    out.pop("log", None)
    return out


def phase_energy_task(payload: dict) -> dict:
    """GPAW energy per atom of one phase, a run_tasks task. payload: ``cif`` text (a single point
    of the snapshot structure's primitive cell) or ``element`` (GPAW's relaxed reference state,
    :func:`dft.gpaw_engine.gpaw_elemental_references`, cached in ``cache_dir``), ``settings``,
    ``workdir``, ``timeout_s`` -> ``{"energy_per_atom", "n_atoms", "seconds"}``."""
    from pymatgen.core import Structure

    from dft.gpaw_engine import gpaw_elemental_references, gpaw_single_point
    from dft.relax import primitive_cell

    if payload.get("element"):
        refs = gpaw_elemental_references([payload["element"]], payload["cache_dir"], relax=True,
                                         timeout_s=payload.get("timeout_s"), **(payload.get("settings") or {}))
        if payload["element"] not in refs:
            return {"verdict": "failed", "reason": f"no GPAW reference for {payload['element']}"}
        return {"energy_per_atom": refs[payload["element"]], "n_atoms": None, "seconds": None}

    structure = primitive_cell(Structure.from_str(payload["cif"], fmt="cif"))
    out = gpaw_single_point(structure, workdir=payload.get("workdir"), timeout_s=payload.get("timeout_s"),
                            **(payload.get("settings") or {}))
    return {"energy_per_atom": out["energy_per_atom"], "n_atoms": len(structure), "seconds": out["seconds"]}


def decomposition_energy(candidate_energy_per_atom: float, phases: Iterable[tuple[float, float]]) -> float:
    """``E_candidate - sum f_i E_i`` (eV/atom) for ``phases`` as (atom fraction, energy per atom)."""
    phases = list(phases)
    total = sum(f for f, _ in phases)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"phase fractions sum to {total}, not 1")
    return float(candidate_energy_per_atom) - sum(f * e for f, e in phases)


def reaction_energy(candidate_energy_per_atom: float, phases: Iterable[Mapping],
                    energies: Iterable[float]) -> float:
    """:func:`decomposition_energy` over plan phases (``fraction``, optional ``offset``) and their
    energies per atom: a phase's energy is lowered by its ``offset`` (a metastable elemental
    stand-in measured from the element's ground state, see :func:`plan_spot_check`)."""
    return decomposition_energy(candidate_energy_per_atom,
                                [(p["fraction"], e - float(p.get("offset") or 0.0)) for p, e in zip(phases, energies)])


def spot_check_agreement(rows: Iterable[Mapping], threshold: float, *, mlip_column: str = "mlip_e_above_hull",
                         pbe_column: str = "pbe_decomposition_energy") -> dict:
    """Agreement of the MLIP's stable/unstable call (``mlip_column <= threshold``; e.g.
    ``fast_e_above_hull`` for the cascade's fast model) with PBE's (``pbe_column <= threshold``)
    over rows carrying both; rows lacking one are listed under ``not_compared`` with their
    ``reason``."""
    counts = {"both_stable": 0, "mlip_stable_pbe_unstable": 0, "mlip_unstable_pbe_stable": 0, "both_unstable": 0}
    not_compared = []
    for r in rows:
        m, p = r.get(mlip_column), r.get(pbe_column)
        if m is None or p is None:
            not_compared.append({"formula": r.get("formula"), "reason": r.get("reason") or "no PBE energy"})
            continue
        calls = (m <= threshold, p <= threshold)
        key = {(True, True): "both_stable", (True, False): "mlip_stable_pbe_unstable",
               (False, True): "mlip_unstable_pbe_stable", (False, False): "both_unstable"}[calls]
        counts[key] += 1
    compared = sum(counts.values())
    agree = counts["both_stable"] + counts["both_unstable"]
    mlip_stable = counts["both_stable"] + counts["mlip_stable_pbe_unstable"]
    return {"threshold": threshold, "mlip_column": mlip_column, "pbe_column": pbe_column, "compared": compared, "agree": agree,
            "agreement_rate": agree / compared if compared else None,
            "pbe_confirms_mlip_stable": counts["both_stable"] / mlip_stable if mlip_stable else None,
            **counts, "not_compared": not_compared}
