"""CHGNet crystal graphs built with numpy, equal to what CHGNet's own converter builds.

CHGNet's ``CrystalGraphConverter`` turns a pymatgen ``Structure`` into a ``CrystalGraph``: a
neighbour list (pymatgen's C ``find_points_in_spheres``), then an atom graph and a bond (angle)
graph assembled edge by edge from Python objects (``chgnet.graph.graph``). For the small cells
a relaxation steps through, that Python assembly -- and building the pymatgen ``Structure`` it
starts from -- costs more than the neighbour list. :func:`crystal_graph` builds the same graph
from an ASE ``Atoms`` with array operations:

* the same neighbour list call with the same inputs (the fractional and Cartesian coordinates a
  ``Structure`` made from the Atoms holds, site by site), self pairs removed as pymatgen does;
* directed edges in the neighbour list's order; each one's undirected edge is numbered in the
  order its first directed edge appears, its partner is the reverse edge (neighbour -> centre,
  opposite image), as CHGNet's C ``create_graph`` pairs them;
* angles (bond graph rows ``[centre, undirected bond, directed bond, other undirected bond, other
  directed bond]``) in the order ``Graph.line_graph_adjacency_list`` emits them: undirected bonds
  in order, those longer than the bond cutoff skipped, both ends, and at each end the centre's
  other directed edges shorter than the cutoff grouped by neighbour (neighbours in the order they
  first appear), then by edge index.

The tensors equal the converter's element for element (tests/test_chgnet_graph.py compares them
on real structures), so the model sees the same input either way.

:func:`batched_graph` then assembles many such graphs into the ``BatchedGraph`` one model call
evaluates, as CHGNet's ``BatchedGraph.from_graphs`` does, with batch-wide tensor operations.
"""

from __future__ import annotations

import numpy as np


def neighbor_arrays(numbers, positions, cell, cutoff: float, numerical_tol: float = 1e-8):
    """``(frac, center, neighbor, image, distance)`` of an ASE-like cell, as
    ``Structure(Lattice(cell), numbers, positions, coords_are_cartesian=True)
    .get_neighbor_list(cutoff, sites=structure.sites, numerical_tol)`` returns them (and that
    structure's ``frac_coords``), without building the Structure."""
    from pymatgen.optimization.neighbors import find_points_in_spheres

    matrix = np.array(cell, dtype=np.float64).reshape((3, 3))
    inverse = np.linalg.inv(matrix)
    positions = np.asarray(positions, dtype=np.float64)
    # site by site, as PeriodicSite computes them (a row-wise product rounds like pymatgen's)
    frac = np.array([np.dot(p, inverse) for p in positions]) if len(positions) else np.zeros((0, 3))
    cart = np.ascontiguousarray([np.dot(f, matrix) for f in frac], dtype=float) if len(frac) else np.zeros((0, 3))
    center, neighbor, image, distance = find_points_in_spheres(
        cart, cart, r=float(cutoff), pbc=np.ones(3, dtype=np.int64), lattice=np.ascontiguousarray(matrix),
        tol=numerical_tol)
    keep = ~((center == neighbor) & (distance <= numerical_tol))
    return frac, center[keep], neighbor[keep], image[keep], distance[keep]


def graph_indices(n_atoms: int, center, neighbor, image, distance, bond_cutoff: float):
    """``(atom_graph, directed2undirected, undirected2directed, bond_graph)`` as int64 arrays,
    equal to CHGNet's fast ``create_graph`` + ``Graph.adjacency_list`` +
    ``Graph.line_graph_adjacency_list(bond_cutoff)``. ValueError when a directed edge has no
    reverse edge (CHGNet raises there too)."""
    center = np.asarray(center, dtype=np.int64)
    neighbor = np.asarray(neighbor, dtype=np.int64)
    image = np.rint(np.asarray(image, dtype=np.float64)).astype(np.int64).reshape(-1, 3)
    distance = np.asarray(distance, dtype=np.float64)
    n_edges = len(center)
    atom_graph = np.stack([center, neighbor], axis=1) if n_edges else np.zeros((0, 2), dtype=np.int64)
    if n_edges == 0:
        empty = np.zeros(0, dtype=np.int64)
        return atom_graph, empty, empty, np.zeros((0, 5), dtype=np.int64)

    # each directed edge's reverse (neighbor -> center, opposite image): unique integer keys
    reach = int(np.abs(image).max())
    base = 2 * reach + 1
    n = max(int(n_atoms), int(center.max()) + 1, int(neighbor.max()) + 1)

    def key(a, b, im):
        shifted = im + reach
        return (((a * n + b) * base + shifted[:, 0]) * base + shifted[:, 1]) * base + shifted[:, 2]

    keys = key(center, neighbor, image)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    reverse = key(neighbor, center, -image)
    where = np.minimum(np.searchsorted(sorted_keys, reverse), n_edges - 1)
    if not np.array_equal(sorted_keys[where], reverse):
        raise ValueError("directed edges are not complete: an edge has no reverse edge")
    partner = order[where]

    # undirected edges numbered in the order their first directed edge appears
    first = np.minimum(np.arange(n_edges), partner)
    is_first = first == np.arange(n_edges)
    undirected_id = np.cumsum(is_first) - 1  # valid at first edges
    directed2undirected = undirected_id[first]
    undirected2directed = np.flatnonzero(is_first)  # u -> its first directed edge
    second = partner[undirected2directed]

    # each centre's directed edges shorter than the cutoff: grouped by neighbour (neighbours in
    # order of first appearance at that centre), then by edge index
    _, first_of_pair, pair_inverse = np.unique(center * n + neighbor, return_index=True, return_inverse=True)
    group = first_of_pair[pair_inverse.reshape(-1)]
    short = np.flatnonzero(distance < bond_cutoff)
    short = short[np.lexsort((short, group[short], center[short]))]
    counts = np.bincount(center[short], minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])

    # angles: undirected bonds within the cutoff (not longer than it), both ends
    bonds = np.flatnonzero(distance[undirected2directed] <= bond_cutoff)
    if len(bonds) == 0 or len(short) == 0:
        return atom_graph, directed2undirected, undirected2directed, np.zeros((0, 5), dtype=np.int64)
    ends_u = np.repeat(bonds, 2)
    ends_dir = np.stack([undirected2directed[bonds], second[bonds]], axis=1).reshape(-1)
    ends_center = center[ends_dir]
    per_end = counts[ends_center]
    end_of_row = np.repeat(np.arange(len(ends_u)), per_end)
    offset = np.arange(len(end_of_row)) - np.repeat(np.cumsum(per_end) - per_end, per_end)
    other = short[starts[ends_center][end_of_row] + offset]
    keep = other != ends_dir[end_of_row]
    end_of_row, other = end_of_row[keep], other[keep]
    bond_graph = np.stack([ends_center[end_of_row], ends_u[end_of_row], ends_dir[end_of_row],
                           directed2undirected[other], other], axis=1)
    return atom_graph, directed2undirected, undirected2directed, bond_graph


def crystal_graph(atoms, converter):
    """The ``CrystalGraph`` that ``converter`` (a CHGNet ``CrystalGraphConverter``) builds from
    the pymatgen Structure of ``atoms`` (lattice, atomic numbers, Cartesian positions), built
    from the arrays directly. Isolated atoms follow ``converter.on_isolated_atoms``."""
    import sys

    import torch
    from chgnet.graph.crystalgraph import CrystalGraph

    dtype = torch.float32  # chgnet.graph.converter.TORCH_DTYPE
    numbers = np.asarray(atoms.numbers)
    n_atoms = len(numbers)
    frac, center, neighbor, image, distance = neighbor_arrays(numbers, atoms.positions, atoms.cell,
                                                              converter.atom_graph_cutoff)
    try:
        atom_graph, d2u, u2d, bond_graph = graph_indices(n_atoms, center, neighbor, image, distance,
                                                         converter.bond_graph_cutoff)
    except ValueError as exc:
        raise RuntimeError(f"Failed creating bond graph: {exc}") from exc
    n_isolated = n_atoms - len(np.unique(center))
    if n_isolated and converter.on_isolated_atoms != "ignore":
        msg = (f"Structure graph_id=None has {n_isolated} isolated atom(s) with "
               f"atom_graph_cutoff={converter.atom_graph_cutoff}. CHGNet calculation will likely go wrong")
        if converter.on_isolated_atoms == "error":
            raise ValueError(msg)
        print(msg, file=sys.stderr)

    def int_tensor(array, shape_if_empty):
        # the converter builds these from Python lists: an empty one is a 1-D tensor
        return torch.tensor(array if len(array) else shape_if_empty, dtype=torch.int32)

    return CrystalGraph(
        atomic_number=torch.tensor(numbers, dtype=torch.int32, requires_grad=False),
        atom_frac_coord=torch.tensor(frac, dtype=dtype, requires_grad=True),
        atom_graph=int_tensor(atom_graph, []),
        neighbor_image=torch.tensor(image, dtype=dtype),
        directed2undirected=int_tensor(d2u, []),
        undirected2directed=int_tensor(u2d, []),
        bond_graph=int_tensor(bond_graph, []),
        lattice=torch.tensor(np.array(atoms.cell, dtype=np.float64).reshape(3, 3), dtype=dtype, requires_grad=True),
        graph_id=None, mp_id=None, composition=atoms.get_chemical_formula(),
        atom_graph_cutoff=converter.atom_graph_cutoff, bond_graph_cutoff=converter.bond_graph_cutoff,
    )


def batched_graph(graphs, bond_basis_expansion, angle_basis_expansion):
    """``(batched, positions, strains)``: the ``BatchedGraph`` that CHGNet's
    ``BatchedGraph.from_graphs(graphs, bond_basis_expansion, angle_basis_expansion,
    compute_stress=True)`` assembles, built with one set of tensor operations for the whole batch
    instead of a dozen per graph, and the two tensors to differentiate the energy against:
    ``positions`` (all atoms' Cartesian coordinates in the strained lattices, ``(n_atoms, 3)``;
    ``-dE/dpositions`` are the forces) and ``strains`` (one zero leaf holding a ``3 x 3`` strain
    per graph, ``(n_graphs, 3, 3)``; ``dE/dstrain / V`` is the stress).

    Every quantity is computed as ``from_graphs`` computes it -- strained lattice ``L (I + e)``,
    Cartesian coordinates ``frac @ L``, bond vectors ``centre - (neighbour + image @ L)``
    normalised, the radial bases of the undirected bond lengths, the angular basis of each bond
    pair, the index tensors offset graph by graph, owners as int32, volumes detached -- with
    each row's lattice gathered by its graph; the integer tensors equal ``from_graphs``' and the
    float ones agree to float32 rounding (tests/test_chgnet_graph.py). The radial and angular
    bases (sines, exponentials) are still evaluated graph by graph: over the concatenated rows,
    torch's vectorised loops round some elements differently from the same graph evaluated alone
    (a tail handled by scalar code: ~1e-7), which made a graph's inputs depend on its batch
    mates; BFGS amplified that to other minima for ~10 % of 100 random trials. Evaluated
    graph by graph, every tensor of a graph is bit for bit what it is in a batch of one, as
    with ``from_graphs``. The returned ``atom_positions`` and ``strains`` fields hold
    the two batch tensors (``CHGNet._compute`` reads them only to compute forces itself, which
    the batched evaluator does not ask for)."""
    import torch
    from chgnet.model.model import BatchedGraph

    dtype = torch.float32  # chgnet.model.model.TORCH_DTYPE
    k = len(graphs)
    n_atoms = [int(g.atomic_number.shape[0]) for g in graphs]
    atom_graphs = [g.atom_graph.reshape(-1, 2) for g in graphs]  # a 1-D empty one: all isolated
    n_directed = [int(a.shape[0]) for a in atom_graphs]
    n_undirected = [int(g.undirected2directed.shape[0]) for g in graphs]
    bond_graphs = [g.bond_graph.reshape(-1, 5) for g in graphs]
    n_angles = [int(b.shape[0]) for b in bond_graphs]

    def offsets(counts):
        return torch.tensor([0, *counts[:-1]], dtype=torch.int64).cumsum(0)

    def repeat(values, counts):
        return torch.repeat_interleave(values, torch.tensor(counts, dtype=torch.int64))

    atom_offset, directed_offset, undirected_offset = offsets(n_atoms), offsets(n_directed), offsets(n_undirected)
    graph_index = torch.arange(k)
    atom_owner = repeat(graph_index, n_atoms)
    edge_owner = repeat(graph_index, n_directed)
    undirected_owner = repeat(graph_index, n_undirected)
    angle_owner = repeat(graph_index, n_angles)

    strains = torch.zeros((k, 3, 3), dtype=dtype, requires_grad=True)
    lattices = torch.stack([g.lattice for g in graphs]) @ (torch.eye(3, dtype=dtype) + strains)
    volumes = (lattices[:, 0] * torch.linalg.cross(lattices[:, 1], lattices[:, 2])).sum(dim=1)
    frac = torch.cat([g.atom_frac_coord for g in graphs])
    positions = (frac.unsqueeze(1) @ lattices[atom_owner]).squeeze(1)

    atom_graph = torch.cat(atom_graphs) + atom_offset[edge_owner].unsqueeze(1).to(torch.int32)
    image = torch.cat([g.neighbor_image.reshape(-1, 3) for g in graphs])
    neighbor = positions[atom_graph[:, 1]] + (image.unsqueeze(1) @ lattices[edge_owner]).squeeze(1)
    bond_vectors = positions[atom_graph[:, 0]] - neighbor
    bond_lengths = torch.norm(bond_vectors, dim=1)
    bond_vectors = bond_vectors / bond_lengths[:, None]
    undirected2directed = (torch.cat([g.undirected2directed.reshape(-1) for g in graphs]).to(torch.int64)
                           + directed_offset[undirected_owner])
    undirected_lengths = torch.index_select(bond_lengths, 0, undirected2directed).split(n_undirected)
    bond_bases_ag = torch.cat([bond_basis_expansion.rbf_expansion_ag(x) for x in undirected_lengths])
    bond_bases_bg = torch.cat([bond_basis_expansion.rbf_expansion_bg(x) for x in undirected_lengths])
    directed2undirected = (torch.cat([g.directed2undirected.reshape(-1) for g in graphs])
                           + undirected_offset[edge_owner].to(torch.int32))

    if sum(n_angles):
        rows = torch.cat(bond_graphs).to(torch.int64)
        bond_vecs_i = torch.index_select(bond_vectors, 0, rows[:, 2] + directed_offset[angle_owner])
        bond_vecs_j = torch.index_select(bond_vectors, 0, rows[:, 4] + directed_offset[angle_owner])
        angle_bases = torch.cat([angle_basis_expansion(i, j) for i, j in zip(bond_vecs_i.split(n_angles),
                                                                          bond_vecs_j.split(n_angles)) if len(i)])
        batched_bond_graph = torch.stack([rows[:, 0] + atom_offset[angle_owner],
                                          rows[:, 1] + undirected_offset[angle_owner],
                                          rows[:, 3] + undirected_offset[angle_owner]], dim=1)
        batched_bond_graph = batched_bond_graph.to(bond_graphs[0].dtype)
    else:  # no angles in the whole batch: from_graphs' empty tensors
        angle_bases = torch.tensor([])
        batched_bond_graph = torch.tensor([])

    batched = BatchedGraph(
        atomic_numbers=torch.cat([g.atomic_number for g in graphs]),
        bond_bases_ag=bond_bases_ag, bond_bases_bg=bond_bases_bg, angle_bases=angle_bases,
        batched_atom_graph=atom_graph, batched_bond_graph=batched_bond_graph,
        atom_owners=atom_owner.to(torch.int32), directed2undirected=directed2undirected,
        atom_positions=[positions], strains=[strains], volumes=volumes.detach(),
    )
    return batched, positions, strains
