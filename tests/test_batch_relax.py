"""dft.batch_relax: many structures relaxed in lockstep with one model call per step, checked
against the per-structure path (dft.relax) on real structures with the real models."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from dft.batch_relax import BatchEvaluator, BatchRelaxer, batch_evaluator, get_batch_relaxer
from dft.hpc import ComputeConfig, load_results, run_tasks
from dft.pipeline import relax_batch_task, relax_task
from dft.relax import get_relaxer, limited_threads, relax_primitive
from dft.trials import generate_trials

# small genes (primitive cells of 2-6 atoms), relaxed from random PyXtal trials
GENES = [
    ("SrTiO3", 221, {"Sr": ["1a"], "Ti": ["1b"], "O": ["3c"]}),  # cubic perovskite, 5 atoms
    ("TiO2", 136, {"Ti": ["2a"], "O": ["4f"]}),  # rutile, 6 atoms, 1 free coordinate
    ("NaCl", 225, {"Na": ["4a"], "Cl": ["4b"]}),  # rock salt: 8 conventional, 2 primitive
    ("ZnO", 186, {"Zn": ["2b"], "O": ["2b"]}),  # wurtzite, 4 atoms, free z
]


def near_equilibrium() -> list[Structure]:
    """The four crystals near their real geometry (for comparing forces: a random trial can carry
    1000 eV/A forces, where float32 cancellation alone differs by 0.01 eV/A between call orders)."""
    return [
        Structure.from_spacegroup(221, Lattice.cubic(3.95), ["Sr", "Ti", "O"], [[0, 0, 0], [.5, .5, .5], [.5, .5, 0]]),
        Structure.from_spacegroup(136, Lattice.tetragonal(4.65, 2.97), ["Ti", "O"], [[0, 0, 0], [.305, .305, 0]]),
        Structure.from_spacegroup(225, Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [.5, .5, .5]]),
        Structure.from_spacegroup(186, Lattice.hexagonal(3.25, 5.21), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, .38]]),
    ]


@pytest.fixture(scope="module")
def trials() -> list[Structure]:
    return [generate_trials(*gene, seed=0)[0].structure for gene in GENES]


@pytest.fixture(scope="module")
def single_results(trials):
    relaxer = get_relaxer("chgnet")
    return [relax_primitive(relaxer, s, fmax=0.05, max_steps=300) for s in trials]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch / BLAS thread, as the relaxers use (the calculators here are called directly)."""
    with limited_threads(1, torch_too=True):
        yield


def test_batched_chgnet_equals_the_calculator_at_the_same_configurations():
    """The batched evaluator returns what CHGNetCalculator returns (units, stress sign and
    conversion), structure by structure, at strained and rattled configurations."""
    calc = get_relaxer("chgnet").calculator()
    atoms = [s.to_ase_atoms() for s in near_equilibrium()]
    atoms[1].set_cell(atoms[1].cell * 1.03, scale_atoms=True)  # under tension: a real stress
    atoms[3].rattle(0.05, seed=1)
    batched = batch_evaluator("chgnet").evaluate(atoms)
    for a, got in zip(atoms, batched):
        a = a.copy()
        a.calc = calc
        assert got["energy"] == pytest.approx(a.get_potential_energy(), abs=1e-4 * len(a))
        assert np.allclose(got["forces"], a.get_forces(apply_constraint=False), atol=2e-3)
        expected = a.get_stress(apply_constraint=False)  # Voigt, eV/A^3, ASE sign
        from ase.stress import full_3x3_to_voigt_6_stress

        assert np.allclose(full_3x3_to_voigt_6_stress(got["stress"]), expected, atol=2e-5)
    assert abs(expected).max() > 1e-3  # the strained cell does carry stress


def test_chgnet_results_do_not_depend_on_the_batch():
    """Each structure's energy, forces and stress are the same alone as inside a batch of other
    structures, in any order, so the per-structure path (a batch of one) and the batched path
    step on the same numbers. On the development machine they are the same bits; the tolerance
    here is float32 rounding (a BLAS may round a product differently for another row count), far
    below any coupling between the structures of a batch. A last-bit dependence still sends some
    long BFGS relaxations to other minima; batch_relax_benchmark.py reports how many, by
    comparing the two paths."""
    atoms = [s.to_ase_atoms() for s in near_equilibrium()]
    for index, a in enumerate(atoms):
        a.rattle(0.03, seed=index)
    evaluator = batch_evaluator("chgnet")
    alone = [evaluator.evaluate([a])[0] for a in atoms]
    for batch in (atoms, atoms[::-1], atoms[1:3]):
        for a, got in zip(batch, evaluator.evaluate(batch)):
            want = alone[atoms.index(a)]
            assert got["energy"] == pytest.approx(want["energy"], abs=1e-5)
            assert np.allclose(got["forces"], want["forces"], rtol=0, atol=1e-5)
            assert np.allclose(got["stress"], want["stress"], rtol=0, atol=1e-7)


def test_batched_sevennet_mf0_equals_its_calculator_with_the_pbe_head():
    calc = get_relaxer("sevennet-mf0").calculator()
    assert calc.modal == "PBE"
    atoms = [s.to_ase_atoms() for s in near_equilibrium()[:3]]
    atoms[0].set_cell(atoms[0].cell * 0.97, scale_atoms=True)
    for a, got in zip(atoms, batch_evaluator("sevennet-mf0").evaluate(atoms)):
        a = a.copy()
        a.calc = calc
        assert got["energy"] == pytest.approx(a.get_potential_energy(), abs=1e-4 * len(a))
        assert np.allclose(got["forces"], a.get_forces(), atol=2e-3)
        assert np.allclose(got["stress"], a.get_stress(), atol=2e-5)


def test_batched_and_single_relaxations_agree_and_keep_the_space_group(trials, single_results):
    relaxer = get_batch_relaxer("chgnet")
    batched = relaxer.relax_many(trials, fmax=0.05, max_steps=300, primitive=True)
    assert relaxer.model_calls < sum(r.steps + 1 for r in batched)  # one call served several structures
    for (formula, sg, _), one, many in zip(GENES, single_results, batched):
        assert one.verdict == many.verdict == "converged", (formula, one.reason, many.reason)
        assert abs(one.energy_per_atom - many.energy_per_atom) <= 1e-3, formula  # 1 meV/atom
        assert one.sg_before == many.sg_before == sg and one.sg_after == many.sg_after == sg
        assert one.symmetry_kept and many.symmetry_kept
        assert len(many.structure) == len(one.structure)  # reported in the conventional cell
        assert many.relaxer == "chgnet" and many.cpu_seconds > 0
    assert len(batched[2].structure) == 8  # rock salt came back conventional (relaxed with 2 atoms)


def test_a_failing_and_an_exploding_structure_do_not_disturb_the_batch():
    """Curium is outside CHGNet's 94 elements (the model call raises: the batch is retried one by
    one to find it); a 1.8 A cubic NaCl cell is far too dense (its volume blows up)."""
    curium = Structure(Lattice.cubic(3.0), ["Cm"], [[0, 0, 0]])
    crushed = Structure(Lattice.cubic(1.8), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    good = near_equilibrium()[:2]
    results = get_batch_relaxer("chgnet").relax_many([good[0], curium, crushed, good[1]], max_steps=200)
    assert [r.verdict for r in results] == ["converged", "failed", "exploded", "converged"]
    assert results[1].reason.startswith("RuntimeError") and results[2].reason.startswith("volume_change")
    # the per-structure path gives the same verdicts, reasons and energies
    relaxer = get_relaxer("chgnet")
    alone = [relaxer.relax(s, max_steps=200) for s in (good[0], curium, crushed, good[1])]
    assert [r.reason for r in alone] == [r.reason for r in results]
    for got, single in ((results[0], alone[0]), (results[3], alone[3])):
        assert abs(got.energy_per_atom - single.energy_per_atom) <= 1e-3 and got.steps == single.steps


class EMTWithNaN(BatchEvaluator):
    """A batched evaluator over ASE's EMT (Cu) that returns NaN energies for the cells whose
    volume is below ``nan_below``: a structure that explodes mid-batch."""

    def __init__(self, nan_below: float):
        self.nan_below = nan_below

    def prepare(self, atoms):
        return atoms.copy()

    def forward(self, prepared):
        from ase.calculators.emt import EMT

        out = []
        for atoms in prepared:
            atoms.calc = EMT()
            energy = atoms.get_potential_energy()
            if atoms.get_volume() < self.nan_below:
                energy = float("nan")
            out.append({"energy": energy, "forces": atoms.get_forces(), "stress": atoms.get_stress()})
        return out


def test_non_finite_energy_mid_batch_explodes_only_that_structure():
    cu = Structure(Lattice.cubic(3.61), ["Cu"] * 4, [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]])
    small = cu.copy()
    small.scale_lattice(cu.volume * 0.9)  # it starts below the NaN volume
    relaxer = BatchRelaxer("emt", evaluator=EMTWithNaN(nan_below=cu.volume * 0.95), threads=None)
    results = relaxer.relax_many([cu, small, cu.copy()], fmax=0.01, max_steps=200)
    assert [r.verdict for r in results] == ["converged", "exploded", "converged"]
    assert results[1].reason.startswith("non_finite") and results[0].energy == pytest.approx(results[2].energy)


def test_batched_run_tasks_writes_a_file_per_task_and_resumes(trials, single_results, tmp_path):
    tasks = {}
    for i, trial in enumerate(trials[:3]):
        cif = tmp_path / "in" / f"t{i}.cif"
        cif.parent.mkdir(exist_ok=True)
        trial.to(filename=str(cif))
        tasks[f"t{i}"] = {"cif_path": str(cif), "relaxer": "chgnet", "fmax": 0.05, "max_steps": 300,
                          "out_cif": str(tmp_path / "out" / f"t{i}.cif")}
    tasks["broken"] = {"cif_path": str(tmp_path / "in" / "missing.cif"), "relaxer": "chgnet"}
    config = ComputeConfig(max_workers=1)
    lines: list[str] = []

    results = run_tasks(relax_batch_task, tasks, config, tmp_path / "res", log=lines.append, batched=True)

    assert load_results(tmp_path / "res") == results  # one result file per task
    for i in range(3):
        r = results[f"t{i}"]
        assert r["verdict"] == "converged" and r["symmetry_kept"] and r["relaxer"] == "chgnet"
        assert abs(r["energy_per_atom"] - single_results[i].energy_per_atom) <= 1e-3
        assert Structure.from_file(r["relaxed_cif"]).composition == trials[i].composition
    assert results["broken"]["verdict"] == "failed" and "missing.cif" in results["broken"]["reason"]
    assert set(results["t0"]) == set(relax_task(tasks["t0"] | {"out_cif": str(tmp_path / "x.cif")}))

    lines.clear()
    again = run_tasks(relax_batch_task, tasks, config, tmp_path / "res", log=lines.append, batched=True)
    assert again == results and lines[0] == "4/4 tasks already have results; running 0"


def test_batched_chgnet_equals_a_freshly_loaded_model():
    """The evaluator runs a copy of CHGNet without the last angle update (its output is read by
    nothing): energy, forces and stress equal an untouched CHGNet's predict_structure, and the
    process's shared model instance keeps all its layers."""
    from ase import units
    from chgnet.model import CHGNet
    from pymatgen.io.ase import AseAtomsAdaptor

    from dft.relax import load_model

    atoms = [s.to_ase_atoms() for s in near_equilibrium()]
    for index, a in enumerate(atoms):
        a.rattle(0.03, seed=index)
    atoms[1].set_cell(atoms[1].cell * 1.03, scale_atoms=True)
    evaluator = batch_evaluator("chgnet")
    fresh = CHGNet.load(verbose=False)
    for a, got in zip(atoms, evaluator.evaluate(atoms)):
        want = fresh.predict_structure(AseAtomsAdaptor.get_structure(a))
        assert got["energy"] / len(a) == pytest.approx(float(want["e"]), abs=1e-5)
        assert np.allclose(got["forces"], want["f"], atol=1e-4)
        assert np.allclose(got["stress"] / units.GPa, want["s"], atol=1e-3)  # GPa
    assert type(evaluator.model.angle_layers[-1]).__name__ == "AnglesUnchanged"
    shared = load_model("chgnet")
    assert evaluator.model is not shared
    assert all(type(layer).__name__ == "AngleUpdate" for layer in shared.angle_layers)


def test_the_trimmed_model_is_copied_once_per_model():
    """Per-structure relaxations build an evaluator per structure: they share one trimmed copy
    of the process's model instead of copying it each time."""
    from dft.batch_relax import CHGNetBatch
    from dft.relax import load_model

    shared = load_model("chgnet")
    first, second = CHGNetBatch(shared), CHGNetBatch(shared)
    assert first.model is second.model and first.model is not shared
