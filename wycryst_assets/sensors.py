"""Sensors: keep the ``targets`` partitions in sync with the registry file."""

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
    registry = current_registry()
    existing = set(context.instance.get_dynamic_partitions(targets_partitions.name))
    new = [k for k in registry.keys if k not in existing]
    for name, reason in registry.invalid.items():
        context.log.warning(f"target {name!r} skipped: {reason}")
    if not new:
        return dg.SkipReason(f"{len(existing)} target partitions already registered")
    return dg.SensorResult(dynamic_partitions_requests=[targets_partitions.build_add_request(new)])
