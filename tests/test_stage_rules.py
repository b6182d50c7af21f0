"""The selection rules and verdicts the assets call (ml.filters / ml.origins task defaults,
dft.selection, dft.sun, dft.loo), each against a hand-worked expectation on real structures."""

import json

import polars as pl
import pytest
from pymatgen.core import Lattice, Structure

from ml.genes import gene_key
from ml.targets import parse_target

SRTIO3 = {"partition": "SrTiO3-221", "formula": "SrTiO3", "space_group": 221, "task": "polymorph",
          "wyckoff": {"Sr": ["1b"], "Ti": ["1a"], "O": ["3d"]}, "lattice_experimental": {"a": 3.905}}
CAMPAIGN = {"partition": "camp", "task": "campaign", "elements": ["Bi", "Cu", "Te"],
            "selection": {"max_total_dof": 4}}
SITES = [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]]


# ---- ml: filter thresholds, ranking, held-out summary, origins -----------------------------------


def test_task_filter_config_defaults_and_overrides():
    from ml.filters import task_filter_config

    loo, camp = parse_target(SRTIO3), parse_target(CAMPAIGN)
    cfg = task_filter_config(loo)
    assert (cfg.max_atoms_per_cell, cfg.max_total_dof, cfg.elements) == (50, None, None)  # paper Table S3: no DoF cap
    cfg = task_filter_config(camp)
    assert (cfg.max_atoms_per_cell, cfg.max_total_dof, cfg.elements) == (50, 4, ("Bi", "Cu", "Te"))
    bare = parse_target({**CAMPAIGN, "selection": {}})
    assert task_filter_config(bare).max_total_dof == 5  # the paper's DoF <= 5
    cfg = task_filter_config(camp, max_total_dof=7, max_atoms_per_cell=20, elements=["Cu"], min_synthesizability=None)
    assert (cfg.max_atoms_per_cell, cfg.max_total_dof, cfg.elements, cfg.min_synthesizability) == (20, 7, ("Cu",), None)


def test_no_dof_limit_lets_a_dof_7_gene_pass_and_a_limit_stops_it():
    from ml.filters import apply_filters, selection_text, task_filter_config

    pnma = {"Ca": ["4c"], "Ti": ["4b"], "O": ["4c", "8d"]}  # CaTiO3 Pnma: DoF 2 + 0 + 2 + 3 = 7
    df = pl.DataFrame({"formula": ["CaTiO3"], "space_group": [62], "wyckoff": [json.dumps(pnma, sort_keys=True)],
                       "predicted_formation_energy": [-3.0]})
    target = parse_target({"partition": "x", "task": "ground_state", "formula": "CaTiO3"})
    free = task_filter_config(target, min_synthesizability=None)
    out = apply_filters(df, known_gene_keys=set(), target=target, config=free)
    assert out["total_dof"][0] == 7 and out["size_ok"][0]
    capped = task_filter_config(target, max_total_dof=5, min_synthesizability=None)
    out = apply_filters(df, known_gene_keys=set(), target=target, config=capped)
    assert not out["size_ok"][0] and "too_many_dof" in out["reasons"][0]
    assert selection_text(free) == "atoms per cell <= 50, total DoF <= no limit"


def test_ranking_choice_and_held_out_summary():
    from ml.filters import held_out_summary, resolve_ranking

    assert resolve_ranking("auto", "ground_state") == "hits_then_space_groups"
    assert resolve_ranking("auto", "polymorph") == resolve_ranking("auto", "campaign") == "hits"
    assert resolve_ranking("space_group_round_robin", "ground_state") == "space_group_round_robin"
    out = pl.DataFrame({"gene_key": ["a", "held", "c"], "hits": [50, 10, 30], "passed": [True, False, True],
                        "reasons": [[], ["known_gene", "too_many_dof"], []]})
    assert held_out_summary(out, {"held"}) == {"sampled": True, "passed": False, "rank_by_hits": 3,
                                               "reasons": "known_gene, too_many_dof"}
    assert held_out_summary(out, {"other"})["sampled"] is False and held_out_summary(out, set()) == {}


def test_origins_element_constraint_and_perturbation_budget():
    from ml.origins import allowed_elements, perturbations_per_origin

    assert allowed_elements(parse_target(SRTIO3)) == ("O", "Sr", "Ti")
    assert allowed_elements(parse_target(CAMPAIGN)) == ("Bi", "Cu", "Te")
    assert allowed_elements(parse_target(SRTIO3), "none") is None
    with pytest.raises(ValueError):
        allowed_elements(parse_target(SRTIO3), "all")
    assert perturbations_per_origin(5000, 2_000_000, 10) == 5000
    assert perturbations_per_origin(5000, 2_000_000, 1000) == 2000
    assert perturbations_per_origin(5000, 100, 1000) == 1


# ---- dft.selection ---------------------------------------------------------------------------------


def _write(tmp_path, name, structure):
    path = str(tmp_path / f"{name}.cif")
    structure.to(filename=path)
    return path


def _row(gene, cif, e_hull, energy, formula="SrTiO3", **extra):
    return {"gene_key": gene, "formula": formula, "space_group": 221, "wyckoff": gene, "relaxed_cif": cif,
            "e_above_hull": e_hull, "energy_per_atom": energy, "formation_energy_per_atom": energy + 5.0,
            "is_novel": True, "relaxer": "chgnet", "lattice": "{}", "trial": 0, **extra}


def test_phonon_candidates_take_the_lowest_hull_and_say_why_not_the_rest():
    from dft.selection import phonon_candidates

    best = pl.DataFrame([_row("a", "a.cif", 0.0, -8.0), _row("b", "b.cif", 0.1, -7.9, is_novel=False),
                         _row("c", "c.cif", 0.15, -7.8), _row("d", "d.cif", 0.5, -7.5), _row("e", "e.cif", None, -7.0)])
    taken, skipped = phonon_candidates(best, max_e_above_hull=0.2, max_structures=2)
    assert [r["gene_key"] for r in taken] == ["a", "b"]
    why = {r["gene_key"]: reason for r, reason in skipped}
    assert why["c"] == "beyond max_structures 2" and "above 0.2" in why["d"] and "above 0.2" in why["e"]
    taken, skipped = phonon_candidates(best, max_e_above_hull=None, only_novel=True, max_structures=10)
    assert [r["gene_key"] for r in taken] == ["a", "c", "d", "e"]
    assert [r["gene_key"] for r, why in skipped] == ["b"] and "not novel" in skipped[0][1]


def test_refinement_candidates_refine_one_crystal_once_and_respect_sizes(tmp_path):
    from dft.selection import rank_in_formula, refinement_candidates

    cubic = Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"], SITES)
    edges = Structure(Lattice.cubic(3.95), ["Sr", "Ti", "O", "O", "O"],
                      [[0, 0, 0], [.5, .5, .5], [.5, 0, 0], [0, .5, 0], [0, 0, .5]])
    cifs = {"cubic": _write(tmp_path, "cubic", cubic),
            "cubic_again": _write(tmp_path, "again", cubic.make_supercell([1, 1, 2], in_place=False)),
            "edges": _write(tmp_path, "edges", edges)}
    best = pl.DataFrame([_row("g1", cifs["cubic"], 0.0, -8.0), _row("g2", cifs["cubic_again"], 0.0, -8.0),
                         _row("g3", cifs["edges"], 0.05, -7.9), _row("g4", cifs["edges"], 0.3, -7.5)])
    taken, skipped = refinement_candidates(best, max_structures=3, max_e_above_hull=0.1, max_atoms=24,
                                           relax_max_atoms=4)
    assert [(r["gene_key"], mode) for r, mode in taken] == [("g1", "single_point"), ("g3", "single_point")]
    why = {r["gene_key"]: reason for r, reason in skipped}
    assert why["g2"].startswith("same crystal as SrTiO3 SG 221 g1") and "above 0.1" in why["g4"]
    taken, _ = refinement_candidates(best, max_e_above_hull=None, max_structures=1, relax_max_atoms=8)
    assert [(r["gene_key"], mode) for r, mode in taken] == [("g1", "relax")]  # 5 primitive atoms <= 8
    taken, skipped = refinement_candidates(best, max_e_above_hull=None, max_atoms=4)
    assert taken == [] and all("> max_atoms 4" in why or "same crystal" in why for _, why in skipped)
    assert rank_in_formula(best, "formation_energy_per_atom")["g4"] == 4


# ---- dft.sun ---------------------------------------------------------------------------------------


def test_sun_dedup_uses_the_platforms_same_crystal_rule(tmp_path):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from dft.sun import paper_comparison, select_sun, unique_crystals

    cubic = Structure(Lattice.cubic(4.0), ["Ba", "Ti", "O", "O", "O"], SITES)
    shift = 0.12 / 4.0 / 3 ** 0.5
    rhombo = Structure(Lattice.from_parameters(4.0, 4.0, 4.0, 89.7, 89.7, 89.7), ["Ba", "Ti", "O", "O", "O"],
                       [SITES[0], [.5 + shift] * 3, *SITES[2:]])
    assert StructureMatcher().fit(cubic, rhombo)  # the default matcher would call them one
    rows = [_row("r3m", _write(tmp_path, "r", rhombo), 0.0, -8.416, formula="BaTiO3"),
            _row("pm3m", _write(tmp_path, "c", cubic), 0.013, -8.403, formula="BaTiO3"),
            _row("pm3m-again", _write(tmp_path, "c2", cubic.make_supercell([2, 1, 1], in_place=False)), 0.013,
                 -8.4031, formula="BaTiO3")]
    frame = pl.DataFrame(rows)
    # 13 meV/atom apart: two crystals; the cubic one found twice (0.1 meV/atom apart) is kept once, lowest E_f
    assert unique_crystals(frame)["gene_key"].to_list() == ["r3m", "pm3m-again"]
    best = frame.with_columns(pl.lit(True).alias("symmetry_kept"))
    phonons = pl.DataFrame({"gene_key": ["r3m", "pm3m"], "phonon_verdict": ["stable", "unstable"],
                            "min_frequency_thz": [0.0, -3.0]})
    dft = pl.DataFrame(schema={"gene_key": pl.String, "dft_engine": pl.String, "dft_verdict": pl.String,
                               "dft_formation_energy_per_atom": pl.Float64})
    sun = select_sun(best, phonons, dft, max_e_above_hull=0.01)
    assert sun.stable["gene_key"].to_list() == ["r3m"] and sun.listed.height == 1
    sun = select_sun(best, phonons, dft, max_e_above_hull=0.1, require_phonon_stable=True)
    assert sun.unique.height == 2 and sun.listed["gene_key"].to_list() == ["r3m"]  # pm3m-again: no phonons
    table = paper_comparison(["BaTiO3", "CsPbI3"], sun.candidates, {"BaTiO3": True}, ["BaTiO3"])
    assert table[0] == {"paper formula": "BaTiO3", "generated": True, "passed filters": True, "relaxed": True,
                        "E_hull": 0.0, "phonons": "stable", "in S.U.N. list": True}
    assert table[1]["generated"] is False and table[1]["relaxed"] is False


# ---- dft.loo ---------------------------------------------------------------------------------------


def test_loo_verdict_recovered_and_why_not(tmp_path):
    from dft.loo import loo_verdict

    target = parse_target(SRTIO3)
    key = gene_key("SrTiO3", 221, SRTIO3["wyckoff"])
    filtered = pl.DataFrame({"gene_key": [key, "other"], "passed": [True, True]})

    def best(a):
        cif = _write(tmp_path, f"a{a}", Structure(Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"], SITES))
        return pl.DataFrame([_row(key, cif, 0.0, -8.0, verdict="converged", symmetry_kept=True, sg_after=221)])

    row = loo_verdict(target, filtered, best(3.93), lattice_tolerance=0.03)
    assert row["recovered"] and row["why_not"] == "" and row["lattice_max_error"] == pytest.approx(0.025 / 3.905,
                                                                                                     abs=1e-4)
    row = loo_verdict(target, filtered, best(4.2), lattice_tolerance=0.03)
    assert not row["recovered"] and row["why_not"] == "lattice off (mlip)"
    row = loo_verdict(target, filtered.filter(pl.col("gene_key") != key), best(3.93))
    assert row["why_not"].startswith("not sampled; filtered out")


def test_ground_state_rank_counts_distinct_crystals(tmp_path):
    from dft.loo import loo_verdict

    entry = {**SRTIO3, "partition": "SrTiO3-gs", "task": "ground_state"}
    target = parse_target(entry)
    key = gene_key("SrTiO3", 221, SRTIO3["wyckoff"])
    perov = _write(tmp_path, "p", Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"], SITES))
    edges = _write(tmp_path, "e", Structure(Lattice.cubic(3.95), ["Sr", "Ti", "O", "O", "O"],
                                            [[0, 0, 0], [.5, .5, .5], [.5, 0, 0], [0, .5, 0], [0, 0, .5]]))
    common = {"verdict": "converged", "symmetry_kept": True, "sg_after": 221}
    rows = [_row("rival", edges, 0.0, -8.1, **common), _row(key, perov, 0.05, -8.0, **common)]
    row = loo_verdict(target, pl.DataFrame({"gene_key": [key], "passed": [True]}), pl.DataFrame(rows))
    assert row["ground_state_rank"] == 2 and row["crystals_of_formula_relaxed"] == 2
    assert row["why_not"] == "ground-state rank 2 (mlip)"


def test_stored_task_results_are_keyed_by_settings_and_code(tmp_path):
    from dft.pipeline import phonon_tasks, relax_tasks

    cif = _write(tmp_path, "t", Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"], SITES))
    trial = [{"cif_path": cif, "gene_key": "g", "trial": 0}]

    def keys(**kw):
        return list(relax_tasks(trial, tmp_path, **{"relaxer": "chgnet", "fmax": 0.05, "max_steps": 10, **kw})[0])

    assert keys(code="v1") == keys(code="v1")  # a rerun of the same code resumes
    assert keys(code="v2") != keys(code="v1")  # new relaxer code recomputes
    assert keys(max_steps=20) != keys() and keys(primitive=False) != keys()
    row = [_row("g", cif, 0.0, -8.0)]
    assert list(phonon_tasks(row, tmp_path, supercell_min_length=10.0, code="a")[0]) != \
        list(phonon_tasks(row, tmp_path, supercell_min_length=10.0, code="b")[0])
