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
