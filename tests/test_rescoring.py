"""The energy-model cascade's rules (dft.rescoring, dft.loo with a decider) on hand-built rows and
real structures: which genes the decider re-relaxes, one row per gene that names the model of its
energies, and ground-state ranks with margins by either model."""

import json

import polars as pl
import pytest
from pymatgen.core import Lattice, Structure

from ml.targets import parse_target

SRTIO3 = {"partition": "SrTiO3-221", "formula": "SrTiO3", "space_group": 221, "task": "polymorph",
          "wyckoff": {"Sr": ["1b"], "Ti": ["1a"], "O": ["3d"]}, "lattice_experimental": {"a": 3.905}}
PEROVSKITE = [[.5, .5, .5], [0, 0, 0], [0, 0, .5], [0, .5, 0], [.5, 0, 0]]  # Sr 1b, Ti 1a, O 3d
OTHER = [[.5, .5, .5], [0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]]  # Sr 1b, Ti 1a, O 3c: another crystal


def _cif(tmp_path, name, sites, a=3.9, supercell=None):
    s = Structure(Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"], sites)
    if supercell:
        s.make_supercell(supercell)
    path = str(tmp_path / f"{name}.cif")
    s.to(filename=path)
    return path


def _fast(gene, hull, ef, formula="SrTiO3", cif="x.cif", verdict="converged", **extra):
    return {"gene_key": gene, "formula": formula, "space_group": 221, "wyckoff": gene, "trial": 0, "relaxer": "chgnet",
            "verdict": verdict, "relaxed_cif": cif, "e_above_hull": hull, "formation_energy_per_atom": ef,
            "energy_per_atom": None if ef is None else ef - 5.0, "symmetry_kept": True, "sg_after": 221,
            "energy_note": "", "lattice": "{}", **extra}


# ---- which genes the decider re-relaxes ------------------------------------------------------------


def test_candidates_by_hull_window_top_k_and_both():
    from dft.rescoring import rescore_candidates

    best = pl.DataFrame([_fast("a", 0.0, -3.0), _fast("b", 0.15, -2.85), _fast("c", 0.3, -2.7),
                         _fast("d", 0.5, -1.0, formula="SrTi2O5"), _fast("e", None, None),
                         _fast("f", None, None, verdict="failed", cif=None)])
    taken, skipped = rescore_candidates(best, max_e_above_hull=0.2)
    assert [r["gene_key"] for r in taken] == ["a", "b"]
    why = {r["gene_key"]: w for r, w in skipped}
    assert "fast E_hull 0.3 > 0.2" in why["c"] and "0.5 > 0.2" in why["d"]
    assert why["e"].startswith("fast model gave no E_f") and "verdict failed" in why["f"]
    taken, _ = rescore_candidates(best, max_e_above_hull=None, top_k_per_formula=1)  # lowest E_f per formula
    assert [r["gene_key"] for r in taken] == ["a", "d"]
    taken, skipped = rescore_candidates(best, max_e_above_hull=0.2, top_k_per_formula=1)  # the union
    assert [r["gene_key"] for r in taken] == ["a", "b", "d"]
    assert "rank 3 in its formula > top 1" in dict((r["gene_key"], w) for r, w in skipped)["c"]
    taken, skipped = rescore_candidates(best, max_e_above_hull=None, top_k_per_formula=None)  # every usable gene
    assert [r["gene_key"] for r in taken] == ["a", "b", "c", "d"] and len(skipped) == 2


# ---- one row per gene, each naming the model of its energies -----------------------------------------

ENERGY = ("energy_per_atom", "formation_energy_per_atom", "e_above_hull", "relaxed_cif")


def test_rescored_rows_keep_both_models_and_never_mix_them_unnamed():
    from dft.rescoring import rescore_candidates, rescored_rows

    best = pl.DataFrame([_fast("a", 0.05, -3.0, cif="a_fast.cif"), _fast("b", 0.1, -2.95, cif="b_fast.cif"),
                         _fast("c", 0.4, -2.6, cif="c_fast.cif")])
    taken, skipped = rescore_candidates(best, max_e_above_hull=0.2)
    decided = [
        {"gene_key": "a", "verdict": "converged", "relaxer": "sevennet-0", "energy_per_atom": -8.1,
         "formation_energy_per_atom": -3.1, "e_above_hull": -0.02, "relaxed_cif": "a_7net.cif", "symmetry_kept": True,
         "sg_after": 221, "cpu_seconds": 4.0, "lattice": {"a": 3.91, "b": 3.91, "c": 3.91, "alpha": 90.0, "beta": 90.0, "gamma": 90.0}},
        {"gene_key": "b", "verdict": "exploded", "reason": "volume outside [1/3, 3]", "relaxer": "sevennet-0",
         "energy_per_atom": None, "formation_energy_per_atom": None, "e_above_hull": None, "relaxed_cif": None},
    ]
    rows = {r["gene_key"]: r for r in rescored_rows(best, decided, skipped, rescorer="sevennet-0")}
    assert len(rows) == 3  # every gene, none dropped
    a, b, c = rows["a"], rows["b"], rows["c"]
    assert (a["status"], a["energy_model"], a["relaxer"]) == ("rescored", "sevennet-0", "sevennet-0")
    assert (a["e_above_hull"], a["relaxed_cif"], a["fast_e_above_hull"], a["fast_relaxed_cif"]) == (
        -0.02, "a_7net.cif", 0.05, "a_fast.cif")
    assert a["fast_relaxer"] == "chgnet" and a["fast_formation_energy_per_atom"] == -3.0 and a["symmetry_kept"]
    assert (a["rescore_cpu_seconds"], b["rescore_cpu_seconds"], c["rescore_cpu_seconds"]) == (4.0, None, None)
    assert json.loads(a["lattice"])["a"] == 3.91 and a["fast_lattice"] == "{}"  # JSON text, as relaxed_structures
    assert (b["status"], b["energy_model"], b["rescore_verdict"]) == ("rescore_failed", "chgnet", "exploded")
    assert b["e_above_hull"] == 0.1 and "volume outside" in b["rescore_note"] and "fast model's numbers" in b["rescore_note"]
    assert (c["status"], c["energy_model"]) == ("not_selected", "chgnet") and "0.4 > 0.2" in c["rescore_note"]
    fast = {r["gene_key"]: r for r in best.iter_rows(named=True)}
    for r in rows.values():  # the unprefixed energies are exactly the named model's
        source = decided[0] if r["energy_model"] == "sevennet-0" else fast[r["gene_key"]]
        assert all(r[k] == source[k] for k in ENERGY) and r["fast_relaxer"] == "chgnet"
    passthrough = rescored_rows(best, [], [], rescorer="none")
    assert {r["status"] for r in passthrough} == {"passthrough"}
    assert all(r["energy_model"] == "chgnet" and r["e_above_hull"] == r["fast_e_above_hull"] for r in passthrough)


def test_a_decider_that_gains_symmetry_marks_the_gene_not_kept():
    from dft.rescoring import rescored_rows

    best = pl.DataFrame([_fast("a", 0.0, -3.0)])
    d = {"gene_key": "a", "verdict": "converged", "formation_energy_per_atom": -3.1, "symmetry_kept": False}
    (row,) = rescored_rows(best, [d], [], rescorer="sevennet-0")
    assert row["status"] == "rescored" and row["symmetry_kept"] is False and row["fast_symmetry_kept"] is True


# ---- ranks and margins -------------------------------------------------------------------------------


def _rank_rows(tmp_path, held_ef, rival_ef, model="chgnet"):
    """held-out perovskite, the same crystal again (a 1x1x2 cell, the same energy), another crystal."""
    held, dup, other = (_cif(tmp_path, f"held-{model}", PEROVSKITE), _cif(tmp_path, f"dup-{model}", PEROVSKITE,
                        supercell=[1, 1, 2]), _cif(tmp_path, f"other-{model}", OTHER))
    return pl.DataFrame([_fast("held", 0.0, held_ef, cif=held, relaxer=model),
                         _fast("dup", 0.0, held_ef, cif=dup, relaxer=model),
                         _fast("rival", 0.0, rival_ef, cif=other, relaxer=model)])


def test_rank_with_margin_counts_crystals_and_signs_the_margin(tmp_path):
    from dft.rescoring import rank_with_margin

    first = rank_with_margin(_rank_rows(tmp_path, -3.500, -3.4924), {"held"})
    assert (first["rank"], first["crystals"], first["genes"]) == (1, 2, 3)
    assert first["margin_mev"] == pytest.approx(7.6) and first["rival"] == "SrTiO3 SG 221 rival"
    second = rank_with_margin(_rank_rows(tmp_path, -3.500, -3.5014), {"held"})
    assert second["rank"] == 2 and second["margin_mev"] == pytest.approx(-1.4)  # the rival lies 1.4 meV/atom below
    alone = rank_with_margin(_rank_rows(tmp_path, -3.5, -3.4).filter(pl.col("gene_key") != "rival"), {"dup"})
    assert alone["rank"] == 1 and alone["margin_mev"] is None and alone["crystals"] == 1  # no rival crystal
    assert rank_with_margin(_rank_rows(tmp_path, -3.5, -3.4), {"absent"})["rank"] is None


def _rescored(fast: pl.DataFrame, decider: pl.DataFrame, status="rescored"):
    return decider.with_columns(pl.lit("sevennet-0").alias("energy_model"), pl.lit("sevennet-0").alias("rescorer"),
                                pl.lit(status).alias("status"), pl.lit("").alias("rescore_note"),
                                fast["formation_energy_per_atom"].alias("fast_formation_energy_per_atom"))


def test_loo_ranks_by_both_models_and_the_decider_decides(tmp_path):
    from dft.loo import loo_verdict

    target = parse_target(SRTIO3)
    held = sorted(target.gene_keys())[0]
    fast = _rank_rows(tmp_path, -3.490, -3.500).with_columns(
        pl.when(pl.col("gene_key") == "held").then(pl.lit(held)).otherwise(pl.col("gene_key")).alias("gene_key"))
    decider = _rank_rows(tmp_path, -3.520, -3.500, model="sevennet-0").with_columns(fast["gene_key"])
    filtered = pl.DataFrame({"gene_key": [held], "passed": [True]})
    row = loo_verdict(target, filtered, fast, None, _rescored(fast, decider))
    assert (row["ground_state_rank_fast"], row["ground_state_margin_mev_fast"]) == (2, pytest.approx(-10.0))
    assert (row["ground_state_rank_decider"], row["ground_state_margin_mev_decider"]) == (1, pytest.approx(20.0))
    assert row["ground_state_rank"] == 1 and row["ground_state_rank_source"] == "sevennet-0"
    assert row["energy_model"] == row["lattice_source"] == "sevennet-0" and row["fast_model"] == "chgnet"
    assert row["formation_energy_per_atom"] == -3.52 and row["fast_formation_energy_per_atom"] == -3.49
    # the held-out gene outside the decider's window: the fast model's rank, said so
    row = loo_verdict(target, filtered, fast, None, _rescored(fast, fast, status="not_selected"))
    assert row["ground_state_rank"] == 2 and row["ground_state_rank_source"] == "chgnet"
    assert "held-out gene not rescored (not_selected" in row["ground_state_rank_note"]
    assert row.get("ground_state_rank_decider") is None and row["ground_state_rank_fast"] == 2
    row = loo_verdict(target, filtered, fast, None, None)
    assert row["ground_state_rank_source"] == "chgnet" and "no rescored_structures" in row["ground_state_rank_note"]


def test_phonon_tasks_use_the_phonon_model_and_relax_first_when_it_differs(tmp_path):
    from dft.pipeline import phonon_tasks

    cif = _cif(tmp_path, "p", PEROVSKITE)
    rows = [dict(_fast("a", 0.0, -3.0, cif=cif), energy_model="sevennet-0"),
            dict(_fast("b", 0.0, -3.0, cif=cif), energy_model="sevennet-l3i5")]
    tasks, _ = phonon_tasks(rows, tmp_path, supercell_min_length=6.0, model="sevennet-l3i5")
    assert {t["relaxer"] for t in tasks.values()} == {"sevennet-l3i5"} and len(tasks) == 2
    assert sorted(t["relax_first"] for t in tasks.values()) == [False, True]  # only the sevennet-0 structure
    same, _ = phonon_tasks(rows[:1], tmp_path, supercell_min_length=6.0)  # None: the candidate's own model
    assert [(t["relaxer"], t["relax_first"]) for t in same.values()] == [("sevennet-0", False)]
    assert not set(same) & set(tasks)  # another model is another stored result
