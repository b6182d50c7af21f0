"""Reliability / feasibility filters and the synthesizability model, on small real inputs.

Each rule gets a passing and a failing row with its recorded reason; SMACT verdicts are checked
against smact itself; novelty against genes built from real snapshot CIFs with the leave-one-out
exclusion the pipeline uses; the synthesizability model is trained on real snapshot rows.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from smact.screening import smact_validity

from ml.filters import FUNNEL_STAGES, RULES, FilterConfig, apply_filters, funnel
from ml.gene_table import gene_row
from ml.genes import gene_key, wyckoff_json
from ml.synthesizability import (
    SynthModel,
    features_for_genes,
    features_from_table,
    labels_and_mode,
    train_synthesizability,
)
from ml.targets import loo_excluded_ids, parse_target

SRTIO3 = {"Sr": ["1a"], "Ti": ["1b"], "O": ["3c"]}  # cubic perovskite, 5 atoms, DoF 0
NO_LIMITS = FilterConfig(max_predicted_formation_energy=None, min_synthesizability=None,
                         restrict_to_target_formula=False, n_elements=None)


def genes(*rows) -> pl.DataFrame:
    """Sampled-gene-shaped table from (formula, sg, wyckoff dict[, predicted E_f])."""
    out = []
    for r in rows:
        formula, sg, w = r[:3]
        out.append({"formula": formula, "space_group": sg, "wyckoff": wyckoff_json(w),
                    "predicted_formation_energy": r[3] if len(r) > 3 else -1.0})
    return pl.DataFrame(out, schema={"formula": pl.String, "space_group": pl.Int32, "wyckoff": pl.String,
                                     "predicted_formation_energy": pl.Float64})


def run(table, *, known=(), target=None, config=NO_LIMITS, synthesizability=None) -> pl.DataFrame:
    return apply_filters(table, known_gene_keys=set(known), target=target, config=config,
                         synthesizability=synthesizability)


def target(targets, partition):
    return parse_target(next(t for t in targets if t["partition"] == partition))


@pytest.fixture(scope="module")
def snapshot_genes(materials) -> pl.DataFrame:
    """Gene rows built from real CIFs: BaTiO3 R3m (mp-5020), cubic CsPbI3 (mp-1069538) and a
    labelled sample (ICSD-known and unflagged) of binaries/ternaries in common space groups."""
    common = [225, 62, 14, 2, 12, 63, 194, 166, 221, 139]
    pool = materials.filter((pl.col("nelements") <= 3) & pl.col("symmetry_number").is_in(common))
    sample = pl.concat([
        pool.filter(pl.col("theoretical") == False).sample(180, seed=3),  # noqa: E712
        pool.filter(pl.col("theoretical").is_null()).sample(180, seed=3),
        materials.filter(pl.col("material_id").is_in(["mp-5020", "mp-1069538"])),
    ]).unique("material_id", maintain_order=True)
    rows = [gene_row(mid, cif)[0] for mid, cif in zip(sample["material_id"], sample["cif"])]
    table = pl.DataFrame([r for r in rows if r is not None], infer_schema_length=None)
    return table.join(sample.select("material_id", "theoretical"), on="material_id")


# ---------------------------------------------------------------- reliability


def test_formula_rule_follows_smact():
    table = genes(
        ("NaCl", 225, {"Na": ["4a"], "Cl": ["4b"]}),
        ("NaCl3", 221, {"Na": ["1a"], "Cl": ["3c"]}),  # no Na/Cl oxidation states balance 1:3
        ("ClI3", 221, {"Cl": ["1a"], "I": ["3c"]}),  # balances only with Cl positive next to I
    )
    # the independent expectation: smact itself
    assert smact_validity("NaCl") and not smact_validity("NaCl3")
    assert not smact_validity("NaCl3", use_pauling_test=False)
    assert not smact_validity("ClI3") and smact_validity("ClI3", use_pauling_test=False)
    out = run(table)
    assert out["formula_ok"].to_list() == [True, False, False]
    assert out["wyckoff_ok"].to_list() == [True, True, True]  # only the chemistry is wrong
    assert "smact_charge_neutrality" in out["reasons"][1]
    assert "smact_electronegativity" in out["reasons"][2]
    assert out["reasons"][0].to_list() == [] and out["passed"][0]


def test_a_loo_targets_own_formula_is_not_judged_by_smact(materials):
    """LuOsB2 (mp-1189270, Pnma, MP E_hull 0) exists but fails SMACT's electronegativity test: in
    its own LOO partition the formula is the task's input, so its genes pass the formula rule
    (noted); any other formula, and the same formula outside a LOO partition, are still judged."""
    row = materials.filter(pl.col("material_id") == "mp-1189270").row(0, named=True)
    gene, _ = gene_row(row["material_id"], row["cif"])
    assert gene["formula"] == "LuB2Os" and not smact_validity("LuB2Os")  # the independent expectation
    loo = parse_target({"partition": "LuB2Os-62", "task": "ground_state", "formula": "LuB2Os",
                        "space_group": 62, "wyckoff": json.loads(gene["wyckoff"])})
    table = genes(("LuB2Os", 62, json.loads(gene["wyckoff"])), ("NaCl3", 221, {"Na": ["1a"], "Cl": ["3c"]}))
    out = run(table, target=loo)
    assert out["formula_ok"].to_list() == [True, False]
    assert "formula_given_by_target" in out["notes"][0].to_list()
    assert "formula_given_by_target" not in out["notes"][1].to_list()
    assert not {"smact_electronegativity", "smact_charge_neutrality"} & set(out["reasons"][0].to_list())
    assert run(table)["formula_ok"].to_list() == [False, False]  # no target: SMACT judges
    assert "smact_electronegativity" in run(table)["reasons"][0]


def test_wyckoff_rule_rejects_a_doubly_occupied_fixed_site():
    table = genes(("SrTiO3", 221, SRTIO3), ("SrTiO3", 221, {"Sr": ["1a"], "Ti": ["1a"], "O": ["3d"]}),
                  ("SrTiO3", 221, {"Sr": ["1a"], "Ti": ["1b"], "O": ["6e"]}), ("", 221, {"Sr": ["1a"]}))
    out = run(table)
    assert out["wyckoff_ok"].to_list() == [True, False, False, False]
    assert "wyckoff_dof0_site_occupied_twice" in out["reasons"][1]
    assert "wyckoff_composition_mismatch" in out["reasons"][2]
    assert "formula_unparseable" in out["reasons"][3]
    # an invalid gene has no size: it fails size_ok too, and has null size columns
    assert out["size_ok"].to_list() == [True, False, False, False]
    assert "size_unknown_invalid_gene" in out["reasons"][1]
    assert out["atoms_per_cell"].to_list() == [5, None, None, None]


def test_ternary_rule_rejects_genes_whose_element_slots_repeat():
    # the decoder can put one element in two slots: "Te" (Te/Te/Te) or "CuTe" (Cu/Te/Te) is valid
    # Wyckoff-wise but is no longer the ternary the PVAE was asked for
    table = genes(("Te", 166, {"Te": ["3a", "6c"]}), ("CuTe", 221, {"Cu": ["1a"], "Te": ["1b"]}),
                  ("SrTiO3", 221, SRTIO3))
    ternary = FilterConfig(max_predicted_formation_energy=None, min_synthesizability=None)  # default n_elements
    out = run(table, config=ternary)
    assert out["wyckoff_ok"].to_list() == [True, True, True]
    assert out["ternary_ok"].to_list() == [False, False, True]
    assert out["reasons"][0].to_list() == ["wrong_element_count"]
    assert out["passed"].to_list() == [False, False, True]
    anything = FilterConfig(n_elements=None, max_predicted_formation_energy=None, min_synthesizability=None)
    assert run(table, config=anything)["ternary_ok"].to_list() == [True, True, True]
    binary = FilterConfig(n_elements=2, max_predicted_formation_energy=None, min_synthesizability=None)
    assert run(table, config=binary)["ternary_ok"].to_list() == [False, True, False]


def test_equivalent_configurations_are_one_gene_and_only_the_first_is_unique():
    table = genes(("SrTiO3", 221, {"Sr": ["1b"], "Ti": ["1a"], "O": ["3d"]}), ("SrTiO3", 221, SRTIO3),
                  ("SrTiO3", 221, {"Sr": ["1a"], "Ti": ["1b"], "O": ["3d"]}))
    out = run(table)  # no gene_key column: computed
    assert out["gene_key"][0] == out["gene_key"][1] != out["gene_key"][2]
    assert out["unique_in_batch"].to_list() == [True, False, True]
    assert out["reasons"][1].to_list() == ["duplicate_in_batch"]
    # a given gene_key column (as ml.sampling writes it) is used as is
    keyed = table.with_columns(pl.Series("gene_key", [gene_key(f, sg, json.loads(w)) for f, sg, w in
                                                      table.select("formula", "space_group", "wyckoff").rows()]))
    assert run(keyed)["unique_in_batch"].to_list() == [True, False, True]


def test_novelty_against_the_snapshot_with_the_left_out_target_removed(snapshot_genes, targets):
    batio3 = target(targets, "BaTiO3-160")  # ground state, its gene is mp-5020 in the snapshot
    excluded = loo_excluded_ids(snapshot_genes, batio3)
    assert excluded == ["mp-5020"]
    known_all = set(snapshot_genes["gene_key"])
    known_loo = set(snapshot_genes.filter(~pl.col("material_id").is_in(excluded))["gene_key"])
    table = genes(("BaTiO3", 160, batio3.wyckoff),
                  ("CsPbI3", 221, {"Cs": ["1b"], "Pb": ["1a"], "I": ["3d"]}),  # mp-1069538, another setting
                  ("SrTiO3", 221, SRTIO3))
    out = run(table, known=known_loo, target=batio3)
    assert out["novel"].to_list() == [True, False, True]
    assert out["reasons"][1].to_list() == ["known_gene"]
    # the held-out gene is never "known" in its own LOO partition, even if the caller forgot
    assert run(table, known=known_all, target=batio3)["novel"].to_list() == [True, False, True]
    # ... but it is known anywhere else
    assert run(table, known=known_all, target=None)["novel"].to_list() == [False, False, True]


# ---------------------------------------------------------------- feasibility


def test_elements_rule_uses_the_campaign_list_or_the_users(targets):
    campaign = target(targets, "campaign-paper")
    table = genes(("RbBiTe2", 166, {"Rb": ["3a"], "Bi": ["3b"], "Te": ["6c"]}), ("SrTiO3", 221, SRTIO3))
    out = run(table, target=campaign)
    assert out["elements_ok"].to_list() == [True, False]  # Sr and O are not in the paper's list
    assert "element_outside_list" in out["reasons"][1]
    user = FilterConfig(elements=("Sr", "Ti", "O"), max_predicted_formation_energy=None, min_synthesizability=None)
    assert run(table, target=campaign, config=user)["elements_ok"].to_list() == [False, True]
    assert run(table, target=None)["elements_ok"].to_list() == [True, True]  # no list, no restriction


def test_size_rule_atoms_and_dof():
    table = genes(("SrTiO3", 221, SRTIO3),
                  ("Sc2ZnS4", 227, {"S": ["32e"], "Sc": ["16c"], "Zn": ["8a"]}),  # 56 atoms, DoF 1
                  ("CaTiO3", 62, {"Ca": ["4c"], "Ti": ["4b"], "O": ["4c", "8d"]}))  # 20 atoms, DoF 7
    out = run(table)
    assert out["atoms_per_cell"].to_list() == [5, 56, 20]
    assert out["atoms_per_primitive_cell"].to_list() == [5, 14, 20]  # Fd-3m: 4 lattice points
    assert out["total_dof"].to_list() == [0, 1, 7]
    # the default counts the primitive cell (what is relaxed): the spinel passes at 50
    assert out["size_ok"].to_list() == [True, True, False]
    assert out["reasons"][2].to_list() == ["too_many_dof"]
    conventional = run(table, config=FilterConfig(size_cell="conventional", max_predicted_formation_energy=None,
                                                  min_synthesizability=None))
    assert conventional["size_ok"].to_list() == [True, False, False]
    assert conventional["reasons"][1].to_list() == ["too_many_atoms"]
    loose = FilterConfig(max_atoms_per_cell=60, max_total_dof=7, max_predicted_formation_energy=None,
                         min_synthesizability=None)
    assert run(table, config=loose)["size_ok"].to_list() == [True, True, True]


def test_size_rule_counts_the_primitive_cell_of_a_centred_gene(materials):
    """A pyrochlore A2B2O7 (Fd-3m: A 16d, B 16c, O 48f + 8b) has 88 atoms in the conventional
    cell and 22 in the primitive one; hand-worked, and checked on a snapshot pyrochlore's CIF
    against pymatgen's primitive standard cell."""
    from pymatgen.core import Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    pyrochlore = {"Nd": ["16d"], "Pt": ["16c"], "O": ["8b", "48f"]}
    table = genes(("Nd2Pt2O7", 227, pyrochlore))
    out = run(table, config=FilterConfig(max_atoms_per_cell=50, max_total_dof=5, max_predicted_formation_energy=None,
                                         min_synthesizability=None))
    assert out["atoms_per_cell"][0] == 88 and out["atoms_per_primitive_cell"][0] == 22
    assert out["size_ok"][0] and out["passed"][0]
    too_strict = FilterConfig(max_atoms_per_cell=50, size_cell="conventional", max_predicted_formation_energy=None,
                              min_synthesizability=None)
    assert run(table, config=too_strict)["reasons"][0].to_list() == ["too_many_atoms"]
    row = materials.filter(pl.col("material_id") == "mp-9765").row(0, named=True)  # Nd2Pt2O7, Fd-3m
    gene, _ = gene_row(row["material_id"], row["cif"])
    assert gene["gene_key"] == gene_key("Nd2Pt2O7", 227, pyrochlore)  # an equivalent configuration
    sga = SpacegroupAnalyzer(Structure.from_str(row["cif"], fmt="cif"), symprec=0.1)
    assert len(sga.get_conventional_standard_structure()) == 88
    assert len(sga.get_primitive_standard_structure()) == 22 == row["nsites"]
    with pytest.raises(ValueError, match="size_cell"):
        run(table, config=FilterConfig(size_cell="supercell"))


def test_energy_rule_threshold_missing_and_not_evaluated():
    table = genes(("SrTiO3", 221, SRTIO3, -1.2), ("BaTiO3", 221, {"Ba": ["1a"], "Ti": ["1b"], "O": ["3c"]}, 0.3),
                  ("CaTiO3", 221, {"Ca": ["1a"], "Ti": ["1b"], "O": ["3c"]}, None))
    out = run(table, config=FilterConfig(min_synthesizability=None))  # default threshold 0.0 eV/atom
    assert out["energy_ok"].to_list() == [True, False, False]
    assert out["reasons"][1].to_list() == ["formation_energy_above_threshold"]
    assert out["reasons"][2].to_list() == ["formation_energy_missing"]
    assert run(table, config=FilterConfig(max_predicted_formation_energy=0.5, min_synthesizability=None))[
        "energy_ok"].to_list() == [True, True, False]
    no_column = run(table.drop("predicted_formation_energy"), config=FilterConfig(min_synthesizability=None))
    assert no_column["energy_ok"].all() and no_column["notes"][0].to_list() == [
        "formation_energy_not_evaluated", "synthesizability_not_evaluated"]


def test_synthesizability_rule_with_a_scorer_and_without():
    table = genes(("SrTiO3", 221, SRTIO3), ("SrTiO3", 221, {"Sr": ["1b"], "Ti": ["1a"], "O": ["3c"]}),
                  ("SrTiO3", 221, {"Sr": ["1a"], "Ti": ["1a"], "O": ["3d"]}))
    seen = []

    def scorer(rows: pl.DataFrame) -> np.ndarray:
        seen.append(rows.height)
        return np.array([0.9, 0.2])

    cfg = FilterConfig(max_predicted_formation_energy=None)  # default min score 0.5
    out = run(table, config=cfg, synthesizability=scorer)
    assert seen == [2]  # only the Wyckoff-valid rows are scored
    assert out["synthesizability"].to_list() == [0.9, 0.2, None]
    assert out["synthesizable_ok"].to_list() == [True, False, False]
    assert "synthesizability_below_threshold" in out["reasons"][1]
    assert "synthesizability_unscored" in out["reasons"][2]
    none = run(table, config=cfg, synthesizability=None)
    assert none["synthesizable_ok"].all() and none["synthesizability"].null_count() == 3
    assert "synthesizability_not_evaluated" in none["notes"][0]
    assert "synthesizability_not_evaluated" not in none["reasons"][0]


# ---------------------------------------------------------------- target formula


def test_target_formula_for_ground_state_and_polymorph(targets):
    table = genes(("BaTiO3", 160, {"Ba": ["3a"], "Ti": ["3a"], "O": ["9b"]}),
                  ("BaTiO3", 221, {"Ba": ["1a"], "Ti": ["1b"], "O": ["3c"]}),
                  ("CsPbI3", 221, {"Cs": ["1a"], "Pb": ["1b"], "I": ["3c"]}),
                  ("SrTiO3", 221, SRTIO3))
    ground = target(targets, "BaTiO3-160")
    restrict = FilterConfig(max_predicted_formation_energy=None, min_synthesizability=None)
    out = run(table, target=ground, config=restrict)
    assert out["target_formula_ok"].to_list() == [True, True, False, False]  # any SG of BaTiO3
    assert "not_target_formula" in out["reasons"][2]
    poly = target(targets, "CsPbI3-221")
    polymorphs = genes(("CsPbI3", 221, {"Cs": ["1a"], "Pb": ["1b"], "I": ["3c"]}),
                       ("CsPbI3", 62, {"Cs": ["4c"], "Pb": ["4b"], "I": ["4c", "8d"]}),
                       ("BaTiO3", 221, {"Ba": ["1a"], "Ti": ["1b"], "O": ["3c"]}))
    out = run(polymorphs, target=poly, config=restrict)
    assert out["target_formula_ok"].to_list() == [True, False, False]
    assert "not_target_space_group" in out["reasons"][1]
    assert "not_target_formula" in out["reasons"][2]
    # campaigns and an unrestricted LOO keep every formula
    assert run(table, target=target(targets, "campaign-paper"), config=restrict)["target_formula_ok"].all()
    free = FilterConfig(max_predicted_formation_energy=None, min_synthesizability=None,
                        restrict_to_target_formula=False)
    assert run(table, target=ground, config=free)["target_formula_ok"].all()


# ---------------------------------------------------------------- whole table


def test_every_row_kept_with_verdicts_and_a_monotone_funnel(snapshot_genes, targets):
    extra = genes(("NaCl3", 221, {"Na": ["1a"], "Cl": ["3c"]}), ("SrTiO3", 221, {"Sr": ["1a"], "Ti": ["1a"], "O": ["3d"]}))
    sampled = pl.concat([snapshot_genes.select("formula", "space_group", "wyckoff", "gene_key"),
                         extra.select("formula", "space_group", "wyckoff")], how="diagonal_relaxed")
    sampled = sampled.with_columns(pl.Series("predicted_formation_energy", np.linspace(-2, 1, sampled.height)))
    known = set(snapshot_genes["gene_key"].head(100))
    out = apply_filters(sampled, known_gene_keys=known, target=None, config=FilterConfig(), synthesizability=None)
    assert out.height == sampled.height
    assert out.select("formula", "space_group", "wyckoff").equals(sampled.select("formula", "space_group", "wyckoff"))
    for rule in (*RULES, "passed"):
        assert out[rule].dtype == pl.Boolean and out[rule].null_count() == 0
    # passed <=> no reasons; passed == AND of the rules
    assert (out["passed"] == (out["reasons"].list.len() == 0)).all()
    assert (out["passed"] == out.select(pl.all_horizontal(*RULES)).to_series()).all()
    steps = funnel(out)
    assert [s["stage"] for s in steps] == [s for s, _ in FUNNEL_STAGES]
    counts = [s["remaining"] for s in steps]
    assert counts[0] == out.height and counts[-1] == int(out["passed"].sum())
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    assert all(s["removed"] >= 0 for s in steps)
    assert counts[1] < counts[0] and counts[5] < counts[4]  # NaCl3 and the known genes go
    assert counts[3] < counts[2]  # the snapshot's binaries are not ternaries


# ---------------------------------------------------------------- synthesizability model


def test_labels_choose_pu_or_supervised():
    y, use, mode = labels_and_mode(pl.Series([False] * 150 + [None] * 50, dtype=pl.Boolean))
    assert mode == "pu" and use.all() and y.sum() == 150
    flags = pl.Series([False] * 150 + [True] * 120 + [None] * 30, dtype=pl.Boolean)
    y, use, mode = labels_and_mode(flags)
    assert mode == "supervised" and use.sum() == 270 and y[:150].all() and not y[150:].any()


def test_synthesizability_trains_scores_and_round_trips(snapshot_genes, tmp_path):
    model = train_synthesizability(snapshot_genes, seed=0, n_bags=3, n_jobs=1)
    m = model.metrics
    assert m["mode"] == "pu" and model.mode == "pu"
    assert 0.0 <= m["cv_roc_auc"] <= 1.0 and len(m["cv_roc_auc_folds"]) == 5
    assert m["n_known"] > 100 and m["n_other"] > 100
    scores = model.score(snapshot_genes)
    assert scores.shape == (snapshot_genes.height,)
    assert np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()
    # a sampled gene is scored from (formula, space group, Wyckoff) alone, identically
    plain = snapshot_genes.select("formula", "space_group", "wyckoff")
    np.testing.assert_allclose(model.score(plain), scores, rtol=1e-6)
    np.testing.assert_allclose(features_from_table(snapshot_genes), features_for_genes(
        plain["formula"].to_list(), plain["space_group"].to_list(), plain["wyckoff"].to_list()), rtol=1e-6)
    # invalid genes and genes beyond the encoding score NaN
    odd = model.score([("SrTiO3", 221, {"Sr": ["1a"], "Ti": ["1a"], "O": ["3d"]}), ("SrTiO3", 221, SRTIO3)])
    assert np.isnan(odd[0]) and 0 <= odd[1] <= 1
    # save / load round trip
    path = model.save(tmp_path / "synth.joblib")
    again = SynthModel.load(path)
    np.testing.assert_array_equal(again.score(snapshot_genes), scores)
    assert again.metrics == m
    # the model plugs into the filters
    out = run(genes(("SrTiO3", 221, SRTIO3)), config=FilterConfig(max_predicted_formation_energy=None),
              synthesizability=again)
    assert out["synthesizability"][0] == pytest.approx(odd[1])


def test_ml_modules_do_not_import_dagster():
    code = ("import sys, ml.filters, ml.synthesizability; "
            "bad = [m for m in sys.modules if m.split('.')[0].startswith('dagster')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_gene_ranking_by_hits_and_space_group_round_robin():
    from ml.filters import rank_genes

    genes = pl.DataFrame({"gene_key": list("abcdef"), "space_group": [62, 62, 62, 221, 160, 221],
                          "hits": [900, 500, 400, 700, 100, 50]})
    assert rank_genes(genes, "hits")["gene_key"].to_list() == ["a", "d", "b", "c", "e", "f"]
    # round 1: the best of each SG (62: a 900, 221: d 700, 160: e 100); round 2: b (62), f (221); round 3: c
    assert rank_genes(genes, "space_group_round_robin")["gene_key"].to_list() == ["a", "d", "e", "b", "f", "c"]
    # budget 4: two by hits (a, d: SGs 62 and 221), then the uncovered SG 160 (e), then by hits
    assert rank_genes(genes, "hits_then_space_groups", budget=4)["gene_key"].to_list() == ["a", "d", "e", "b", "c", "f"]
    with pytest.raises(ValueError, match="unknown ranking"):
        rank_genes(genes, "random")
