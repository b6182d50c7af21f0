"""Train, load and use the PVAE: plain functions a Dagster asset (or a notebook) calls.

``train_pvae(genes_df, config, checkpoint_dir)`` selects the ternary genes, trains on an 80:20
split, keeps the best checkpoint (lowest ``val/loss``) and returns a :class:`TrainResult` with the
validation metrics (fractions 0-1, E_f MAE in eV/atom), the per-epoch history, the validation
predictions and the latent means of the training genes. ``load_pvae`` restores a checkpoint;
``encode_latent`` / ``decode_latent`` map genes to latent means and latent points to genes in
batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pytorch_lightning as lightning
import torch

from ml.data import GeneDataModule
from ml.pvae import PVAEConfig, PVAEModule
from ml.tensors import (
    COUNT,
    COUNT_SCALE,
    ELEMENT,
    LETTERS,
    DecodedGenes,
    GeneArrays,
    decode_arrays,
    encode_table,
)

CHECKPOINT_NAME = "pvae-best"


@dataclass
class TrainResult:
    """What :func:`train_pvae` returns.

    ``metrics``: element_accuracy (all slots right), element_slot_accuracy (per slot, the paper's
    measure), wyckoff_accuracy, space_group_accuracy (fractions 0-1 over the validation genes,
    reconstructed from z_mean), ef_mae (eV/atom), ef_r2, gap_mae (eV, where known),
    epoch_seconds (mean wall seconds per epoch, training + validation), epoch_cpu_seconds (mean
    CPU seconds of this process per epoch: less sensitive to other load on the machine), epochs,
    n_train, n_val. ``history``: one dict per epoch (``epoch``, ``seconds``, ``cpu_seconds`` and
    every logged ``train/*``, ``val/*``).
    ``val_predictions``: material_id, formation_energy_true/pred, band_gap_true (null where
    unknown)/pred. ``train_latent``: (n_train, latent_dim) latent means of ``train_material_ids``.
    """

    checkpoint_path: str
    config: PVAEConfig
    metrics: dict[str, float]
    history: list[dict[str, float]]
    val_predictions: pl.DataFrame
    train_material_ids: list[str]
    train_latent: np.ndarray
    extra: dict = field(default_factory=dict)


class EpochLog(lightning.Callback):
    """Records every epoch's wall time and logged metrics, and reports them through ``log``."""

    def __init__(self, log: Callable[[str], None] | None = print):
        self.report = log  # not "log": Lightning assigns callback.log = module.log
        self.history: list[dict[str, float]] = []
        self._start = 0.0
        self._cpu_start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()
        self._cpu_start = time.process_time()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        seconds = time.perf_counter() - self._start
        row = {"epoch": int(trainer.current_epoch), "seconds": seconds,
               "cpu_seconds": time.process_time() - self._cpu_start,
               "torch_threads": torch.get_num_threads()}  # what this epoch ran with
        row.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        self.history.append(row)
        if self.report is not None:
            self.report(
                f"epoch {row['epoch'] + 1}/{trainer.max_epochs} {seconds:.1f}s "
                f"train/loss {row.get('train/loss', float('nan')):.3f} "
                f"val/loss {row.get('val/loss', float('nan')):.3f} "
                f"element {row.get('val/element_accuracy', float('nan')):.3f} "
                f"wyckoff {row.get('val/wyckoff_accuracy', float('nan')):.3f} "
                f"sg {row.get('val/space_group_accuracy', float('nan')):.3f} "
                f"ef_mae {row.get('val/ef_mae', float('nan')):.3f}"
            )


def select_ternaries(genes_df: pl.DataFrame) -> pl.DataFrame:
    """The genes the PVAE trains on: three elements and a known formation energy."""
    return genes_df.filter((pl.col("n_elements") == 3) & pl.col("formation_energy_per_atom").is_not_null())


def train_pvae(genes_df: pl.DataFrame, config: PVAEConfig | None, checkpoint_dir: str | Path, *,
               accelerator: str = "auto", devices="auto",
               log: Callable[[str], None] | None = print) -> TrainResult:
    """Train the PVAE on the ternary genes of ``genes_df`` (a gene table with properties)."""
    config = config or PVAEConfig()
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    table = select_ternaries(genes_df)
    if table.height < 4:
        raise ValueError(f"need at least 4 ternary genes to train, got {table.height}")
    arrays = encode_table(table)
    lightning.seed_everything(config.seed, workers=True, verbose=False)
    data = GeneDataModule(arrays, batch_size=config.batch_size, val_fraction=config.val_fraction,
                          seed=config.seed)
    module = PVAEModule(config, target_stats=data.target_stats())
    epoch_log = EpochLog(log)
    checkpoint = lightning.callbacks.ModelCheckpoint(
        dirpath=checkpoint_dir, filename=CHECKPOINT_NAME, monitor="val/loss", mode="min",
        save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False,
    )
    trainer = lightning.Trainer(
        max_epochs=config.max_epochs, accelerator=accelerator, devices=devices,
        callbacks=[epoch_log, checkpoint], logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, deterministic=False,
        default_root_dir=str(checkpoint_dir),
    )
    if log is not None:
        log(f"training PVAE on {len(data.train_index)} genes, validating on {len(data.val_index)} "
            f"({config.max_epochs} epochs, batch {config.batch_size}, latent {config.latent_dim})")
    trainer.fit(module, datamodule=data)

    best_path = checkpoint.best_model_path or str(checkpoint_dir / f"{CHECKPOINT_NAME}.ckpt")
    if not checkpoint.best_model_path:
        trainer.save_checkpoint(best_path)
    best = load_pvae(best_path)
    val = data.val_arrays
    out = reconstruct(best, val)
    metrics = reconstruction_metrics(out, val)
    history = epoch_log.history
    metrics["epoch_seconds"] = float(np.mean([h["seconds"] for h in history])) if history else 0.0
    metrics["epoch_cpu_seconds"] = float(np.mean([h["cpu_seconds"] for h in history])) if history else 0.0
    metrics.update(epochs=len(epoch_log.history), n_train=len(data.train_index), n_val=len(data.val_index))
    train = data.train_arrays
    predictions = pl.DataFrame({
        "material_id": [str(m) for m in val.material_ids],
        "formation_energy_true": val.y_ef.astype(float),
        "formation_energy_pred": out["properties"][:, 0].astype(float),
        "band_gap_true": pl.Series(np.where(val.gap_mask, val.y_gap, np.nan).astype(float)).fill_nan(None),
        "band_gap_pred": out["properties"][:, 1].astype(float),
    })
    if log is not None:
        log("validation: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return TrainResult(
        checkpoint_path=str(best_path), config=config, metrics=metrics, history=epoch_log.history,
        val_predictions=predictions, train_material_ids=[str(m) for m in train.material_ids],
        train_latent=encode_latent(best, train),
    )


def load_pvae(checkpoint_path: str | Path, map_location: str | torch.device = "cpu") -> PVAEModule:
    """A trained :class:`PVAEModule` from a checkpoint, in eval mode."""
    module = PVAEModule.load_from_checkpoint(str(checkpoint_path), map_location=map_location)
    module.eval()
    return module


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


@torch.no_grad()
def reconstruct(module: PVAEModule, arrays: GeneArrays, batch_size: int = 4096) -> dict[str, np.ndarray]:
    """Deterministic pass (z = z_mean): z_mean, recon (N, 3, 135), sg_logits, properties (raw units)."""
    module.eval()
    parts: dict[str, list[np.ndarray]] = {"z_mean": [], "recon": [], "sg_logits": [], "properties": []}
    for sl in _batches(len(arrays), batch_size):
        x = torch.as_tensor(arrays.X[sl], dtype=torch.float32, device=module.device)
        sg = torch.as_tensor(arrays.sg[sl], dtype=torch.int64, device=module.device)
        out = module(x, sg)
        parts["z_mean"].append(out.z_mean.cpu().numpy())
        parts["recon"].append(out.recon.cpu().numpy())
        parts["sg_logits"].append(out.sg_logits.cpu().numpy())
        parts["properties"].append(module.predict_properties(out.z_mean).cpu().numpy())
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in parts.items()}


def reconstruction_metrics(out: dict[str, np.ndarray], arrays: GeneArrays) -> dict[str, float]:
    """Element / Wyckoff / space-group accuracy (fractions) and property errors of a reconstruction."""
    recon = out["recon"]
    filled = arrays.element_index >= 0
    slot_ok = recon[:, :, ELEMENT].argmax(-1) == arrays.element_index
    element_ok = (slot_ok | ~filled).all(-1)
    letters_pred = np.clip(np.rint(recon[:, :, LETTERS]), 0, None)
    wyckoff_ok = (letters_pred == arrays.X[:, :, LETTERS]).all(axis=(1, 2))
    sg_ok = out["sg_logits"].argmax(-1) == arrays.sg
    ef_pred = out["properties"][:, 0]
    ef_err = ef_pred - arrays.y_ef
    ss_tot = float(((arrays.y_ef - arrays.y_ef.mean()) ** 2).sum())
    gap_err = (out["properties"][:, 1] - arrays.y_gap)[arrays.gap_mask]
    return {
        "element_accuracy": float(element_ok.mean()),
        "element_slot_accuracy": float(slot_ok[filled].mean()),
        "wyckoff_accuracy": float(wyckoff_ok.mean()),
        "space_group_accuracy": float(sg_ok.mean()),
        "ef_mae": float(np.abs(ef_err).mean()),
        "ef_r2": float(1.0 - (ef_err ** 2).sum() / ss_tot) if ss_tot > 0 else 0.0,
        "gap_mae": float(np.abs(gap_err).mean()) if len(gap_err) else float("nan"),
    }


def encode_latent(module: PVAEModule, arrays: GeneArrays, batch_size: int = 4096) -> np.ndarray:
    """(N, latent_dim) float32 latent means of the genes."""
    return reconstruct(module, arrays, batch_size)["z_mean"].astype(np.float32)


@torch.no_grad()
def decode_latent(module: PVAEModule, z: np.ndarray, batch_size: int = 8192) -> DecodedGenes:
    """Latent points (N, latent_dim) -> :class:`DecodedGenes` (argmax / rounding, in batches)."""
    module.eval()
    z = np.asarray(z, dtype=np.float32)
    elements, counts, letters, sgs = [], [], [], []
    for sl in _batches(len(z), batch_size):
        recon, sg_logits = module.net.decode(torch.as_tensor(z[sl], device=module.device))
        recon = recon.cpu().numpy()
        elements.append(recon[:, :, ELEMENT])
        counts.append(recon[:, :, COUNT] * COUNT_SCALE)
        letters.append(recon[:, :, LETTERS])
        sgs.append(sg_logits.cpu().numpy())
    if not sgs:
        empty = np.zeros((0, 3), dtype=np.int64)
        return DecodedGenes(empty, empty.copy(), np.zeros((0, 3, 27), dtype=np.int64), np.zeros(0, dtype=np.int64))
    return decode_arrays(np.concatenate(elements), np.concatenate(counts), np.concatenate(letters),
                         np.concatenate(sgs))
