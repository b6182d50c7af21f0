"""How far a snapshot's hull can be trusted as a stand-in for the full Materials Project hull.

A candidate's E_hull is measured against the snapshot's phases (``dft.energetics.SnapshotHull``).
The snapshot holds a subset of MP, so its hull lies on or above MP's: a candidate can look stable
against the snapshot while a phase the snapshot lacks makes it unstable in MP. The snapshot itself
says how often, because every row carries MP's own ``energy_above_hull`` (against all of MP).

For each material ``m`` of the snapshot, :func:`leave_one_out_hull_distances` treats it as a new
candidate: its distance to the hull of the snapshot *without* ``m`` (negative below it), beside
MP's ``energy_above_hull``. ``m`` is within ``t`` of MP's hull without ``m`` exactly when MP's
``energy_above_hull <= t`` (``t >= 0``; removing an above-hull phase leaves the hull unchanged, and a
hull phase is at or below the hull of the others), so :func:`stable_call_precision` gives, per bin
of the snapshot distance, the share of "stable against the snapshot" calls that MP's hull keeps.
A subset's hull is never below the full one, so a material the snapshot calls unstable is unstable
in MP too: the error is one-sided.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import polars as pl
from pymatgen.analysis.phase_diagram import PhaseDiagram

from dft.energetics import _ELEMENT_SYMBOL, SnapshotHull

ON_HULL_TOL = 1e-8  # eV/atom: a phase this close to the hull is on it
DEFAULT_BINS = (-0.1, 0.0, 0.04, 0.08)  # upper edges (eV/atom) of the stable-call bins


def leave_one_out_hull_distances(rows: Iterable[dict], nelements: int | None = 3) -> pl.DataFrame:
    """One row per material with ``nelements`` elements (all when None) and a formation energy:
    ``material_id``, ``formula``, ``chemsys``, ``n_phases`` (the snapshot's phases in its chemical
    system and subsystems, itself included), ``e_hull_snapshot`` (against all the snapshot's phases),
    ``e_hull_snapshot_loo`` (against the snapshot without it; negative below that hull) and
    ``e_hull_mp`` (the row's MP ``energy_above_hull``).

    ``rows``: dicts with ``material_id``, ``formula_pretty``, ``formation_energy_per_atom`` and
    ``energy_above_hull`` (the snapshot's columns). The diagrams are SnapshotHull's (elements at 0
    eV/atom), the same hull candidates are scored against.
    """
    rows = [r for r in rows if r.get("formation_energy_per_atom") is not None]
    hull = SnapshotHull((r["material_id"], r["formula_pretty"], r["formation_energy_per_atom"]) for r in rows)
    members: dict[frozenset[str], list[tuple[str, str, float | None]]] = defaultdict(list)
    for r in rows:
        key = frozenset(_ELEMENT_SYMBOL.findall(r["formula_pretty"]))
        members[key].append((r["material_id"], r["formula_pretty"], r.get("energy_above_hull")))

    out = []
    for key in sorted((k for k in members if nelements is None or len(k) == nelements), key=sorted):
        diagram = hull.phase_diagram(key)  # the snapshot's phases of the system and its subsystems
        entries = list(diagram.all_entries)
        named = {e.name: e for e in entries}
        for material_id, formula, e_mp in members[key]:
            entry = named[material_id]
            e_snap = float(diagram.get_e_above_hull(entry, allow_negative=True))
            if e_snap > ON_HULL_TOL:  # removing a phase above the hull leaves the hull as it is
                e_loo = e_snap
            else:
                rest = PhaseDiagram([e for e in entries if e is not entry])
                e_loo = float(rest.get_decomp_and_e_above_hull(entry, allow_negative=True)[1])
            out.append({"material_id": material_id, "formula": formula, "chemsys": "-".join(sorted(key)),
                        "n_phases": len(entries) - len(key), "e_hull_snapshot": max(e_snap, 0.0),
                        "e_hull_snapshot_loo": e_loo, "e_hull_mp": None if e_mp is None else float(e_mp)})
    return pl.DataFrame(out, schema={"material_id": pl.String, "formula": pl.String, "chemsys": pl.String,
                                     "n_phases": pl.Int64, "e_hull_snapshot": pl.Float64,
                                     "e_hull_snapshot_loo": pl.Float64, "e_hull_mp": pl.Float64})


def bin_label(value: float, edges: Sequence[float] = DEFAULT_BINS) -> str | None:
    """The bin of a snapshot E_hull: ``<= -0.1``, ``(-0.1, 0]``, ... up to the last edge; None above it."""
    lower = None
    for edge in edges:
        if value <= edge:
            return f"<= {edge:g}" if lower is None else f"({lower:g}, {edge:g}]"
        lower = edge
    return None


def stable_call_precision(distances: pl.DataFrame, threshold: float = 0.08,
                          edges: Sequence[float] = DEFAULT_BINS) -> pl.DataFrame:
    """Per bin of ``e_hull_snapshot_loo`` (up to ``threshold``): materials, how many MP's hull calls
    stable (``e_hull_mp <= threshold``) and that share (``precision``); a last row ``all <= threshold``
    pools the bins, and ``above`` counts snapshot-unstable materials that MP calls stable (zero when
    the snapshot is a consistent subset of MP)."""
    if edges[-1] != threshold:
        raise ValueError(f"the last bin edge ({edges[-1]}) must be the threshold ({threshold})")
    d = distances.filter(pl.col("e_hull_mp").is_not_null()).with_columns(
        pl.col("e_hull_snapshot_loo").map_elements(lambda v: bin_label(v, edges), return_dtype=pl.String).alias("bin"),
        (pl.col("e_hull_mp") <= threshold).alias("mp_stable"))
    order = [bin_label(e, edges) for e in edges]
    rows = []
    for label in order + [f"all <= {threshold:g}", "above"]:
        if label == "above":
            part = d.filter(pl.col("bin").is_null())
        elif label.startswith("all"):
            part = d.filter(pl.col("bin").is_not_null())
        else:
            part = d.filter(pl.col("bin") == label)
        n, kept = part.height, int(part["mp_stable"].sum()) if part.height else 0
        rows.append({"bin": label, "materials": n, "mp_stable": kept, "precision": kept / n if n else None})
    return pl.DataFrame(rows, schema={"bin": pl.String, "materials": pl.Int64, "mp_stable": pl.Int64,
                                      "precision": pl.Float64})


def expected_mp_stable(e_hulls: Iterable[float], precision: pl.DataFrame,
                       edges: Sequence[float] = DEFAULT_BINS) -> float:
    """Expected number of the given snapshot-stable E_hulls that MP's full hull would keep stable,
    each weighted by its bin's precision (values above the last edge, and bins with no materials to
    measure a precision on, count 0)."""
    share = dict(zip(precision["bin"], precision["precision"]))
    total = 0.0
    for value in e_hulls:
        label = bin_label(float(value), edges)
        if label is not None:
            total += share.get(label) or 0.0
    return total
