"""``pvae_model``: one property-directed VAE per target partition, trained leave-one-out."""

import time
from typing import Literal, Optional

import dagster as dg
from dagster_duckdb import DuckDBResource

from ml.pvae_config import (MIN_ELEMENT_ACCURACY, MIN_SPACE_GROUP_ACCURACY, PVAEConfig, default_max_epochs,
                            reconstruction_passed)
from wycryst_assets.assets.genes import wyckoff_genes
from wycryst_assets.cpu import cpu_budget, threads_in_use
from wycryst_assets.io import model_dir, model_groups_dir, write_model_manifest
from wycryst_assets.partitions import current_registry, targets_partitions
from wycryst_assets.versions import source_version
from wycryst_assets.warehouse import read_table

__all__ = ["MIN_ELEMENT_ACCURACY", "MIN_SPACE_GROUP_ACCURACY", "PVAEModelConfig", "TrainingDevice", "model_dir",
           "pvae_model"]


class TrainingDevice(dg.ConfigurableResource):
    """Where the PVAE trains: Lightning's ``accelerator``/``devices`` (``auto`` takes a GPU when
    one is visible, else the CPU); ``torch_threads`` caps CPU threads (None: the run's CPU budget,
    wycryst_assets.cpu)."""

    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: str = "auto"
    torch_threads: Optional[int] = None


class PVAEModelConfig(dg.Config):
    """Training hyperparameters; defaults are ml.pvae.PVAEConfig's, tuned on the shared snapshot
    (benchmarks/pvae_benchmark.py). Paper's grid: latent 64/128/256/512 -> 256, lr 4e-4..1e-5,
    batch 64..512, epochs 64..256. ``max_epochs`` unset: by the partition's task (ml.pvae_config)."""

    latent_dim: int = PVAEConfig.latent_dim
    # None: by the partition's task, LOO_MAX_EPOCHS (30) for leave-one-out targets (the paper's
    # reconstruction), CAMPAIGN_MAX_EPOCHS (3) for campaigns (new genes; measured: ml.pvae_config)
    max_epochs: Optional[int] = None
    batch_size: int = PVAEConfig.batch_size
    lr: float = PVAEConfig.lr
    kl_weight: float = PVAEConfig.kl_weight
    property_weight: float = PVAEConfig.property_weight
    wyckoff_weight: float = PVAEConfig.wyckoff_weight
    seed: int = PVAEConfig.seed


@dg.asset(
    group_name="pvae",
    kinds={"pytorch", "lightning"},
    partitions_def=targets_partitions,
    deps=[wyckoff_genes],
    code_version=source_version(__name__),
    check_specs=[dg.AssetCheckSpec("reconstruction_quality", asset="pvae_model", blocking=True,
                                   description=f"element accuracy >= {MIN_ELEMENT_ACCURACY}, "
                                   f"space-group accuracy >= {MIN_SPACE_GROUP_ACCURACY} on validation; "
                                   "stops leave-one-out partitions, warns on campaigns")],
    description="PVAE (PyTorch Lightning) trained on the ternary genes with this partition's target "
    "gene and its equivalent configurations left out; checkpoint + model.json under "
    "$WYCRYST_HOME/artifacts/pvae_model/<target>/.",
)
def pvae_model(context: dg.AssetExecutionContext, config: PVAEModelConfig, warehouse: DuckDBResource,
               training_device: TrainingDevice):
    from ml.model_groups import group_fields, group_text, train_target_model
    from ml.origins import origin_genes
    from ml.targets import TargetError, loo_excluded_ids

    key = context.partition_key
    try:
        registry = current_registry()
        target = registry.get(key)
    except TargetError as exc:
        raise dg.Failure(str(exc)) from exc
    with warehouse.get_connection() as conn:
        genes = read_table(conn, "SELECT * FROM wyckoff_genes WHERE n_elements = 3")
    if genes.is_empty():
        raise dg.Failure("no ternary genes in wyckoff_genes: materialize it first")
    excluded = loo_excluded_ids(genes, target)
    context.log.info(f"{key} ({target.task}): leaving out {len(excluded)} material(s) {excluded}"
                     + (f"; model group {target.model_group!r}" if target.model_group else ""))
    values = config.model_dump()
    if values.get("max_epochs") is None:
        values["max_epochs"] = default_max_epochs(target.task)
    cfg = PVAEConfig(**values)
    start = time.perf_counter()
    with cpu_budget(context, torch_too=True, threads=training_device.torch_threads) as budget:
        trained = train_target_model(genes, registry, target, cfg, model_dir(key), model_groups_dir(),
                                     database_version=genes["database_version"][0], log=context.log.info,
                                     accelerator=training_device.accelerator, devices=training_device.devices)
        result = trained.result
        threads = {"budget": budget, **threads_in_use(),  # read inside the step, while capped
                   "torch_during_epochs": max((h.get("torch_threads") or 0 for h in result.history), default=None)}
    origins, how = origin_genes(trained.training_genes, target)
    write_model_manifest(key, {"target": key, "task": target.task, "database_version": genes["database_version"][0],
                               "checkpoint": result.checkpoint_path, "config": cfg.to_dict(), "metrics": result.metrics,
                               "excluded_material_ids": excluded, "n_origins": origins.height, "origins": how,
                               **group_fields(trained)})
    metadata = _metadata(result, origins, how, excluded, genes["database_version"][0], threads,
                         (time.perf_counter() - start) / 60)
    return dg.MaterializeResult(metadata={**metadata, "model_group": group_text(trained)},
                                check_results=[_quality_check(result.metrics, target)])


def _quality_check(metrics: dict, target) -> dg.AssetCheckResult:
    # ERROR stops the partition (blocking check): a leave-one-out target's held-out gene must be carried
    # through the latent space. WARN reports and lets a campaign go on: its short training reconstructs
    # below the gate by design, and generator_metrics judges it downstream.
    blocks = target.is_loo
    return dg.AssetCheckResult(
        check_name="reconstruction_quality", passed=reconstruction_passed(metrics),
        severity=dg.AssetCheckSeverity.ERROR if blocks else dg.AssetCheckSeverity.WARN, metadata={
            **{k: metrics[k] for k in ("element_accuracy", "space_group_accuracy")},
            "min_element_accuracy": MIN_ELEMENT_ACCURACY, "min_space_group_accuracy": MIN_SPACE_GROUP_ACCURACY,
            "task": target.task, "epochs": int(metrics["epochs"]),
            "on_failure": "stops the partition (leave-one-out: the held-out gene must survive encode/decode)"
            if blocks else "warns only (campaign: trained short for new genes; judged by generator_metrics)"})


def _metadata(result, origins, how: str, excluded: list[str], version: str, threads: dict, minutes: float) -> dict:
    from ml.plots import latent_pca_png, parity_png, png_markdown, training_curves_png

    m = result.metrics
    origin_ids = set(origins["material_id"].to_list())
    highlight = [i for i, mid in enumerate(result.train_material_ids) if mid in origin_ids]
    plots = "\n\n".join([
        png_markdown(training_curves_png(result.history), "training curves"),
        png_markdown(parity_png(result.val_predictions), "formation energy parity"),
        png_markdown(latent_pca_png(result.train_latent, highlight, label=f"origins: {how}"), "latent PCA"),
    ])
    return {
        **{k: dg.MetadataValue.float(round(m[k], 5)) for k in
           ("element_accuracy", "wyckoff_accuracy", "space_group_accuracy", "ef_mae", "ef_r2")},
        "epoch_seconds": dg.MetadataValue.float(round(m["epoch_seconds"], 3)),
        "training_minutes": dg.MetadataValue.float(round(minutes, 3)),
        "epochs": dg.MetadataValue.int(int(m["epochs"])),
        "n_train": dg.MetadataValue.int(int(m["n_train"])),
        "n_val": dg.MetadataValue.int(int(m["n_val"])),
        "excluded_material_ids": dg.MetadataValue.json(excluded),
        "origins": f"{origins.height} {how}",
        "database_version": version,
        "cpu_threads": dg.MetadataValue.json(threads),
        "checkpoint": dg.MetadataValue.path(result.checkpoint_path),
        "plots": dg.MetadataValue.md(plots),
    }
