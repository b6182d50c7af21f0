"""ml.allocator: glibc keeps freed memory for reuse in sampling and in every dft.hpc worker.

The effect is measured, not assumed: the same seeded allocate-together/free-together churn
(tests/hpc_tasks.py) counts its minor page faults in a plain interpreter (glibc's defaults) and
where the settings apply (~33x fewer here; an mmap threshold alone gives more faults, not fewer)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dft.hpc import ComputeConfig, run_tasks

HERE = Path(__file__).resolve().parent
glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")


def _churn_faults(*args: str) -> int:
    out = subprocess.run([sys.executable, str(HERE / "hpc_tasks.py"), *args], capture_output=True, text=True,
                         check=True, cwd=HERE.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])["minor_faults"]


@glibc
def test_keep_freed_memory_cuts_the_page_faults_of_allocation_churn():
    default, kept = _churn_faults(), _churn_faults("keep")
    assert kept < default / 5, (default, kept)


@glibc
def test_local_workers_keep_freed_memory(tmp_path):
    import hpc_tasks

    results = run_tasks(hpc_tasks.allocation_churn, {"churn": {}}, ComputeConfig(max_workers=1), tmp_path)
    assert results["churn"]["verdict"] == "ok"
    assert results["churn"]["minor_faults"] < _churn_faults() / 5


def test_keep_freed_memory_is_applied_once_and_says_so():
    from ml.allocator import keep_freed_memory

    applied = keep_freed_memory()
    assert applied is (sys.platform.startswith("linux"))  # glibc here; elsewhere a no-op that says False
    assert keep_freed_memory() is applied
