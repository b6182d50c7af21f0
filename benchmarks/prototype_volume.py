"""Which cell volume should a prototype-substituted trial start from? Measured on snapshot pairs.

For a sample of snapshot ternaries (the "targets"), the closest prototype of the same Wyckoff
pattern (dft.prototypes; the target itself never) is re-elemented and rescaled by each volume
rule; printed: the error of the start cell against the target's MP cell (volume per atom, max
lattice-parameter error via dft.matching.compare_lattice) per rule, and on a subset a quick
CHGNet volume scan (energies at 7 isotropic scales around the atomic-volume estimate, parabola
minimum) and -- with --relax K -- the lattice error after a symmetry-kept CHGNet relaxation from
each start.

    .venv/bin/python benchmarks/prototype_volume.py --home .wycryst/base [--n 400] [--scan 30] [--relax 12]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
warnings.filterwarnings("ignore")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", default=str(REPO / ".wycryst"))
    ap.add_argument("--n", type=int, default=400, help="targets sampled")
    ap.add_argument("--scan", type=int, default=30, help="targets with a CHGNet volume scan")
    ap.add_argument("--relax", type=int, default=0, help="targets relaxed from each start")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import duckdb
    import numpy as np
    import polars as pl
    from pymatgen.core import Structure

    from dft.matching import compare_lattice
    from dft.prototypes import VOLUME_RULES, PrototypeIndex, substituted_structure
    from ml.loo_draw import conventional_lattice

    con = duckdb.connect(str(Path(args.home) / "warehouse.duckdb"), read_only=True)
    table = con.execute("SELECT g.material_id, g.formula, g.space_group, g.wyckoff, g.gene_key, m.cif, m.volume, "
                        "m.nsites, m.energy_above_hull FROM wyckoff_genes g JOIN materials m USING (material_id) "
                        "WHERE g.n_elements = 3 AND m.nsites <= 20").pl()
    con.close()
    index = PrototypeIndex(table.to_dicts())
    targets = table.sample(min(args.n, table.height), seed=args.seed).to_dicts()
    results = []
    start = time.perf_counter()
    for t in targets:
        index_t = PrototypeIndex([], ())
        index_t.by_pattern = {k: [p for p in v if p.material_id != t["material_id"]] for k, v in index.by_pattern.items()}
        choice = index_t.choose(t["formula"], t["space_group"], t["wyckoff"], per_gene=1)
        if not choice:
            continue
        c = choice[0]
        ref = conventional_lattice(t["cif"])
        true_v = t["volume"] / t["nsites"]
        row = {"material_id": t["material_id"], "prototype": c.prototype.material_id, "distance": c.distance,
               "space_group": t["space_group"]}
        for rule in VOLUME_RULES:
            try:
                s = substituted_structure(c.prototype.cif, c.mapping, rule=rule)
            except Exception:
                break
            row[f"{rule}:volume_err"] = s.volume / len(s) / true_v - 1
            row[f"{rule}:lattice_err"] = compare_lattice(s, ref, "lattice_published_dft",
                                                         space_group=t["space_group"]).max_relative_error
            row[f"{rule}:structure"] = s
        else:
            row["ref"] = ref
            row["cif"] = t["cif"]
            results.append(row)
    print(f"{len(results)} of {len(targets)} sampled ternaries have a prototype ({time.perf_counter() - start:.0f} s)")

    def summary(rows, label):
        print(f"\n{label} ({len(rows)} targets): |volume/atom error| median / mean / share within 5 %; "
              "max lattice-parameter error median / share within 3 %")
        for rule in VOLUME_RULES:
            v = np.abs([r[f"{rule}:volume_err"] for r in rows])
            lat = np.array([r[f"{rule}:lattice_err"] for r in rows])
            print(f"  {rule:16s} {np.median(v):.3f} / {v.mean():.3f} / {np.mean(v <= 0.05):.2f};   "
                  f"{np.median(lat):.3f} / {np.mean(lat <= 0.03):.2f}")

    summary(results, "start cells")
    rng = np.random.default_rng(args.seed)
    if args.scan:
        from dft.relax import get_relaxer, limited_threads

        calc = get_relaxer("chgnet").calculator()
        from pymatgen.io.ase import AseAtomsAdaptor

        subset = [results[i] for i in rng.choice(len(results), min(args.scan, len(results)), replace=False)]
        scan_err, scan_lat, atomic_err = [], [], []
        t0 = time.perf_counter()
        with limited_threads(1, torch_too=True):
            for r in subset:
                s0 = r["atomic_volume:structure"]
                scales = np.linspace(0.85, 1.15, 7)
                energies = []
                for f in scales:
                    s = s0.copy()
                    s.scale_lattice(s0.volume * f)
                    atoms = AseAtomsAdaptor.get_atoms(s)
                    atoms.calc = calc
                    energies.append(atoms.get_potential_energy() / len(atoms))
                a, b, _ = np.polyfit(scales, energies, 2)
                best = float(np.clip(-b / (2 * a), 0.7, 1.3)) if a > 0 else float(scales[int(np.argmin(energies))])
                s = s0.copy()
                s.scale_lattice(s0.volume * best)
                r["scan:structure"] = s
                true_v = s0.volume / len(s0) / (1 + r["atomic_volume:volume_err"])
                scan_err.append(abs(s.volume / len(s) / true_v - 1))
                scan_lat.append(compare_lattice(s, r["ref"], "lattice_published_dft",
                                                space_group=r["space_group"]).max_relative_error)
                atomic_err.append(abs(r["atomic_volume:volume_err"]))
        n = len(subset)
        print(f"\nCHGNet volume scan on {n} targets ({(time.perf_counter() - t0) / max(n, 1):.1f} s each, 7 single points):"
              f" |volume error| median {np.median(scan_err):.3f} (atomic_volume on the same: {np.median(atomic_err):.3f}),"
              f" within 5 % {np.mean(np.array(scan_err) <= 0.05):.2f}; lattice median {np.median(scan_lat):.3f},"
              f" within 3 % {np.mean(np.array(scan_lat) <= 0.03):.2f}")
    if args.relax:
        from dft.relax import get_relaxer, relax_primitive

        relaxer = get_relaxer("chgnet")
        subset = [r for r in results if "scan:structure" in r][:args.relax] or results[:args.relax]
        print(f"\nafter a symmetry-kept CHGNet relaxation ({len(subset)} targets): max lattice error vs MP")
        for rule in ("keep", "atomic_volume", "scan"):
            errs, secs = [], []
            for r in subset:
                s = r.get(f"{rule}:structure")
                if s is None:
                    continue
                res = relax_primitive(relaxer, s, fmax=0.05, max_steps=300)
                secs.append(res.cpu_seconds)
                if res.structure is not None:
                    errs.append(compare_lattice(res.structure, r["ref"], "lattice_published_dft",
                                                space_group=r["space_group"]).max_relative_error)
            if errs:
                print(f"  from {rule:14s}: median {np.median(errs):.3f}, within 3 % {np.mean(np.array(errs) <= 0.03):.2f},"
                      f" {np.mean(secs):.1f} core-s per relaxation")


if __name__ == "__main__":
    main()
