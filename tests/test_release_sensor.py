"""A new MP release in the snapshot source -> the sensor requests the release refresh."""

import json
import shutil

import dagster as dg


def test_new_release_triggers_refresh(wycryst_env, small_snapshot, tmp_path, monkeypatch):
    from wycryst_assets.assets.snapshot import mp_snapshot
    from wycryst_assets.resources import warehouse_resource
    from wycryst_assets.sensors import mp_release_sensor

    source = tmp_path / "source"
    shutil.copytree(small_snapshot, source)
    monkeypatch.setenv("WYCRYST_SNAPSHOT", str(source))
    with dg.DagsterInstance.get() as instance:
        # nothing materialized yet: the offered release is new
        first = mp_release_sensor(dg.build_sensor_context(instance=instance))
        assert isinstance(first, dg.RunRequest) and first.run_key == "mp-release-test-release-1"
        assert dg.materialize([mp_snapshot], instance=instance, resources={"warehouse": warehouse_resource()}).success
        # materialized: nothing to do
        assert isinstance(mp_release_sensor(dg.build_sensor_context(instance=instance)), dg.SkipReason)
        # MP publishes a new release: swap the manifest's version
        manifest = json.loads((source / "manifest.json").read_text())
        manifest["database_version"] = "test-release-2"
        (source / "manifest.json").write_text(json.dumps(manifest))
        request = mp_release_sensor(dg.build_sensor_context(instance=instance))
        assert isinstance(request, dg.RunRequest)
        assert request.run_key == "mp-release-test-release-2"
        assert request.tags["wycryst/previous_database_version"] == "test-release-1"


def test_successful_refresh_reruns_every_target_partition(wycryst_env, small_snapshot, monkeypatch):
    from wycryst_assets.definitions import defs
    from wycryst_assets.partitions import sync_target_partitions
    from wycryst_assets.sensors import rerun_targets_on_release

    monkeypatch.setenv("WYCRYST_SNAPSHOT", str(small_snapshot))
    job = defs.get_job_def("release_refresh")
    with dg.DagsterInstance.get() as instance:
        sync_target_partitions(instance)
        keys = sorted(instance.get_dynamic_partitions("targets"))
        assert "SrTiO3-221" in keys and "campaign-paper" in keys
        result = job.execute_in_process(instance=instance, tags={"wycryst/database_version": "test-release-1"},
                                        run_config={"ops": {"wyckoff_genes": {"config": {"processes": 1}}}})
        assert result.success
        run = instance.get_run_by_id(result.run_id)
        success = next(e for e in result.all_events if e.event_type_value == "PIPELINE_SUCCESS")
        context = dg.build_run_status_sensor_context(sensor_name="rerun_targets_on_release", dagster_instance=instance,
                                                     dagster_run=run, dagster_event=success)
        requests = rerun_targets_on_release(context)
    assert sorted(r.partition_key for r in requests) == sorted(keys)
    assert {r.run_key for r in requests} == {f"release-test-release-1-{k}" for k in keys}
    assert all(r.tags["wycryst/database_version"] == "test-release-1" for r in requests)
