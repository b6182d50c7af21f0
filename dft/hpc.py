"""Run many independent structure tasks locally or as Slurm jobs, with resume.

    config = ComputeConfig(mode="slurm", chunk_size=4, cpus_per_task=1, time_minutes=30)
    results = run_tasks(relax_one, {"SrTiO3|221": payload, ...}, config, Path("runs/relax"))

`fn` is a top-level (importable, picklable) function ``payload -> JSON-serializable dict``.
Tasks are grouped into chunks of ``chunk_size``; each chunk runs in one worker process (local
mode: a spawn-context ``ProcessPoolExecutor``) or one element of a Slurm job array (slurm mode:
submitit). The worker writes each task's result to ``results_dir/<safe name>.json`` atomically
the moment the task finishes, so a killed job loses only the task in flight, and a task whose
result file exists is never run again (resume).

Failures are rows, not exceptions: a task that raises gets ``{"verdict": "failed", "reason":
"<ExceptionType: msg>"}`` (written to disk: rerunning would fail the same way); a chunk whose
worker or Slurm job dies (killed, timeout, node failure) is resubmitted up to ``max_resubmits``
times for its still-missing tasks, and what remains missing gets a failed row that is returned
but *not* written, so the next run retries it. A task stopped from outside (it raises
:class:`TaskInterrupted`, e.g. its GPAW worker got SIGTERM when a run was cancelled) is treated the
same way: a failed row returned, none written.

Batched mode (``run_tasks(..., batched=True)``): a chunk's pending tasks go to ONE call,
``fn(items)`` with ``items = [(key, payload), ...]``, a generator that yields ``(key, result)`` as
each task finishes (e.g. :func:`dft.pipeline.relax_batch_task`, many relaxations in lockstep with
one model call per step); each result is written the moment it is yielded, exactly as in the
per-task mode, so resume and failure rows work the same. If the call raises, every task it had not
yet yielded gets a failed row with the reason; tasks it never yielded get one too. Chunks hold
``batch_size`` tasks (default: local mode cuts guided batches -- large first, down to pairs at the
end -- handed out as workers free up, so the workers finish together; slurm mode uses
``chunk_size``, one batch per array element).

Each worker caps its BLAS / OpenMP / torch threads at ``threads_per_task`` (default
``cpus_per_task``), so N workers use N x that many cores. Slurm state comes from ``squeue``
(sacct needs accounting, which small clusters often lack).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from ml.allocator import keep_freed_memory

logger = logging.getLogger(__name__)

TaskFn = Callable[[Any], dict]
LogFn = Callable[[str], None]

# Slurm job states after which a job without a result will not produce one
_SLURM_TERMINAL = {
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
    "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT",
}


@dataclass
class ComputeConfig:
    """Where and how tasks run. Local mode uses ``max_workers`` processes; slurm mode submits
    one job-array element per chunk of ``chunk_size`` tasks with the per-job resources below."""

    mode: Literal["local", "slurm"] = "local"
    max_workers: int | None = None  # local: default os.cpu_count()
    chunk_size: int = 1  # tasks per worker call / per Slurm job
    max_resubmits: int = 1  # extra submissions of a chunk whose job died
    slurm_partition: str = "debug"
    time_minutes: int = 60
    cpus_per_task: int = 1
    threads_per_task: int | None = None  # BLAS/OpenMP/torch threads per task; default cpus_per_task
    gpus_per_task: int = 0
    mem_gb: float | None = None
    account: str | None = None
    array_parallelism: int = 256  # job-array elements running at once
    folder: Path | str = Path(".wycryst") / "submitit"  # submitit logs and pickles
    slurm_extra: dict[str, Any] = field(default_factory=dict)  # extra #SBATCH options
    poll_seconds: float = 2.0
    batch_size: int | None = None  # batched mode: tasks per chunk (see the module docstring)

    def __post_init__(self) -> None:
        if self.mode not in ("local", "slurm"):
            raise ValueError(f"mode must be 'local' or 'slurm', not {self.mode!r}")
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        if self.max_resubmits < 0:
            raise ValueError("max_resubmits must be >= 0")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")

    @property
    def threads(self) -> int:
        return max(1, self.threads_per_task or self.cpus_per_task)

    def chunk_sizes(self, n_tasks: int, batched: bool) -> list[int]:
        """How ``n_tasks`` pending tasks are cut into chunks, in submission order: ``chunk_size``
        each; in batched mode ``batch_size`` each or, by default (local), guided chunks -- each
        ``1 / (GUIDED_SHARES x workers)`` of the tasks still unassigned, at least
        ``MIN_LOCAL_BATCH`` -- so the first batches are large and the last ones small; slurm:
        ``chunk_size`` per array element."""
        size = self.chunk_size
        if batched and self.batch_size is not None:
            size = self.batch_size
        elif batched and self.mode == "local":
            workers = self.max_workers or os.cpu_count() or 1
            sizes, left = [], n_tasks
            while left > 0:
                take = min(left, max(MIN_LOCAL_BATCH, -(-left // (GUIDED_SHARES * workers))))
                sizes.append(take)
                left -= take
            return sizes
        return [min(size, n_tasks - start) for start in range(0, n_tasks, size)]


# Local batched mode: a worker relaxes its batch with one model call per step, refilling it as
# relaxations finish, so a batch costs about the sum of its members; the run ends when the last
# batch does. Equal batches (4 per worker before) left one worker idle for up to a batch at the end
# (40 CHGNet trials, simulated from their measured costs: makespan 11 % over the even split;
# measured 7 % idle). Guided sizes -- half of the unassigned tasks per worker share, down to pairs
# -- hand the last minutes out in small pieces: 3.5 % over the even split in the same simulation,
# 1.4 % at 100 trials; measured on the quiet 2-core machine (benchmarks/batch_relax_benchmark.py):
# 55.8 -> 58.7 structures/min at 40 trials, 47.6 -> 55.7 at 100. A pair still makes batched calls.
GUIDED_SHARES = 2
MIN_LOCAL_BATCH = 2


# ---------------------------------------------------------------- result files


def result_path(results_dir: Path | str, key: str) -> Path:
    """``results_dir/<readable prefix>-<sha1 of key>.json``: any key maps to a safe, unique name."""
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    prefix = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:40].strip("._")
    return Path(results_dir) / f"{prefix}-{digest}.json" if prefix else Path(results_dir) / f"{digest}.json"


def read_result(results_dir: Path | str, key: str) -> dict | None:
    """The stored result of ``key``, or None when it has not finished (or the file is unreadable)."""
    path = result_path(results_dir, key)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record.get("result") if record.get("key") == key else None


def load_results(results_dir: Path | str) -> dict[str, dict]:
    """Every stored result in ``results_dir``, keyed by task key."""
    out = {}
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            record = json.loads(path.read_text())
            out[record["key"]] = record["result"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def _write_result(results_dir: Path, key: str, result: dict) -> None:
    """Atomic write: a temp file in the same directory, then ``os.replace``."""
    text = json.dumps({"key": key, "result": result}, sort_keys=True, default=str)
    fd, tmp = tempfile.mkstemp(dir=results_dir, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, result_path(results_dir, key))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _failed(reason: str) -> dict:
    return {"verdict": "failed", "reason": reason}


class TaskInterrupted(Exception):
    """Raised by a task whose work was stopped from outside -- its subprocess got SIGTERM, SIGINT
    or SIGHUP (a run cancelled, a session or job ending, Ctrl-C). That is no verdict on the task:
    :func:`run_tasks` returns a failed row for it but writes none, so the next run retries it, as
    for a worker that died."""


def _interrupted(exc: TaskInterrupted) -> dict:
    return _failed(f"interrupted (not stored; the next run retries it): {exc}")


def _limit_threads(n: int) -> None:
    """Cap the BLAS / OpenMP / torch thread pools of this worker at ``n``: left at their default
    (all cores) several workers oversubscribe the CPUs, and small linear algebra (ASE's
    FrechetCellFilter, 3x3 matrices) then runs ~3x slower on a busy 2-core machine."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)  # for libraries loaded later
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n)  # for those already loaded
    except ImportError:
        pass
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def _run_chunk(fn: TaskFn, items: list[tuple[str, Any]], results_dir: str, threads: int | None = None,
               batched: bool = False) -> dict[str, dict]:
    """Worker side (a pool process or a Slurm job): run each task whose result is missing and
    write its result file as soon as it finishes (batched: one ``fn`` call for all of them)."""
    if threads:
        _limit_threads(threads)
    keep_freed_memory()  # freed buffers reused, not faulted in again (ml.allocator)
    out_dir = Path(results_dir)
    results: dict[str, dict] = {}
    todo = []
    for key, payload in items:
        existing = read_result(out_dir, key)
        if existing is not None:
            results[key] = existing
        else:
            todo.append((key, payload))
    if batched:
        _run_batch(fn, todo, out_dir, results)
        return results
    for key, payload in todo:
        try:
            result = _checked(fn(payload))
        except TaskInterrupted as exc:
            results[key] = _interrupted(exc)
            continue
        except Exception as exc:  # a failing task is a result row, not a crashed chunk
            result = _failed(f"{type(exc).__name__}: {exc}")
        _write_result(out_dir, key, result)
        results[key] = result
    return results


def _checked(result: Any) -> dict:
    if not isinstance(result, dict):
        raise TypeError(f"task returned {type(result).__name__}, not dict")
    json.dumps(result)
    return result


def _run_batch(fn: Callable, todo: list[tuple[str, Any]], out_dir: Path, results: dict[str, dict]) -> None:
    """One ``fn(todo)`` call yielding ``(key, result)``; each result written as it comes. A raise
    inside the batch ends it: the tasks it had not finished get failed rows with the reason."""
    pending = {key for key, _ in todo}
    reason = "batch returned no result for this task"
    if todo:
        try:
            for key, result in fn(todo):
                if key not in pending:
                    continue  # not ours, or already written
                try:
                    result = _checked(result)
                except Exception as exc:
                    result = _failed(f"{type(exc).__name__}: {exc}")
                _write_result(out_dir, key, result)
                results[key] = result
                pending.discard(key)
        except TaskInterrupted as exc:
            results.update({key: _interrupted(exc) for key in pending})
            return
        except Exception as exc:
            reason = f"batch failed: {type(exc).__name__}: {str(exc).strip()[:500]}"
    for key, _ in todo:
        if key in pending:
            result = _failed(reason)
            _write_result(out_dir, key, result)
            results[key] = result


# ---------------------------------------------------------------- the driver


@dataclass
class _Chunk:
    index: int
    keys: list[str]
    submissions: int = 0
    last_error: str = ""


def run_tasks(
    fn: TaskFn,
    tasks: dict[str, Any],
    config: ComputeConfig,
    results_dir: Path | str,
    log: LogFn | None = None,
    *,
    batched: bool = False,
) -> dict[str, dict]:
    """Run ``fn(payload)`` for every task whose result file is missing; return all results
    (stored ones included), keyed like ``tasks``. ``batched``: ``fn(items)`` runs a chunk's
    pending tasks together and yields ``(key, result)`` pairs (see the module docstring)."""
    emit = log or logger.info
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)

    results: dict[str, dict] = {}
    todo: list[str] = []
    for key in tasks:
        stored = read_result(results_dir, key)
        if stored is None:
            todo.append(key)
        else:
            results[key] = stored
    if results:
        emit(f"{len(results)}/{len(tasks)} tasks already have results; running {len(todo)}")
    if not todo:
        return {key: results[key] for key in tasks}

    chunks, start = [], 0
    for i, size in enumerate(config.chunk_sizes(len(todo), batched)):
        chunks.append(_Chunk(i, todo[start : start + size]))
        start += size
    backend_cls = _SlurmBackend if config.mode == "slurm" else _LocalBackend
    backend = backend_cls(fn, config, results_dir, batched=batched)
    progress = _Progress(len(tasks), emit)
    progress.update(len(results), len(chunks))
    try:
        for chunk, outcome in backend.run(chunks, tasks):
            if isinstance(outcome, dict):
                results.update({k: v for k, v in outcome.items() if k in tasks})
                chunk.last_error = "returned without all its results"
            else:
                chunk.last_error = outcome
            missing = [k for k in chunk.keys if k not in results and read_result(results_dir, k) is None]
            results.update({k: read_result(results_dir, k) for k in chunk.keys if k not in results and k not in missing})
            if missing:
                if chunk.submissions <= config.max_resubmits:
                    emit(f"chunk {chunk.index} failed ({chunk.last_error}); resubmitting {len(missing)} missing tasks")
                    chunk.keys = missing
                    backend.resubmit(chunk, tasks)
                else:
                    reason = f"{backend.what} failed after {chunk.submissions} submissions: {chunk.last_error}"
                    results.update({k: _failed(reason) for k in missing})
            progress.update(len(results), backend.pending())
    finally:
        backend.close()
    return {key: results[key] for key in tasks}


class _Progress:
    def __init__(self, total: int, emit: LogFn) -> None:
        self.total, self.emit, self.last = total, emit, None

    def update(self, done: int, pending_chunks: int) -> None:
        state = (done, pending_chunks)
        if state != self.last:
            self.last = state
            self.emit(f"{done}/{self.total} tasks done, {pending_chunks} chunks pending")


class _LocalBackend:
    """Chunks in a spawn-context process pool; a pool broken by a dying worker is replaced."""

    what = "local worker"

    def __init__(self, fn: TaskFn, config: ComputeConfig, results_dir: Path, batched: bool = False) -> None:
        self.fn, self.results_dir, self.threads, self.batched = fn, str(results_dir), config.threads, batched
        self.workers = config.max_workers or os.cpu_count() or 1
        self.pool: cf.ProcessPoolExecutor | None = None
        self.futures: dict[cf.Future, _Chunk] = {}
        self.tasks: dict[str, Any] = {}

    def _submit(self, chunk: _Chunk) -> None:
        items = [(k, self.tasks[k]) for k in chunk.keys]
        chunk.submissions += 1
        for attempt in range(2):
            if self.pool is None:
                ctx = multiprocessing.get_context("spawn")
                self.pool = cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
            try:
                future = self.pool.submit(_run_chunk, self.fn, items, self.results_dir, self.threads, self.batched)
                self.futures[future] = chunk
                return
            except cf.process.BrokenProcessPool:
                self.pool.shutdown(wait=False, cancel_futures=True)
                self.pool = None
        raise RuntimeError("cannot start a local worker pool")

    def run(self, chunks: list[_Chunk], tasks: dict[str, Any]):
        self.tasks = tasks
        for chunk in chunks:
            self._submit(chunk)
        while self.futures:
            done, _ = cf.wait(list(self.futures), return_when=cf.FIRST_COMPLETED)
            for future in done:
                chunk = self.futures.pop(future)
                try:
                    outcome: dict | str = future.result()
                except Exception as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                yield chunk, outcome

    def resubmit(self, chunk: _Chunk, tasks: dict[str, Any]) -> None:
        self._submit(chunk)

    def pending(self) -> int:
        return len(self.futures)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _import_root(fn: Callable) -> str | None:
    """The sys.path entry that makes ``fn``'s module importable by a fresh interpreter (the job
    pickles ``fn`` by reference): for module ``a.b`` in ``/x/a/b.py`` that is ``/x``."""
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    file = getattr(module, "__file__", None)
    if not file or fn.__module__ == "__main__":
        return None
    path = Path(file).resolve()
    depth = fn.__module__.count(".") + (1 if path.name == "__init__.py" else 0)
    return str(path.parents[depth])


def _slurm_executor(config: ComputeConfig, fn: Callable, name: str):
    import submitit

    folder = Path(config.folder).resolve() / "%j"
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=0)
    setup = []
    root = _import_root(fn)
    if root:
        setup.append(f'export PYTHONPATH="{root}${{PYTHONPATH:+:$PYTHONPATH}}"')
    params: dict[str, Any] = dict(
        job_name=name,
        partition=config.slurm_partition,
        time=config.time_minutes,
        cpus_per_task=config.cpus_per_task,
        array_parallelism=config.array_parallelism,
        setup=setup,
        additional_parameters=dict(config.slurm_extra),
    )
    if config.gpus_per_task:
        params["gpus_per_task"] = config.gpus_per_task
    if config.mem_gb:
        params["mem"] = f"{int(config.mem_gb * 1024)}MB"
    if config.account:
        params["account"] = config.account
    executor.update_parameters(**params)
    return executor


def _squeue_states(job_ids: list[str]) -> dict[str, str]:
    """``{job id: state}`` for jobs Slurm still lists (array elements as ``<array>_<index>``)."""
    if not job_ids:
        return {}
    base = sorted({j.split("_")[0] for j in job_ids})
    proc = subprocess.run(
        ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(base)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:
            return {}
        raise RuntimeError(f"squeue failed: {proc.stderr.strip()}")
    states = {}
    for line in proc.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        states[job_id] = state
    return states


def _finished_slurm_jobs(jobs: dict[str, Any]) -> list[tuple[str, str]]:
    """``[(job id, "ok" | "<why it died>")]`` for the submitit jobs that have finished: a result
    pickle means the job returned; a terminal or vanished Slurm state without one means it died."""
    states = _squeue_states(list(jobs))
    finished = []
    for job_id, job in jobs.items():
        if job.paths.result_pickle.exists():
            finished.append((job_id, "ok"))
            continue
        state = (states.get(job_id) or "").split(" ")[0]
        if not state or state in _SLURM_TERMINAL:
            time.sleep(0.2)  # the job may have written its pickle between the two checks
            if job.paths.result_pickle.exists():
                finished.append((job_id, "ok"))
            else:
                finished.append((job_id, f"slurm job {job_id} ended {state or 'without a result'}"))
    return finished


class _SlurmBackend:
    """Chunks as one submitit job array; resubmissions as single jobs."""

    what = "slurm job"

    def __init__(self, fn: TaskFn, config: ComputeConfig, results_dir: Path, batched: bool = False) -> None:
        self.fn, self.config, self.results_dir, self.batched = fn, config, str(results_dir.resolve()), batched
        self.executor = _slurm_executor(config, fn, name=f"wycryst-{getattr(fn, '__name__', 'task')}")
        self.jobs: dict[str, Any] = {}
        self.chunk_of: dict[str, _Chunk] = {}

    def _track(self, job, chunk: _Chunk) -> None:
        chunk.submissions += 1
        self.jobs[job.job_id] = job
        self.chunk_of[job.job_id] = chunk

    def run(self, chunks: list[_Chunk], tasks: dict[str, Any]):
        self.tasks = tasks
        items = [[(k, tasks[k]) for k in c.keys] for c in chunks]
        n = len(chunks)
        array = self.executor.map_array(_run_chunk, [self.fn] * n, items, [self.results_dir] * n,
                                        [self.config.threads] * n, [self.batched] * n)
        for job, chunk in zip(array, chunks):
            self._track(job, chunk)
        while self.jobs:
            finished = _finished_slurm_jobs(self.jobs)
            if not finished:
                time.sleep(self.config.poll_seconds)
            for job_id, status in finished:
                job, chunk = self.jobs.pop(job_id), self.chunk_of.pop(job_id)
                outcome: dict | str = status
                if status == "ok":
                    try:
                        outcome = job.result()
                    except Exception as exc:  # the chunk function itself failed inside the job
                        lines = str(exc).strip().splitlines()
                        outcome = f"{type(exc).__name__}: {lines[-1] if lines else ''}"
                yield chunk, outcome

    def resubmit(self, chunk: _Chunk, tasks: dict[str, Any]) -> None:
        job = self.executor.submit(_run_chunk, self.fn, [(k, tasks[k]) for k in chunk.keys], self.results_dir,
                                   self.config.threads, self.batched)
        self._track(job, chunk)

    def pending(self) -> int:
        return len(self.jobs)

    def close(self) -> None:
        """Cancel jobs still queued or running (an interrupted driver leaves nothing behind)."""
        for job in list(self.jobs.values()):
            try:
                job.cancel(check=False)
            except Exception:  # best-effort cleanup of an interrupted driver; no result depends on it
                pass
        self.jobs.clear()


def _call_with_threads(fn: Callable[[Any], Any], payload: Any, threads: int) -> Any:
    _limit_threads(threads)
    return fn(payload)


def submit_one(fn: Callable[[Any], Any], payload: Any, config: ComputeConfig, log: LogFn | None = None) -> Any:
    """Run one long task (e.g. training on a GPU partition: ``gpus_per_task=1``, with
    ``cpus_per_task`` CPU threads) and return its result. Local mode calls ``fn(payload)`` here; slurm mode submits one job, resubmits it up to
    ``max_resubmits`` times if the job dies, and re-raises (as submitit's ``FailedJobError``) an
    exception raised by ``fn`` itself."""
    if config.mode == "local":
        return fn(payload)
    emit = log or logger.info
    executor = _slurm_executor(config, fn, name=f"wycryst-{getattr(fn, '__name__', 'task')}")
    why = ""
    for submission in range(1, config.max_resubmits + 2):
        job = executor.submit(_call_with_threads, fn, payload, config.threads)
        emit(f"submitted slurm job {job.job_id} ({submission}/{config.max_resubmits + 1})")
        try:
            while not (finished := _finished_slurm_jobs({job.job_id: job})):
                time.sleep(config.poll_seconds)
        except BaseException:
            job.cancel(check=False)
            raise
        if finished[0][1] == "ok":
            return job.result()
        why = finished[0][1]
        emit(why)
    raise RuntimeError(f"slurm job for {getattr(fn, '__name__', fn)} failed after {config.max_resubmits + 1} submissions: {why}")
