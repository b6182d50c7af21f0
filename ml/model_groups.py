"""Leave-group-out PVAE training: one model serves every target of a registry ``model_group``.

N leave-one-out trainings are hours on two cores. For a benchmark of many targets the registry
can put them in one ``model_group``: the group's model is trained once with *every* member's gene
and equivalent configurations left out (no member is seen in training, so each partition is still
an honest leave-one-out), and each member's ``pvae_model`` partition reuses it. A target without
a ``model_group`` keeps its own model (the default).

The group's training is cached under ``<groups_dir>/<group>/<cache key>/``; the key is a digest
of the group name, the sorted excluded material ids, the data version and the training config,
so a changed member list, snapshot or hyperparameter trains anew and anything else reuses it.
The cache entry holds the checkpoint and everything :class:`ml.training.TrainResult` carries
(metrics, history, validation predictions, training latents), written last-file-last
(``done.json``) so a killed training is never taken for a finished one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from ml.pvae import PVAEConfig
from ml.targets import Registry, Target, loo_excluded_ids


@dataclass
class TargetModel:
    """What :func:`train_target_model` returns."""

    result: object  # ml.training.TrainResult
    training_excluded_ids: list[str]  # left out of training: the target's own, or the whole group's
    group: str | None
    members: list[str]  # partitions of the group (just the target without a group)
    reused: bool  # the group's cached model was loaded, not trained
    cache_dir: str | None
    training_genes: pl.DataFrame | None = None  # the genes the model was trained on (origins come from them)


def group_fields(trained: TargetModel) -> dict:
    """The group's part of a partition's ``model.json``."""
    return {"model_group": trained.group, "group_members": trained.members, "reused_group_model": trained.reused,
            "training_excluded_material_ids": trained.training_excluded_ids}


def group_text(trained: TargetModel) -> str:
    """One line for the asset's metadata, e.g. ``bench (30 members, reused; 41 left out)``."""
    if not trained.group:
        return "none (own model)"
    return (f"{trained.group} ({len(trained.members)} members, {'reused' if trained.reused else 'trained'}; "
            f"{len(trained.training_excluded_ids)} left out)")


def synthesizability_scope(manifest: dict, partition: str) -> tuple[str, list[str]]:
    """(cache name, material ids left out) of the synthesizability classifier a partition scores
    with, from its ``model.json``: a model group's partitions share one classifier trained without
    every member (like the group's PVAE); any other partition its own, without its held-out ids."""
    if manifest.get("model_group"):
        return (f"group-{_safe(manifest['model_group'])}",
                sorted(manifest.get("training_excluded_material_ids") or manifest["excluded_material_ids"]))
    return partition, sorted(manifest["excluded_material_ids"])


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``<directory>.lock``: two runs of one group (the run queue runs
    two at a time) train it once, the second waits and then reuses it."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f"{directory.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def group_members(registry: Registry, target: Target) -> list[Target]:
    """Targets sharing ``target``'s model group (itself included), by partition; [target] without one."""
    group = target.model_group
    if not group:
        return [target]
    members = [t for t in registry.targets.values() if t.model_group == group]
    if target.partition not in {t.partition for t in members}:
        members.append(target)
    return sorted(members, key=lambda t: t.partition)


def training_exclusion(genes: pl.DataFrame, registry: Registry, target: Target) -> tuple[list[str], list[str]]:
    """(material ids left out of training, member partitions): the union of every group member's
    :func:`ml.targets.loo_excluded_ids` (just the target's own without a group)."""
    members = group_members(registry, target)
    ids: set[str] = set()
    for member in members:
        ids.update(loo_excluded_ids(genes, member))
    return sorted(ids), [m.partition for m in members]


def group_cache_key(group: str, excluded_ids, database_version: str, config: dict) -> str:
    text = json.dumps({"group": group, "excluded": sorted(excluded_ids), "database_version": str(database_version),
                       "config": config}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def save_train_result(result, directory: Path, stamp: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "metrics.json").write_text(json.dumps(
        {"metrics": result.metrics, "history": result.history, "config": result.config.to_dict(),
         "checkpoint": Path(result.checkpoint_path).name, "extra": result.extra}, default=str))
    result.val_predictions.write_parquet(directory / "val_predictions.parquet")
    (directory / "train_material_ids.json").write_text(json.dumps(list(result.train_material_ids)))
    np.save(directory / "train_latent.npy", np.asarray(result.train_latent))
    (directory / "done.json").write_text(json.dumps(stamp, sort_keys=True, default=str))


def load_train_result(directory: Path):
    from ml.training import TrainResult

    meta = json.loads((directory / "metrics.json").read_text())
    return TrainResult(
        checkpoint_path=str(directory / meta["checkpoint"]), config=PVAEConfig.from_dict(meta["config"]),
        metrics=meta["metrics"], history=meta["history"],
        val_predictions=pl.read_parquet(directory / "val_predictions.parquet"),
        train_material_ids=json.loads((directory / "train_material_ids.json").read_text()),
        train_latent=np.load(directory / "train_latent.npy"), extra=meta.get("extra") or {},
    )


def cached_result(directory: Path, stamp: dict):
    """The cached TrainResult when ``directory`` holds a finished training with this stamp, else None."""
    done = directory / "done.json"
    if not done.is_file():
        return None
    try:
        if json.loads(done.read_text()) != json.loads(json.dumps(stamp, sort_keys=True, default=str)):
            return None
        result = load_train_result(directory)
    except (OSError, ValueError, KeyError):
        return None
    return result if Path(result.checkpoint_path).is_file() else None


def train_target_model(genes: pl.DataFrame, registry: Registry, target: Target, config: PVAEConfig,
                       model_dir: Path, groups_dir: Path, *, database_version: str,
                       train: Callable | None = None, log: Callable[[str], None] | None = print,
                       **train_kwargs) -> TargetModel:
    """Train (or reuse) the PVAE that serves ``target``'s partition.

    Without a ``model_group``: trained into ``model_dir`` with the target's own LOO exclusion,
    exactly as before. With one: the group's cached model (see module docstring), trained once
    with every member left out. ``train`` defaults to :func:`ml.training.train_pvae`; ``genes``
    is the ternary gene table (with properties) before any exclusion."""
    if train is None:
        from ml.training import train_pvae as train
    Path(model_dir).mkdir(parents=True, exist_ok=True)  # the partition's model.json lives there either way
    excluded, members = training_exclusion(genes, registry, target)
    remaining = genes.filter(~pl.col("material_id").is_in(excluded))
    if not target.model_group:
        result = train(remaining, config, model_dir, log=log, **train_kwargs)
        return TargetModel(result, excluded, None, members, False, None, remaining)
    stamp = {"group": target.model_group, "excluded_material_ids": excluded,
             "database_version": str(database_version), "config": config.to_dict()}
    key = group_cache_key(target.model_group, excluded, database_version, config.to_dict())
    directory = Path(groups_dir) / _safe(target.model_group) / key
    with _exclusive(directory):
        cached = cached_result(directory, stamp)
        if cached is not None:
            if log:
                log(f"model group {target.model_group!r}: reusing {directory} ({len(members)} members, "
                    f"{len(excluded)} materials left out)")
            return TargetModel(cached, excluded, target.model_group, members, True, str(directory), remaining)
        if log:
            log(f"model group {target.model_group!r}: training once for {len(members)} members, "
                f"{len(excluded)} materials left out -> {directory}")
        (directory / "done.json").unlink(missing_ok=True)
        result = train(remaining, config, directory, log=log, **train_kwargs)
        save_train_result(result, directory, stamp)
    return TargetModel(result, excluded, target.model_group, members, False, str(directory), remaining)
