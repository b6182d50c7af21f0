"""The Dagster definitions of the WyCryst platform."""

import dagster as dg

from wycryst_assets.assets.campaign import sun_report
from wycryst_assets.assets.forward import forward_model
from wycryst_assets.assets.genes import wyckoff_genes
from wycryst_assets.assets.metrics import generator_metrics
from wycryst_assets.assets.pvae import TrainingDevice, pvae_model
from wycryst_assets.assets.sampling import filtered_genes, sampled_genes, synthesizability_model
from wycryst_assets.assets.refinement import refined_structures
from wycryst_assets.assets.report import loo_report
from wycryst_assets.assets.snapshot import mp_snapshot
from wycryst_assets.automation import report_automation_sensor
from wycryst_assets.assets.structures import phonon_verdicts, relaxed_structures, trial_structures
from wycryst_assets.checks import every_material_accounted_for, space_groups_agree_with_mp
from wycryst_assets.resources import compute_resource, warehouse_resource
from wycryst_assets.sensors import (
    mp_release_sensor,
    release_refresh_job,
    rerun_targets_on_release,
    target_pipeline_job,
    target_registry_sync,
    weekly_release_check,
)

foundation_job = dg.define_asset_job(
    "foundation", selection=dg.AssetSelection.assets(mp_snapshot, wyckoff_genes),
    description="MP snapshot -> Wyckoff gene table.",
)

defs = dg.Definitions(
    assets=[mp_snapshot, wyckoff_genes, synthesizability_model, forward_model, pvae_model, sampled_genes, filtered_genes,
            trial_structures, relaxed_structures, refined_structures, phonon_verdicts, loo_report, sun_report,
            generator_metrics],
    asset_checks=[every_material_accounted_for, space_groups_agree_with_mp],
    jobs=[foundation_job, release_refresh_job, target_pipeline_job],
    sensors=[target_registry_sync, mp_release_sensor, rerun_targets_on_release, report_automation_sensor],
    schedules=[weekly_release_check],
    resources={"warehouse": warehouse_resource(), "training_device": TrainingDevice(),
               "compute": compute_resource()},
)
