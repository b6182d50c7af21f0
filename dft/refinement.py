"""DFT refinement of the MLIP's best candidates: GPAW here, VASP where a cluster has it.

The cascade's last energy stage. The MLIP (CHGNet) relaxes every trial; the few structures that
matter (a LOO partition's lowest-energy genes, a campaign's E_hull <= threshold candidates) are
refined with PBE:

* ``engine="gpaw"`` -- Debian's GPAW through :mod:`dft.gpaw_engine` (plane waves, 600 eV,
  k-point density 3.5/Å⁻¹ by default). ``mode="relax"``: symmetry-kept relaxation of positions and
  cell, in the primitive cell for centred lattices; ``mode="single_point"``: one PBE energy at the
  MLIP geometry (the cheap step of the cascade for cells too large to relax here).
* ``engine="vasp"`` -- the paper's ``normal`` input set; run through ``VASP_COMMAND`` when it is
  set, else the inputs are written for the user's cluster and the row says ``inputs_written``.

Energies: GPAW total energies are on GPAW's own scale. Formation energies use GPAW elemental
references computed with the same settings (:func:`dft.gpaw_engine.gpaw_elemental_references`);
an element without a buildable reference leaves E_f empty with the reason. MP's references,
MP2020 corrections and the snapshot hull do not apply to them. What always applies: the energy
per atom *relative to the lowest refined structure of the same composition* (references cancel),
which is what decides a ground-state ranking.

Task functions take and return JSON-serializable dicts (:func:`dft.hpc.run_tasks`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

ENGINES = ("gpaw", "vasp")
MODES = ("relax", "single_point")
VERDICTS = ("converged", "not_converged", "single_point", "inputs_written", "exploded", "failed")
ENERGY_VERDICTS = ("converged", "not_converged", "single_point")  # rows that carry a DFT energy


def refine_task(payload: dict) -> dict:
    """Refine one relaxed CIF. payload: cif_path, engine, mode, workdir, out_cif, fmax, max_steps,
    settings (GPAW worker settings), timeout_s, setting (VASP: normal/precise)."""
    import time

    from pymatgen.core import Structure

    from dft.pipeline import finite_or_none, lattice_dict
    from dft.relax import RELAX_SYMPREC, primitive_cell, relax_primitive, space_group_number

    engine, mode = payload.get("engine", "gpaw"), payload.get("mode", "relax")
    if engine not in ENGINES or mode not in MODES:
        return {"verdict": "failed", "reason": f"unknown engine/mode {engine!r}/{mode!r}; valid: {ENGINES} x {MODES}"}
    structure = Structure.from_file(payload["cif_path"])
    workdir = Path(payload["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    fmax, max_steps = float(payload.get("fmax", 0.05)), int(payload.get("max_steps", 60))
    settings = dict(payload.get("settings") or {})
    timeout = payload.get("timeout_s")
    sg_before = space_group_number(structure, RELAX_SYMPREC)
    base = {"engine": engine, "mode": mode, "sg_before": sg_before, "n_atoms": len(structure), "workdir": str(workdir)}

    if engine == "vasp":
        return _vasp(structure, payload, workdir, fmax, max_steps, base)

    from dft import gpaw_engine

    if not gpaw_engine.gpaw_available():
        return {**base, "verdict": "failed", "reason": f"GPAW not importable by {gpaw_engine.gpaw_python()}"}
    if mode == "single_point":
        wall0, cpu0 = time.perf_counter(), gpaw_engine._children_cpu_seconds()
        try:
            out = gpaw_engine.gpaw_single_point(primitive_cell(structure), workdir=workdir, timeout_s=timeout,
                                                **settings)
        except gpaw_engine.GPAWInterrupted:
            raise  # no verdict: the task runner retries it
        except Exception as exc:
            return {**base, "verdict": "failed", "reason": f"{type(exc).__name__}: {str(exc)[:500]}",
                    "seconds": round(time.perf_counter() - wall0, 2)}
        return {**base, "verdict": "single_point", "reason": "", "energy_per_atom": finite_or_none(out["energy_per_atom"]),
                "energy": finite_or_none(out["energy_per_atom"] * len(structure)),
                "max_force": finite_or_none(out["max_force"]),
                "steps": 0, "sg_after": sg_before, "symmetry_kept": sg_before is not None,
                "lattice": lattice_dict(structure), "refined_cif": payload["cif_path"], "cell": "input",
                "seconds": round(time.perf_counter() - wall0, 2),
                "cpu_seconds": round(gpaw_engine._children_cpu_seconds() - cpu0, 2), "log": out["log"]}
    relaxer = gpaw_engine.GPAWRelaxer(workdir, timeout_s=timeout, **settings)
    r = relax_primitive(relaxer, structure, fmax=fmax, max_steps=max_steps)
    return {**base, **_relax_fields(r, payload)}


def _relax_fields(r, payload: dict) -> dict:
    """A refinement relaxation's row: the shared result fields; the CIF (and lattice) only for a
    usable end point."""
    from dft.pipeline import relax_result_fields, write_structure

    ok = r.structure is not None and payload.get("out_cif") and r.verdict in ("converged", "not_converged")
    out = write_structure(r.structure, payload["out_cif"]) if ok else None
    fields = relax_result_fields(r)
    return {**fields, "lattice": fields["lattice"] if out else None, "refined_cif": out,
            "seconds": round(r.seconds, 2), "cpu_seconds": round(r.cpu_seconds, 2)}


def _vasp(structure, payload, workdir: Path, fmax, max_steps, base) -> dict:
    from dft.vasp import VaspRelaxer, write_vasp_inputs

    setting = payload.get("setting", "normal")
    if not (payload.get("vasp_command") or os.environ.get("VASP_COMMAND")):
        write_vasp_inputs(structure, workdir / setting, setting)
        return {**base, "verdict": "inputs_written", "sg_after": None,
                "reason": f"VASP_COMMAND not set: the paper's {setting} inputs are in {workdir / setting}"}
    relaxer = VaspRelaxer(workdir / setting, setting=setting, command=payload.get("vasp_command"),
                          timeout_s=payload.get("timeout_s"))
    return {**base, **_relax_fields(relaxer.relax(structure, fmax=fmax, max_steps=max_steps), payload)}


def references_task(payload: dict) -> dict:
    """GPAW elemental references (payload: elements, cache_dir, settings, timeout_s) as a task, so
    that on a cluster they run on a compute node like the refinements; cached per settings by
    :func:`dft.gpaw_engine.gpaw_elemental_references`. Returns {"references": {el: eV/atom},
    "missing": [elements without a buildable reference]}."""
    import warnings

    from dft.gpaw_engine import gpaw_elemental_references

    elements = sorted(payload["elements"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        refs = gpaw_elemental_references(elements, payload["cache_dir"], relax=True,
                                         timeout_s=payload.get("timeout_s"), **(payload.get("settings") or {}))
    return {"references": refs, "missing": [e for e in elements if e not in refs]}


def score_refinements(rows: Iterable[dict], references: Mapping[str, float] | None,
                      reference_note: str = "") -> list[dict]:
    """Add ``formation_energy_per_atom`` (against ``references``: the engine's own elemental
    energies per atom; None or a missing element -> empty with the reason in ``energy_note``),
    ``relative_energy_per_atom`` (to the lowest refined energy of the same reduced formula) and
    ``rank_in_formula`` (1 = lowest). Rows without an energy keep their verdict and get nulls."""
    from pymatgen.core import Composition

    rows = [dict(r) for r in rows]
    lowest: dict[str, float] = {}
    for r in rows:
        e = r.get("energy_per_atom")
        r.update(formation_energy_per_atom=None, relative_energy_per_atom=None, rank_in_formula=None,
                 energy_note=r.get("energy_note") or "")
        if e is None:
            continue
        comp = Composition(r["formula"])
        r["_reduced"] = comp.reduced_formula
        lowest[r["_reduced"]] = min(lowest.get(r["_reduced"], math.inf), e)
        if references is None:
            r["energy_note"] = "no elemental references for this engine"
            continue
        missing = sorted({el.symbol for el in comp.elements} - set(references))
        if missing:
            r["energy_note"] = f"no {r['engine']} elemental reference for {', '.join(missing)}"
            continue
        ref = sum(amount * references[el.symbol] for el, amount in comp.items()) / comp.num_atoms
        r["formation_energy_per_atom"] = e - ref
        r["energy_note"] = reference_note
    for reduced in lowest:
        group = sorted((r for r in rows if r.get("_reduced") == reduced), key=lambda r: r["energy_per_atom"])
        for i, r in enumerate(group, start=1):
            r["relative_energy_per_atom"] = r["energy_per_atom"] - lowest[reduced]
            r["rank_in_formula"] = i
    for r in rows:
        r.pop("_reduced", None)
    return rows


# ---- the refinement stage as plain functions (the asset reads, calls these, writes) -------------


def refinement_tasks(taken, base: Path, *, engine: str, settings: dict, fmax: float, max_steps: int,
                     timeout_s: int, code: str = "") -> tuple[dict[str, dict], dict[str, dict]]:
    """``(tasks, row_of)``: one :func:`refine_task` payload per (relaxed row, mode) taken by
    :func:`dft.selection.refinement_candidates`, keyed by gene, engine, mode and a digest of the
    relaxed CIF, the settings and ``code`` (a version of the refinement code), so stored results are
    reused exactly when they still apply."""
    import json

    from dft.pipeline import file_digest, gene_hash

    tasks, row_of = {}, {}
    for row, mode in taken:
        text = json.dumps([engine, mode, settings, fmax, max_steps], sort_keys=True) + code
        key = f"{gene_hash(row['gene_key'])}-{engine}-{mode}-{file_digest(row['relaxed_cif'], text)}"
        tasks[key] = {"cif_path": row["relaxed_cif"], "engine": engine, "mode": mode,
                      "workdir": str(Path(base) / "runs" / key), "out_cif": str(Path(base) / "cif" / f"{key}.cif"),
                      "fmax": fmax, "max_steps": max_steps, "timeout_s": timeout_s, "settings": settings}
        row_of[key] = row
    return tasks, row_of


def mlip_columns(row: dict, mlip_rank: Mapping[str, int]) -> dict:
    """The MLIP's numbers for a refined (or skipped) gene, side by side with DFT's."""
    return {"mlip_formation_energy_per_atom": row["formation_energy_per_atom"], "mlip_e_above_hull": row["e_above_hull"],
            "mlip_rank_in_formula": mlip_rank.get(row["gene_key"]), "mlip_lattice": row["lattice"],
            "mlip_model": row.get("energy_model") or row.get("relaxer")}


def refined_rows(results: Mapping[str, dict], tasks: Mapping[str, dict], row_of: Mapping[str, dict],
                 skipped, *, engine: str, mlip_rank: Mapping[str, int], references: Mapping[str, float] | None,
                 reference_note: str = "") -> list[dict]:
    """Scored rows (:func:`score_refinements`) of the refinement results, plus one ``skipped``
    row with its reason per candidate not refined; lattices as JSON text."""
    import json

    from dft.pipeline import gene_columns

    rows = [{**gene_columns(row_of[k]), **res, "verdict": res.get("verdict", "failed"), "engine": engine,
             "mode": tasks[k]["mode"], **mlip_columns(row_of[k], mlip_rank)} for k, res in results.items()]
    rows = score_refinements(rows, references, reference_note)
    rows += [{**gene_columns(row), "engine": engine, "verdict": "skipped", "reason": why,
              **mlip_columns(row, mlip_rank)} for row, why in skipped]
    for r in rows:
        if isinstance(r.get("lattice"), dict):
            r["lattice"] = json.dumps(r["lattice"])
    return rows


def engine_references(engine: str, rows: Iterable[dict], settings: dict, *, cache_dir: Path, executor,
                      timeout_s: int | None = None, log=print) -> tuple[Mapping[str, float] | None, str]:
    """``(references, note)``: the engine's own elemental references for the elements of the
    refined rows that carry an energy, computed as one :func:`references_task` through the
    compute executor (a Slurm job on a cluster) and cached per settings under ``cache_dir``. VASP:
    none here (pair with VASP references on the cluster). A failure leaves the references None
    and says why in ``note`` (the compounds' energies still stand)."""
    import hashlib
    import json

    from pymatgen.core import Composition

    from dft.hpc import run_tasks

    if engine != "gpaw":
        return None, "VASP energies: pair them with VASP elemental references on the cluster"
    elements = sorted({el.symbol for r in rows if r.get("energy_per_atom") is not None
                       for el in Composition(r["formula"]).elements})
    if not elements:
        return {}, ""
    log(f"GPAW elemental references for {', '.join(elements)} (cached in {cache_dir})")
    key = "refs-" + hashlib.sha1(json.dumps([elements, settings], sort_keys=True).encode()).hexdigest()[:12]
    payload = {"elements": elements, "cache_dir": str(cache_dir), "settings": settings, "timeout_s": timeout_s}
    result = run_tasks(references_task, {key: payload}, executor, Path(cache_dir) / "results", log=log)[key]
    if "references" not in result:
        return None, f"references failed: {str(result.get('reason', result))[:300]}"
    return result["references"], f"GPAW references, same settings, cached in {cache_dir}"
