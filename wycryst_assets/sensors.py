"""Sensors and schedules: target partitions in sync with the registry; new MP releases."""

import dagster as dg

from wycryst_assets.partitions import current_registry, targets_partitions


@dg.sensor(
    name="target_registry_sync",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a `targets` partition for every registry entry ($WYCRYST_TARGETS); "
    "reports entries that cannot be used.",
)
def target_registry_sync(context: dg.SensorEvaluationContext):
    from ml.targets import TargetError

    try:
        registry = current_registry()
    except TargetError as exc:  # an unreadable registry file: said on the tick, nothing registered
        return dg.SkipReason(f"target registry unusable: {exc}")
    existing = set(context.instance.get_dynamic_partitions(targets_partitions.name))
    new = [k for k in registry.keys if k not in existing]
    for name, reason in registry.invalid.items():
        context.log.warning(f"target {name!r} skipped: {reason}")
    if not new:
        return dg.SkipReason(f"{len(existing)} target partitions already registered")
    return dg.SensorResult(dynamic_partitions_requests=[targets_partitions.build_add_request(new)])


def source_database_version() -> str:
    """The release the configured source offers now: mp-api's database version when
    ``MP_API_KEY`` is set, else the ``manifest.json`` of ``$WYCRYST_SNAPSHOT``."""
    from wycryst_assets import settings

    if settings.mp_api_key_present():
        from ml.mp_source import live_database_version

        return live_database_version()
    from ml.snapshot import database_version

    return database_version(settings.snapshot_source())


def materialized_database_version(instance: dg.DagsterInstance) -> str | None:
    event = instance.get_latest_materialization_event(dg.AssetKey("mp_snapshot"))
    if event is None or event.asset_materialization is None:
        return None
    return event.asset_materialization.tags.get("dagster/data_version")


def release_run_request(instance: dg.DagsterInstance):
    """A RunRequest for the release refresh when the source offers a release not yet materialized."""
    offered = source_database_version()
    current = materialized_database_version(instance)
    if offered == current:
        return dg.SkipReason(f"MP release {offered} is already materialized")
    return dg.RunRequest(
        run_key=f"mp-release-{offered}",
        tags={"wycryst/database_version": offered, "wycryst/previous_database_version": current or "none"},
    )


release_refresh_job = dg.define_asset_job(
    "release_refresh",
    selection=dg.AssetSelection.assets("mp_snapshot", "wyckoff_genes", "synthesizability_model"),
    description="A new MP release: copy/pull the snapshot, rebuild the gene table and the "
    "synthesizability model (downstream partitions then show as stale in the UI).",
)


@dg.sensor(job=release_refresh_job, minimum_interval_seconds=3600, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Polls the snapshot source's database_version; a new release triggers release_refresh.")
def mp_release_sensor(context: dg.SensorEvaluationContext):
    return release_run_request(context.instance)


@dg.schedule(job=release_refresh_job, cron_schedule="0 4 * * 1", default_status=dg.DefaultScheduleStatus.RUNNING,
             description="Weekly (Monday 04:00) check for a new MP release, as the sensor does.")
def weekly_release_check(context: dg.ScheduleEvaluationContext):
    return release_run_request(context.instance)


PARTITIONED_ASSETS = ("pvae_model", "sampled_genes", "filtered_genes", "trial_structures", "relaxed_structures",
                      "refined_structures", "phonon_verdicts", "loo_report", "sun_report", "generator_metrics")

target_pipeline_job = dg.define_asset_job(
    "target_pipeline",
    selection=dg.AssetSelection.assets(*PARTITIONED_ASSETS),
    partitions_def=targets_partitions,
    description="One target partition from its PVAE to its reports (what a new release reruns). "
    "Every partition at once: Launchpad -> 'Launch backfill' -> all partitions (one run per target, "
    "two at a time, each within its CPU budget).",
)


def partition_rerun_requests(instance: dg.DagsterInstance, release_run: dg.DagsterRun) -> list[dg.RunRequest]:
    """After a successful release refresh: one target_pipeline run per registered target partition,
    tagged with the release, keyed so that a release reruns each partition once."""
    version = release_run.tags.get("wycryst/database_version") or materialized_database_version(instance) or "unknown"
    keys = sorted(instance.get_dynamic_partitions(targets_partitions.name))
    return [dg.RunRequest(run_key=f"release-{version}-{key}", partition_key=key,
                          tags={"wycryst/database_version": version, "wycryst/trigger": "mp_release"})
            for key in keys]


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[release_refresh_job],
    request_job=target_pipeline_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="When release_refresh succeeds, rerun every target partition (PVAE -> reports) on the new release.",
)
def rerun_targets_on_release(context: dg.RunStatusSensorContext):
    return partition_rerun_requests(context.instance, context.dagster_run)
