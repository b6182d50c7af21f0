"""VASP input sets with the WyCryst paper's settings, and a relaxer that runs VASP through a command.

The paper (Supplementary) relaxes with PBE PAW under two settings:

- ``normal``: ENCUT = the largest ENMAX of the POTCARs, KSPACING 0.2 Å⁻¹ (Γ-centred),
  EDIFF 1e-6 eV, EDIFFG -1e-3 eV/Å;
- ``precise``: ENCUT 520 eV, KSPACING 0.15 Å⁻¹, EDIFF 1e-8 eV, EDIFFG -1e-4 eV/Å;

and always ISYM 2, SYMPREC 1e-5, ISMEAR -5 (tetrahedron with Blöchl corrections), IBRION 2,
ISIF 3. Added here, not from the paper: NSW 200 (the relaxer sets it from ``max_steps``),
KGAMMA .TRUE. (Γ-centred KSPACING mesh), PREC Accurate, LREAL .FALSE., LWAVE/LCHARG .FALSE.
PBE comes from the POTCARs (no GGA tag). For ``normal``, ENCUT is left out of the INCAR unless POTCARs are available: VASP's own
default ENCUT *is* the largest ENMAX of the POTCARs, so leaving it unset gives the paper's value.
When ``PMG_VASP_PSP_DIR`` is configured the POTCAR is written and ENCUT is set explicitly from it.

DFPT (``dfpt=True``): the precise settings as a single linear-response step — IBRION 8 (DFPT with
symmetry), NSW 1, ISIF/EDIFFG dropped, LREAL .FALSE., ADDGRID .TRUE.; NPAR/NCORE must not be set
for linear response. ``supercell`` (a 3-vector or 3x3 matrix) builds the supercell first, as
phonopy does before a DFPT force-constant run.

POTCARs are licensed and not on this machine: every directory gets a ``POTCAR.spec`` listing the
POTCAR symbols (VASP-recommended PBE_54 choices, as in pymatgen's MP SCAN set) in POSCAR order.
"""

from __future__ import annotations

import math
import os
import resource
import shlex
import subprocess
import time
from pathlib import Path

import numpy as np
from pymatgen.core import Structure
from pymatgen.io.vasp.inputs import Incar, Poscar, Potcar
from pymatgen.io.vasp.sets import MPScanRelaxSet

from dft.relax import (
    ENERGY_PER_ATOM_BOUNDS,
    FORCE_LIMIT,
    MIN_DISTANCE,
    RELAX_SYMPREC,
    VOLUME_RATIO_LIMIT,
    RelaxResult,
    space_group_number,
)

POTCAR_FUNCTIONAL = "PBE_54"
# VASP-recommended PBE_54 POTCAR per element (pymatgen's MPScanRelaxSet mapping).
POTCAR_SYMBOLS: dict[str, str] = dict(MPScanRelaxSet.CONFIG["POTCAR"])

_COMMON = {
    "PREC": "Accurate",
    "ISYM": 2,
    "SYMPREC": 1e-5,
    "ISMEAR": -5,
    "IBRION": 2,
    "ISIF": 3,
    "NSW": 200,
    "KGAMMA": True,
    "LREAL": False,
    "LWAVE": False,
    "LCHARG": False,
}

PAPER_SETTINGS: dict[str, dict] = {
    # ENCUT deliberately absent: VASP defaults to max(ENMAX) of the POTCARs, the paper's value.
    "normal": {**_COMMON, "KSPACING": 0.2, "EDIFF": 1e-6, "EDIFFG": -1e-3},
    "precise": {**_COMMON, "ENCUT": 520, "KSPACING": 0.15, "EDIFF": 1e-8, "EDIFFG": -1e-4},
}

_DFPT_CHANGES = {"IBRION": 8, "NSW": 1, "ADDGRID": True, "LREAL": False}
_DFPT_DROPPED = ("ISIF", "EDIFFG", "NPAR", "NCORE")


def incar_settings(setting: str | None = None, *, dfpt: bool = False, **overrides) -> dict:
    """The INCAR tags for a paper setting (default ``precise`` for DFPT, ``normal`` otherwise)."""
    setting = setting or ("precise" if dfpt else "normal")
    if setting not in PAPER_SETTINGS:
        raise ValueError(f"setting must be one of {sorted(PAPER_SETTINGS)}, got {setting!r}")
    tags = dict(PAPER_SETTINGS[setting])
    if dfpt:
        tags.update(_DFPT_CHANGES)
        for key in _DFPT_DROPPED:
            tags.pop(key, None)
    tags.update(overrides)
    return {k: v for k, v in tags.items() if v is not None}


def potcar_symbols(structure: Structure) -> list[str]:
    """POTCAR symbols in the order of the species in the POSCAR written for ``structure``."""
    return [POTCAR_SYMBOLS.get(el, el) for el in Poscar(structure).site_symbols]


def potcars_available() -> bool:
    from pymatgen.core import SETTINGS

    return bool(os.environ.get("PMG_VASP_PSP_DIR") or SETTINGS.get("PMG_VASP_PSP_DIR"))


def _supercell(structure: Structure, supercell) -> Structure:
    matrix = np.asarray(supercell, dtype=int)
    if matrix.shape == (3,):
        matrix = np.diag(matrix)
    return structure.make_supercell(matrix, in_place=False)


def write_vasp_inputs(
    structure: Structure,
    directory: str | Path,
    setting: str | None = None,
    dfpt: bool = False,
    *,
    supercell=None,
    incar_overrides: dict | None = None,
) -> Path:
    """Write INCAR, POSCAR and POTCAR.spec (+ POTCAR when PMG_VASP_PSP_DIR is set) into ``directory``.

    ``setting`` defaults to ``"precise"`` for DFPT (the paper's phonon settings) and ``"normal"``
    otherwise. No KPOINTS file is written: KSPACING + KGAMMA define the Γ-centred mesh.
    """
    setting = setting or ("precise" if dfpt else "normal")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if supercell is not None:
        structure = _supercell(structure, supercell)
    # Species contiguous, so the POSCAR species line and the POTCAR order agree.
    structure = structure.get_sorted_structure(key=lambda site: site.specie.Z)
    poscar = Poscar(structure, comment=f"{structure.composition.reduced_formula} wycryst {setting}{' dfpt' if dfpt else ''}")
    tags = incar_settings(setting, dfpt=dfpt, **(incar_overrides or {}))
    symbols = potcar_symbols(structure)

    if potcars_available():
        potcar = Potcar(symbols, functional=POTCAR_FUNCTIONAL)
        if "ENCUT" not in tags:
            tags["ENCUT"] = math.ceil(max(p.enmax for p in potcar))
        potcar.write_file(directory / "POTCAR")

    poscar.write_file(directory / "POSCAR")
    Incar(tags).write_file(directory / "INCAR")
    (directory / "POTCAR.spec").write_text("\n".join(symbols) + "\n")
    return directory


def _verdict_for(initial: Structure, final: Structure, energy_per_atom: float, max_force: float,
                 converged: bool) -> tuple[str, str]:
    """dft.relax's explosion criteria (VASP energies are on MP's scale, so its energy bounds apply)."""
    ratio = final.volume / initial.volume
    lo, hi = ENERGY_PER_ATOM_BOUNDS
    if not (math.isfinite(energy_per_atom) and math.isfinite(max_force)):
        return "exploded", "non_finite: energy or forces not finite"
    if not 1 / VOLUME_RATIO_LIMIT <= ratio <= VOLUME_RATIO_LIMIT:
        return "exploded", f"volume_change: V/V0 = {ratio:.2f}"
    if not lo <= energy_per_atom <= hi:
        return "exploded", f"energy_per_atom: {energy_per_atom:.2f} eV outside [{lo}, {hi}]"
    if max_force > FORCE_LIMIT:
        return "exploded", f"max_force: {max_force:.1f} eV/A > {FORCE_LIMIT}"
    if len(final) > 1 and np.min(final.distance_matrix[np.triu_indices(len(final), 1)]) < MIN_DISTANCE:
        return "exploded", f"atoms_collapsed: min distance < {MIN_DISTANCE} A"
    if converged:
        return "converged", ""
    return "not_converged", "VASP's ionic (NSW) or electronic loop did not converge"


def _children_cpu_seconds() -> float:
    """CPU time of finished child processes (the engine's), user + system."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class VaspRelaxer:
    """Relaxer protocol over VASP: writes the paper's input set, runs ``VASP_COMMAND``, parses vasprun.xml.

    ``fmax``: VASP stops on the setting's EDIFFG (paper: -1e-3 / -1e-4 eV/Å) unless
    ``follow_fmax=True``, which sets EDIFFG = -fmax. ``max_steps`` becomes NSW.
    """

    name = "vasp"

    def __init__(
        self,
        workdir: str | Path,
        *,
        setting: str = "normal",
        command: str | None = None,
        follow_fmax: bool = False,
        symprec: float = RELAX_SYMPREC,
        timeout_s: float | None = None,
    ):
        self.workdir = Path(workdir)
        self.setting = setting
        self.command = command
        self.follow_fmax = follow_fmax
        self.symprec = symprec
        self.timeout_s = timeout_s

    def calculator(self):
        raise NotImplementedError("VASP runs as an external command here; use write_vasp_inputs + VASP_COMMAND")

    def _result(self, structure, sg_before, started, **fields) -> RelaxResult:
        final = fields.pop("structure", structure)
        sg_after = fields.pop("sg_after", sg_before)
        defaults = dict(energy=math.nan, energy_per_atom=math.nan, max_force=math.nan, steps=0, converged=False)
        defaults.update(fields)
        return RelaxResult(
            structure=final,
            sg_before=sg_before,
            sg_after=sg_after,
            symmetry_kept=sg_before is not None and sg_after == sg_before,
            seconds=time.perf_counter() - started[0],
            relaxer=self.name,
            cpu_seconds=_children_cpu_seconds() - started[1],
            **defaults,
        )

    def relax(self, structure: Structure, *, fmax: float = 0.05, max_steps: int = 500) -> RelaxResult:
        started = (time.perf_counter(), _children_cpu_seconds())
        sg_before = space_group_number(structure, self.symprec)
        command = self.command or os.environ.get("VASP_COMMAND")
        if not command:
            return self._result(structure, sg_before, started, verdict="failed", reason="VASP_COMMAND not set")

        overrides = {"NSW": int(max_steps)}
        if self.follow_fmax:
            overrides["EDIFFG"] = -abs(fmax)
        write_vasp_inputs(structure, self.workdir, self.setting, incar_overrides=overrides)
        (self.workdir / "vasprun.xml").unlink(missing_ok=True)  # never parse a previous run
        try:
            with open(self.workdir / "vasp.out", "w") as out:
                proc = subprocess.run(
                    shlex.split(command), cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT,
                    timeout=self.timeout_s, check=False,
                )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return self._result(structure, sg_before, started, verdict="failed", reason=f"VASP did not run: {exc}")
        return self._parse(structure, sg_before, started, proc.returncode)

    def _parse(self, structure, sg_before, started, returncode) -> RelaxResult:
        from pymatgen.io.vasp.outputs import Vasprun

        try:
            run = Vasprun(self.workdir / "vasprun.xml", parse_dos=False, parse_eigen=False, parse_potcar_file=False)
        except Exception as exc:
            reason = f"no readable vasprun.xml (exit code {returncode}): {type(exc).__name__}: {exc}"
            return self._result(structure, sg_before, started, verdict="failed", reason=reason)
        final = run.final_structure
        last = run.ionic_steps[-1]
        energy = float(last["e_0_energy"])
        forces = np.asarray(last["forces"])
        converged = bool(run.converged) and returncode == 0
        max_force = float(np.linalg.norm(forces, axis=1).max())
        verdict, reason = _verdict_for(structure, final, energy / len(final), max_force, converged)
        return self._result(
            structure, sg_before, started,
            structure=final,
            energy=energy,
            energy_per_atom=energy / len(final),
            max_force=max_force,
            steps=len(run.ionic_steps),
            converged=converged,
            verdict=verdict,
            reason=reason,
            sg_after=space_group_number(final, self.symprec),
        )
