"""The LOO benchmark's draw: classes worked by hand, the pool's task rule checked against MP's
E_hull, the draw's stratification and reproducibility on real snapshot genes, and every drawn
entry loading as a registry target whose lattice compare_lattice reads back as exact."""

from __future__ import annotations

import json

import polars as pl
import pytest

from ml.gene_table import gene_row
from ml.loo_draw import (
    CHEMISTRIES,
    CRYSTAL_SYSTEMS,
    benchmark_registry,
    candidate_pool,
    chemistry_class,
    compact_formula,
    crystal_system,
    draw_targets,
)
from ml.targets import load_registry, parse_target

PUBLISHED_FORMULAS = ("CaTiO3", "BaTiO3", "SrTiO3", "CsPbI3", "CuInS2")


def test_classes_by_hand():
    assert [crystal_system(n) for n in (1, 2, 3, 15, 16, 74, 75, 142, 143, 167, 168, 194, 195, 230)] == [
        "triclinic", "triclinic", "monoclinic", "monoclinic", "orthorhombic", "orthorhombic", "tetragonal",
        "tetragonal", "trigonal", "trigonal", "hexagonal", "hexagonal", "cubic", "cubic"]
    assert chemistry_class(["Ca", "Ti", "O"]) == "oxide"
    assert chemistry_class(["Bi", "O", "Cl"]) == "oxide"  # O (3.44) is more electronegative than Cl (3.16)
    assert chemistry_class(["Cu", "In", "Se"]) == "chalcogenide"
    assert chemistry_class(["Cs", "Pb", "I"]) == "halide"
    # tellurides are chalcogenides although Pb (2.33) and W (2.36) out-rank Te (2.1) on Pauling's scale
    assert chemistry_class(["In", "Pb", "Te"]) == chemistry_class(["Mo", "W", "Te"]) == "chalcogenide"
    assert chemistry_class(["Al", "Co", "Fe"]) == "intermetallic"
    assert chemistry_class(["Na", "Tl", "Sb"]) == "intermetallic"  # Sb: metalloid
    assert chemistry_class(["Ba", "Ge", "N"]) == "other"  # nitride
    assert compact_formula("Mg(InSe2)2") == "MgIn2Se4" and compact_formula("CuInS2") == "InCuS2"


@pytest.fixture(scope="module")
def gene_sample(materials) -> pl.DataFrame:
    """Genes of ~700 real ternaries: every material of 150 random ternary formulas (so a formula's
    ground state and its polymorphs are all there) plus the published formulas."""
    ternary = materials.filter(pl.col("nelements") == 3)
    formulas = ternary["formula_pretty"].unique().sort().sample(150, seed=3).to_list() + list(PUBLISHED_FORMULAS)
    rows = []
    for r in ternary.filter(pl.col("formula_pretty").is_in(formulas)).iter_rows(named=True):
        gene, _ = gene_row(r["material_id"], r["cif"])
        if gene:
            rows.append({k: gene[k] for k in ("material_id", "formula", "space_group", "wyckoff", "gene_key",
                                              "atoms_per_cell", "n_elements")}
                        | {k: r[k] for k in ("energy_above_hull", "formation_energy_per_atom", "cif", "nsites",
                                             "theoretical")})
    return pl.DataFrame(rows)


def test_pool_tasks_follow_mp_hull(gene_sample):
    pool = candidate_pool(gene_sample, exclude_formulas=PUBLISHED_FORMULAS)
    assert pool.height > 10 and (pool["theoretical"] == False).all()  # noqa: E712  ICSD-known only
    everything = candidate_pool(gene_sample, exclude_formulas=PUBLISHED_FORMULAS, require_known=False)
    assert everything.height > pool.height and set(pool["material_id"]) <= set(everything["material_id"])
    # the task of a known material does not depend on whether its formula's other entries are known
    tasks = dict(zip(everything["material_id"], everything["task"]))
    assert all(tasks[m] == t for m, t in zip(pool["material_id"], pool["task"]))
    pool = everything
    assert not set(pool["formula"]) & {parse_target({"partition": "x", "task": "ground_state", "formula": f})
                                         .reduced_formula for f in PUBLISHED_FORMULAS}
    assert (pool["atoms_primitive"] <= 20).all()
    # primitive atoms from the gene = MP's own (primitive) cell
    assert (pool["atoms_primitive"] == pool["nsites"]).mean() > 0.95
    by_formula = gene_sample.group_by("formula").agg(pl.col("energy_above_hull").min().alias("low"),
                                                     (pl.col("energy_above_hull") == 0).sum().alias("zeros"))
    low = dict(zip(by_formula["formula"], by_formula["low"]))
    zeros = dict(zip(by_formula["formula"], by_formula["zeros"]))
    for r in pool.iter_rows(named=True):
        if r["task"] == "ground_state":
            assert r["energy_above_hull"] == 0 and zeros[r["formula"]] == 1
        else:
            assert 0 < r["energy_above_hull"] <= 0.1 and low[r["formula"]] < r["energy_above_hull"]
    assert set(pool["chemistry"]) <= set(CHEMISTRIES) and set(pool["crystal_system"]) <= set(CRYSTAL_SYSTEMS)


def test_draw_is_stratified_reproducible_and_loads_as_a_registry(gene_sample, tmp_path):
    from pymatgen.core import Structure

    from dft.matching import compare_lattice

    pool = candidate_pool(gene_sample, exclude_formulas=PUBLISHED_FORMULAS, require_known=False)
    drawn = draw_targets(pool, n=12, seed=5)
    assert drawn.height == 12
    assert drawn["formula"].n_unique() == 12
    assert drawn["task"].value_counts().sort("task")["count"].to_list() == [6, 6]
    # spread: no crystal system / chemistry drawn twice more than another that had candidates
    for column in ("crystal_system", "chemistry"):
        counts = drawn[column].value_counts()["count"]
        assert counts.max() - counts.min() <= 2, drawn[column].value_counts()
    assert draw_targets(pool, n=12, seed=5).equals(drawn)
    assert not draw_targets(pool, n=12, seed=6)["material_id"].equals(drawn["material_id"])

    doc = benchmark_registry(drawn, model_group="bench", about="test draw")
    path = tmp_path / "targets.json"
    path.write_text(json.dumps(doc))
    registry = load_registry(path)
    assert not registry.invalid and len(registry.keys) == 12
    cif = dict(zip(drawn["material_id"], drawn["cif"]))
    for entry in doc["targets"]:
        t = registry.get(entry["partition"])
        assert t.model_group == "bench" and t.gene_keys() == {entry["gene_key"]}
        reference, which = t.lattice()
        assert which == "lattice_published_dft"
        # the MP structure itself, in its P1 setting, reads back at its own lattice
        cmp = compare_lattice(Structure.from_str(cif[entry["material_id"]], fmt="cif"), reference, which,
                              space_group=t.space_group)
        assert cmp.max_relative_error < 1e-3, (entry["partition"], entry["crystal_system"], cmp)
