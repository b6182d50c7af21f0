"""dft.hpc: local process pool and a REAL Slurm (scripts/slurm_local.sh start) — results,
failed rows, resume after a kill, resubmission of a dead job. Slurm tests skip when `sinfo`
fails, unless WYCRYST_REQUIRE_SLURM=1 (CI), where they fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dft.hpc import ComputeConfig, _write_result, load_results, read_result, result_path, run_tasks, submit_one
from hpc_tasks import calls_per_name, record_batch, record_call


def make_tasks(calls_dir: Path, n: int, **extra) -> dict[str, dict]:
    """Keys with characters a filename cannot hold; payload names are the marker-file names."""
    return {
        f"SrTiO3|221/{{{i}}}": {"name": f"t{i}", "value": i, "calls_dir": str(calls_dir), **extra}
        for i in range(n)
    }


def test_dft_hpc_does_not_import_dagster():
    code = "import sys, dft.hpc; assert 'dagster' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_local_runs_all_tasks_and_records_a_raising_task_as_failed(tmp_path):
    tasks = make_tasks(tmp_path / "calls", 5)
    tasks["SrTiO3|221/{3}"]["raise"] = True
    lines: list[str] = []
    results = run_tasks(record_call, tasks, ComputeConfig(max_workers=2, chunk_size=2), tmp_path / "res", log=lines.append)

    assert list(results) == list(tasks)
    assert results["SrTiO3|221/{3}"] == {"verdict": "failed", "reason": "ValueError: bad payload t3"}
    assert [results[k]["square"] for k in tasks if k != "SrTiO3|221/{3}"] == [0, 1, 4, 16]
    # one file per task with a safe name; the key lives inside the JSON
    for key in tasks:
        path = result_path(tmp_path / "res", key)
        assert path.parent == tmp_path / "res" and "|" not in path.name and "{" not in path.name
        assert json.loads(path.read_text())["key"] == key
    assert load_results(tmp_path / "res") == results
    assert lines[-1] == "5/5 tasks done, 0 chunks pending"
    assert {results[k]["omp_threads"] for k in tasks if k != "SrTiO3|221/{3}"} == {"1"}  # 1 CPU per task


def test_local_resume_skips_tasks_with_stored_results(tmp_path):
    tasks = make_tasks(tmp_path / "calls", 6)
    stored = list(tasks)[:3]
    (tmp_path / "res").mkdir()
    for key in stored:
        _write_result(tmp_path / "res", key, {"verdict": "ok", "square": -1})

    results = run_tasks(record_call, tasks, ComputeConfig(max_workers=2, chunk_size=2), tmp_path / "res")

    assert calls_per_name(tmp_path / "calls") == {"t3": 1, "t4": 1, "t5": 1}
    assert [results[k]["square"] for k in tasks] == [-1, -1, -1, 9, 16, 25]
    # a second run finds everything stored and starts no worker
    run_tasks(record_call, tasks, ComputeConfig(max_workers=2, chunk_size=2), tmp_path / "res")
    assert sum(calls_per_name(tmp_path / "calls").values()) == 3


def test_local_worker_that_dies_is_replaced_and_its_missing_tasks_rerun(tmp_path):
    tasks = make_tasks(tmp_path / "calls", 3)
    tasks["SrTiO3|221/{1}"]["crash_once"] = str(tmp_path / "crashed")  # kills its worker once

    results = run_tasks(record_call, tasks, ComputeConfig(max_workers=1, chunk_size=3), tmp_path / "res")

    assert [results[k]["square"] for k in tasks] == [0, 1, 4]
    assert calls_per_name(tmp_path / "calls") == {"t0": 1, "t1": 2, "t2": 1}


def test_local_interrupted_task_is_returned_failed_but_not_stored_so_the_next_run_retries_it(tmp_path):
    tasks = make_tasks(tmp_path / "calls", 3)
    tasks["SrTiO3|221/{1}"]["interrupt_once"] = str(tmp_path / "interrupted")
    tasks["SrTiO3|221/{2}"]["raise"] = True  # a task's own failure: stored, never retried

    first = run_tasks(record_call, tasks, ComputeConfig(max_workers=1, chunk_size=3), tmp_path / "res")

    assert first["SrTiO3|221/{0}"]["square"] == 0
    assert first["SrTiO3|221/{1}"]["verdict"] == "failed" and "interrupted" in first["SrTiO3|221/{1}"]["reason"]
    assert read_result(tmp_path / "res", "SrTiO3|221/{1}") is None
    assert read_result(tmp_path / "res", "SrTiO3|221/{2}")["verdict"] == "failed"

    second = run_tasks(record_call, tasks, ComputeConfig(max_workers=1, chunk_size=3), tmp_path / "res")

    assert [second[k].get("square") for k in tasks] == [0, 1, None]
    assert calls_per_name(tmp_path / "calls") == {"t0": 1, "t1": 2, "t2": 1}


def test_local_batched_mode_writes_one_file_per_task_and_resumes(tmp_path):
    tasks = make_tasks(tmp_path / "calls", 5)
    config = ComputeConfig(max_workers=2)  # batched default: guided chunks of 2, 2, 1

    results = run_tasks(record_batch, tasks, config, tmp_path / "res", batched=True)

    assert [results[k]["square"] for k in tasks] == [0, 1, 4, 9, 16]
    assert load_results(tmp_path / "res") == results  # one file per task
    calls = calls_per_name(tmp_path / "calls")
    assert calls.pop("batch") == 3 and calls == {f"t{i}": 1 for i in range(5)}  # 2 + 2 + 1 tasks
    run_tasks(record_batch, tasks, config, tmp_path / "res", batched=True)
    assert sum(calls_per_name(tmp_path / "calls").values()) == 8  # nothing recomputed


def test_local_batch_that_raises_gives_failed_rows_for_its_unfinished_tasks(tmp_path):
    tasks = make_tasks(tmp_path / "calls", 4)
    tasks["SrTiO3|221/{1}"]["raise"] = True  # the batch breaks after t1 has finished

    results = run_tasks(record_batch, tasks, ComputeConfig(max_workers=1, batch_size=4), tmp_path / "res",
                        batched=True)

    assert [results[k]["verdict"] for k in tasks] == ["ok", "ok", "failed", "failed"]
    assert results["SrTiO3|221/{2}"]["reason"] == "batch failed: RuntimeError: batch broke after t1"
    assert read_result(tmp_path / "res", "SrTiO3|221/{3}") == results["SrTiO3|221/{3}"]  # stored, as a raising task is


def test_local_batch_whose_worker_dies_is_resubmitted_for_its_unfinished_tasks(tmp_path):
    tasks = make_tasks(tmp_path / "calls", 4)
    tasks["SrTiO3|221/{2}"]["crash_once"] = str(tmp_path / "crashed")  # kills the worker inside the batch

    results = run_tasks(record_batch, tasks, ComputeConfig(max_workers=1, max_resubmits=1, batch_size=4),
                        tmp_path / "res", batched=True)

    assert [results[k]["square"] for k in tasks] == [0, 1, 4, 9]
    # t0 and t1 were written before the crash: the resubmitted batch redid only t2 and t3
    assert calls_per_name(tmp_path / "calls") == {"batch": 2, "t0": 1, "t1": 1, "t2": 2, "t3": 1}


def test_batch_size_sets_the_chunks():
    # local batched default: guided, each chunk a quarter (2 shares x 2 workers) of what is left,
    # at least a pair -- worked by hand for 40 tasks: 40/4=10, 30/4->8, 22/4->6, 16/4=4, 12/4=3,
    # 9/4->3, then pairs
    assert ComputeConfig(max_workers=2).chunk_sizes(40, batched=True) == [10, 8, 6, 4, 3, 3, 2, 2, 2]
    assert ComputeConfig(max_workers=2).chunk_sizes(3, batched=True) == [2, 1]
    big = ComputeConfig(max_workers=2).chunk_sizes(1000, batched=True)
    assert sum(big) == 1000 and big[0] == 250 and big == sorted(big, reverse=True) and big[-1] <= 2
    assert ComputeConfig(max_workers=2, batch_size=3).chunk_sizes(9, batched=True) == [3, 3, 3]
    assert ComputeConfig(mode="slurm", chunk_size=8).chunk_sizes(20, batched=True) == [8, 8, 4]
    assert ComputeConfig(max_workers=2, chunk_size=4).chunk_sizes(9, batched=False) == [4, 4, 1]
    with pytest.raises(ValueError, match="batch_size"):
        ComputeConfig(batch_size=0)


# ------------------------------------------------------------------ against the real Slurm


@pytest.fixture(scope="module")
def slurm():
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
        reachable = proc.returncode == 0 and proc.stdout.strip() != ""
        why = proc.stderr.strip() or f"sinfo printed {proc.stdout.strip()!r}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        reachable, why = False, str(exc)
    if not reachable:
        message = f"Slurm not reachable ({why}); start it with `bash scripts/slurm_local.sh start`"
        if os.environ.get("WYCRYST_REQUIRE_SLURM") == "1":
            pytest.fail(f"WYCRYST_REQUIRE_SLURM=1 but {message}")
        pytest.skip(message)


def slurm_config(tmp_path: Path, **overrides) -> ComputeConfig:
    settings = dict(mode="slurm", chunk_size=2, cpus_per_task=1, time_minutes=5, folder=tmp_path / "submitit", poll_seconds=0.5)
    return ComputeConfig(**(settings | overrides))


def test_slurm_array_job_collects_results(slurm, tmp_path):
    tasks = make_tasks(tmp_path / "calls", 5)
    tasks["SrTiO3|221/{1}"]["raise"] = True

    results = run_tasks(record_call, tasks, slurm_config(tmp_path), tmp_path / "res")

    assert results["SrTiO3|221/{1}"] == {"verdict": "failed", "reason": "ValueError: bad payload t1"}
    assert [results[k]["square"] for k in tasks if k != "SrTiO3|221/{1}"] == [0, 4, 9, 16]
    job_ids = {results[k]["slurm_job_id"] for k in tasks if k != "SrTiO3|221/{1}"}
    assert None not in job_ids and len(job_ids) == 3  # one array element per chunk of 2
    assert calls_per_name(tmp_path / "calls") == {f"t{i}": 1 for i in range(5)}
    assert load_results(tmp_path / "res") == results


def test_slurm_resubmits_a_chunk_whose_job_died(slurm, tmp_path):
    tasks = make_tasks(tmp_path / "calls", 4)
    tasks["SrTiO3|221/{1}"]["crash_once"] = str(tmp_path / "crashed")  # kills its job once

    results = run_tasks(record_call, tasks, slurm_config(tmp_path, max_resubmits=1), tmp_path / "res")

    assert all(r["verdict"] == "ok" for r in results.values()), results
    # t0 finished before its job died: the resubmitted job did not redo it
    assert calls_per_name(tmp_path / "calls") == {"t0": 1, "t1": 2, "t2": 1, "t3": 1}


def test_slurm_job_that_keeps_dying_becomes_failed_rows_that_are_retried_later(slurm, tmp_path):
    tasks = make_tasks(tmp_path / "calls", 2)
    tasks["SrTiO3|221/{0}"]["crash_once"] = str(tmp_path / "crashed")

    results = run_tasks(record_call, tasks, slurm_config(tmp_path, max_resubmits=0), tmp_path / "res")

    for key in tasks:
        assert results[key]["verdict"] == "failed"
        assert results[key]["reason"].startswith("slurm job failed after 1 submissions: slurm job ")
        assert read_result(tmp_path / "res", key) is None  # not stored: the next run retries
    results = run_tasks(record_call, tasks, slurm_config(tmp_path), tmp_path / "res")
    assert [r["square"] for r in results.values()] == [0, 1]


def test_slurm_job_killed_midway_resumes_without_redoing_finished_tasks(slurm, tmp_path):
    tasks = make_tasks(tmp_path / "calls", 6, sleep=1.5)
    config = slurm_config(tmp_path, chunk_size=6, max_resubmits=0)
    first: dict = {}
    driver = threading.Thread(target=lambda: first.update(run_tasks(record_call, tasks, config, tmp_path / "res")))
    driver.start()
    deadline = time.monotonic() + 60
    while not list((tmp_path / "res").glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    job_ids = [p.name for p in (tmp_path / "submitit").iterdir() if p.is_dir()]
    assert job_ids, "no submitit job folder"
    subprocess.run(["scancel", "--signal=KILL", "--full", *job_ids], check=True)
    driver.join(timeout=60)
    assert not driver.is_alive()

    done_before = [k for k in tasks if read_result(tmp_path / "res", k) is not None]
    assert 1 <= len(done_before) < len(tasks)
    assert all(first[k]["verdict"] == "failed" for k in tasks if k not in done_before)

    results = run_tasks(record_call, tasks, slurm_config(tmp_path, chunk_size=3), tmp_path / "res")

    assert [results[k]["square"] for k in tasks] == [i * i for i in range(6)]
    calls = calls_per_name(tmp_path / "calls")
    assert all(calls[tasks[k]["name"]] == 1 for k in done_before), calls


def test_slurm_batched_array_job_writes_one_file_per_task(slurm, tmp_path):
    tasks = make_tasks(tmp_path / "calls", 5)

    results = run_tasks(record_batch, tasks, slurm_config(tmp_path, chunk_size=3), tmp_path / "res", batched=True)

    assert [results[k]["square"] for k in tasks] == [0, 1, 4, 9, 16]
    job_ids = {results[k]["slurm_job_id"] for k in tasks}
    assert None not in job_ids and len(job_ids) == 2  # one array element per batch of 3
    assert load_results(tmp_path / "res") == results


def test_submit_one_runs_a_single_long_task_as_a_slurm_job(slurm, tmp_path):
    payload = {"name": "train", "value": 7, "calls_dir": str(tmp_path / "calls")}
    result = submit_one(record_call, payload, slurm_config(tmp_path))
    assert result["square"] == 49 and result["slurm_job_id"] is not None
    assert submit_one(record_call, payload, ComputeConfig())["slurm_job_id"] is None


def test_slurm_jobs_keep_freed_memory(slurm, tmp_path):
    """The job side applies ml.allocator's settings too: the seeded allocation churn faults in
    less than a fifth of the pages it does in a plain interpreter (tests/test_allocator.py)."""
    from hpc_tasks import allocation_churn
    from test_allocator import _churn_faults

    results = run_tasks(allocation_churn, {"churn": {}}, slurm_config(tmp_path), tmp_path / "res")
    assert results["churn"]["verdict"] == "ok"
    assert results["churn"]["minor_faults"] < _churn_faults() / 5
