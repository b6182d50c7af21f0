"""The per-run CPU budget (wycryst_assets.cpu): threads per run = cores // the instance's
max_concurrent_runs, so runs that overlap never ask for more threads than there are cores.
Checked through thread counts read inside the steps, never through timing."""

import multiprocessing as mp
import os

import dagster as dg

from tests.conftest import TINY_PVAE
from tests.test_pvae_dagster import training_snapshot  # noqa: F401  (module fixture)


def test_budget_is_cores_over_the_run_queue(wycryst_env, monkeypatch):
    from wycryst_assets.cpu import max_concurrent_runs, run_threads, usable_cores

    monkeypatch.delenv("WYCRYST_RUN_THREADS", raising=False)
    with dg.DagsterInstance.get() as instance:
        assert max_concurrent_runs(instance) == 2  # the repo's dagster.yaml
        assert run_threads(instance) == max(1, usable_cores() // 2)
        monkeypatch.setenv("WYCRYST_RUN_THREADS", "3")
        assert run_threads(instance) == 3
    assert max_concurrent_runs(dg.DagsterInstance.ephemeral()) == 1  # no run queue: one run, every core


def _train(env: dict, key: str, barrier, queue) -> None:
    """One real process: import everything, wait for the other, then materialize pvae_model."""
    os.environ.update(env)
    try:
        import torch

        default_threads = torch.get_num_threads()  # what every run would take without the budget
        from wycryst_assets.assets.pvae import TrainingDevice, pvae_model
        from wycryst_assets.resources import warehouse_resource

        barrier.wait(timeout=900)
        with dg.DagsterInstance.get() as instance:
            result = dg.materialize(
                [pvae_model], instance=instance, partition_key=key, raise_on_error=False,
                resources={"warehouse": warehouse_resource(), "training_device": TrainingDevice(accelerator="cpu")},
                run_config={"ops": {"pvae_model": {"config": {**TINY_PVAE, "max_epochs": 3}}}})
            (mat,) = result.asset_materializations_for_node("pvae_model")
            events = {e.dagster_event_type.value: e.timestamp for e in instance.all_logs(result.run_id)
                      if e.dagster_event_type is not None
                      and e.dagster_event_type.value in ("STEP_START", "ASSET_MATERIALIZATION")}
        queue.put((key, default_threads, mat.metadata["cpu_threads"].value, events["STEP_START"],
                   events["ASSET_MATERIALIZATION"]))
    except BaseException as exc:  # reported to the parent, which fails the test
        queue.put((key, f"{type(exc).__name__}: {exc}"))


def test_two_concurrent_trainings_stay_within_the_cores(wycryst_env, training_snapshot, monkeypatch):  # noqa: F811
    from wycryst_assets.assets.genes import wyckoff_genes
    from wycryst_assets.assets.snapshot import mp_snapshot
    from wycryst_assets.cpu import usable_cores
    from wycryst_assets.partitions import sync_target_partitions
    from wycryst_assets.resources import warehouse_resource

    monkeypatch.setenv("WYCRYST_SNAPSHOT", str(training_snapshot))
    monkeypatch.delenv("WYCRYST_RUN_THREADS", raising=False)
    with dg.DagsterInstance.get() as instance:
        sync_target_partitions(instance)
        assert dg.materialize([mp_snapshot, wyckoff_genes], instance=instance,
                              resources={"warehouse": warehouse_resource()},
                              run_config={"ops": {"wyckoff_genes": {"config": {"processes": 1}}}}).success
    env = {k: os.environ[k] for k in ("WYCRYST_HOME", "DAGSTER_HOME", "WYCRYST_SNAPSHOT", "WYCRYST_SHARED_DATA")}
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_train, args=(env, key, barrier, queue)) for key in ("CsPbI3-221", "SrTiO3-221")]
    for p in procs:
        p.start()
    results = [queue.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join(timeout=120)
    assert all(len(r) == 5 for r in results), results
    (_, default_a, threads_a, start_a, end_a), (_, default_b, threads_b, start_b, end_b) = results
    assert start_a < end_b and start_b < end_a, "the two training steps did not overlap"
    cores = usable_cores()
    for threads in (threads_a, threads_b):  # read inside each step, during and after its epochs
        assert threads["budget"] == max(1, cores // 2)
        assert threads["torch"] == threads["torch_during_epochs"] == threads["budget"]
        assert threads["blas_openmp"] <= threads["budget"]
    assert threads_a["torch_during_epochs"] + threads_b["torch_during_epochs"] <= cores
    if cores >= 2 and "OMP_NUM_THREADS" not in os.environ:  # the budget changed something:
        assert default_a + default_b > cores  # torch's defaults alone would have oversubscribed
