"""The per-run CPU budget: threads per run = usable cores // runs the instance runs at once.

The instance's run queue (dagster.yaml ``concurrency.runs.max_concurrent_runs``, 2 here) says how
many runs may be in progress together; giving each ``cores // max_concurrent_runs`` threads means
that even when every slot is taken the runs together never ask for more threads than there are
cores (2 cores, 2 runs: one thread each, where two PVAE trainings with torch's default 2 threads
each spun against each other at 6x the epoch time). ``WYCRYST_RUN_THREADS`` overrides it (the
``wycryst run`` command, which runs its stages one at a time, gives its runs every core).

CPU-heavy asset bodies run inside ``with cpu_budget(context) as threads:``: torch's intra-op
threads, the BLAS/OpenMP pools (threadpoolctl) and ``OMP_NUM_THREADS`` for child processes are
capped at ``threads``, and process pools (gene table, local relaxation workers) use ``threads``
processes of one thread each.
"""

from __future__ import annotations

import contextlib
import os
import sys

RUN_THREADS_ENV = "WYCRYST_RUN_THREADS"
_CHILD_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity / cgroup cpuset), else ``os.cpu_count()``."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def max_concurrent_runs(instance) -> int:
    """The run queue's limit of in-progress runs (1 when the instance has no run queue; a
    negative "no limit" counts as one run per core)."""
    queue = instance.get_concurrency_config().run_queue_config if instance is not None else None
    limit = getattr(queue, "max_concurrent_runs", None)
    if limit is None:
        return 1
    return usable_cores() if limit < 0 else max(1, int(limit))


def run_threads(instance) -> int:
    """Threads one run may use: ``WYCRYST_RUN_THREADS`` when set, else cores // concurrent runs."""
    explicit = os.environ.get(RUN_THREADS_ENV, "").strip()
    if explicit:
        return max(1, int(explicit))
    return max(1, usable_cores() // max_concurrent_runs(instance))


def threads_in_use() -> dict:
    """What the thread pools of this process are set to now: torch intra-op threads (when torch
    is loaded) and the largest BLAS/OpenMP pool (threadpoolctl)."""
    from threadpoolctl import threadpool_info

    pools = threadpool_info()
    out = {"blas_openmp": max((p.get("num_threads", 1) for p in pools), default=1)}
    if "torch" in sys.modules:
        out["torch"] = sys.modules["torch"].get_num_threads()
    return out


@contextlib.contextmanager
def cpu_budget(context, *, torch_too: bool = False, threads: int | None = None):
    """Run a block within this run's thread budget (:func:`run_threads`; ``threads`` overrides
    it); yields the budget. Torch is capped when it is loaded already or ``torch_too``; every
    setting is restored afterwards."""
    from threadpoolctl import threadpool_limits

    threads = threads or run_threads(context.instance)
    torch = None
    if torch_too or "torch" in sys.modules:
        import torch
    saved_env = {k: os.environ.get(k) for k in _CHILD_THREAD_VARS}
    saved_torch = torch.get_num_threads() if torch is not None else None
    os.environ.update({k: str(threads) for k in _CHILD_THREAD_VARS})
    if torch is not None:
        torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield threads
    finally:
        if torch is not None:
            torch.set_num_threads(saved_torch)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
