"""Generator metrics, budget rankings, the funnel trace and the GPAW spot check on small
hand-built sets whose every number is worked out by hand below; one Dagster materialization of
``generator_metrics`` for a tiny partition through a real instance and DuckDB file.

The hand-built partition (hits = generated samples of each distinct gene):

    gene  formula   SG   hits  filters                 trials        relaxed (E_hull, novel, SG after)   phonons
    A     BaTiO3    221   40   passed                  ok            -0.010  yes  221                     unstable (soft mode)
    B     BaTiO3    123   10   passed                  ok            -0.0098 yes  221 = A's crystal (dup)  skipped
    C     CaTiO3     62   30   known gene (not novel)  -             -
    W     SrTiO3    221   20   Wyckoff-invalid         -             -
    D     RbPbI3    221    6   passed                  pyxtal_failed -  (unbuildable)
    E     SrTiO3      1    5   passed (a P1 gene)      ok            0.050  yes  1                        stable
    F     KNbO3     221    8   passed                  ok            0.090  yes  221                      failed
    G     CsPbI3    221    7   passed                  ok            0.500  yes  221, two atoms 0.3 A apart  skipped
    H     CaTiO3     62   12   passed                  ok            0.000  no (matches mp-4019)  62
    I     NaCl3     221    3   SMACT fails             -             -
    J     KTaO3     221    1   passed                  - (rank 8 > budget 7)

Samples 142; Wyckoff-valid 122 (all but W); SMACT 139 (all but I); both 119; distinct genes 11;
novel valid samples 92 (valid minus C); P1 among them 5 (E). Selected (trials) 7: A B D E F G H;
buildable 6. Relaxed 6: A B E F G H; distinct crystals 5 (A = B); min distance ok 5 (not G); SG kept
5 (not B: 123 -> 221); novel 5 (not H). S.U.N. <= 0: {A/B} = 1; <= 0.08: {A/B, E} = 2; MetaSUN
(0, 0.1]: {E, F} = 2; <= 0.1: 3. Phonons computed 3 (A, E, F), stable 1; phonon-stable S.U.N. 1 (E).
Diversity among S.U.N. <= 0.08 (A, E): 2 space groups, 2 prototypes, 2 chemical systems.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import polars as pl
import pytest
from pymatgen.core import Lattice, Structure

from ml.generator_metrics import MetricsConfig, generator_metrics, metrics_markdown, prototype_label
from ml.genes import wyckoff_json
from ml.selection import COMPARED_SELECTIONS, SELECTIONS, rank_for_budget

GENES = {  # name: (formula, SG, wyckoff, hits, formula_ok, wyckoff_ok, novel, passed, reasons)
    "A": ("BaTiO3", 221, {"Ba": ["1a"], "Ti": ["1b"], "O": ["3c"]}, 40, True, True, True, True, []),
    "B": ("BaTiO3", 123, {"Ba": ["1a"], "Ti": ["1d"], "O": ["1c", "2e"]}, 10, True, True, True, True, []),
    "C": ("CaTiO3", 62, {"Ca": ["4c"], "Ti": ["4b"], "O": ["4c", "8d"]}, 30, True, True, False, False, ["known_gene"]),
    "W": ("SrTiO3", 221, {"Sr": ["1a"], "Ti": ["1a"], "O": ["3c"]}, 20, True, False, True, False,
          ["wyckoff_dof0_site_occupied_twice"]),
    "D": ("RbPbI3", 221, {"Rb": ["1a"], "Pb": ["1b"], "I": ["3c"]}, 6, True, True, True, True, []),
    "E": ("SrTiO3", 1, {"Sr": ["1a"], "Ti": ["1a"], "O": ["1a", "1a", "1a"]}, 5, True, True, True, True, []),
    "F": ("KNbO3", 221, {"K": ["1a"], "Nb": ["1b"], "O": ["3c"]}, 8, True, True, True, True, []),
    "G": ("CsPbI3", 221, {"Cs": ["1a"], "Pb": ["1b"], "I": ["3c"]}, 7, True, True, True, True, []),
    "H": ("CaTiO3", 62, {"Ca": ["4c"], "Ti": ["4a"], "O": ["4c", "4c", "4c"]}, 12, True, True, True, True, []),
    "I": ("NaCl3", 221, {"Na": ["1a"], "Cl": ["3c"]}, 3, False, True, True, False, ["smact_charge_neutrality"]),
    "J": ("KTaO3", 221, {"K": ["1a"], "Ta": ["1b"], "O": ["3c"]}, 1, True, True, True, True, []),
}
SELECTED = ("A", "B", "D", "E", "F", "G", "H")
# name: (E_hull, is_novel, sg_after, energy per atom)
RELAXED = {"A": (-0.010, True, 221, -8.0000), "B": (-0.0098, True, 221, -8.0002), "E": (0.050, True, 1, -7.5),
           "F": (0.090, True, 221, -7.9), "G": (0.500, True, 221, -3.0), "H": (0.000, False, 62, -8.2)}
PHONONS = {"A": ("unstable", -1.5), "B": ("skipped", None), "E": ("stable", 0.0), "F": ("failed", None),
           "G": ("skipped", None)}


def perovskite(a: float, species, shift=(0.0, 0.0, 0.0)) -> Structure:
    coords = [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]]
    coords[1] = [c + s for c, s in zip(coords[1], shift)]
    return Structure(Lattice.cubic(a), species, coords)


def relaxed_structures_for(tmp_path) -> dict[str, str]:
    """Real relaxed-structure files for the relaxed genes (see the module docstring)."""
    batio3 = perovskite(4.0, ["Ba", "Ti", "O", "O", "O"])
    p1 = Structure(Lattice.from_parameters(3.9, 3.95, 4.0, 89, 91, 90.5), ["Sr", "Ti", "O", "O", "O"],
                   [[0, 0, 0], [.52, .49, .51], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]])
    too_close = perovskite(6.3, ["Cs", "Pb", "I", "I", "I"])
    too_close.replace(2, "I", [.5, .5, .5 + 0.3 / 6.3])  # 0.3 A from Pb
    structures = {"A": batio3, "B": batio3.make_supercell([1, 1, 2], in_place=False), "E": p1,
                  "F": perovskite(4.0, ["K", "Nb", "O", "O", "O"]), "G": too_close,
                  "H": perovskite(3.85, ["Ca", "Ti", "O", "O", "O"])}
    paths = {}
    for name, s in structures.items():
        paths[name] = str(tmp_path / f"{name}.cif")
        s.to(filename=paths[name])
    return paths


def hand_built_tables(tmp_path, selection: str = "hits") -> dict[str, pl.DataFrame]:
    from ml.genes import gene_key

    def key(name):
        f, sg, w = GENES[name][:3]
        try:
            return gene_key(f, sg, w)
        except Exception:
            return f"{f}|{sg}|{wyckoff_json(w)}"

    filtered = pl.DataFrame([{"formula": f, "space_group": sg, "wyckoff": wyckoff_json(w), "gene_key": key(n), "hits": h,
                              "formula_ok": fo, "wyckoff_ok": wo, "novel": nov, "passed": p, "reasons": r,
                              "predicted_formation_energy": -1.0, "synthesizability": 0.5}
                             for n, (f, sg, w, h, fo, wo, nov, p, r) in GENES.items()],
                            schema_overrides={"space_group": pl.Int32, "reasons": pl.List(pl.String)})
    ranks = {n: i for i, n in enumerate(sorted(SELECTED, key=lambda n: -GENES[n][3]), start=1)}
    trials = pl.DataFrame([{"gene_key": key(n), "formula": GENES[n][0], "trial": 0,
                            "verdict": "pyxtal_failed" if n == "D" else "ok",
                            "reason": "pyxtal_failed: no valid structure in 10 attempts" if n == "D" else "",
                            "selection": selection, "selection_seed": 0, "selection_rank": ranks[n]} for n in SELECTED])
    paths = relaxed_structures_for(tmp_path)
    relaxed = pl.DataFrame([{"gene_key": key(n), "formula": GENES[n][0], "space_group": GENES[n][1],
                             "wyckoff": wyckoff_json(GENES[n][2]), "trial": 0, "relaxer": "chgnet",
                             "verdict": "converged", "e_above_hull": e, "is_novel": nov,
                             "matched_material_id": None if nov else "mp-4019", "sg_before": GENES[n][1],
                             "sg_after": sg, "best_trial": True, "energy_per_atom": epa, "relaxed_cif": paths[n]}
                            for n, (e, nov, sg, epa) in RELAXED.items()], schema_overrides={"space_group": pl.Int32})
    phonons = pl.DataFrame([{"gene_key": key(n), "verdict": v, "min_frequency_thz": f,
                             "where_min": "Gamma" if v == "unstable" else None, "reason": None}
                            for n, (v, f) in PHONONS.items()])
    return {"filtered_genes": filtered, "trial_structures": trials, "relaxed_structures": relaxed,
            "phonon_verdicts": phonons}


@pytest.fixture
def tables(tmp_path):
    return hand_built_tables(tmp_path)


def metric(df: pl.DataFrame, name: str) -> dict:
    rows = df.filter(pl.col("metric") == name).to_dicts()
    assert len(rows) == 1, name
    return rows[0]


def check(df, name, num, den, *, value=None):
    row = metric(df, name)
    assert (row["numerator"], row["denominator"]) == (num, den), (name, row)
    expected = value if value is not None else num / den
    assert row["value"] == pytest.approx(expected), (name, row)
    assert row["denominator_is"] and row["decided_by"], name
    return row


# ------------------------------------------------------------------ metrics on the hand-built set


def test_each_metric_on_the_hand_built_set(tables):
    from dft.generator_report import best_relaxed_with_facts

    best = best_relaxed_with_facts(tables["relaxed_structures"])
    # the structure facts the metrics rest on: A and B are one crystal, G has atoms 0.3 A apart
    ids = dict(zip(best["gene_key"], best["crystal_id"]))
    key = dict(zip(tables["relaxed_structures"]["formula"] + tables["relaxed_structures"]["space_group"].cast(str),
                   tables["relaxed_structures"]["gene_key"]))
    assert ids[key["BaTiO3221"]] == ids[key["BaTiO3123"]] and best["crystal_id"].n_unique() == 5
    assert best.filter(pl.col("formula") == "CsPbI3")["min_distance_relaxed"][0] == pytest.approx(0.3, abs=1e-6)

    df = generator_metrics(tables["filtered_genes"], tables["trial_structures"], best, tables["phonon_verdicts"])
    # validity: generated samples = 142 latent points; selected 7 genes; relaxed 6
    check(df, "charge_neutral_smact", 139, 142)
    check(df, "wyckoff_valid", 122, 142)
    check(df, "smact_and_wyckoff_valid", 119, 142)
    assert "generated samples" in metric(df, "wyckoff_valid")["denominator_is"]
    check(df, "pyxtal_buildable", 6, 7)  # D: the unbuildable gene
    assert "selected for relaxation" in metric(df, "pyxtal_buildable")["denominator_is"]
    check(df, "min_distance_after_relaxation", 5, 6)  # G
    # uniqueness: 11 distinct genes among 142 samples; after relaxation A = B
    check(df, "unique_samples", 11, 142)
    check(df, "unique_after_relaxation", 5, 6)
    # novelty: C is a snapshot gene (30 samples) -> 92 of 122 valid; H relaxed into mp-4019
    check(df, "novel_samples", 92, 122)
    check(df, "novel_after_relaxation", 5, 6)
    # symmetry: B's P4/mmm gene relaxed into Pm-3m; E is the P1 gene
    check(df, "space_group_kept", 5, 6)
    check(df, "p1_share", 5, 92)
    # S.U.N. (WyFormer): novelty of samples x S.U.N. crystals / selected genes
    check(df, "sun_in_relaxed_sample_e0", 1, 7)  # {A, B}; H is at 0 but not novel
    check(df, "sun_rate_e0", 1, 7, value=92 / 122 * 1 / 7)
    check(df, "sun_in_relaxed_sample_e0.08", 2, 7)  # + E
    check(df, "sun_rate_e0.08", 2, 7, value=92 / 122 * 2 / 7)
    check(df, "metasun_e0.1", 2, 7)  # E and F: 0 < E_hull <= 0.1
    check(df, "sun_or_metasun_e0.1", 3, 7)
    # dynamics: A (the soft-mode perovskite) unstable, E stable, F failed; skipped rows not counted
    check(df, "dynamically_stable", 1, 3)
    check(df, "phonon_stable_sun_e0.1", 1, 7)
    # diversity among S.U.N. <= 0.08 (A, E): Pm-3m and P1, two prototypes, Ba-O-Ti and O-Sr-Ti
    for name in ("distinct_space_groups_sun", "distinct_prototypes_sun", "distinct_chemical_systems_sun"):
        check(df, name, 2, 2, value=2)
    # every energy-decided metric names the model and the column
    for name in ("sun_rate_e0.08", "metasun_e0.1", "unique_after_relaxation", "space_group_kept"):
        assert "chgnet (e_above_hull)" in metric(df, name)["decided_by"]
    assert "WyFormer 23.5 %" in metric(df, "sun_rate_e0.08")["published"]
    assert "[energy]" in metric(df, "sun_rate_e0.08")["protocol_differences"]
    assert set(df["selection"]) == {"hits"}
    # 95 % Wilson intervals (scipy's binomtest as the reference), scaled by the sample novelty for the rate
    from scipy.stats import binomtest

    ci = binomtest(2, 7).proportion_ci(confidence_level=0.95, method="wilson")
    sun = metric(df, "sun_in_relaxed_sample_e0.08")
    assert (sun["ci95_low"], sun["ci95_high"]) == pytest.approx((ci.low, ci.high), abs=1e-4)
    assert metric(df, "sun_rate_e0.08")["ci95_high"] == pytest.approx(ci.high * 92 / 122, abs=1e-4)
    assert metric(df, "distinct_prototypes_sun")["ci95_low"] is None
    table = metrics_markdown(df)
    assert table.count("\n| ") == df.height and "Protocol differences" in table  # header + one line per metric


def test_the_energy_column_and_model_are_parameters(tables):
    from dft.generator_report import best_relaxed_with_facts

    best = best_relaxed_with_facts(tables["relaxed_structures"])
    # a rescoring model that puts E (0.05 by CHGNet) above 0.08 and F (0.09) at 0.07
    rescored = best.with_columns(pl.when(pl.col("formula") == "SrTiO3").then(0.12)
                                 .when(pl.col("formula") == "KNbO3").then(0.07)
                                 .otherwise(pl.col("e_above_hull")).alias("e_above_hull_sevennet"))
    df = generator_metrics(tables["filtered_genes"], tables["trial_structures"], rescored, tables["phonon_verdicts"],
                           MetricsConfig(energy_column="e_above_hull_sevennet", energy_model="sevennet-l3i5"))
    check(df, "sun_in_relaxed_sample_e0.08", 2, 7)  # {A/B, F}
    check(df, "metasun_e0.1", 1, 7)  # F only (E is now 0.12)
    assert metric(df, "sun_rate_e0.08")["decided_by"] == "sevennet-l3i5 (e_above_hull_sevennet)"
    # a phonon table from before the cascade (no phonon_model column) is labelled with the fast
    # relaxer that computed it, not with the rescoring models of the rows
    cascade = rescored.with_columns(pl.lit("sevennet-0").alias("relaxer"), pl.lit("chgnet").alias("fast_relaxer"))
    old = generator_metrics(None, None, cascade, tables["phonon_verdicts"].drop("phonon_model", strict=False))
    assert metric(old, "dynamically_stable")["decided_by"].startswith("phonopy with chgnet (phonon_model not recorded")
    labelled = tables["phonon_verdicts"].with_columns(pl.lit("sevennet-l3i5").alias("phonon_model"))
    assert metric(generator_metrics(None, None, cascade, labelled), "dynamically_stable")["decided_by"] == \
        "phonopy with sevennet-l3i5"
    with pytest.raises(ValueError, match="not in the relaxed rows"):
        generator_metrics(None, None, best, None, MetricsConfig(energy_column="no_such_column"))


def test_missing_stages_give_null_metrics_with_a_reason(tables):
    df = generator_metrics(tables["filtered_genes"], None, None, None)
    assert df.height == generator_metrics(*tables.values()).height  # the same rows, whatever is missing
    check(df, "novel_samples", 92, 122)
    sun = metric(df, "sun_rate_e0.08")
    assert sun["value"] is None and "relaxed_structures not materialized" in sun["notes"]
    assert metric(df, "dynamically_stable")["value"] is None
    empty = generator_metrics(None, None, None, None)
    assert empty["value"].null_count() == empty.height


def test_prototype_labels_fold_elements_and_settings():
    chalcopyrite = prototype_label("CuInSe2", 122, {"Cu": ["4a"], "In": ["4b"], "Se": ["8d"]})
    assert chalcopyrite == prototype_label("AgGaTe2", 122, {"Ag": ["4a"], "Ga": ["4b"], "Te": ["8d"]})
    # stannite Cu2ZnSnS4 (I-42m: Cu 4d, Zn 2a, Sn 2b, S 8i) and kesterite (I-4: Cu 2a 2c, Zn 2d, Sn 2b, S 8g)
    stannite = prototype_label("Cu2ZnSnS4", 121, {"Cu": ["4d"], "Zn": ["2a"], "Sn": ["2b"], "S": ["8i"]})
    kesterite = prototype_label("Cu2ZnSnS4", 82, {"Cu": ["2a", "2c"], "Zn": ["2d"], "Sn": ["2b"], "S": ["8g"]})
    assert stannite != kesterite and stannite.startswith("AB") and "_121_" in stannite
    # the perovskite with its origin shifted (Sr 1b, Ti 1a, O 3d) is the same prototype
    assert prototype_label("SrTiO3", 221, {"Sr": ["1a"], "Ti": ["1b"], "O": ["3c"]}) == \
        prototype_label("BaZrO3", 221, {"Ba": ["1b"], "Zr": ["1a"], "O": ["3d"]}) == "ABC3_221_a_b_c"
    assert prototype_label("SrTiO3", 221, {"Sr": ["1a"], "Ti": ["1a"], "O": ["3c"]}) is not None  # labels, not validity
    assert prototype_label("X", 221, {"Sr": ["9z"]}) is None


# ------------------------------------------------------------------ rankings for the budget


def passed_frame(n: int = 60) -> pl.DataFrame:
    systems = ["Bi-Te", "Cu-Se", "Ge-Te", "Ag-Sb-Te"]
    return pl.DataFrame({
        "gene_key": [f"g{i:03d}" for i in range(n)], "hits": [max(1, 200 // (i + 1)) for i in range(n)],
        "space_group": [(1, 62, 166, 221)[i % 4] for i in range(n)],
        "formula": [systems[i % 4].replace("-", "") for i in range(n)],
        "predicted_formation_energy": [-(i % 7) / 10 for i in range(n)],
        "synthesizability": [None if i % 11 == 0 else (i * 37 % 100) / 100 for i in range(n)],
    })


def test_random_rankings_are_seeded_stable_and_not_by_hits():
    genes = passed_frame()
    a = rank_for_budget(genes, "random", seed=1)["gene_key"].to_list()
    assert a == rank_for_budget(genes.reverse(), "random", seed=1)["gene_key"].to_list()  # row order does not matter
    assert a != rank_for_budget(genes, "random", seed=2)["gene_key"].to_list()
    # a gene's draw does not depend on the others: a subset keeps the relative order
    subset = rank_for_budget(genes.filter(pl.col("gene_key").is_in(a[::3])), "random", seed=1)["gene_key"].to_list()
    assert subset == [g for g in a if g in set(a[::3])]
    # uniform: over 200 seeds the most-hit gene is first about 1/60 of the time, not always
    firsts = sum(rank_for_budget(genes, "random", seed=s)["gene_key"][0] == "g000" for s in range(200))
    assert firsts < 15
    assert sorted(a) == sorted(genes["gene_key"].to_list())


def test_random_by_hits_draws_in_proportion_to_hits():
    # one gene of weight 30 among 30 genes of weight 1: first with probability 30/60 (Efraimidis-Spirakis)
    genes = pl.DataFrame({"gene_key": ["heavy"] + [f"l{i}" for i in range(30)], "hits": [30] + [1] * 30,
                          "space_group": [1] * 31})
    firsts = sum(rank_for_budget(genes, "random_by_hits", seed=s)["gene_key"][0] == "heavy" for s in range(400))
    assert abs(firsts / 400 - 0.5) < 0.08, firsts
    uniform = sum(rank_for_budget(genes, "random", seed=s)["gene_key"][0] == "heavy" for s in range(400))
    assert uniform / 400 < 0.1


def test_ranked_rules_on_a_hand_built_frame():
    genes = pl.DataFrame({
        "gene_key": ["x1", "x2", "x3", "y1", "z1", "z2"], "hits": [1, 5, 2, 9, 3, 4], "space_group": [1, 2, 3, 4, 5, 6],
        "formula": ["BiTe", "Bi2Te3", "BiTe2", "CuSe", "GeTe", "Ge2Te3"],
        "predicted_formation_energy": [-1.0, -0.9, -0.8, -0.5, -0.7, None],
        "synthesizability": [0.2, None, 0.9, 0.5, 0.1, 0.95]})
    order = lambda rule: rank_for_budget(genes, rule)["gene_key"].to_list()  # noqa: E731
    assert order("hits") == ["y1", "x2", "z2", "z1", "x3", "x1"]
    assert order("predicted_formation_energy") == ["x1", "x2", "x3", "z1", "y1", "z2"]  # unknown E_f last
    assert order("synthesizability") == ["z2", "x3", "y1", "x1", "z1", "x2"]  # unscored last
    # systems Bi-Te (-1.0, -0.9, -0.8), Ge-Te (-0.7, None), Cu-Se (-0.5): one of each per round
    assert order("chemical_system_round_robin") == ["x1", "z1", "y1", "x2", "z2", "x3"]
    ranked = rank_for_budget(genes, "hits")
    assert ranked["selection_rank"].to_list() == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="unknown selection"):
        rank_for_budget(genes, "best")
    with pytest.raises(ValueError, match="predicted_formation_energy"):
        rank_for_budget(genes.drop("predicted_formation_energy"), "chemical_system_round_robin")
    assert set(COMPARED_SELECTIONS) <= set(SELECTIONS)


def test_trial_structures_config_offers_every_rule():
    from typing import get_args

    from wycryst_assets.assets.structures import TrialStructuresConfig

    assert set(get_args(TrialStructuresConfig.model_fields["ranking"].annotation)) == {"auto", *SELECTIONS}


# ------------------------------------------------------------------ the paper's materials in the funnel


def test_trace_says_where_each_material_stops(tables):
    from dft.generator_report import best_relaxed_with_facts
    from ml.funnel_trace import STAGES, trace_formulas

    passed = tables["filtered_genes"].filter(pl.col("passed"))
    ranked = rank_for_budget(passed, "hits")
    best = best_relaxed_with_facts(tables["relaxed_structures"])
    trace = trace_formulas(["BaTiO3", "CaTiO3", "SrTiO3", "KNbO3", "CsPbI3", "RbPbI3", "KTaO3", "NaCl3", "LiFePO4"],
                           tables["filtered_genes"], ranked, tables["trial_structures"], best,
                           tables["phonon_verdicts"], budget=7, decided_by="chgnet", selection="hits")
    rows = {r["formula"]: r for r in trace.to_dicts()}
    assert rows["BaTiO3"]["stops_at"] == "phonon-unstable" and "-1.5 THz" in rows["BaTiO3"]["why"]
    assert rows["BaTiO3"]["genes_sampled"] == 2 and rows["BaTiO3"]["best_rank"] == 1
    assert rows["CaTiO3"]["stops_at"] == "matches a known structure" and "mp-4019" in rows["CaTiO3"]["why"]
    assert rows["CaTiO3"]["filter_reasons"] == "known_gene x1"
    assert rows["SrTiO3"]["stops_at"] == STAGES[-1] and rows["SrTiO3"]["phonon_verdict"] == "stable"
    assert rows["KNbO3"]["stops_at"] == "phonon calculation failed"
    assert rows["CsPbI3"]["stops_at"] == "above the stability threshold" and "0.500 > 0.1" in rows["CsPbI3"]["why"]
    assert rows["RbPbI3"]["stops_at"] == "no buildable trial" and "pyxtal_failed" in rows["RbPbI3"]["why"]
    assert rows["KTaO3"]["stops_at"] == "outside the relaxation budget"
    assert rows["KTaO3"]["best_rank"] == 8 and "budget 7" in rows["KTaO3"]["why"]
    assert rows["NaCl3"]["stops_at"] == "rejected by the filters" and "smact" in rows["NaCl3"]["why"]
    assert rows["LiFePO4"]["stops_at"] == "not sampled" and rows["LiFePO4"]["genes_sampled"] == 0


# ------------------------------------------------------------------ GPAW spot check (pure parts)


def test_decomposition_energy_and_agreement_by_hand():
    from dft.spot_check import decomposition_energy, spot_check_agreement

    # candidate -1.00 eV/atom vs half -1.20, half -0.90: 0.05 eV/atom above the two phases
    assert decomposition_energy(-1.0, [(0.5, -1.2), (0.5, -0.9)]) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="sum to"):
        decomposition_energy(-1.0, [(0.5, -1.2)])
    rows = [{"formula": "a", "mlip_e_above_hull": 0.02, "pbe_decomposition_energy": 0.05},   # both stable at 0.08
            {"formula": "b", "mlip_e_above_hull": 0.05, "pbe_decomposition_energy": 0.20},   # MLIP only
            {"formula": "c", "mlip_e_above_hull": 0.15, "pbe_decomposition_energy": 0.30},   # both unstable
            {"formula": "d", "mlip_e_above_hull": 0.15, "pbe_decomposition_energy": -0.01},  # PBE only
            {"formula": "e", "mlip_e_above_hull": 0.01, "pbe_decomposition_energy": None, "reason": "no GPAW PBE setup for Tb"}]
    out = spot_check_agreement(rows, 0.08)
    assert (out["compared"], out["agree"], out["both_stable"], out["mlip_stable_pbe_unstable"]) == (4, 2, 1, 1)
    assert out["agreement_rate"] == 0.5 and out["pbe_confirms_mlip_stable"] == 0.5
    assert out["not_compared"] == [{"formula": "e", "reason": "no GPAW PBE setup for Tb"}]


def test_spot_check_plan_uses_the_snapshot_hull_and_lists_what_cannot_be_checked(tmp_path):
    from dft.energetics import SnapshotHull
    from dft.spot_check import gpaw_setup_elements, hull_phases, plan_spot_check

    hull = SnapshotHull([("mp-bi", "Bi", 0.0), ("mp-te", "Te", 0.0), ("mp-bt", "Bi2Te3", -0.3), ("mp-x", "BiTe", -0.2),
                         ("mp-tb", "TbTe", -1.0), ("mp-ag", "Ag", 0.0)])
    # Bi4Te3 lies between Bi and Bi2Te3 on the hull: Bi4Te3 = Bi2Te3 + 2 Bi -> 5/7 and 2/7 of the atoms
    phases = {p["formula"]: p["fraction"] for p in hull_phases(hull, "Bi4Te3")}
    assert phases == pytest.approx({"Bi2Te3": 5 / 7, "Bi": 2 / 7})
    for name in ("Bi.PBE.gz", "Te.PBE.gz", "Ag.11.PBE.gz", "Te.LDA.gz", "Bi.dzp.basis.gz"):
        (tmp_path / name).write_text("")
    setups = gpaw_setup_elements([tmp_path])
    assert setups == {"Bi", "Te", "Ag"}
    candidates = pl.DataFrame({"gene_key": ["k1", "k2", "k3", "k4"], "formula": ["Bi4Te3", "TbBiTe3", "AgBiTe2", "BiTeI"],
                               "e_above_hull": [0.01, 0.02, 0.03, 0.04]})
    plan = plan_spot_check(candidates, hull, setup_elements=setups, element_materials={"Bi": "mp-bi", "Te": "mp-te"},
                           have_structure={"mp-bi", "mp-bt"}).to_dicts()
    assert plan[0]["checkable"] and {p["name"] for p in json.loads(plan[0]["phases"])} == {"mp-bt", "mp-bi"}
    assert not plan[1]["checkable"] and plan[1]["reason"] == "no GPAW PBE setup for Tb"
    assert plan[2]["checkable"] is False and "no snapshot structure" in plan[2]["reason"]  # no Ag, Te structures
    # with GPAW's own reference state for Ag and a Te crystal in the snapshot, AgBiTe2 becomes checkable
    agbite2 = plan_spot_check(candidates.slice(2, 1), hull, setup_elements=setups, element_materials={"Te": "mp-te"},
                              have_structure={"mp-bt", "mp-te"}, reference_elements={"Ag"}).to_dicts()[0]
    assert agbite2["checkable"], agbite2
    names = {p["name"] for p in json.loads(agbite2["phases"])}
    assert "element:Ag" in names and names <= {"element:Ag", "mp-bt", "mp-te"}
    setups_with_iodine = setups | {"I"}
    bitei = plan_spot_check(candidates.tail(1), hull, setup_elements=setups_with_iodine, element_materials={},
                            have_structure=set()).to_dicts()[0]
    assert not bitei["checkable"] and bitei["reason"].startswith("no snapshot hull")  # iodine is not in this hull


def test_spot_check_agreement_per_model_column():
    from dft.spot_check import spot_check_agreement

    # the decider calls a stable and b unstable; the fast model the reverse; PBE: a stable, b unstable
    rows = [{"formula": "a", "mlip_e_above_hull": 0.05, "fast_e_above_hull": 0.12, "pbe_decomposition_energy": 0.0},
            {"formula": "b", "mlip_e_above_hull": 0.15, "fast_e_above_hull": -0.02, "pbe_decomposition_energy": 0.1},
            {"formula": "c", "mlip_e_above_hull": 0.01, "fast_e_above_hull": None, "pbe_decomposition_energy": 0.0}]
    decider = spot_check_agreement(rows, 0.08)
    fast = spot_check_agreement(rows, 0.08, mlip_column="fast_e_above_hull")
    assert (decider["compared"], decider["agree"]) == (3, 3)
    assert (fast["compared"], fast["agree"], fast["mlip_unstable_pbe_stable"], fast["mlip_stable_pbe_unstable"]) == (2, 0, 1, 1)
    assert [r["formula"] for r in fast["not_compared"]] == ["c"]


def test_reaction_energy_lowers_a_metastable_elemental_stand_in_by_its_snapshot_formation_energy():
    from dft.spot_check import reaction_energy

    # the hull's Te end point is the ground state at E_f 0; the snapshot's only Te crystal sits 0.04 above
    # it, so its PBE energy -3.00 stands for a ground state at -3.04. Candidate -4.00 eV/atom = 3/4 of a
    # phase at -4.10 + 1/4 Te: -4.00 - (0.75 * -4.10 + 0.25 * -3.04) = -0.165 (-0.175 against the stand-in itself)
    phases = [{"fraction": 0.75}, {"fraction": 0.25, "offset": 0.04}]
    assert reaction_energy(-4.0, phases, [-4.10, -3.00]) == pytest.approx(-0.165)
    assert reaction_energy(-4.0, [{"fraction": 0.75}, {"fraction": 0.25}], [-4.10, -3.00]) == pytest.approx(-0.175)


def test_spot_check_plan_sizes_offsets_and_affordable_order():
    from dft.energetics import SnapshotHull
    from dft.spot_check import affordable_order, plan_spot_check

    hull = SnapshotHull([("mp-bi", "Bi", 0.0), ("mp-te", "Te", 0.05), ("mp-bt", "Bi2Te3", -0.3)])
    candidates = pl.DataFrame({"gene_key": ["k1", "k2", "k3"], "formula": ["Bi4Te3", "BiTe2", "Bi2Te3"],
                               "e_above_hull": [0.01, 0.02, 0.2], "n_atoms": [7, 3, 5],
                               "fast_e_above_hull": [0.0, 0.1, 0.05], "energy_model": ["sevennet-0"] * 3})
    atoms = {"mp-bi": 2, "mp-te": 3, "mp-bt": 5}
    plan = plan_spot_check(candidates, hull, setup_elements={"Bi", "Te"},
                           element_materials={"Bi": "mp-bi", "Te": "mp-te"}, have_structure=set(atoms),
                           phase_atoms=atoms.get, element_offsets={"Bi": 0.0, "Te": 0.05})
    rows = {r["gene_key"]: r for r in plan.to_dicts()}
    # Bi4Te3 -> Bi2Te3 + Bi: largest cell 7 (itself), 7 + 5 + 2 = 14 atoms; BiTe2 -> Bi2Te3 + Te (stand-in 0.05 above)
    assert (rows["k1"]["reaction_max_atoms"], rows["k1"]["reaction_atoms"]) == (7, 14)
    assert (rows["k2"]["reaction_max_atoms"], rows["k2"]["reaction_atoms"]) == (5, 11)
    te = [p for p in json.loads(rows["k2"]["phases"]) if p["formula"] == "Te"][0]
    assert te["offset"] == 0.05 and te["n_atoms"] == 3
    assert rows["k1"]["mlip_model"] == "sevennet-0" and rows["k2"]["fast_e_above_hull"] == 0.1
    # Bi2Te3 on the hull: its own phase (5 + 5 = 10 atoms, largest 5) ties BiTe2 on size, fewer atoms first
    assert affordable_order(plan)["gene_key"].to_list() == ["k3", "k2", "k1"]


def test_mp2020_correction_of_a_plain_pbe_structure_matches_pymatgens_table():
    from pathlib import Path

    import yaml
    from pymatgen.analysis import compatibility

    from dft.spot_check import mp2020_correction_per_atom

    table = yaml.safe_load((Path(compatibility.__file__).parent / "MP2020Compatibility.yaml").read_text())
    se = table["Corrections"]["CompositionCorrections"]["Se"]
    znse = Structure.from_spacegroup("F-43m", Lattice.cubic(5.67), ["Zn", "Se"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    value, note = mp2020_correction_per_atom(znse)  # one Se per two atoms
    assert value == pytest.approx(se / 2) and "Se" in note
    feo = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.3), ["Fe", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    value, note = mp2020_correction_per_atom(feo)  # MP runs it with +U: no plain-PBE counterpart
    assert value is None and "GGA+U" in note


def test_metric_modules_do_not_import_dagster():
    code = ("import sys, ml.generator_metrics, ml.selection, ml.funnel_trace, ml.benchmark_anchors, "
            "dft.generator_report, dft.structure_facts, dft.spot_check; print('dagster' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ through Dagster


def test_generator_metrics_materializes_for_a_tiny_partition(tmp_path, wycryst_env, monkeypatch):
    """generator_metrics through a real Dagster instance and DuckDB file: a partition with every
    upstream table (and the paper-style list of named materials) and one with filtered genes only."""
    import dagster as dg
    import duckdb

    from tests.conftest import SHARED_DATA, asset_runner
    from wycryst_assets.assets.metrics import generator_metrics as asset
    from wycryst_assets.partitions import sync_target_partitions
    from wycryst_assets.resources import warehouse_resource
    from wycryst_assets.warehouse import replace_partition

    registry = json.loads((SHARED_DATA / "targets.json").read_text())
    registry["targets"] += [
        {"partition": "tiny-metrics", "task": "campaign", "elements": ["Ba", "Ti", "O", "Sr", "K", "Nb", "Cs", "Pb", "I"],
         "published_phonon_stable": ["SrTiO3", "BaTiO3", "LiFePO4"]},
        {"partition": "tiny-genes-only", "task": "campaign", "elements": ["Ba", "Ti", "O"]}]
    (tmp_path / "targets.json").write_text(json.dumps(registry))
    monkeypatch.setenv("WYCRYST_TARGETS", str(tmp_path / "targets.json"))
    tables = hand_built_tables(tmp_path)
    home = wycryst_env["home"]
    home.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(home / "warehouse.duckdb")) as conn:
        for name, df in tables.items():
            replace_partition(conn, name, "tiny-metrics", df)
        replace_partition(conn, "filtered_genes", "tiny-genes-only", tables["filtered_genes"])
    with dg.DagsterInstance.get() as instance:
        sync_target_partitions(instance)
        run = asset_runner(instance, {"warehouse": warehouse_resource()})
        full = run([asset], "tiny-metrics")
        genes_only = run([asset], "tiny-genes-only", {"generator_metrics": {"config": {"sun_thresholds": [0.08]}}})
    assert full.success and genes_only.success
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
        stored = pl.from_arrow(conn.execute("SELECT * FROM generator_metrics WHERE target = 'tiny-metrics'").arrow())
        trace = pl.from_arrow(conn.execute("SELECT * FROM generator_trace WHERE target = 'tiny-metrics'").arrow())
        only = pl.from_arrow(conn.execute("SELECT * FROM generator_metrics WHERE target = 'tiny-genes-only'").arrow())
    check(stored, "sun_rate_e0.08", 2, 7, value=92 / 122 * 2 / 7)
    check(stored, "unique_after_relaxation", 5, 6)  # same_crystal ran on the relaxed files
    assert stored["selection"].unique().to_list() == ["hits"]
    assert dict(zip(trace["formula"], trace["stops_at"])) == {
        "SrTiO3": "phonon-stable (end of the funnel)", "BaTiO3": "phonon-unstable", "LiFePO4": "not sampled"}
    meta = full.asset_materializations_for_node("generator_metrics")[0].metadata
    assert meta["sun_rate_e0.08"].value == pytest.approx(round(92 / 122 * 2 / 7, 4))
    assert "WyFormer" in meta["anchors_wyformer_dft"].value and "phonon-unstable" in meta["paper_materials"].value
    assert "| stability | sun_rate_e0.08 |" in meta["metrics"].value
    check(only, "novel_samples", 92, 122)
    assert metric(only, "sun_rate_e0.08")["value"] is None and not any(only["metric"] == "sun_rate_e0")
    assert math.isclose(metric(only, "unique_samples")["value"], 11 / 142)


def test_a_gene_two_rules_both_select_is_relaxed_once(tmp_path):
    """The yield benchmark's reuse premise: trials are rebuilt from the per-gene seed whatever the
    rule, so the trial file, and with it the relaxation task key, is the same (real PyXtal)."""
    from dft.pipeline import build_gene_trials
    from ml.genes import gene_key
    from dft.pipeline import relax_tasks

    w = {"Ba": ["1a"], "Ti": ["1b"], "O": ["3c"]}  # DoF 0: one trial
    tetragonal = {"Pb": ["1a"], "Ti": ["1b"], "O": ["1b", "2c"]}  # P4mm, free z: DoF + 1 trials
    for formula, sg, wyck in (("BaTiO3", 221, w), ("PbTiO3", 99, tetragonal)):
        gene = {"formula": formula, "space_group": sg, "wyckoff": wyckoff_json(wyck), "gene_key": gene_key(formula, sg, wyck)}
        first = build_gene_trials(gene, seed=0, out_dir=tmp_path / "by_hits")
        again = build_gene_trials(gene, seed=0, out_dir=tmp_path / "random")
        assert [r["verdict"] for r in first] == [r["verdict"] for r in again] and first[0]["verdict"] == "ok"
        for a, b in zip(first, again):
            if a["cif_path"]:
                assert open(a["cif_path"], "rb").read() == open(b["cif_path"], "rb").read()
                key_a = list(relax_tasks([a], tmp_path, relaxer="chgnet", fmax=0.05, max_steps=300)[0])
                key_b = list(relax_tasks([b], tmp_path, relaxer="chgnet", fmax=0.05, max_steps=300)[0])
                assert key_a == key_b


@pytest.mark.slow
def test_gpaw_phase_energies_for_the_spot_check(tmp_path):
    """The two kinds of phase the spot check computes, with real GPAW: a snapshot
    crystal (conventional diamond Si, 8 atoms, reduced to its 2-atom primitive cell) and GPAW's own
    relaxed reference state of the element (ASE's diamond Si). The same crystal, so the reaction
    energy between them is ~0 (the reference is relaxed: a few meV/atom lower at most); the
    candidate path (a single point of the CIF file) gives the crystal's energy again."""
    import os

    from dft.gpaw_engine import gpaw_available, gpaw_python
    from dft.spot_check import decomposition_energy, phase_energy_task, spot_check_task

    if not gpaw_available():
        message = f"GPAW not importable by {gpaw_python()} (Debian: apt-get install gpaw gpaw-data)"
        if os.environ.get("WYCRYST_REQUIRE_GPAW") == "1":
            pytest.fail(message)
        pytest.skip(message)
    # the platform's settings: >= 600 eV (Pulay stress below), k density 3.5 (at 1.5 the relaxed Si reference
    # drops from a 4x4x4 to a 3x3x3 mesh and its energy jumps by 0.2 eV/atom)
    gpaw = {"ecut": 600, "kpts": {"density": 3.5, "gamma": True}}
    si = Structure(Lattice.cubic(5.43), ["Si"] * 8, [[0, 0, 0], [.5, .5, 0], [.5, 0, .5], [0, .5, .5], [.25, .25, .25],
                                                     [.75, .75, .25], [.75, .25, .75], [.25, .75, .75]])
    crystal = spot_check_task({"kind": "phase", "cif": si.to(fmt="cif"), "settings": gpaw, "workdir": str(tmp_path / "si")})
    element = phase_energy_task({"element": "Si", "cache_dir": str(tmp_path / "refs"), "settings": gpaw,
                                 "workdir": str(tmp_path / "ref")})
    assert crystal["n_atoms"] == 2
    assert 0.0 <= decomposition_energy(crystal["energy_per_atom"], [(1.0, element["energy_per_atom"])]) < 0.02
    assert crystal["mp2020_correction_per_atom"] == 0.0  # MP2020 corrects no element
    # the candidate path (refine_task's single point of a CIF file) on the same crystal: the same energy
    si.to(filename=str(tmp_path / "si.cif"))
    candidate = spot_check_task({"kind": "candidate", "cif_path": str(tmp_path / "si.cif"), "engine": "gpaw",
                                 "mode": "single_point", "workdir": str(tmp_path / "cand"), "settings": gpaw})
    assert candidate["verdict"] == "single_point" and candidate["mp2020_correction_per_atom"] == 0.0
    assert candidate["energy_per_atom"] == pytest.approx(crystal["energy_per_atom"], abs=1e-4)


def test_pooled_sun_rate_weighs_every_relaxed_gene_once_hand_worked():
    from ml.generator_metrics import pooled_sun_rate

    # two campaigns: novelty 0.8 with 30 S.U.N. of 100 relaxed, novelty 0.5 with 10 of 100
    p = pooled_sun_rate([{"novelty": 0.8, "sun": 30, "selected": 100},
                         {"novelty": 0.5, "sun": 10, "selected": 100}])
    assert (p["runs"], p["sun"], p["selected"]) == (2, 40, 200)
    assert p["sun_in_relaxed"] == pytest.approx(0.2)
    assert p["value"] == pytest.approx((0.8 * 30 + 0.5 * 10) / 200)  # 0.145, not the mean of 0.24 and 0.05
    # Wilson 95 % of 40/200 by hand: centre 0.205659, half-width 0.055203
    assert p["sun_in_relaxed_ci95_low"] == pytest.approx(0.150456, abs=1e-5)
    assert p["sun_in_relaxed_ci95_high"] == pytest.approx(0.260862, abs=1e-5)
    # scaled by the S.U.N.-weighted novelty 29/40 = 0.725
    assert p["ci95_low"] == pytest.approx(0.150456 * 0.725, abs=1e-5)
    assert p["ci95_high"] == pytest.approx(0.260862 * 0.725, abs=1e-5)
    assert p["ci95_low"] < p["value"] < p["ci95_high"]


def test_pooled_sun_rate_of_one_run_is_that_runs_wyformer_rate_and_bad_runs_fail():
    from ml.generator_metrics import pooled_sun_rate, wilson_interval

    one = pooled_sun_rate([{"novelty": 0.9, "sun": 23, "selected": 100}])
    assert one["value"] == pytest.approx(0.9 * 0.23)
    lo, hi = wilson_interval(23, 100)
    assert (one["ci95_low"], one["ci95_high"]) == (pytest.approx(0.9 * lo), pytest.approx(0.9 * hi))
    none = pooled_sun_rate([{"novelty": 0.7, "sun": 0, "selected": 50}])
    assert none["value"] == 0 and none["ci95_low"] == 0 and 0 < none["ci95_high"] < 0.7
    for bad in ([], [{"novelty": 0.8, "sun": 5, "selected": 4}], [{"novelty": 1.2, "sun": 1, "selected": 4}],
                [{"novelty": 0.8, "sun": 1}]):
        with pytest.raises(ValueError):
            pooled_sun_rate(bad)
