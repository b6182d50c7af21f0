"""What a UI user does, through Dagster's own GraphQL API on an in-process workspace of the real
definitions and a real instance: a wrong config value is refused at launch with Dagster's message
(no run, no step), one backfill covers every `targets` partition, and the reports' declarative
automation requests exactly the partitions whose upstream changed."""

import contextlib

import dagster as dg
import pytest

from tests.conftest import REPO_ROOT

LOCATION = "wycryst_assets"


@contextlib.contextmanager
def graphql_context(instance):
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

    origin = InProcessCodeLocationOrigin(
        loadable_target_origin=LoadableTargetOrigin(module_name="wycryst_assets", attribute="defs",
                                                    working_directory=str(REPO_ROOT)),
        location_name=LOCATION)
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget([origin])) as process_context:
        context = process_context.create_request_context()
        errors = context.get_code_location_error(LOCATION)
        assert not errors, errors
        yield context


def _gql(context, query, variables):
    from dagster_graphql.test.utils import execute_dagster_graphql

    result = execute_dagster_graphql(context, query, variables)
    assert not result.errors, result.errors
    return result.data


@pytest.fixture
def ui(wycryst_env):
    from wycryst_assets.partitions import sync_target_partitions

    with dg.DagsterInstance.get() as instance:
        sync_target_partitions(instance)
        with graphql_context(instance) as context:
            yield instance, context


def _selector(context, job):
    from dagster_graphql.test.utils import infer_job_selector

    return infer_job_selector(context, job)


BAD_VALUES = [
    ("relaxed_structures", {"relaxer": "mace"}, "relaxer"),
    ("trial_structures", {"ranking": "at_random"}, "ranking"),
    ("sampled_genes", {"noise_unit": "sigma"}, "noise_unit"),
    ("refined_structures", {"mode": "relaxed"}, "mode"),
]


@pytest.mark.parametrize("op, config, field", BAD_VALUES)
def test_a_wrong_config_value_is_refused_at_launch(ui, op, config, field):
    from dagster_graphql.client.query import LAUNCH_PIPELINE_EXECUTION_MUTATION

    instance, context = ui
    data = _gql(context, LAUNCH_PIPELINE_EXECUTION_MUTATION, {"executionParams": {
        "selector": _selector(context, "target_pipeline"),
        "runConfigData": {"ops": {op: {"config": config}}},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "SrTiO3-221"}]},
    }})["launchPipelineExecution"]
    assert data["__typename"] == "RunConfigValidationInvalid", data
    (error,) = data["errors"]
    assert error["reason"] == "RUNTIME_TYPE_MISMATCH" and field in error["message"] and "enum" in error["message"]
    assert instance.get_runs() == []  # nothing was launched


def test_execute_in_process_refuses_it_before_any_step(ui):
    from dagster._core.errors import DagsterInvalidConfigError

    from wycryst_assets.definitions import defs

    instance, _ = ui
    job = defs.get_job_def("target_pipeline")
    with pytest.raises(DagsterInvalidConfigError, match="not in enum type"):
        job.execute_in_process(run_config={"ops": {"relaxed_structures": {"config": {"relaxer": "mace"}}}},
                               instance=instance, partition_key="SrTiO3-221")
    assert not instance.get_runs() or not instance.all_logs(instance.get_runs()[0].run_id)
    # "no limit" / "task default" are spelled None, and validate
    ok = dg.validate_run_config(job, {"ops": {
        "phonon_verdicts": {"config": {"max_e_above_hull": None}},
        "filtered_genes": {"config": {"max_total_dof": None, "elements": None, "min_synthesizability": None}},
        "refined_structures": {"config": {"max_e_above_hull": None, "mode": "single_point"}}}})
    assert ok["ops"]["phonon_verdicts"]["config"]["max_e_above_hull"] is None


def test_one_backfill_covers_every_target_partition(ui):
    from dagster_graphql.client.query import LAUNCH_PARTITION_BACKFILL_MUTATION

    from wycryst_assets.sensors import PARTITIONED_ASSETS

    instance, context = ui
    keys = sorted(instance.get_dynamic_partitions("targets"))
    assert len(keys) == 7
    # the job's Launchpad -> "Launch backfill" -> all partitions
    job = _selector(context, "target_pipeline")
    by_job = _gql(context, LAUNCH_PARTITION_BACKFILL_MUTATION, {"backfillParams": {
        "selector": {"partitionSetName": "target_pipeline_partition_set",
                     "repositorySelector": {"repositoryLocationName": job["repositoryLocationName"],
                                            "repositoryName": job["repositoryName"]}},
        "allPartitions": True}})["launchPartitionBackfill"]
    assert by_job["__typename"] == "LaunchBackfillSuccess", by_job
    # the asset graph: select the partitioned assets -> Materialize -> all partitions
    by_assets = _gql(context, LAUNCH_PARTITION_BACKFILL_MUTATION, {"backfillParams": {
        "assetSelection": [{"path": [name]} for name in PARTITIONED_ASSETS], "allPartitions": True}}
    )["launchPartitionBackfill"]
    assert by_assets["__typename"] == "LaunchBackfillSuccess", by_assets
    backfills = {b.backfill_id: b for b in instance.get_backfills()}
    assert sorted(backfills[by_job["backfillId"]].partition_names) == keys
    target = backfills[by_assets["backfillId"]].asset_backfill_data.target_subset
    for name in PARTITIONED_ASSETS:
        assert sorted(target.get_partitions_subset(dg.AssetKey(name)).get_partition_keys()) == keys, name


def test_reports_follow_their_upstream_and_nothing_else(wycryst_env):
    from wycryst_assets.definitions import defs
    from wycryst_assets.partitions import sync_target_partitions

    def updated(*names, key="SrTiO3-221"):
        for name in names:
            instance.report_runless_asset_event(dg.AssetMaterialization(name, partition=key))

    def requested(result):
        return {k.to_user_string(): sorted(result.get_requested_partitions(k))
                for k in (dg.AssetKey("loo_report"), dg.AssetKey("sun_report")) if result.get_num_requested(k)}

    with dg.DagsterInstance.get() as instance:
        sync_target_partitions(instance)
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert first.total_requested == 0  # nothing upstream yet
        # one partition's relaxations finished (no DFT refinement: it is optional)
        updated("filtered_genes", "relaxed_structures")
        second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert requested(second) == {"loo_report": ["SrTiO3-221"]}  # sun_report waits for its phonons
        assert second.total_requested == 1  # only the reports are automated: no training, no relaxation
        updated("loo_report")  # the requested run materialized it
        third = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
        assert third.total_requested == 0
        updated("phonon_verdicts")
        updated("refined_structures")  # a DFT refinement run from the UI
        fourth = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=third.cursor)
    assert requested(fourth) == {"loo_report": ["SrTiO3-221"], "sun_report": ["SrTiO3-221"]}
