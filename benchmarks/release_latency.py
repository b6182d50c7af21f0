"""Sensor-to-rerun latency: a new database_version appears in the snapshot source -> the release
sensor requests release_refresh -> the refresh (snapshot copy, gene table, synthesizability model)
runs -> the run-status sensor requests one target_pipeline run per partition. Prints each leg.

    .venv/bin/python benchmarks/release_latency.py [--rows 25200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=0, help="0: the whole shared snapshot")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="release-latency-"))
    os.environ.update(WYCRYST_HOME=str(tmp / "home"), DAGSTER_HOME=str(tmp / "home" / "dagster_home"))
    os.environ.pop("MP_API_KEY", None)
    (tmp / "home" / "dagster_home").mkdir(parents=True)
    shutil.copyfile(REPO / "dagster.yaml", tmp / "home" / "dagster_home" / "dagster.yaml")

    import dagster as dg
    import polars as pl

    from ml.snapshot import write_snapshot
    from wycryst_assets import settings
    from wycryst_assets.definitions import defs
    from wycryst_assets.partitions import sync_target_partitions
    from wycryst_assets.sensors import mp_release_sensor, rerun_targets_on_release

    source = tmp / "source"
    shared = settings.shared_data() / "mp_snapshot"
    if args.rows:
        rows = pl.read_parquet(shared / "materials.parquet").sample(args.rows, seed=1)
        write_snapshot(rows, source, database_version="bench-release-1", description="latency benchmark")
    else:
        shutil.copytree(shared, source)
    os.environ["WYCRYST_SNAPSHOT"] = str(source)
    job = defs.get_job_def("release_refresh")
    with dg.DagsterInstance.get() as instance:
        sync_target_partitions(instance)
        first = mp_release_sensor(dg.build_sensor_context(instance=instance))
        job.execute_in_process(instance=instance, tags=first.tags)  # the release now on disk
        manifest = json.loads((source / "manifest.json").read_text())
        manifest["database_version"] = "bench-release-2"
        (source / "manifest.json").write_text(json.dumps(manifest))  # MP publishes a release

        t0 = time.perf_counter()
        request = mp_release_sensor(dg.build_sensor_context(instance=instance))
        t1 = time.perf_counter()
        result = job.execute_in_process(instance=instance, tags=request.tags)
        t2 = time.perf_counter()
        run = instance.get_run_by_id(result.run_id)
        success = next(e for e in result.all_events if e.event_type_value == "PIPELINE_SUCCESS")
        reruns = rerun_targets_on_release(dg.build_run_status_sensor_context(
            sensor_name="rerun_targets_on_release", dagster_instance=instance, dagster_run=run, dagster_event=success))
        t3 = time.perf_counter()
    n = pl.read_parquet(source / "materials.parquet").height
    print(f"materials: {n}")
    print(f"release sensor tick (detects {request.tags['wycryst/database_version']}): {t1 - t0:.2f} s")
    print(f"release_refresh run (snapshot copy + gene table + synthesizability): {t2 - t1:.1f} s")
    print(f"run-status sensor -> {len(reruns)} target_pipeline run requests: {t3 - t2:.2f} s")
    print(f"detection to rerun requests: {t3 - t0:.1f} s (+ up to the sensor interval, 3600 s, or the weekly schedule)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
