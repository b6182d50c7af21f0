"""The structure stage as plain functions: genes -> trials -> relaxed rows -> energies -> phonons.

Task functions (:func:`relax_task`, :func:`phonon_task`) take and return JSON-serializable dicts so
that :func:`dft.hpc.run_tasks` can run them in local processes or as Slurm jobs and store each
result as a file (resume after a kill). Everything that needs the snapshot (MP2020 energies,
E_f, E_hull, novelty) runs afterwards in the calling process, in :func:`score_relaxations`.
Nothing here raises for bad physics: each outcome is a row with a verdict and a reason.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from dft.trials import generate_trials


GENE_COLUMNS = ("formula", "space_group", "wyckoff", "gene_key", "trial")


def gene_columns(row: dict) -> dict:
    """The columns that name a gene and its trial, copied from ``row``."""
    return {k: row.get(k) for k in GENE_COLUMNS}


def file_digest(path: str, settings_text: str) -> str:
    """Short digest of a structure file and the settings applied to it: a task key that changes
    when either does, so stored results are reused exactly when they still apply."""
    with open(path, "rb") as fh:
        return hashlib.sha1(fh.read() + settings_text.encode()).hexdigest()[:10]


def gene_hash(gene_key: str) -> str:
    """Short stable id of a gene (file and task names)."""
    return hashlib.sha1(gene_key.encode()).hexdigest()[:12]


def gene_seed(seed: int, gene_key: str) -> int:
    """Per-gene seed: a gene's trials don't change when other genes join or leave the batch."""
    return (int(seed) * 1_000_003 + int(hashlib.sha1(gene_key.encode()).hexdigest()[:8], 16)) % (2**31)


def lattice_dict(structure) -> dict:
    a, b, c = structure.lattice.abc
    al, be, ga = structure.lattice.angles
    return {"a": round(a, 4), "b": round(b, 4), "c": round(c, 4),
            "alpha": round(al, 3), "beta": round(be, 3), "gamma": round(ga, 3)}


def build_gene_trials(gene: dict, *, seed: int, out_dir: Path, max_attempts: int = 10,
                      min_distance: float = 0.5, max_trials: int | None = None) -> list[dict]:
    """Trials of one gene (dict with formula, space_group, wyckoff JSON, gene_key) -> rows;
    the CIF of every built trial is written under ``out_dir/<gene hash>/``."""
    wyckoff = json.loads(gene["wyckoff"]) if isinstance(gene["wyckoff"], str) else gene["wyckoff"]
    h = gene_hash(gene["gene_key"])
    rows = []
    for t in generate_trials(gene["formula"], int(gene["space_group"]), wyckoff,
                             seed=gene_seed(seed, gene["gene_key"]), max_attempts=max_attempts,
                             min_distance=min_distance, max_trials=max_trials):
        cif_path = None
        if t.structure is not None:
            path = Path(out_dir) / h / f"trial_{t.trial}.cif"
            path.parent.mkdir(parents=True, exist_ok=True)
            t.structure.to(filename=str(path))
            cif_path = str(path)
        rows.append({
            "formula": gene["formula"], "space_group": int(gene["space_group"]), "wyckoff": gene["wyckoff"]
            if isinstance(gene["wyckoff"], str) else json.dumps(wyckoff, sort_keys=True),
            "gene_key": gene["gene_key"], "trial": t.trial, "seed": t.seed, "origin": "random", "verdict": t.verdict,
            "reason": t.reason, "min_distance": t.min_distance, "space_group_built": t.space_group_built,
            "n_atoms": len(t.structure) if t.structure is not None else None,
            "seconds": round(t.seconds, 4), "cif_path": cif_path,
        })
    return rows


def build_trials(genes: Iterable[dict], *, seed: int, out_dir: Path, max_attempts: int = 10,
                 min_distance: float = 0.5, max_trials: int | None = None, prototypes=None,
                 prototypes_per_gene: int = 0, log: Callable[[str], None] | None = None) -> list[dict]:
    """Trial rows of every gene (dicts with formula, space_group, wyckoff, gene_key; a
    ``selection_rank`` is carried over): the random PyXtal trials of :func:`build_gene_trials`
    (at most ``max_trials``; None: the paper's DoF + 1), then, with a
    :class:`dft.prototypes.PrototypeIndex` and ``prototypes_per_gene`` > 0, up to that many
    prototype-seeded trials numbered after them (origin ``prototype:<material_id>``)."""
    from dft.prototypes import prototype_trials

    genes = list(genes)
    rows = []
    for i, gene in enumerate(genes):
        gene_rows = build_gene_trials(gene, seed=seed, out_dir=out_dir, max_attempts=max_attempts,
                                      min_distance=min_distance, max_trials=max_trials)
        if prototypes is not None and prototypes_per_gene > 0:
            gene_rows += prototype_trials(gene, prototypes, out_dir=out_dir, first_trial=len(gene_rows),
                                          per_gene=prototypes_per_gene, min_distance=min_distance)
        rows += [dict(r, selection_rank=gene.get("selection_rank")) for r in gene_rows]
        if log and (i + 1) % 10 == 0:
            log(f"trials for {i + 1}/{len(genes)} genes")
    return rows


def finite_or_none(x):
    """A float for JSON, or None for a missing / non-finite number."""
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def write_structure(structure, path) -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    structure.to(filename=str(path))
    return str(path)


def relax_result_fields(r) -> dict:
    """The JSON fields of a :class:`dft.relax.RelaxResult` that relax and refine tasks share."""
    return {
        "verdict": r.verdict, "reason": r.reason, "energy": finite_or_none(r.energy),
        "energy_per_atom": finite_or_none(r.energy_per_atom), "max_force": finite_or_none(r.max_force),
        "steps": int(r.steps), "sg_before": r.sg_before, "sg_after": r.sg_after, "symmetry_kept": bool(r.symmetry_kept),
        "n_atoms": len(r.structure) if r.structure is not None else None,
        "lattice": lattice_dict(r.structure) if r.structure is not None else None,
        "cell": getattr(r, "cell", "input"),
    }


def relax_task(payload: dict) -> dict:
    """Relax one trial CIF (payload: cif_path, relaxer, fmax, max_steps, out_cif, primitive and
    optionally optimizer, an ASE optimizer name, default :data:`dft.relax.DEFAULT_OPTIMIZER`) ->
    result dict. ``primitive`` (default True): centred cells are relaxed in their primitive cell
    (:func:`dft.relax.relax_primitive`); the CIF, energy and n_atoms are the conventional cell's."""
    from pymatgen.core import Structure

    from dft.relax import get_relaxer, relax_primitive

    structure = Structure.from_file(payload["cif_path"])
    settings = _relax_settings(payload)
    relaxer = get_relaxer(settings.relaxer, optimizer=settings.optimizer)
    kwargs = {"fmax": settings.fmax, "max_steps": settings.max_steps}
    if settings.primitive:
        r = relax_primitive(relaxer, structure, **kwargs)
    else:
        r = relaxer.relax(structure, **kwargs)
    return relax_row(r, payload)


class RelaxSettings(NamedTuple):
    """How a relax payload asks to be relaxed; payloads with equal settings share a batch."""

    relaxer: str
    fmax: float
    max_steps: int
    primitive: bool
    optimizer: str


def _relax_settings(payload: dict) -> RelaxSettings:
    """The settings of a relax payload, with the defaults (optimizer:
    :data:`dft.relax.DEFAULT_OPTIMIZER`)."""
    from dft.relax import DEFAULT_OPTIMIZER

    return RelaxSettings(relaxer=str(payload.get("relaxer", "chgnet")), fmax=float(payload.get("fmax", 0.05)),
                         max_steps=int(payload.get("max_steps", 500)), primitive=bool(payload.get("primitive", True)),
                         optimizer=str(payload.get("optimizer") or DEFAULT_OPTIMIZER))


def relax_row(r, payload: dict) -> dict:
    """The result dict of one relaxation (per-structure or batched): the relaxed CIF written to
    ``payload["out_cif"]`` when given."""
    out = write_structure(r.structure, payload["out_cif"]) if r.structure is not None and payload.get("out_cif") else None
    return {**relax_result_fields(r), "converged": bool(r.converged), "seconds": round(r.seconds, 3),
            "cpu_seconds": round(r.cpu_seconds, 3), "relaxer": r.relaxer, "relaxed_cif": out}


def relax_batch_task(items: list[tuple[str, dict]]):
    """Batched :func:`relax_task` for :func:`dft.hpc.run_tasks` (``batched=True``): ``items`` are
    ``(key, payload)`` pairs with relax_task's payloads; tasks with the same relaxer, fmax,
    max_steps, primitive and optimizer settings are relaxed together (:mod:`dft.batch_relax`, one model call
    per step), and ``(key, result)`` is yielded the moment each finishes, with relax_task's fields.
    A CIF that cannot be read is a failed row; it does not stop the others. Threads are left as
    the worker set them (run_tasks caps them at ``threads_per_task``)."""
    from pymatgen.core import Structure

    from dft.batch_relax import get_batch_relaxer

    groups: dict[RelaxSettings, list[tuple[str, dict, object]]] = {}
    for key, payload in items:
        try:
            structure = Structure.from_file(payload["cif_path"])
        except Exception as exc:
            yield key, {"verdict": "failed", "reason": f"{type(exc).__name__}: {str(exc).strip()[:500]}"}
            continue
        groups.setdefault(_relax_settings(payload), []).append((key, payload, structure))
    for settings, members in groups.items():
        batch = get_batch_relaxer(settings.relaxer, threads=None, optimizer=settings.optimizer)
        for index, result in batch.iter_relax([m[2] for m in members], fmax=settings.fmax,
                                              max_steps=settings.max_steps, primitive=settings.primitive):
            key, payload, _ = members[index]
            yield key, relax_row(result, payload)


# Which energies a relaxer returns, from the model registry (dft.relax.MODELS). CHGNet 0.3.0 is
# fitted to MPtrj energies with MP2020 corrections already applied: correcting again lowers an oxide
# by its anion correction (measured here: CaTiO3 perovskites came out 0.41 eV/atom below MP's
# -3.54 eV/atom, exactly 3 x 0.687 / 5). The SevenNet models are fitted to the raw (uncorrected)
# MPtrj energies, which MP2020 then corrects (tests/test_model_registry.py checks every model's
# E_f of a snapshot oxide against MP's).
def _energy_scales() -> dict[str, str]:
    from dft.relax import MODELS

    return {name: spec.energy_scale for name, spec in MODELS.items()}


ENERGY_SCALE = _energy_scales()


def score_relaxations(rows: Iterable[dict], *, references: dict[str, float], hull, novelty) -> list[dict]:
    """Add MP2020-compatible energy, E_f, E_hull and novelty to relaxed rows (converged or not;
    rows without a relaxed structure get nulls and keep their verdict). Raw MP-like energies
    (``ENERGY_SCALE`` "mp_raw") go through ``MaterialsProject2020Compatibility``; energies already
    on the corrected scale are used as they are."""
    from pymatgen.core import Structure

    from dft.energetics import formation_energy_per_atom, mp_compatible_energy

    out = []
    for row in rows:
        row = dict(row, corrected_energy=None, formation_energy_per_atom=None, e_above_hull=None,
                   is_novel=None, matched_material_id=None, energy_note="", novelty_note="")
        if row.get("relaxed_cif") and row.get("energy") is not None and row["verdict"] in ("converged", "not_converged"):
            try:
                s = Structure.from_file(row["relaxed_cif"])
                scale = ENERGY_SCALE.get(str(row.get("relaxer")), "mp_raw")
                if scale == "mp2020_corrected":
                    corrected, note = row["energy"], "model energy already MP2020-corrected"
                else:
                    corr = mp_compatible_energy(s, row["energy"])
                    corrected = corr.corrected_energy if corr.ok else None
                    note = "MP2020 applied" if corr.ok else f"mp2020_rejected: {corr.reason}"
                row["energy_note"] = note
                if corrected is not None:
                    ef = formation_energy_per_atom(s.composition, corrected, references)
                    row.update(corrected_energy=corrected, formation_energy_per_atom=ef,
                               e_above_hull=hull.e_above_hull(s.composition, ef))
                novel, match, note = novelty.check(s)  # None: unknown (an unparsed reference)
                row.update(is_novel=novel, matched_material_id=match, novelty_note=note)
            except Exception as exc:  # a broken CIF or an element outside the references
                row["energy_note"] = f"scoring_failed: {type(exc).__name__}: {exc}"
        out.append(row)
    return out


def best_trial_per_gene(rows: list[dict]) -> dict[str, dict]:
    """gene_key -> the lowest-energy relaxed trial (converged and symmetry kept preferred)."""
    best: dict[str, dict] = {}

    def rank(r):
        good = r["verdict"] == "converged" and r["symmetry_kept"]
        return (0 if good else 1, r["energy_per_atom"] if r.get("energy_per_atom") is not None else math.inf)

    for r in rows:
        if r.get("energy_per_atom") is None or r["verdict"] not in ("converged", "not_converged"):
            continue
        if r["gene_key"] not in best or rank(r) < rank(best[r["gene_key"]]):
            best[r["gene_key"]] = r
    return best


def phonon_task(payload: dict) -> dict:
    """Phonons of one relaxed CIF with the potential ``payload["relaxer"]`` -> summary dict (+ band
    PNG file). ``payload["relax_first"]``: the structure was relaxed by another model, so it is
    first relaxed with this one (symmetry kept, ``relax_fmax`` / ``relax_max_steps``): phonopy's
    finite displacements assume the potential's own minimum (residual forces are not subtracted).
    A pre-relaxation without a usable structure is a ``failed`` verdict with its reason."""
    from pymatgen.core import Structure

    from dft.phonons import band_structure_png, phonon_verdict
    from dft.relax import get_relaxer, limited_threads, relax_primitive

    structure = Structure.from_file(payload["cif_path"])
    pre = {}
    with limited_threads(int(payload.get("threads", 1))):
        relaxer = get_relaxer(payload.get("relaxer", "chgnet"))
        if payload.get("relax_first"):
            r = relax_primitive(relaxer, structure, fmax=float(payload.get("relax_fmax", 0.05)),
                                max_steps=int(payload.get("relax_max_steps", 300)))
            pre = {"pre_relax_verdict": r.verdict, "pre_relax_steps": int(r.steps),
                   "pre_relax_symmetry_kept": bool(r.symmetry_kept)}
            if r.verdict not in ("converged", "not_converged") or r.structure is None:
                return {"verdict": "failed", **pre,
                        "reason": f"relaxation with {relaxer.name} before phonons {r.verdict}: {r.reason}"[:500]}
            structure = r.structure
        result = phonon_verdict(structure, relaxer.calculator(),
                                supercell_min_length=float(payload.get("supercell_min_length", 10.0)))
    summary = {**result.summary(), **pre}
    if payload.get("png") and result.band_frequencies:
        Path(payload["png"]).parent.mkdir(parents=True, exist_ok=True)
        Path(payload["png"]).write_bytes(band_structure_png(result, payload.get("title", "")))
        summary["band_png"] = payload["png"]
    return summary


def write_dfpt_inputs(cif_path: str, directory: str, supercell_matrix=None, supercell_min_length: float = 10.0) -> str:
    """The paper's VASP DFPT run (precise settings, IBRION 8) for a relaxed CIF, on the symmetrized
    primitive cell and supercell the finite-displacement phonons used (phonopy then reads the force
    constants from vasprun.xml: ``phonopy --fc vasprun.xml``). Returns the directory."""
    from pymatgen.core import Structure

    from dft.phonons import diagonal_supercell, symmetrized_primitive
    from dft.vasp import write_vasp_inputs

    primitive, _ = symmetrized_primitive(Structure.from_file(cif_path))
    matrix = supercell_matrix or diagonal_supercell(primitive, supercell_min_length)
    write_vasp_inputs(primitive, directory, dfpt=True, supercell=matrix)
    return str(directory)


# ---- the relaxation and phonon stages as plain functions (the assets only read, call, write) -----


def relax_tasks(trials: Iterable[dict], base: Path, *, relaxer: str, fmax: float, max_steps: int,
                primitive: bool = True, code: str = "") -> tuple[dict[str, dict], dict[str, dict]]:
    """``(tasks, trial_of)``: one :func:`relax_task` payload per built trial (dicts with
    ``cif_path``, ``gene_key``, ``trial``), keyed by gene, trial, relaxer and a digest of the trial
    file, the settings and ``code`` (a version of the code that relaxes), so a stored result is
    reused exactly when it still applies; the CIFs go under ``base/cif``. Primitive and
    conventional relaxations give the same structure and energy, so they share results; only the
    conventional-only setting gets its own key."""
    tasks, trial_of = {}, {}
    for row in trials:
        settings_text = f"{relaxer}|{fmax}|{max_steps}" + ("" if primitive else "|conventional") + (f"|{code}" if code else "")
        key = f"{gene_hash(row['gene_key'])}-t{row['trial']}-{relaxer}-{file_digest(row['cif_path'], settings_text)}"
        tasks[key] = {"cif_path": row["cif_path"], "relaxer": relaxer, "fmax": fmax, "max_steps": max_steps,
                      "primitive": primitive, "out_cif": str(Path(base) / "cif" / f"{key}.cif")}
        trial_of[key] = row
    return tasks, trial_of


def relaxed_rows(results: dict[str, dict], trial_of: dict[str, dict], relaxer: str) -> list[dict]:
    """One row per relaxation result: the trial's gene columns and ``origin`` (random /
    prototype:<id>), the result, and a verdict (``failed`` when the task returned none)."""
    return [{**gene_columns(trial_of[key]), "origin": trial_of[key].get("origin"), "relaxer": relaxer, **res,
             "verdict": res.get("verdict", "failed"),
             "symmetry_kept": bool(res.get("symmetry_kept", False)), "steps": res.get("steps", 0)}
            for key, res in results.items()]


def mark_best_trials(rows: list[dict]) -> list[dict]:
    """``best_trial`` on every row (:func:`best_trial_per_gene`) and the lattice as JSON text."""
    best = {id(r) for r in best_trial_per_gene(rows).values()}
    for r in rows:
        r.update(best_trial=id(r) in best, lattice=json.dumps(r.get("lattice")))
    return rows


def phonon_tasks(candidates: Iterable[dict], base: Path, *, supercell_min_length: float, code: str = "",
                 model: str | None = None, relax_fmax: float = 0.05, relax_max_steps: int = 300) -> tuple[dict, dict]:
    """``(tasks, row_of)``: one :func:`phonon_task` payload per relaxed candidate (rows with
    ``relaxed_cif`` and the model that relaxed it in ``energy_model`` or ``relaxer``), computed with
    ``model`` (None: the candidate's own model); a candidate relaxed by another model is relaxed
    with ``model`` first. Keyed by gene, model and a digest of the relaxed CIF, the settings and
    ``code`` (a version of the phonon code); band plots under ``base/bands``."""
    tasks, row_of = {}, {}
    for row in candidates:
        relaxed_by = row.get("energy_model") or row.get("relaxer")
        use = model or relaxed_by
        relax_first = use != relaxed_by
        text = f"{supercell_min_length}|{use}" + (f"|relax {relax_fmax} {relax_max_steps}" if relax_first else "") + code
        key = f"{gene_hash(row['gene_key'])}-{use}-{file_digest(row['relaxed_cif'], text)}"
        tasks[key] = {"cif_path": row["relaxed_cif"], "relaxer": use, "relax_first": relax_first,
                      "relax_fmax": relax_fmax, "relax_max_steps": relax_max_steps,
                      "supercell_min_length": supercell_min_length, "png": str(Path(base) / "bands" / f"{key}.png"),
                      "title": f"{row['formula']} SG {row['space_group']} ({use})"}
        row_of[key] = row
    return tasks, row_of


def phonon_rows(results: dict[str, dict], row_of: dict[str, dict], skipped: Iterable[tuple[dict, str]],
                tasks: dict[str, dict] | None = None) -> list[dict]:
    """One row per phonon result (verdict ``failed`` when the task returned none) and one
    ``skipped`` row, with its reason, per candidate that was not computed; ``phonon_model`` from
    the task (``tasks``), ``energy_model`` = the model that relaxed the candidate."""
    rows = []
    for key, res in results.items():
        rows.append({**gene_columns(row_of[key]), "verdict": res.get("verdict", "failed"),
                     "min_frequency_thz": res.get("min_frequency_thz"), "where_min": res.get("where"),
                     "reason": res.get("reason"), "supercell": json.dumps(res.get("supercell_matrix")),
                     "n_displacements": res.get("n_displacements"), "seconds": res.get("seconds"),
                     "cpu_seconds": res.get("cpu_seconds"), "band_png": res.get("band_png"),
                     "vasp_dfpt_dir": res.get("vasp_dfpt_dir"), "supercell_matrix": res.get("supercell_matrix"),
                     "relaxed_cif": row_of[key]["relaxed_cif"], "task_key": key,
                     "phonon_model": (tasks or {}).get(key, {}).get("relaxer"), "pre_relax_verdict": res.get("pre_relax_verdict"),
                     "energy_model": row_of[key].get("energy_model") or row_of[key].get("relaxer")})
    rows += [{**gene_columns(row), "verdict": "skipped", "reason": why} for row, why in skipped]
    return rows


def write_dfpt_for(rows: list[dict], directory: Path, supercell_min_length: float) -> list[dict]:
    """The paper's VASP DFPT inputs (:func:`write_dfpt_inputs`) for every computed (stable or
    unstable) phonon row, under ``directory/<task key>``; the path goes into ``vasp_dfpt_dir``."""
    for r in rows:
        if r.get("verdict") in ("stable", "unstable"):
            r["vasp_dfpt_dir"] = write_dfpt_inputs(r["relaxed_cif"], str(Path(directory) / r["task_key"]),
                                                   r.get("supercell_matrix"), supercell_min_length)
    return rows
