"""VASP input sets (paper settings) and GPAW as an external engine.

VASP is never run: the written INCAR/POSCAR/POTCAR.spec are checked against the paper's numbers
(typed in here, not imported from dft.vasp). GPAW runs through the system Python; without it the
GPAW tests skip, or fail when WYCRYST_REQUIRE_GPAW=1 (CI).
"""

from __future__ import annotations

import ast
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from pymatgen.io.vasp.inputs import Incar, Poscar

from dft import gpaw_engine, vasp
from dft.hpc import TaskInterrupted
from dft.relax import RelaxResult, space_group_number

REPO_ROOT = Path(__file__).resolve().parents[1]

# The paper's Supplementary settings (PBE PAW).
PAPER_ALWAYS = {"ISYM": 2, "SYMPREC": 1e-5, "ISMEAR": -5, "IBRION": 2, "ISIF": 3}
PAPER_NORMAL = {"KSPACING": 0.2, "EDIFF": 1e-6, "EDIFFG": -1e-3}  # ENCUT = max ENMAX (VASP default)
PAPER_PRECISE = {"ENCUT": 520, "KSPACING": 0.15, "EDIFF": 1e-8, "EDIFFG": -1e-4}


def srtio3() -> Structure:
    return Structure(
        Lattice.cubic(3.905),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


def silicon(a: float = 5.43) -> Structure:
    """Diamond Si, 2-atom primitive cell (ASE's bulk('Si') is this at a = 5.43 Å)."""
    lattice = Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    return Structure(lattice, ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])


@pytest.fixture
def no_potcars(monkeypatch):
    monkeypatch.setattr(vasp, "potcars_available", lambda: False)


def read_incar(directory: Path) -> Incar:
    return Incar.from_file(directory / "INCAR")


def assert_tags(incar: Incar, expected: dict) -> None:
    for tag, value in expected.items():
        assert tag in incar, f"{tag} missing from INCAR"
        assert math.isclose(float(incar[tag]), float(value), rel_tol=1e-12), f"{tag}={incar[tag]}, paper {value}"


# ---- VASP ----------------------------------------------------------------------------------

def test_normal_incar_has_paper_values(tmp_path, no_potcars):
    incar = read_incar(vasp.write_vasp_inputs(srtio3(), tmp_path, setting="normal"))
    assert_tags(incar, PAPER_ALWAYS | PAPER_NORMAL)
    assert incar["KGAMMA"] is True  # Γ-centred KSPACING mesh
    assert "ENCUT" not in incar  # no POTCARs here: VASP's default is the largest ENMAX
    assert not (tmp_path / "KPOINTS").exists()
    assert incar["NSW"] > 0


def test_precise_incar_has_paper_values(tmp_path, no_potcars):
    incar = read_incar(vasp.write_vasp_inputs(srtio3(), tmp_path, setting="precise"))
    assert_tags(incar, PAPER_ALWAYS | PAPER_PRECISE)
    assert incar["KGAMMA"] is True


def test_dfpt_incar_is_precise_linear_response_on_a_supercell(tmp_path, no_potcars):
    directory = vasp.write_vasp_inputs(srtio3(), tmp_path, dfpt=True, supercell=[2, 2, 2])
    incar = read_incar(directory)
    assert_tags(incar, {"IBRION": 8, "NSW": 1, "ISYM": 2, "SYMPREC": 1e-5, "ENCUT": 520,
                        "KSPACING": 0.15, "EDIFF": 1e-8})
    for absent in ("ISIF", "EDIFFG", "NPAR", "NCORE"):
        assert absent not in incar
    assert incar["LREAL"] is False
    poscar = Poscar.from_file(directory / "POSCAR")
    assert len(poscar.structure) == 40
    assert math.isclose(poscar.structure.lattice.a, 2 * 3.905)


def test_poscar_round_trips_and_potcar_spec_matches(tmp_path, no_potcars):
    structure = srtio3()
    directory = vasp.write_vasp_inputs(structure, tmp_path)
    poscar = Poscar.from_file(directory / "POSCAR")
    assert StructureMatcher(ltol=1e-4, stol=1e-4, angle_tol=1e-3).fit(poscar.structure, structure)
    assert np.allclose(poscar.structure.lattice.matrix, structure.lattice.matrix)
    spec = (directory / "POTCAR.spec").read_text().split()
    # MP/VASP-recommended PBE_54 choices, in the POSCAR's species order.
    expected = {"Sr": "Sr_sv", "Ti": "Ti_pv", "O": "O"}
    assert spec == [expected[el] for el in poscar.site_symbols]
    assert sorted(spec) == ["O", "Sr_sv", "Ti_pv"]


def test_incar_overrides_and_unknown_setting(tmp_path, no_potcars):
    incar = read_incar(vasp.write_vasp_inputs(srtio3(), tmp_path, incar_overrides={"NSW": 7}))
    assert incar["NSW"] == 7
    with pytest.raises(ValueError, match="setting"):
        vasp.write_vasp_inputs(srtio3(), tmp_path, setting="sloppy")


def test_vasp_relaxer_without_command_fails_cleanly(tmp_path, monkeypatch, no_potcars):
    monkeypatch.delenv("VASP_COMMAND", raising=False)
    result = vasp.VaspRelaxer(tmp_path).relax(srtio3())
    assert isinstance(result, RelaxResult)
    assert (result.verdict, result.reason, result.converged) == ("failed", "VASP_COMMAND not set", False)
    assert result.relaxer == "vasp" and result.sg_before == 221
    assert math.isnan(result.energy)


def test_vasp_relaxer_with_a_failing_command_reports_no_vasprun(tmp_path, monkeypatch, no_potcars):
    monkeypatch.setenv("VASP_COMMAND", "false")  # exits 1, writes nothing
    result = vasp.VaspRelaxer(tmp_path).relax(srtio3(), max_steps=3)
    assert result.verdict == "failed" and "vasprun.xml" in result.reason
    assert read_incar(tmp_path)["NSW"] == 3  # inputs were written with max_steps as NSW


def test_dft_modules_do_not_import_dagster_and_worker_is_standalone():
    code = "import sys, dft.vasp, dft.gpaw_engine; assert not any(m.startswith('dagster') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
    tree = ast.parse((REPO_ROOT / "dft" / "gpaw_worker.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= set(sys.stdlib_module_names) | {"numpy", "ase", "gpaw"}, imported


# ---- GPAW ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpaw():
    if not gpaw_engine.gpaw_available():
        message = f"GPAW not importable by {gpaw_engine.gpaw_python()} (Debian: apt-get install gpaw gpaw-data)"
        if os.environ.get("WYCRYST_REQUIRE_GPAW") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return gpaw_engine


LOW_K = {"kpts": [2, 2, 2]}  # 600 eV (default cut-off), a coarse mesh to stay fast


@pytest.fixture(scope="module")
def si_single_point(gpaw, tmp_path_factory):
    return gpaw.gpaw_single_point(silicon(), workdir=tmp_path_factory.mktemp("gpaw_sp"), **LOW_K)


def test_gpaw_single_point_si_is_finite_with_zero_forces(si_single_point):
    out = si_single_point
    assert math.isfinite(out["energy"]) and -6 < out["energy_per_atom"] < -3
    assert out["forces"].shape == (2, 3)
    assert np.abs(out["forces"]).max() < 1e-3  # zero by symmetry
    assert out["kpts"] == [2, 2, 2]
    assert Path(out["log"]).exists()
    job = json.loads((Path(out["log"]).parent / "in.json").read_text())
    assert job["settings"]["ecut"] == 600


def test_gpaw_relax_keeps_space_group(gpaw, tmp_path):
    strained = silicon(a=5.6)
    result = gpaw.GPAWRelaxer(tmp_path, **LOW_K).relax(strained, fmax=0.05, max_steps=4)
    assert result.relaxer == "gpaw" and result.verdict in ("converged", "not_converged"), result.reason
    assert result.sg_before == result.sg_after == 227 and result.symmetry_kept
    assert space_group_number(result.structure) == 227
    assert result.steps >= 1 and math.isfinite(result.energy)
    assert math.isclose(result.energy_per_atom, result.energy / 2)
    assert result.structure.volume != pytest.approx(strained.volume, rel=1e-4)  # the cell moved


def test_gpaw_failure_is_a_verdict_not_an_exception(gpaw, tmp_path):
    result = gpaw.GPAWRelaxer(tmp_path, xc="NO-SUCH-FUNCTIONAL", **LOW_K).relax(silicon(), max_steps=1)
    assert result.verdict == "failed" and "GPAW" in result.reason


def _sigterm_gpaw_worker_under(folder: Path, killed: list, timeout_s: float = 120) -> None:
    """SIGTERM the GPAW worker whose job lives under ``folder`` once it runs (as a cancelled run or
    an ending session does); ``killed`` gets its pid."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace") if proc.name.isdigit() else ""
            except OSError:
                continue
            if "gpaw_worker.py" in cmdline and str(folder) in cmdline:
                os.kill(int(proc.name), signal.SIGTERM)
                killed.append(int(proc.name))
                return
        time.sleep(0.1)


def test_gpaw_worker_stopped_from_outside_is_an_interruption_not_a_verdict(gpaw, tmp_path):
    """A worker killed by SIGTERM says nothing about the structure: the single point raises
    GPAWInterrupted (a dft.hpc.TaskInterrupted, which run_tasks retries instead of storing), and the
    relaxer lets it through instead of making a failed row of it."""
    for folder, run in ((tmp_path / "sp", lambda: gpaw.gpaw_single_point(silicon(), workdir=tmp_path / "sp", kpts=[8, 8, 8])),
                        (tmp_path / "relax", lambda: gpaw.GPAWRelaxer(tmp_path / "relax", kpts=[8, 8, 8])
                         .relax(silicon(a=5.6), max_steps=20))):
        killed: list[int] = []
        killer = threading.Thread(target=_sigterm_gpaw_worker_under, args=(folder, killed))
        killer.start()
        with pytest.raises(gpaw.GPAWInterrupted, match="SIGTERM"):
            run()
        killer.join()
        assert len(killed) == 1
    assert issubclass(gpaw.GPAWInterrupted, TaskInterrupted)


def test_gpaw_elemental_reference_and_formation_energy(gpaw, si_single_point, tmp_path):
    refs = gpaw.gpaw_elemental_references(["Si"], tmp_path, relax=False, **LOW_K)
    assert set(refs) == {"Si"} and -6 < refs["Si"] < -3
    cache = json.loads((tmp_path / gpaw.REFERENCE_CACHE_NAME).read_text())
    (entry,) = cache.values()
    assert entry["elements"]["Si"]["reference"].startswith("bulk diamond")
    # Cached: a second call runs nothing (no new job folder).
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert gpaw.gpaw_elemental_references(["Si"], tmp_path, relax=False, **LOW_K) == refs
    assert sorted(p.name for p in tmp_path.iterdir()) == folders
    # The reference crystal (ASE's bulk Si) against itself, same settings: formation energy zero.
    energy = si_single_point["energy"]
    assert abs(gpaw.gpaw_formation_energy_per_atom(silicon(), energy, refs)) < 1e-3
    with pytest.raises(ValueError, match="no GPAW elemental reference"):
        gpaw.gpaw_formation_energy_per_atom("SiO2", energy, refs)


def test_reference_states_are_documented_choices():
    oxygen, description = gpaw_engine.reference_atoms("O")
    assert oxygen["numbers"] == [8, 8] and "triplet" in description
    assert np.allclose(np.diag(oxygen["cell"]), 10.0) and sum(oxygen["magmoms"]) == pytest.approx(2.0)
    iron, description = gpaw_engine.reference_atoms("Fe")
    assert "bcc" in description and iron["magmoms"] == [2.2]
    iodine, description = gpaw_engine.reference_atoms("I")
    assert iodine["numbers"] == [53, 53] and "molecule" in description
    assert np.linalg.norm(np.subtract(*iodine["positions"])) == pytest.approx(2.666)  # I2 bond length
    with pytest.raises(ValueError, match="Se"):
        gpaw_engine.reference_atoms("Se")


# ---- the refinement stage's bookkeeping ------------------------------------------------------

def test_refinement_scores_against_the_engines_references_and_ranks_within_a_formula():
    from dft.refinement import score_refinements

    refs = {"Sr": -1.5, "Ti": -7.0, "O": -4.5}
    rows = [
        {"formula": "SrTiO3", "engine": "gpaw", "energy_per_atom": -8.0},  # hand: (-40 - (-1.5 - 7 - 13.5)) / 5
        {"formula": "SrTiO3", "engine": "gpaw", "energy_per_atom": -7.9},
        {"formula": "Sr2TiO4", "engine": "gpaw", "energy_per_atom": -7.5},
        {"formula": "SrTiSe3", "engine": "gpaw", "energy_per_atom": -5.0},  # no Se reference
        {"formula": "SrTiO3", "engine": "gpaw", "energy_per_atom": None, "verdict": "failed"},
    ]
    out = score_refinements(rows, refs, "gpaw refs")
    assert out[0]["formation_energy_per_atom"] == pytest.approx((-40 + 22) / 5)
    assert out[2]["formation_energy_per_atom"] == pytest.approx((-52.5 - (-3 - 7 - 18)) / 7)
    assert [r["rank_in_formula"] for r in out] == [1, 2, 1, 1, None]
    assert out[1]["relative_energy_per_atom"] == pytest.approx(0.1) and out[0]["relative_energy_per_atom"] == 0
    assert out[3]["formation_energy_per_atom"] is None and "Se" in out[3]["energy_note"]
    assert out[4]["formation_energy_per_atom"] is None and out[4]["verdict"] == "failed"
    unreferenced = score_refinements(rows[:2], None)
    assert unreferenced[0]["formation_energy_per_atom"] is None and unreferenced[1]["rank_in_formula"] == 2


def test_vasp_refinement_task_writes_inputs_without_a_command(tmp_path, monkeypatch, no_potcars):
    from dft.refinement import refine_task

    monkeypatch.delenv("VASP_COMMAND", raising=False)
    silicon().to(filename=str(tmp_path / "si.cif"))
    res = refine_task({"cif_path": str(tmp_path / "si.cif"), "engine": "vasp", "mode": "relax",
                       "workdir": str(tmp_path / "run")})
    assert res["verdict"] == "inputs_written" and "VASP_COMMAND" in res["reason"]
    assert (tmp_path / "run" / "normal" / "INCAR").exists() and (tmp_path / "run" / "normal" / "POTCAR.spec").exists()
    bad = refine_task({"cif_path": str(tmp_path / "si.cif"), "engine": "qe", "workdir": str(tmp_path / "x")})
    assert bad["verdict"] == "failed" and "unknown engine" in bad["reason"]
