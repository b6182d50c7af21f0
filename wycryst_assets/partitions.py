"""The ``targets`` dynamic partitions, kept in sync with the target registry."""

import dagster as dg

from ml.targets import Registry, load_registry
from wycryst_assets import settings

targets_partitions = dg.DynamicPartitionsDefinition(name="targets")


def current_registry() -> Registry:
    return load_registry(settings.targets_file())


def sync_target_partitions(instance: dg.DagsterInstance, registry: Registry | None = None) -> list[str]:
    """Add every registry key missing from the instance's ``targets`` partitions; return them."""
    registry = registry or current_registry()
    existing = set(instance.get_dynamic_partitions(targets_partitions.name))
    new = [k for k in registry.keys if k not in existing]
    if new:
        instance.add_dynamic_partitions(targets_partitions.name, new)
    return new
