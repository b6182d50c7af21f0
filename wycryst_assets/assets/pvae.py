"""``pvae_model``: one property-directed VAE per target partition, trained leave-one-out."""

import json
import time

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from ml.origins import origin_genes
from ml.pvae import PVAEConfig
from ml.targets import TargetError, loo_excluded_ids
from wycryst_assets import settings
from wycryst_assets.assets.genes import wyckoff_genes
from wycryst_assets.partitions import current_registry, targets_partitions
from wycryst_assets.warehouse import read_table

# Reconstruction far below the paper (element 99.9 %, SG 91.8 %) fails the partition.
MIN_ELEMENT_ACCURACY = 0.95
MIN_SPACE_GROUP_ACCURACY = 0.80


class TrainingDevice(dg.ConfigurableResource):
    """Where the PVAE trains: Lightning's ``accelerator``/``devices`` (``auto`` takes a GPU when
    one is visible, else the CPU); ``torch_threads`` caps CPU threads (0 = torch's default)."""

    accelerator: str = "auto"
    devices: str = "auto"
    torch_threads: int = 0


class PVAEModelConfig(dg.Config):
    """Training hyperparameters; defaults are ml.pvae.PVAEConfig's, tuned on the shared snapshot
    (benchmarks/pvae_benchmark.py). Paper's grid: latent 64/128/256/512 -> 256, lr 4e-4..1e-5,
    batch 64..512, epochs 64..256."""

    latent_dim: int = PVAEConfig.latent_dim
    max_epochs: int = PVAEConfig.max_epochs
    batch_size: int = PVAEConfig.batch_size
    lr: float = PVAEConfig.lr
    kl_weight: float = PVAEConfig.kl_weight
    property_weight: float = PVAEConfig.property_weight
    wyckoff_weight: float = PVAEConfig.wyckoff_weight
    seed: int = PVAEConfig.seed


def model_dir(target: str):
    return settings.artifacts_dir() / "pvae_model" / target


@dg.asset(
    group_name="pvae",
    kinds={"pytorch", "lightning"},
    partitions_def=targets_partitions,
    deps=[wyckoff_genes],
    pool="training",
    code_version="1",
    check_specs=[dg.AssetCheckSpec("reconstruction_quality", asset="pvae_model", blocking=True,
                                   description=f"element accuracy >= {MIN_ELEMENT_ACCURACY}, "
                                   f"space-group accuracy >= {MIN_SPACE_GROUP_ACCURACY} on validation")],
    description="PVAE (PyTorch Lightning) trained on the ternary genes with this partition's target "
    "gene and its equivalent configurations left out; checkpoint + model.json under "
    "$WYCRYST_HOME/artifacts/pvae_model/<target>/.",
)
def pvae_model(context: dg.AssetExecutionContext, config: PVAEModelConfig, warehouse: DuckDBResource,
               training_device: TrainingDevice):
    import torch

    from ml.model_groups import train_target_model
    from ml.plots import latent_pca_png, parity_png, png_markdown, training_curves_png

    key = context.partition_key
    try:
        registry = current_registry()
        target = registry.get(key)
    except TargetError as exc:
        raise dg.Failure(str(exc)) from exc
    if training_device.torch_threads:
        torch.set_num_threads(training_device.torch_threads)
    with warehouse.get_connection() as conn:
        genes = read_table(conn, "SELECT * FROM wyckoff_genes WHERE n_elements = 3")
    if genes.is_empty():
        raise dg.Failure("no ternary genes in wyckoff_genes: materialize it first")
    version = genes["database_version"][0]
    excluded = loo_excluded_ids(genes, target)
    context.log.info(f"{key} ({target.task}): leaving out {len(excluded)} material(s) {excluded}"
                     + (f"; model group {target.model_group!r}" if target.model_group else ""))
    cfg = PVAEConfig(latent_dim=config.latent_dim, max_epochs=config.max_epochs, batch_size=config.batch_size,
                     lr=config.lr, kl_weight=config.kl_weight, property_weight=config.property_weight,
                     wyckoff_weight=config.wyckoff_weight, seed=config.seed)
    out_dir = model_dir(key)
    start = time.perf_counter()
    trained = train_target_model(genes, registry, target, cfg, out_dir, settings.artifacts_dir() / "pvae_model_groups",
                                 database_version=version, accelerator=training_device.accelerator,
                                 devices=training_device.devices, log=context.log.info)
    result = trained.result
    train = genes.filter(~pl.col("material_id").is_in(trained.training_excluded_ids))
    minutes = (time.perf_counter() - start) / 60
    m = result.metrics
    origins, how = origin_genes(train, target)
    manifest = {
        "target": key, "task": target.task, "database_version": version,
        "checkpoint": result.checkpoint_path, "config": cfg.to_dict(), "metrics": m,
        "excluded_material_ids": excluded, "n_origins": origins.height, "origins": how,
        "model_group": trained.group, "group_members": trained.members, "reused_group_model": trained.reused,
        "training_excluded_material_ids": trained.training_excluded_ids,
    }
    (out_dir / "model.json").write_text(json.dumps(manifest, indent=2, default=str))

    origin_ids = set(origins["material_id"].to_list())
    highlight = [i for i, mid in enumerate(result.train_material_ids) if mid in origin_ids]
    plots = "\n\n".join([
        png_markdown(training_curves_png(result.history), "training curves"),
        png_markdown(parity_png(result.val_predictions), "formation energy parity"),
        png_markdown(latent_pca_png(result.train_latent, highlight, label=f"origins: {how}"), "latent PCA"),
    ])
    passed = m["element_accuracy"] >= MIN_ELEMENT_ACCURACY and m["space_group_accuracy"] >= MIN_SPACE_GROUP_ACCURACY
    return dg.MaterializeResult(
        data_version=dg.DataVersion(f"{version}:{key}:{cfg.seed}"),
        metadata={
            "element_accuracy": dg.MetadataValue.float(round(m["element_accuracy"], 5)),
            "wyckoff_accuracy": dg.MetadataValue.float(round(m["wyckoff_accuracy"], 5)),
            "space_group_accuracy": dg.MetadataValue.float(round(m["space_group_accuracy"], 5)),
            "ef_mae": dg.MetadataValue.float(round(m["ef_mae"], 5)),
            "ef_r2": dg.MetadataValue.float(round(m["ef_r2"], 5)),
            "epoch_seconds": dg.MetadataValue.float(round(m["epoch_seconds"], 3)),
            "training_minutes": dg.MetadataValue.float(round(minutes, 3)),
            "epochs": dg.MetadataValue.int(int(m["epochs"])),
            "n_train": dg.MetadataValue.int(int(m["n_train"])),
            "n_val": dg.MetadataValue.int(int(m["n_val"])),
            "excluded_material_ids": dg.MetadataValue.json(excluded),
            "model_group": f"{trained.group} ({len(trained.members)} members, "
            f"{'reused' if trained.reused else 'trained'}; {len(trained.training_excluded_ids)} left out)"
            if trained.group else "none (own model)",
            "origins": f"{origins.height} {how}",
            "database_version": version,
            "checkpoint": dg.MetadataValue.path(result.checkpoint_path),
            "plots": dg.MetadataValue.md(plots),
        },
        check_results=[dg.AssetCheckResult(
            check_name="reconstruction_quality", passed=bool(passed),
            metadata={"element_accuracy": m["element_accuracy"], "space_group_accuracy": m["space_group_accuracy"],
                      "min_element_accuracy": MIN_ELEMENT_ACCURACY, "min_space_group_accuracy": MIN_SPACE_GROUP_ACCURACY},
        )],
    )
