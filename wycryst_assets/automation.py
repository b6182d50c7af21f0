"""Declarative automation: which assets Dagster re-materializes on its own, and the sensor that
evaluates their conditions (running by default, so nothing has to be switched on in the UI).

Only the reports are automated. ``loo_report``, ``sun_report`` and ``generator_metrics`` take seconds and only summarize
their partition's tables, so they should never lag behind them: :data:`REPORT_AUTOMATION` is
``AutomationCondition.eager()`` -- a partition's report is requested after any of its upstream
partitions is updated (a rerun of relaxed_structures from the UI, a DFT refinement, a release
rerun) -- with one change: ``refined_structures`` is optional (GPAW refinement runs only where
asked), so a missing refinement does not hold a report back. Runs that already materialize the
report after its upstream (the ``target_pipeline`` job) do not trigger a second one.

The expensive stages (PVAE training, sampling, relaxations, phonons, DFT) stay explicit: eager on
them would turn any upstream rematerialization -- e.g. a user re-running ``wyckoff_genes`` with
another symprec to try it -- into a PVAE training and hours of relaxations for every partition,
on a 2-core workstation. A new MP release still reruns them through the ``mp_release_sensor`` ->
``release_refresh`` -> ``rerun_targets_on_release`` chain (keyed by release, so each release
reruns each partition once, tagged with its database version); code changes show up as stale
assets in the UI (wycryst_assets.versions) for the user to rerun, e.g. with one backfill of the
``target_pipeline`` job over all ``targets`` partitions.
"""

import dagster as dg

OPTIONAL_UPSTREAM = dg.AssetSelection.assets("refined_structures")

REPORT_AUTOMATION = (
    dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing())
    & ~dg.AutomationCondition.any_deps_missing().ignore(OPTIONAL_UPSTREAM)
).with_label("eager (DFT refinement optional)")

report_automation_sensor = dg.AutomationConditionSensorDefinition(
    "report_automation",
    target=dg.AssetSelection.assets("loo_report", "sun_report", "generator_metrics"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Keeps loo_report, sun_report and generator_metrics up to date with their partition's tables (eager).",
)
