"""Harmonic phonon stability verdicts by finite displacements (phonopy) with any ASE calculator.

Recipe (as atomate2's phonon workflow): symmetrize the structure and take its standard primitive
cell (Setyawan-Curtarolo convention) -> diagonal supercell with every lattice vector >=
``supercell_min_length`` -> symmetry-reduced displacements of ``displacement`` A -> forces from the
calculator -> force constants (translational sum rule imposed) -> frequencies on a Gamma-centred
q-mesh and along the high-symmetry band path.

Verdict: "stable" when no counted frequency lies below ``-tolerance_thz`` on the mesh or on the
band path. The three acoustic branches (the modes closest to zero) at q-points within
``gamma_radius`` (1/A, no 2*pi) of Gamma are not counted unless they fall below ``-acoustic_tolerance_thz``: finite-displacement force
constants from MLIPs often show small negative acoustic pockets there (truncated long-range forces,
numerical noise) that are not instabilities. 0.1 THz is the threshold used by many
high-throughput screens; atomate2 flags any mode below -1e-5 THz on the band structure, which is
too strict for MLIP force constants. "unstable" otherwise; "failed" when anything raised (never
propagated). Frequencies follow phonopy's convention: imaginary modes are negative.

Plain phonopy/ASE/pymatgen; no Dagster. The caller supplies (and owns) the calculator.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field

import numpy as np
from pymatgen.core import Structure

DEFAULT_TOLERANCE_THZ = 0.1
DEFAULT_ACOUSTIC_TOLERANCE_THZ = 0.5
DEFAULT_GAMMA_RADIUS = 0.05  # 1/A (crystallographic, no 2*pi)


@dataclass
class PhononResult:
    """Outcome of ``phonon_verdict``.

    ``min_frequency_thz``/``where``: the lowest *counted* frequency (acoustic branches near Gamma
    excluded, see module doc) and where it occurs ("mesh q=(..)" or a band-path point such as
    "X" or "Γ-X q=(..)"). ``gamma_acoustic_min_thz``: the lowest of the excluded acoustic values.
    Band arrays are per path segment: ``band_distances[i]`` (n,), ``band_frequencies[i]`` (n, bands),
    ``band_labels[i]`` = (start label, end label)."""

    verdict: str  # "stable" | "unstable" | "failed"
    min_frequency_thz: float | None = None
    where: str | None = None
    reason: str | None = None
    supercell_matrix: list[list[int]] | None = None
    n_atoms_primitive: int = 0
    n_atoms_supercell: int = 0
    n_displacements: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    space_group: str | None = None
    mesh: tuple[int, int, int] | None = None
    tolerance_thz: float = DEFAULT_TOLERANCE_THZ
    acoustic_tolerance_thz: float = DEFAULT_ACOUSTIC_TOLERANCE_THZ
    gamma_acoustic_min_thz: float | None = None
    band_path_source: str | None = None
    band_distances: list[np.ndarray] = field(default_factory=list)
    band_frequencies: list[np.ndarray] = field(default_factory=list)
    band_labels: list[tuple[str, str]] = field(default_factory=list)

    @property
    def is_stable(self) -> bool:
        return self.verdict == "stable"

    def summary(self) -> dict:
        """JSON-friendly scalars (no band arrays)."""
        return {
            "verdict": self.verdict, "min_frequency_thz": self.min_frequency_thz, "where": self.where,
            "reason": self.reason, "supercell_matrix": self.supercell_matrix,
            "n_atoms_primitive": self.n_atoms_primitive, "n_atoms_supercell": self.n_atoms_supercell,
            "n_displacements": self.n_displacements, "seconds": round(self.seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3), "space_group": self.space_group,
            "mesh": list(self.mesh) if self.mesh else None, "tolerance_thz": self.tolerance_thz,
            "acoustic_tolerance_thz": self.acoustic_tolerance_thz,
            "gamma_acoustic_min_thz": self.gamma_acoustic_min_thz,
            "band_path_source": self.band_path_source,
        }


# ----------------------------------------------------------------------------- building blocks


def symmetrized_primitive(structure: Structure, symprec: float = 0.01) -> tuple[Structure, str]:
    """Standard primitive cell (Setyawan-Curtarolo, as ``HighSymmKpath`` expects) with positions
    and lattice symmetrized to the space group found at ``symprec``; and its symbol."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    sga = SpacegroupAnalyzer(structure, symprec=symprec)
    primitive = sga.get_primitive_standard_structure(international_monoclinic=False)
    return primitive, f"{sga.get_space_group_symbol()} ({sga.get_space_group_number()})"


def diagonal_supercell(structure: Structure, min_length: float) -> list[list[int]]:
    """diag(n_a, n_b, n_c) with n_i * |a_i| >= min_length."""
    ns = [max(1, math.ceil(min_length / length - 1e-9)) for length in structure.lattice.abc]
    return [[ns[0], 0, 0], [0, ns[1], 0], [0, 0, ns[2]]]


def band_path(primitive: Structure, symprec: float = 0.01) -> tuple[list[list[np.ndarray]], list[list[str]], str]:
    """High-symmetry path in fractional coordinates of ``primitive``'s reciprocal lattice:
    sub-paths of q-points and their labels. pymatgen's Setyawan-Curtarolo path (no seekpath
    needed); a generic Γ-X-M-R-Γ walk if that fails."""
    try:
        from pymatgen.symmetry.bandstructure import HighSymmKpath

        kpath = HighSymmKpath(primitive, path_type="setyawan_curtarolo", symprec=symprec).kpath
        points = kpath["kpoints"]
        paths = [[np.asarray(points[label], dtype=float) for label in sub] for sub in kpath["path"]]
        labels = [[_pretty_label(label) for label in sub] for sub in kpath["path"]]
        return paths, labels, "pymatgen HighSymmKpath (setyawan_curtarolo)"
    except Exception as exc:  # unusual cells: a generic walk through the zone, the reason kept
        generic = {"Γ": (0, 0, 0), "X": (0.5, 0, 0), "M": (0.5, 0.5, 0), "R": (0.5, 0.5, 0.5)}
        order = ["Γ", "X", "M", "R", "Γ"]
        why = f"{type(exc).__name__}: {exc}"[:200]
        return ([[np.asarray(generic[k], dtype=float) for k in order]], [order],
                f"generic Γ-X-M-R-Γ (HighSymmKpath failed: {why})")


def _pretty_label(label: str) -> str:
    return label.replace("\\Gamma", "Γ").replace("\\Sigma", "Σ").replace("_", "").replace("$", "")


def phonopy_for(primitive: Structure, supercell_matrix):
    """A ``Phonopy`` object whose primitive cell is ``primitive`` itself (``primitive_matrix="P"``).

    The cell is already the symmetrized primitive cell, and the band path and the near-Gamma test
    are computed in its reciprocal basis. phonopy >= 4 reads ``primitive_matrix=None`` as "auto",
    which may re-orient the cell (a tetragonal cell with its 4-fold axis along a comes back with
    the axes permuted), so q-points given in this cell's basis would be read in another one."""
    from phonopy import Phonopy

    return Phonopy(_to_phonopy_atoms(primitive), supercell_matrix=supercell_matrix, primitive_matrix="P")


def _to_phonopy_atoms(structure: Structure):
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(
        symbols=[site.specie.symbol for site in structure],
        cell=structure.lattice.matrix,
        scaled_positions=structure.frac_coords,
    )


def _forces(supercell, calculator) -> np.ndarray:
    from ase import Atoms

    atoms = Atoms(symbols=supercell.symbols, cell=supercell.cell,
                  scaled_positions=supercell.scaled_positions, pbc=True)
    atoms.calc = calculator
    forces = np.asarray(atoms.get_forces(), dtype=float)
    if forces.shape != (len(atoms), 3) or not np.all(np.isfinite(forces)):
        raise ValueError(f"calculator returned unusable forces (shape {forces.shape}, finite "
                         f"{bool(np.all(np.isfinite(forces)))})")
    return forces


def _near_gamma(qpoints: np.ndarray, reciprocal: np.ndarray, radius: float) -> np.ndarray:
    wrapped = qpoints - np.round(qpoints)
    return np.linalg.norm(wrapped @ reciprocal, axis=1) <= radius + 1e-12


def _fmt_q(q) -> str:
    return "(" + ", ".join(f"{x:.3g}" for x in q) + ")"


# ----------------------------------------------------------------------------- verdict


def phonon_verdict(
    structure: Structure,
    calculator,
    *,
    supercell_min_length: float = 10.0,
    displacement: float = 0.01,
    mesh: tuple[int, int, int] = (8, 8, 8),
    tolerance_thz: float = DEFAULT_TOLERANCE_THZ,
    acoustic_tolerance_thz: float = DEFAULT_ACOUSTIC_TOLERANCE_THZ,
    gamma_radius: float = DEFAULT_GAMMA_RADIUS,
    symprec: float = 0.01,
    band_points: int = 51,
) -> PhononResult:
    """Phonon stability of a (relaxed) structure with an ASE calculator; never raises.

    The structure should be relaxed with the same calculator: residual forces are not subtracted.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    result = PhononResult(verdict="failed", tolerance_thz=tolerance_thz,
                          acoustic_tolerance_thz=acoustic_tolerance_thz, mesh=tuple(mesh))
    try:
        _run(result, structure, calculator, supercell_min_length, displacement, tuple(mesh),
             tolerance_thz, acoustic_tolerance_thz, gamma_radius, symprec, band_points)
    except Exception as exc:  # the verdict records every failure; callers never see a raise
        result.verdict = "failed"
        result.reason = f"{type(exc).__name__}: {exc}"[:500]
    result.seconds = time.perf_counter() - t0
    result.cpu_seconds = time.process_time() - c0
    return result


def _run(result: PhononResult, structure, calculator, supercell_min_length, displacement, mesh,
         tolerance_thz, acoustic_tolerance_thz, gamma_radius, symprec, band_points) -> None:
    from phonopy.phonon.band_structure import get_band_qpoints_and_path_connections

    primitive, result.space_group = symmetrized_primitive(structure, symprec=symprec)
    supercell_matrix = diagonal_supercell(primitive, supercell_min_length)
    result.supercell_matrix = supercell_matrix
    result.n_atoms_primitive = len(primitive)

    phonon = phonopy_for(primitive, supercell_matrix)
    phonon.generate_displacements(distance=displacement)
    supercells = phonon.supercells_with_displacements
    result.n_atoms_supercell = len(phonon.supercell)
    result.n_displacements = len(supercells)
    phonon.forces = np.array([_forces(sc, calculator) for sc in supercells])
    phonon.produce_force_constants(show_drift=False)
    phonon.symmetrize_force_constants(show_drift=False)

    reciprocal = np.linalg.inv(primitive.lattice.matrix).T  # rows: b_i (1/A, no 2*pi)
    candidates: list[tuple[float, str]] = []  # counted (frequency, where)
    acoustic: list[float] = []

    def collect(qpoints: np.ndarray, freqs: np.ndarray, where_of) -> None:
        near = _near_gamma(qpoints, reciprocal, gamma_radius)
        for i, (q, f) in enumerate(zip(qpoints, freqs)):
            # acoustic branches near Gamma: the three modes closest to zero (not the three lowest,
            # which would hide an imaginary optical mode at Gamma)
            order = np.argsort(np.abs(f))
            counted = order[3:] if near[i] else order
            if near[i]:
                low = float(f[order[:3]].min())
                acoustic.append(low)
                if low < -acoustic_tolerance_thz:
                    candidates.append((low, where_of(i, q) + " (acoustic)"))
            if len(counted):
                j = counted[np.argmin(f[counted])]
                candidates.append((float(f[j]), where_of(i, q)))

    # q-mesh (Gamma-centred: contains Gamma and, for even meshes, the zone-boundary points)
    phonon.run_mesh(list(mesh), is_gamma_center=True)
    mesh_dict = phonon.get_mesh_dict()
    collect(np.asarray(mesh_dict["qpoints"]), np.asarray(mesh_dict["frequencies"]),
            lambda i, q: "Γ" if np.allclose(q - np.round(q), 0) else f"mesh q={_fmt_q(q)}")

    # band path
    paths, labels, result.band_path_source = band_path(primitive, symprec=symprec)
    qpoints, connections = get_band_qpoints_and_path_connections(
        [[list(q) for q in sub] for sub in paths], npoints=band_points)
    phonon.run_band_structure(qpoints, path_connections=connections)
    bands = phonon.get_band_structure_dict()
    seg_labels = [(sub[k], sub[k + 1]) for sub in labels for k in range(len(sub) - 1)]
    result.band_labels = seg_labels
    result.band_distances = [np.asarray(d) for d in bands["distances"]]
    result.band_frequencies = [np.asarray(f) for f in bands["frequencies"]]
    for seg, (q_seg, f_seg) in enumerate(zip(bands["qpoints"], bands["frequencies"])):
        start, end = seg_labels[seg]
        q_seg = np.asarray(q_seg)

        def where_of(i, q, start=start, end=end, n=len(q_seg)):
            if i == 0:
                return start
            if i == n - 1:
                return end
            return f"{start}-{end} q={_fmt_q(q)}"

        collect(q_seg, np.asarray(f_seg), where_of)

    result.gamma_acoustic_min_thz = min(acoustic) if acoustic else None
    if not candidates:
        raise ValueError("no frequencies computed")
    lowest = min(c[0] for c in candidates)
    # a band-path label ("M") names the point better than the same q-point's mesh coordinates
    ties = [c for c in candidates if c[0] <= lowest + 1e-6]
    result.min_frequency_thz, result.where = min(ties, key=lambda c: (c[1].startswith("mesh"), c[0]))
    unstable = [c for c in candidates if c[0] < -tolerance_thz]
    if unstable:
        result.verdict = "unstable"
        result.reason = (f"imaginary mode {result.min_frequency_thz:.3f} THz at {result.where} "
                         f"(tolerance -{tolerance_thz} THz)")
    else:
        result.verdict = "stable"
        result.reason = None


# ----------------------------------------------------------------------------- plot


def band_structure_png(result: PhononResult, title: str = "") -> bytes:
    """Phonon band structure as PNG bytes (matplotlib Agg, no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if not result.band_frequencies:
        ax.text(0.5, 0.5, f"no band structure ({result.verdict}: {result.reason})",
                ha="center", va="center", wrap=True, fontsize=8)
        ax.set_axis_off()
    else:
        ticks, tick_labels = [], []
        for seg, (dist, freqs) in enumerate(zip(result.band_distances, result.band_frequencies)):
            ax.plot(dist, freqs, color="tab:blue", lw=1.0)
            start, end = result.band_labels[seg] if seg < len(result.band_labels) else ("", "")
            if ticks and abs(ticks[-1] - dist[0]) < 1e-9:
                if tick_labels[-1] != start:
                    tick_labels[-1] = f"{tick_labels[-1]}|{start}"
            else:
                ticks.append(float(dist[0]))
                tick_labels.append(start)
            ticks.append(float(dist[-1]))
            tick_labels.append(end)
        for x in ticks:
            ax.axvline(x, color="0.7", lw=0.5)
        ax.axhline(0.0, color="k", lw=0.5)
        if result.tolerance_thz:
            ax.axhline(-result.tolerance_thz, color="tab:red", lw=0.5, ls="--")
        ax.set_xticks(ticks, tick_labels)
        ax.set_xlim(ticks[0], ticks[-1])
        ax.set_ylabel("frequency (THz)")
    verdict = f"{result.verdict}"
    if result.min_frequency_thz is not None:
        verdict += f", min {result.min_frequency_thz:.2f} THz at {result.where}"
    ax.set_title(f"{title}\n{verdict}" if title else verdict, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
