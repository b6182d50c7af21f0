"""Task functions for tests/test_hpc_slurm.py. They live in a module of their own because Slurm
jobs unpickle them by reference: dft.hpc puts this folder on the job's PYTHONPATH."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path


def record_call(payload: dict) -> dict:
    """Leave a marker file per call in ``calls_dir`` (so tests can count runs), optionally sleep,
    crash the whole process once (``crash_once``: a marker path created before dying), raise, or
    be interrupted once (``interrupt_once``: raise TaskInterrupted, as a task whose subprocess got
    SIGTERM does)."""
    calls = Path(payload["calls_dir"])
    calls.mkdir(parents=True, exist_ok=True)
    (calls / f"{payload['name']}.{uuid.uuid4().hex}").touch()
    time.sleep(payload.get("sleep", 0))
    crash_marker = payload.get("crash_once")
    if crash_marker and not Path(crash_marker).exists():
        Path(crash_marker).touch()
        os._exit(1)
    if payload.get("raise"):
        raise ValueError(f"bad payload {payload['name']}")
    interrupt_marker = payload.get("interrupt_once")
    if interrupt_marker and not Path(interrupt_marker).exists():
        from dft.hpc import TaskInterrupted

        Path(interrupt_marker).touch()
        raise TaskInterrupted(f"{payload['name']} stopped by SIGTERM")
    return {"verdict": "ok", "square": payload["value"] ** 2, "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "omp_threads": os.environ.get("OMP_NUM_THREADS")}


def calls_per_name(calls_dir: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for marker in Path(calls_dir).glob("*.*"):
        name = marker.name.rsplit(".", 1)[0]
        counts[name] = counts.get(name, 0) + 1
    return counts


def record_batch(items: list[tuple[str, dict]]):
    """Batched counterpart of :func:`record_call` for ``run_tasks(..., batched=True)``: one call
    for the chunk, yielding ``(key, result)`` per task; a ``raise`` payload ends the whole batch
    with an exception, a ``crash_once`` payload kills the process (once)."""
    calls = Path(items[0][1]["calls_dir"]) if items else None
    if calls is not None:
        calls.mkdir(parents=True, exist_ok=True)
        (calls / f"batch.{uuid.uuid4().hex}").touch()
    for key, payload in items:
        yield key, record_call({**payload, "raise": False})
        if payload.get("raise"):
            raise RuntimeError(f"batch broke after {payload['name']}")


def allocation_churn(payload: dict) -> dict:
    """100 rounds of: allocate 4 buffers of random sizes (1-16 MiB, seeded) that live together,
    then free them all -- the pattern of a model step's activations -- and count the process's
    minor page faults meanwhile. With glibc's defaults the freed top of the heap is trimmed back
    to the OS (and faulted in again) whenever it exceeds twice the largest block seen."""
    import resource

    import numpy as np

    sizes = np.random.default_rng(payload.get("seed", 0)).integers(1 << 20, 16 << 20, (100, 4))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for row in sizes:
        live = [np.ones(int(size), dtype=np.uint8) for size in row]
        del live
    return {"verdict": "ok", "minor_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}


if __name__ == "__main__":  # the churn in a plain interpreter (the glibc defaults): tests compare against it
    import json
    import sys

    if sys.argv[1:] == ["keep"]:
        from ml.allocator import keep_freed_memory

        assert keep_freed_memory()
    print(json.dumps(allocation_churn({})))
