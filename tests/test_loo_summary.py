"""Failure stages and rates of the LOO benchmark on hand-written partition rows."""

from ml.loo_summary import failure_stage, rates, stage_counts

BASE = {"task": "ground_state", "crystal_system": "cubic", "chemistry": "oxide", "sampled": True, "passed": True,
        "reasons": [], "in_budget": True, "trials_ok": 3, "relaxed": True, "sg_kept": True, "lattice_ok": True,
        "lattice_err": 0.01, "gs_rank": 1, "recovered": True}


def test_first_lost_stage_in_pipeline_order():
    assert failure_stage(BASE) == (None, "")
    assert failure_stage({**BASE, "error": "no origin genes", "error_stage": "origins"}) == ("origins", "no origin genes")
    assert failure_stage({**BASE, "sampled": False, "passed": False})[0] == "sampling"
    assert failure_stage({**BASE, "passed": False, "reasons": ["too_many_atoms", "known_gene"]}) == (
        "filters", "too_many_atoms, known_gene")
    assert failure_stage({**BASE, "in_budget": None}) == (None, "")  # no structures run: passed is as far as it goes
    assert failure_stage({**BASE, "in_budget": False, "rank_by_hits": 41})[0] == "trial_budget"
    assert failure_stage({**BASE, "trials_ok": 0})[0] == "trials"
    assert failure_stage({**BASE, "relaxed": False, "sg_kept": None})[0] == "relaxation"
    assert failure_stage({**BASE, "sg_kept": False, "sg_after": 99}) == ("symmetry", "space group after relaxation 99")
    assert failure_stage({**BASE, "lattice_ok": False, "lattice_err": 0.42}) == ("lattice", "max lattice error 0.420")
    assert failure_stage({**BASE, "gs_rank": 3}) == ("ranking", "ground-state rank 3")
    assert failure_stage({**BASE, "task": "polymorph", "gs_rank": 3}) == (None, "")  # polymorphs need no rank


def test_a_partial_run_says_not_run_instead_of_a_loss():
    assert failure_stage({**BASE, "sampled": None, "passed": None}) == ("not run", "sampling not run")
    assert failure_stage({**BASE, "passed": None}) == ("not run", "filters not run")
    planned = {**BASE, "in_budget": None, "structures_planned": True}
    assert failure_stage(planned) == ("not run", "structures not run")
    assert failure_stage({**planned, "structures_planned": False}) == (None, "")
    assert stage_counts([planned, {**BASE, "passed": False}]) == [{"stage": "filters", "partitions": 1},
                                                                   {"stage": "not run", "partitions": 1}]


def test_rates_leave_out_unmeasured_rows():
    rows = [BASE, {**BASE, "crystal_system": "triclinic", "recovered": False, "gs_rank": 2},
            {**BASE, "crystal_system": "triclinic", "passed": False, "recovered": None, "in_budget": None}]
    overall = rates(rows, None)
    assert overall == [{"group": "all", "n": 3, "sampled": "3/3", "passed": "2/3", "recovered": "1/2"}]
    by_system = {r["crystal_system"]: r for r in rates(rows, "crystal_system")}
    assert by_system["triclinic"]["recovered"] == "0/1" and by_system["cubic"]["recovered"] == "1/1"
    assert stage_counts(rows) == [{"stage": "filters", "partitions": 1}, {"stage": "ranking", "partitions": 1},
                                  {"stage": "none", "partitions": 1}]
