"""Batched symmetry-kept relaxation: many structures relaxed in lockstep, one model call per step.

Every structure keeps exactly the per-structure machinery of :class:`dft.relax.AseRelaxer` -- its
own ``Atoms`` with ``FixSymmetry``, ``FrechetCellFilter`` and optimizer, held in a
:class:`dft.relax.Relaxation` -- and the same checks and verdicts (they are that class's code).
Only the potential is evaluated differently: at each step the driver collects the still-active
structures, evaluates them in ONE batched model call (:class:`CHGNetBatch`, :class:`SevenNetBatch`),
hands each structure its own energy, forces and stress through a calculator that serves them
(:class:`ServedCalculator`), and steps each optimizer. Finished structures leave the batch at once
and waiting ones join (up to ``max_batch_atoms`` atoms in flight), so the batch stays full while
relaxations of 10 and 300 steps run side by side.

One structure never affects another: a structure whose graph cannot be built, or whose model
call raises, fails alone (a batch call that raises is retried one structure at a time to find
which); a structure that explodes gets its verdict while the rest go on.

    relaxer = get_batch_relaxer("chgnet")
    for index, result in relaxer.iter_relax(structures, fmax=0.05, max_steps=300, primitive=True):
        print(index, result.verdict)  # as each one finishes

Batched results equal the per-structure calculators' (CHGNetCalculator, SevenNetCalculator):
same units (eV, eV/Angstrom, eV/Angstrom^3), stress sign and Voigt order, SevenNet modal.
"""

from __future__ import annotations

import functools
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from ase.calculators.calculator import Calculator

from dft.chgnet_graph import batched_graph, crystal_graph
from dft.relax import (
    DEFAULT_OPTIMIZER,
    OPTIMIZERS,
    RELAX_SYMPREC,
    Relaxation,
    RelaxResult,
    conventional_result,
    limited_threads,
    load_model,
    model_spec,
    primitive_cell,
    require_weights,
)

# Atoms in one batched model call (sum over the structures in flight). Measured with CHGNet on 24
# <= 20-atom primitive trials, one process, one thread (benchmarks/batch_relax_benchmark.py
# --sweep; busy machine): core-s per relaxation 3.24 at a cap of 20 atoms (about one structure
# per call), 2.68 at 100, 2.88 at 400, 2.90 at 1000. On a CPU the per-structure cost of CHGNet
# barely falls with batch size (bonds and angles, not call overhead, dominate); larger batches
# only help where the device is wide (GPU).
DEFAULT_MAX_BATCH_ATOMS = 100

ResultCallback = Callable[[int, RelaxResult], None]


class ServedCalculator(Calculator):
    """An ASE calculator that serves results computed elsewhere (the batched model call) for the
    one configuration they were computed at; asked about any other configuration it raises,
    so a structure can never step on stale forces."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def serve(self, atoms, results: dict) -> None:
        self.atoms = _bare_copy(atoms)
        self.results = {"energy": float(results["energy"]), "free_energy": float(results["energy"]),
                        "forces": np.asarray(results["forces"], dtype=float),
                        "stress": np.asarray(results["stress"], dtype=float)}

    def check_state(self, atoms, tol=1e-15):
        """What changed since the served configuration: an exact comparison of the arrays, cell
        and pbc (ASE's tolerance comparison, ``np.allclose`` on every array at every property
        read, was ~6 % of the batched path's CPU). Exact is stricter than ASE's 1e-15: the
        structure is read at the very configuration it was served for."""
        if self.atoms is None:
            return ["positions"]
        same = (np.array_equal(np.asarray(atoms.cell), np.asarray(self.atoms.cell))
                and np.array_equal(atoms.pbc, self.atoms.pbc)
                and atoms.arrays.keys() == self.atoms.arrays.keys()
                and all(np.array_equal(atoms.arrays[k], self.atoms.arrays[k]) for k in atoms.arrays))
        return [] if same else ["positions"]

    def calculate(self, atoms=None, properties=None, system_changes=None):
        raise RuntimeError("no batched results for this configuration (served calculator)")


class EvaluatorCalculator(Calculator):
    """An ASE calculator that evaluates one configuration with a :class:`BatchEvaluator` (a batch
    of one): the per-structure relaxer of a model with a batched evaluator uses it, so the
    per-structure and batched paths step on the same numbers (see ``CHGNetRelaxer``). A structure
    the evaluator fails raises its exception, as a calculator would."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, evaluator: BatchEvaluator):
        super().__init__()
        self.evaluator = evaluator

    def calculate(self, atoms=None, properties=None, system_changes=None):
        from ase.calculators.calculator import all_changes

        super().calculate(atoms, properties, system_changes or all_changes)
        result = self.evaluator.evaluate([self.atoms])[0]
        if isinstance(result, BaseException):
            raise result
        self.results = {"energy": float(result["energy"]), "free_energy": float(result["energy"]),
                        "forces": np.asarray(result["forces"], dtype=float),
                        "stress": np.asarray(result["stress"], dtype=float)}


def _bare_copy(atoms):
    """The atoms' arrays, cell and pbc -- all ASE's change check compares -- without the
    constraints (``Atoms.copy`` deep-copies FixSymmetry's operations at every step)."""
    from ase import Atoms

    copy = Atoms(cell=np.array(atoms.cell), pbc=atoms.pbc.copy())
    copy.arrays = {name: array.copy() for name, array in atoms.arrays.items()}
    return copy


# ---- batched evaluators: list of Atoms -> list of results dicts or exceptions ---------------


class BatchEvaluator:
    """``evaluate(atoms_list)`` -> one entry per structure: ``{"energy", "forces", "stress"}``
    (eV, eV/Angstrom, stress in eV/Angstrom^3 with ASE's sign, Voigt-6 or 3x3 as the matching
    ASE calculator returns it; ``Atoms.get_stress`` converts) or the exception that structure raised."""

    def prepare(self, atoms):  # per structure: graph/inputs; raises for that structure alone
        raise NotImplementedError

    def forward(self, prepared: list) -> list[dict]:  # one model call for the whole list
        raise NotImplementedError

    def evaluate(self, atoms_list: Sequence) -> list[dict | BaseException]:
        out: list[dict | BaseException | None] = [None] * len(atoms_list)
        ready, where = [], []
        for i, atoms in enumerate(atoms_list):
            try:
                ready.append(self.prepare(atoms))
                where.append(i)
            except Exception as exc:
                out[i] = exc
        if ready:
            try:
                results = self.forward(ready)
            except Exception:  # find the culprit: one structure at a time
                results = []
                for item in ready:
                    try:
                        results.append(self.forward([item])[0])
                    except Exception as exc:
                        results.append(exc)
            for i, res in zip(where, results):
                out[i] = res
        return out  # type: ignore[return-value]


@functools.cache
def _angles_unchanged():
    """A torch module standing in for an angle update whose output nothing reads: it returns
    the angle features it is given (built on first use: this module does not import torch)."""
    import torch

    class AnglesUnchanged(torch.nn.Module):
        def forward(self, *, angle_feas, **_):
            return angle_feas

    return AnglesUnchanged


def without_unused_angle_update(model):
    """A copy of CHGNet ``model`` without the angle update it computes and never uses.

    ``CHGNet._compute`` runs ``n_conv - 1`` rounds of (atom conv, bond conv, angle update) and
    then a last atom conv that reads atom and bond features only, so the angle features of the
    last round's update feed nothing: not the energy, forces, stress, magnetic moments or the
    atom and crystal features (~1/3 of the angle updates' forward time, ~2 % of a relaxation
    step). The copy replaces that update with one returning its input, so every output is the
    same; the caller's instance (shared by the process's calculators) is left as it is. A model
    laid out otherwise is returned as it is. One copy per model and process (a per-structure
    relaxation builds an evaluator per structure; the copy takes ~0.02 s).
    tests/test_batch_relax.py compares the copy's outputs with a freshly loaded model's."""
    import copy

    layers = getattr(model, "angle_layers", None)
    atom_layers = getattr(model, "atom_conv_layers", None)
    if layers is None or atom_layers is None or len(layers) == 0 or len(layers) != len(atom_layers) - 1:
        return model
    if isinstance(layers[-1], _angles_unchanged()):
        return model
    trimmed = _TRIMMED.get(model)
    if trimmed is None:
        trimmed = copy.deepcopy(model)
        trimmed.angle_layers[-1] = _angles_unchanged()()
        _TRIMMED[model] = trimmed
    return trimmed


_TRIMMED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its trimmed copy


class CHGNetBatch(BatchEvaluator):
    """CHGNet on a batch of crystal graphs in one forward pass, returning what
    ``CHGNetCalculator.calculate`` returns per structure: the crystal graph the model's converter
    builds from the Atoms' pymatgen structure, built from the arrays by
    :func:`dft.chgnet_graph.crystal_graph` (isolated atoms ignored, as the per-structure relaxer
    sets it), total
    energy = energy per atom x atoms, forces = -dE/dx, stress = (1/V) dE/d(strain) in GPa x
    ``ase.units.GPa`` (the calculator's default ``stress_weight``) as the same 3x3 matrix the
    calculator returns (``Atoms.get_stress`` turns either into ASE's Voigt form).

    The batch goes through CHGNet's own pieces (``CHGNet._compute`` for the energy, the
    composition model) on the batch :func:`dft.chgnet_graph.batched_graph` assembles -- what
    ``BatchedGraph.from_graphs`` assembles, with one strain tensor and one positions tensor for
    the whole batch instead of a dozen small operations and two gradient leaves per graph -- and
    on a copy of the model without its last, unused angle update
    (:func:`without_unused_angle_update`). Forces and stress come from ONE backward pass without
    ``create_graph``: CHGNet's ``forward`` takes two separate gradients, each building a
    double-backward graph that only training needs (measured: 2.6x the model time of this path
    on 24 trials of <= 20 atoms). The batch assembly and the trimmed model together cut the
    core-seconds of a batched relaxation by ~10 % (benchmarks/batch_relax_benchmark.py, n 100:
    2.09-2.15 -> 1.85 core-s, same steps and verdicts). Values agree with ``CHGNetCalculator``
    and with a freshly loaded CHGNet to float32 rounding (~1e-4 eV/Angstrom);
    tests/test_batch_relax.py compares them at the same configurations, so a CHGNet release that
    changes these internals fails there, not silently."""

    def __init__(self, model):
        from ase import units

        self.model = without_unused_angle_update(model)
        self.model.graph_converter.set_isolated_atom_response("ignore")
        self.model.eval()
        # inference only (the registry's models are never trained here): without gradients for
        # the weights autograd keeps less and does less; forces and stress are bit-identical and
        # a model call is ~15 % cheaper (measured on 12 trials, one thread)
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.ev_per_a3_per_gpa = units.GPa
        self.gpa_per_ev_per_a3 = 160.21766208  # CHGNet's own eV/A^3 -> GPa factor

    def prepare(self, atoms):
        # the graph the model's converter builds from the Structure AseAtomsAdaptor makes of the
        # atoms, built from the arrays (dft.chgnet_graph: same tensors, no Python edge objects)
        return len(atoms), crystal_graph(atoms, self.model.graph_converter)

    def forward(self, prepared: list) -> list[dict]:
        import torch

        model = self.model
        graphs = [g for _, g in prepared]
        comp_energy = 0 if model.composition_model is None else model.composition_model(graphs)
        batched, positions, strains = batched_graph(graphs, model.bond_basis_expansion, model.angle_basis_expansion)
        prediction = model._compute(batched, compute_force=False, compute_stress=False)
        energy = prediction["e"] + comp_energy  # per atom when the model is intensive, as forward() returns it
        n_atoms = prediction["atoms_per_graph"]
        total = energy * n_atoms if model.is_intensive else energy
        force_grad, strain_grad = torch.autograd.grad(total.sum(), [positions, strains])
        total = total.detach().numpy()
        forces = (-force_grad).numpy()
        stress = (strain_grad / batched.volumes[:, None, None] * self.gpa_per_ev_per_a3).numpy() * self.ev_per_a3_per_gpa
        out, start = [], 0
        for i, n in enumerate(n_atoms.tolist()):
            out.append({"energy": float(total[i]), "forces": forces[start:start + n],
                        "stress": stress[i]})  # 3x3, as the calculator returns it
            start += n
        return out


class SevenNetBatch(BatchEvaluator):
    """SevenNet's batch inference (graphs collated by torch_geometric, the model in batch mode,
    as ``sevenn.scripts.inference`` does), with ``SevenNetCalculator``'s conventions: graph from
    ``unlabeled_atoms_to_graph(atoms, cutoff, with_shift=False)``, the registry's modal on each
    graph, stress = -(model stress)[0, 1, 2, 4, 5, 3] (Voigt order, ASE sign)."""

    def __init__(self, model, modal: str | None):
        import torch

        self.model, self.modal = model, modal
        self.cutoff = float(model.cutoff)
        self.model.eval_type_map = torch.tensor(True)  # as SevenNetCalculator sets for a model instance
        self.model.eval()

    def prepare(self, atoms):
        import sevenn._keys as KEY
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph

        numbers = set(int(z) for z in atoms.get_atomic_numbers())
        unknown = sorted(numbers - set(self.model.type_map))
        if unknown:
            raise ValueError(f"model does not know atomic number(s) {unknown}")
        data = AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(atoms, self.cutoff, with_shift=False))
        if self.modal:
            data[KEY.DATA_MODALITY] = self.modal
        return len(atoms), data

    def forward(self, prepared: list) -> list[dict]:
        import sevenn._keys as KEY
        from torch_geometric.loader.dataloader import Collater

        batch = Collater([], follow_batch=None, exclude_keys=None)([d for _, d in prepared])
        self.model.set_is_batch_data(True)
        try:
            output = self.model(batch)
        finally:
            self.model.set_is_batch_data(False)  # the per-structure calculator shares this instance
        energy = output[KEY.PRED_TOTAL_ENERGY].detach().cpu().numpy().reshape(-1)
        forces = output[KEY.PRED_FORCE].detach().cpu().numpy()
        stress = -output[KEY.PRED_STRESS].detach().cpu().numpy().reshape(len(prepared), 6)[:, [0, 1, 2, 4, 5, 3]]
        out, start = [], 0
        for k, (n, _) in enumerate(prepared):
            out.append({"energy": float(energy[k]), "forces": forces[start:start + n], "stress": stress[k]})
            start += n
        return out


def batch_evaluator(name: str) -> BatchEvaluator:
    """The batched evaluator of registry model ``name`` (its model loaded once per process)."""
    spec = model_spec(name)
    require_weights(spec.name)
    model = load_model(spec.name)
    if spec.family == "chgnet":
        return CHGNetBatch(model)
    if spec.family == "sevennet":
        return SevenNetBatch(model, spec.modal)
    raise ValueError(f"no batched evaluator for family {spec.family!r}")


# ---- the driver ------------------------------------------------------------------------------


class BatchRelaxer:
    """Relax many structures together with registry model ``name`` (see :func:`get_batch_relaxer`).

    ``threads``: torch / BLAS threads for the whole batch (None leaves them alone);
    ``max_batch_atoms``: atoms in flight per model call (a single larger structure still runs)."""

    def __init__(self, name: str, *, optimizer: str = DEFAULT_OPTIMIZER, symprec: float = RELAX_SYMPREC,
                 threads: int | None = 1, max_batch_atoms: int = DEFAULT_MAX_BATCH_ATOMS,
                 evaluator: BatchEvaluator | None = None):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        self.name = model_spec(name).name if evaluator is None else name
        self.optimizer, self.symprec, self.threads = optimizer, symprec, threads
        self.max_batch_atoms = int(max_batch_atoms)
        self._evaluator = evaluator
        self.model_calls = 0

    def evaluator(self) -> BatchEvaluator:
        if self._evaluator is None:
            self._evaluator = batch_evaluator(self.name)
        return self._evaluator

    def relax_many(self, structures: Sequence, *, fmax: float = 0.05, max_steps: int = 500,
                   primitive: bool = False, on_result: ResultCallback | None = None) -> list[RelaxResult]:
        """Relax every structure and return the results in input order; ``on_result(index,
        result)`` is called the moment each one finishes. See :meth:`iter_relax`."""
        results: list[RelaxResult | None] = [None] * len(structures)
        for index, result in self.iter_relax(structures, fmax=fmax, max_steps=max_steps, primitive=primitive):
            results[index] = result
            if on_result is not None:
                on_result(index, result)
        return results  # type: ignore[return-value]

    def iter_relax(self, structures: Sequence, *, fmax: float = 0.05, max_steps: int = 500,
                   primitive: bool = False) -> Iterator[tuple[int, RelaxResult]]:
        """Yield ``(index, result)`` for every structure, in the order they finish.
        ``primitive``: centred cells are relaxed in their primitive cell and reported in the
        conventional cell, as :func:`dft.relax.relax_primitive` does. Never raises for one
        structure's bad physics or failure; a model that cannot load fails every structure."""
        with limited_threads(self.threads, torch_too=True):
            try:
                evaluator = self.evaluator()
            except Exception as exc:  # e.g. missing weights: every structure fails with the reason
                for index, structure in enumerate(structures):
                    run = Relaxation(structure, None, name=self.name, optimizer=self.optimizer,
                                     symprec=self.symprec, fmax=fmax, max_steps=max_steps)
                    run.fail(exc)
                    yield index, run.result
                return
            yield from self._lockstep(structures, evaluator, fmax=fmax, max_steps=max_steps, primitive=primitive)

    def _lockstep(self, structures, evaluator, *, fmax, max_steps, primitive):
        waiting = deque(range(len(structures)))
        cells: dict[int, object] = {}  # the cell each structure is relaxed in (primitive or as given)
        active: list[tuple[int, Relaxation, bool]] = []
        finished: list[tuple[int, RelaxResult]] = []

        def cell(index: int):
            if index not in cells:
                cells[index] = primitive_cell(structures[index]) if primitive else structures[index]
            return cells[index]

        def done(index: int, run: Relaxation, reduced: bool) -> None:
            finished.append((index, conventional_result(run.result) if reduced else run.result))

        def start(index: int) -> None:
            cpu0 = time.process_time()
            to_relax = cell(index)
            del cells[index]
            run = Relaxation(to_relax, ServedCalculator(), name=self.name, optimizer=self.optimizer,
                             symprec=self.symprec, fmax=fmax, max_steps=max_steps)
            run.cpu_seconds = time.process_time() - cpu0
            reduced = to_relax is not structures[index]
            if run.done:
                done(index, run, reduced)
            else:
                active.append((index, run, reduced))

        while waiting or active:
            in_flight = sum(run.n_atoms for _, run, _ in active)
            while waiting and (not active or in_flight + len(cell(waiting[0])) <= self.max_batch_atoms):
                start(waiting.popleft())
                in_flight = sum(run.n_atoms for _, run, _ in active)
            yield from finished
            finished.clear()
            if not active:
                continue
            cpu0 = time.process_time()
            batch = evaluator.evaluate([run.atoms for _, run, _ in active])
            self.model_calls += 1
            share = (time.process_time() - cpu0) / max(in_flight, 1)  # model CPU, split by atoms
            still = []
            for (index, run, reduced), res in zip(active, batch):
                cpu0 = time.process_time()
                if isinstance(res, BaseException):
                    run.fail(res)
                else:
                    run.atoms.calc.serve(run.atoms, res)
                    run.evaluate()
                    run.step()
                run.cpu_seconds += share * run.n_atoms + (time.process_time() - cpu0)
                if run.done:
                    done(index, run, reduced)
                else:
                    still.append((index, run, reduced))
            active = still
            yield from finished
            finished.clear()


def get_batch_relaxer(name: str = "chgnet", **kwargs) -> BatchRelaxer:
    """The batched relaxer of registry model ``name``; kwargs go to :class:`BatchRelaxer`."""
    spec = model_spec(name)
    require_weights(spec.name)
    return BatchRelaxer(spec.name, **kwargs)
