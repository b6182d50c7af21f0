"""The PVAE's data: :class:`GeneArrays` -> seeded 80:20 train/validation DataLoaders."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from ml.tensors import GeneArrays


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random permutation of ``range(n)`` cut into (train, validation) index arrays."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    if n > 1:
        n_val = min(max(n_val, 1), n - 1)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def tensor_dataset(arrays: GeneArrays) -> TensorDataset:
    """The tensors of :class:`ml.pvae.Batch`: x, sg, element_index, y (E_f, gap), gap_mask."""
    y = np.stack([arrays.y_ef, arrays.y_gap], axis=1).astype(np.float32)
    return TensorDataset(
        torch.from_numpy(np.ascontiguousarray(arrays.X, dtype=np.float32)),
        torch.from_numpy(arrays.sg.astype(np.int64)),
        torch.from_numpy(arrays.element_index.astype(np.int64)),
        torch.from_numpy(y),
        torch.from_numpy(arrays.gap_mask.astype(bool)),
    )


class GeneDataModule(pl.LightningDataModule):
    """Train/validation split (``1 - val_fraction`` : ``val_fraction``, default 80:20) of genes.

    The split depends only on ``seed`` (``seed_everything(seed, workers=True)`` is called in
    :meth:`setup` so shuffling and sampling are reproducible too). Loaders run in-process
    (``num_workers=0``): the whole table is a few MB of tensors.
    """

    def __init__(self, arrays: GeneArrays, batch_size: int = 256, val_fraction: float = 0.2,
                 seed: int = 21):
        super().__init__()
        self.arrays = arrays
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.train_index, self.val_index = split_indices(len(arrays), val_fraction, seed)

    @property
    def train_arrays(self) -> GeneArrays:
        return self.arrays.subset(self.train_index)

    @property
    def val_arrays(self) -> GeneArrays:
        return self.arrays.subset(self.val_index)

    def target_stats(self) -> tuple[float, float, float, float]:
        """(ef_mean, ef_std, gap_mean, gap_std) over the training split (gap where known)."""
        a = self.train_arrays
        gap = a.y_gap[a.gap_mask]
        return (float(a.y_ef.mean()), float(a.y_ef.std() or 1.0),
                float(gap.mean()) if len(gap) else 0.0, float(gap.std() or 1.0) if len(gap) else 1.0)

    def setup(self, stage: str | None = None) -> None:
        pl.seed_everything(self.seed, workers=True, verbose=False)
        self._train = tensor_dataset(self.train_arrays)
        self._val = tensor_dataset(self.val_arrays)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._train, batch_size=self.batch_size, shuffle=True, num_workers=0,
                          drop_last=len(self._train) > self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._val, batch_size=1024, shuffle=False, num_workers=0)
