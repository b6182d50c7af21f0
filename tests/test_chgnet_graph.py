"""dft.chgnet_graph: CHGNet crystal graphs built with numpy equal the ones CHGNet's own
converter builds (element for element), on real structures and PyXtal trials."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from dft.chgnet_graph import crystal_graph, graph_indices
from dft.relax import load_model
from dft.trials import generate_trials


def structures() -> list[Structure]:
    cu = Structure(Lattice.from_parameters(2.55, 2.55, 2.55, 60, 60, 60), ["Cu"], [[0, 0, 0]])  # 1 atom: self images
    out = [
        Structure.from_spacegroup(221, Lattice.cubic(3.95), ["Sr", "Ti", "O"], [[0, 0, 0], [.5, .5, .5], [.5, .5, 0]]),
        Structure.from_spacegroup(136, Lattice.tetragonal(4.65, 2.97), ["Ti", "O"], [[0, 0, 0], [.305, .305, 0]]),
        Structure.from_spacegroup(186, Lattice.hexagonal(3.25, 5.21), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, .38]]),
        cu,
        Structure(Lattice.from_parameters(4.1, 5.3, 6.2, 71, 83, 102), ["Li", "Fe", "P", "O", "O"],
                  [[0.1, 0.2, 0.3], [0.52, 0.41, 0.77], [0.9, 0.05, 0.5], [0.33, 0.66, 0.12], [0.7, 0.8, 0.95]]),
    ]
    genes = [("BaTiO3", 99, {"Ba": ["1a"], "Ti": ["1b"], "O": ["1b", "2c"]}),
             ("Al2O3", 167, {"Al": ["12c"], "O": ["18e"]}),
             ("NaCl", 225, {"Na": ["4a"], "Cl": ["4b"]})]
    for gene in genes:
        out += [t.structure for t in generate_trials(*gene, seed=3)[:2] if t.structure is not None]
    return out


def reference(atoms, converter):
    """The converter's graph of the Structure CHGNet's calculator makes from the Atoms."""
    from pymatgen.io.ase import AseAtomsAdaptor

    return converter(AseAtomsAdaptor.get_structure(atoms))


@pytest.fixture(scope="module")
def converter():
    conv = load_model("chgnet").graph_converter
    conv.set_isolated_atom_response("ignore")
    return conv


def test_graph_equals_chgnet_converter(converter):
    """Every tensor equal, on 5 hand-made cells and 6 PyXtal trials, as given and rattled + strained
    (off the special positions: a generic configuration too)."""
    cells = structures()
    assert len(cells) >= 9
    for index, structure in enumerate(cells):
        moved = structure.to_ase_atoms()
        moved.rattle(0.02, seed=index)
        moved.set_cell(moved.cell * 1.01, scale_atoms=True)
        for atoms in (structure.to_ase_atoms(), moved):
            want, got = reference(atoms, converter), crystal_graph(atoms, converter)
            assert len(want.bond_graph) > 0 and len(want.atom_graph) > 0
            for name in ("atomic_number", "atom_frac_coord", "lattice", "atom_graph", "neighbor_image",
                         "directed2undirected", "undirected2directed", "bond_graph"):
                w, g = getattr(want, name), getattr(got, name)
                assert w.dtype == g.dtype and w.shape == g.shape, (index, name)
                assert torch.equal(w, g), (index, name)
            assert got.atom_frac_coord.requires_grad and got.lattice.requires_grad


def test_hand_worked_chain():
    """Two atoms in a 1-D chain (hand-checkable): A at 0, B at 1.5 in a 3 A period. Directed
    edges A->B (image 0), A->B (image -1), B->A (0), B->A (+1). Undirected edges: {A->B(0),
    B->A(0)} = 0 and {A->B(-1), B->A(+1)} = 1. With a 2 A bond cutoff every edge is a bond; at A
    the two edges form the angle pair (A, 0, 0, 1, 1) and (A, 1, 1, 0, 0); at B likewise."""
    center = np.array([0, 0, 1, 1])
    neighbor = np.array([1, 1, 0, 0])
    image = np.array([[0, 0, 0], [-1, 0, 0], [0, 0, 0], [1, 0, 0]])
    distance = np.full(4, 1.5)
    atom_graph, d2u, u2d, bond_graph = graph_indices(2, center, neighbor, image, distance, 2.0)
    assert atom_graph.tolist() == [[0, 1], [0, 1], [1, 0], [1, 0]]
    assert d2u.tolist() == [0, 1, 0, 1] and u2d.tolist() == [0, 1]
    assert bond_graph.tolist() == [[0, 0, 0, 1, 1], [1, 0, 2, 1, 3], [0, 1, 1, 0, 0], [1, 1, 3, 0, 2]]
    # a 1.4 A cutoff: no bonds, no angles
    assert graph_indices(2, center, neighbor, image, distance, 1.4)[3].shape == (0, 5)
    with pytest.raises(ValueError, match="reverse"):
        graph_indices(2, center[:3], neighbor[:3], image[:3], distance[:3], 2.0)


def test_batched_graph_equals_chgnet_from_graphs(converter):
    """dft.chgnet_graph.batched_graph assembles the batch CHGNet's BatchedGraph.from_graphs
    assembles (compute_stress=True) from the same graphs: integer tensors equal, float ones to
    float32 rounding; positions are the from_graphs atom positions stacked. Batches mix real
    cells with an angle-free graph (one atom in a 4 A cube: neighbours inside the 6 A atom-graph
    cutoff, none inside the 3 A bond-graph cutoff) and an isolated atom (20 A cube: no edges at
    all), and one holds only the angle-free graph (no angles anywhere: from_graphs' empty
    tensors)."""
    from chgnet.model.model import BatchedGraph

    from dft.chgnet_graph import batched_graph

    model = load_model("chgnet")
    graphs = [crystal_graph(s.to_ase_atoms(), converter) for s in structures()]
    no_angles = crystal_graph(Structure(Lattice.cubic(4.0), ["Cu"], [[0, 0, 0]]).to_ase_atoms(), converter)
    isolated = crystal_graph(Structure(Lattice.cubic(20.0), ["He"], [[0, 0, 0]]).to_ase_atoms(), converter)
    assert no_angles.atom_graph.numel() > 0 and no_angles.bond_graph.numel() == 0
    assert isolated.atom_graph.numel() == 0
    batches = (graphs, graphs[::-1], graphs[3:4], [graphs[0], no_angles, graphs[1], isolated, graphs[2]], [no_angles])
    for batch in batches:
        want = BatchedGraph.from_graphs(batch, model.bond_basis_expansion, model.angle_basis_expansion,
                                        compute_stress=True)
        got, positions, strains = batched_graph(batch, model.bond_basis_expansion, model.angle_basis_expansion)
        for name in ("atomic_numbers", "batched_atom_graph", "batched_bond_graph", "atom_owners", "directed2undirected"):
            a, b = getattr(want, name), getattr(got, name)
            assert a.dtype == b.dtype and torch.equal(a, b), name
        for name in ("bond_bases_ag", "bond_bases_bg", "angle_bases", "volumes"):
            a, b = getattr(want, name), getattr(got, name)
            assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
        assert torch.allclose(torch.cat(want.atom_positions), positions, atol=1e-5)
        assert strains.shape == (len(batch), 3, 3) and strains.requires_grad and not strains.any()


def test_a_graph_is_assembled_the_same_alone_and_in_a_batch(converter):
    """Each graph's slice of a batched_graph -- positions, radial and angular bases -- is bit for
    bit the graph assembled alone, whatever its batch mates, so a structure relaxed in a batch
    steps on the numbers it would get alone (bases evaluated over a whole batch's rows round some
    elements differently: ~1e-7, enough to send BFGS elsewhere)."""
    from dft.chgnet_graph import batched_graph

    model = load_model("chgnet")
    cells = []
    for index, structure in enumerate(structures()):
        cells.append(structure.to_ase_atoms())
        rattled = structure.to_ase_atoms()
        rattled.rattle(0.05, seed=index)  # bond lengths off the special values of a symmetric cell
        cells.append(rattled)
    graphs = [crystal_graph(atoms, converter) for atoms in cells]
    expansions = (model.bond_basis_expansion, model.angle_basis_expansion)
    alone = [batched_graph([g], *expansions) for g in graphs]
    for batch_order in (list(range(len(graphs))), list(range(len(graphs)))[::-1]):
        got, positions, _ = batched_graph([graphs[i] for i in batch_order], *expansions)
        counts = {"atoms": [], "bonds": [], "angles": []}
        for i in batch_order:
            one = alone[i][0]
            counts["atoms"].append(len(one.atomic_numbers))
            counts["bonds"].append(len(one.bond_bases_ag))
            counts["angles"].append(len(one.angle_bases))
        for name, key, whole in (("positions", "atoms", positions), ("bond_bases_ag", "bonds", got.bond_bases_ag),
                                 ("bond_bases_bg", "bonds", got.bond_bases_bg), ("angle_bases", "angles", got.angle_bases)):
            for i, part in zip(batch_order, whole.split(counts[key])):
                want = alone[i][1] if name == "positions" else getattr(alone[i][0], name)
                assert torch.equal(part, want.reshape(part.shape)), (name, i)
