"""The property-directed VAE (PVAE) of WyCryst: network, losses and the LightningModule.

* :class:`PVAENet` — the network (plain ``nn.Module``). A 1-D convolutional encoder runs along the
  135 features of the Wyckoff array with the 3 element slots as channels (the reference
  implementation's layout), a dense branch embeds the space-group one-hot, and both map to
  ``z_mean`` / ``z_logvar``. The decoder maps z back to the (3, 135) array (element logits, scaled
  count, fraction, descriptors and letter counts per slot) through dense layers (default) or the
  reference's transposed convolutions (``decoder="conv"``); a dense head gives the 230
  space-group logits. A property head maps ``z_mean`` to the standardized
  formation energy and band gap.
* :func:`wyckoff_loss` — the paper's Wyckoff loss, differentiable: the expected multiplicity of
  every letter under the decoded space-group distribution (``softmax(sg_logits) @ M``, M the
  (230, 27) multiplicity table) weights the decoded letter counts; their sum per slot must equal the
  decoded cell count of that slot.
* :class:`PVAEModule` — the LightningModule: losses, metrics, optimizer; nothing else.
* :class:`PVAEConfig` — every hyperparameter, with the paper's grid where the paper states it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from ml.encoding import N_SLOTS
from ml.pvae_config import PVAEConfig  # noqa: F401  (re-exported: ml.pvae.PVAEConfig)
from ml.tensors import (
    CONTINUOUS,
    COUNT,
    COUNT_SCALE,
    ELEMENT,
    LETTERS,
    N_ELEMENTS,
    N_FEATURES,
)
from ml.wyckoff import N_SPACE_GROUPS, multiplicity_matrix

N_PROPERTIES = 2  # formation energy per atom, band gap


class PVAEOutput(NamedTuple):
    """What :meth:`PVAENet.forward` returns (all tensors, batch first)."""

    z_mean: torch.Tensor  # (B, latent)
    z_logvar: torch.Tensor  # (B, latent)
    z: torch.Tensor  # (B, latent): sampled in training mode, z_mean otherwise
    recon: torch.Tensor  # (B, 3, 135) reconstructed Wyckoff array (element block = logits)
    sg_logits: torch.Tensor  # (B, 230)
    properties: torch.Tensor  # (B, 2) standardized formation energy, band gap


def _conv_lengths(length: int, strides) -> list[int]:
    out = [length]
    for s in strides:
        out.append(math.ceil(out[-1] / s))
    return out


class PVAENet(nn.Module):
    """Encoder, decoder and property head of the PVAE (see the module docstring)."""

    def __init__(self, config: PVAEConfig | None = None):
        super().__init__()
        c = config or PVAEConfig()
        self.latent_dim = c.latent_dim
        ch, ks, st = c.conv_channels, c.conv_kernels, c.conv_strides
        lengths = _conv_lengths(N_FEATURES, st)
        self._map_length = lengths[-1]
        self._map_channels = ch[-1]

        layers, in_ch = [], N_SLOTS
        for out_ch, k, s in zip(ch, ks, st):
            layers += [nn.Conv1d(in_ch, out_ch, k, stride=s, padding=k // 2),
                       nn.BatchNorm1d(out_ch), nn.LeakyReLU(0.2)]
            in_ch = out_ch
        self.conv_encoder = nn.Sequential(*layers, nn.Flatten(),
                                          nn.Linear(ch[-1] * lengths[-1], c.encoder_hidden), nn.ReLU())
        self.sg_encoder = nn.Sequential(nn.Linear(N_SPACE_GROUPS, c.sg_hidden[0]), nn.ReLU(),
                                        nn.Linear(c.sg_hidden[0], c.sg_hidden[1]), nn.ReLU())
        joint = c.encoder_hidden + c.sg_hidden[1]
        self.to_mean = nn.Linear(joint, c.latent_dim)
        self.to_logvar = nn.Linear(joint, c.latent_dim)

        self.decoder_kind = c.decoder
        if c.decoder == "conv":
            self.decoder_input = nn.Sequential(nn.Linear(c.latent_dim, ch[-1] * lengths[-1]), nn.ReLU())
            up: list[nn.Module] = [nn.BatchNorm1d(ch[-1])]
            targets = list(reversed((N_SLOTS,) + tuple(ch[:-1])))  # channels after each up-layer
            for i, (k, s) in enumerate(zip(reversed(ks), reversed(st))):
                up.append(nn.ConvTranspose1d(ch[-1 - i], targets[i], k, stride=s, padding=k // 2,
                                             output_padding=s - 1))
                if i < len(ks) - 1:
                    up += [nn.BatchNorm1d(targets[i]), nn.ReLU()]
            self.array_decoder = nn.Sequential(*up)
        elif c.decoder == "mlp":
            dense: list[nn.Module] = []
            width = c.latent_dim
            for h in c.decoder_hidden:
                dense += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU()]
                width = h
            self.decoder_input = nn.Sequential(*dense)
            self.array_decoder = nn.Linear(width, N_SLOTS * N_FEATURES)
        else:
            raise ValueError(f"decoder must be 'conv' or 'mlp', got {c.decoder!r}")
        self.sg_decoder = nn.Sequential(nn.Linear(c.latent_dim, c.sg_decoder_hidden), nn.ReLU(),
                                        nn.Linear(c.sg_decoder_hidden, N_SPACE_GROUPS))
        self.property_head = nn.Sequential(
            nn.Linear(c.latent_dim, c.property_hidden[0]), nn.ReLU(),
            nn.Linear(c.property_hidden[0], c.property_hidden[1]), nn.ReLU(),
            nn.Linear(c.property_hidden[1], N_PROPERTIES),
        )

    def encode(self, x: torch.Tensor, sg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, 135) arrays and (B,) space-group indices 0..229 -> (z_mean, z_logvar)."""
        sg_onehot = F.one_hot(sg, N_SPACE_GROUPS).to(x.dtype)
        h = torch.cat([self.conv_encoder(x), self.sg_encoder(sg_onehot)], dim=1)
        return self.to_mean(h), self.to_logvar(h)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, latent) -> reconstructed (B, 3, 135) arrays and (B, 230) space-group logits."""
        h = self.decoder_input(z)
        if self.decoder_kind == "conv":
            recon = self.array_decoder(h.view(-1, self._map_channels, self._map_length))[:, :, :N_FEATURES]
        else:
            recon = self.array_decoder(h).view(-1, N_SLOTS, N_FEATURES)
        return recon, self.sg_decoder(z)

    def predict_properties(self, z_mean: torch.Tensor) -> torch.Tensor:
        return self.property_head(z_mean)

    def forward(self, x: torch.Tensor, sg: torch.Tensor) -> PVAEOutput:
        z_mean, z_logvar = self.encode(x, sg)
        if self.training:
            z = z_mean + torch.randn_like(z_mean) * torch.exp(0.5 * z_logvar)
        else:
            z = z_mean
        recon, sg_logits = self.decode(z)
        return PVAEOutput(z_mean, z_logvar, z, recon, sg_logits, self.predict_properties(z_mean))


def wyckoff_loss(sg_logits: torch.Tensor, letter_counts: torch.Tensor, cell_counts: torch.Tensor,
                 multiplicity: torch.Tensor, count_scale: float = COUNT_SCALE) -> torch.Tensor:
    """Differentiable Wyckoff loss: mean over genes of the summed squared slot mismatch.

    ``sg_logits`` (B, 230); ``letter_counts`` (B, 3, 27) decoded sites per letter; ``cell_counts``
    (B, 3) decoded atoms per slot; ``multiplicity`` (230, 27) float table. Per slot the
    Wyckoff-weighted count is ``sum_l E[m_l] * n_l`` with ``E[m] = softmax(sg_logits) @ M``;
    the mismatch to ``cell_counts`` is divided by ``count_scale`` (the count column's scale) so the
    loss lives in the units of the reconstruction MSE. Zero for a valid gene fed exactly (a sharp
    space-group distribution), positive when multiplicities do not reproduce the counts.
    """
    expected_multiplicity = torch.softmax(sg_logits, dim=-1) @ multiplicity  # (B, 27)
    wyckoff_counts = (letter_counts * expected_multiplicity[:, None, :]).sum(-1)  # (B, 3)
    return (((wyckoff_counts - cell_counts) / count_scale) ** 2).sum(-1).mean()


def kl_divergence(z_mean: torch.Tensor, z_logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) summed over latent dimensions, mean over the batch."""
    return (-0.5 * (1 + z_logvar - z_mean.pow(2) - z_logvar.exp())).sum(-1).mean()


class Batch(NamedTuple):
    """One batch as the DataModule yields it."""

    x: torch.Tensor  # (B, 3, 135) float32
    sg: torch.Tensor  # (B,) int64, 0..229
    element_index: torch.Tensor  # (B, 3) int64, -1 for an empty slot
    y: torch.Tensor  # (B, 2) float32 formation energy, band gap (raw units; gap 0 where unknown)
    gap_mask: torch.Tensor  # (B,) bool


class PVAEModule(pl.LightningModule):
    """Losses, metrics and optimizer of the PVAE around a :class:`PVAENet`.

    ``target_stats`` = (ef_mean, ef_std, gap_mean, gap_std) of the training targets; the property
    head learns standardized targets and :meth:`predict_properties` returns raw units.
    Validation metrics reconstruct from ``z_mean`` (no sampling): ``val/element_accuracy`` (all
    slot elements right), ``val/wyckoff_accuracy`` (every letter count of every slot right after
    rounding), ``val/element_slot_accuracy`` (per filled slot, the paper's Table 2 measure),
    ``val/space_group_accuracy``, ``val/ef_mae`` (eV/atom), plus every loss term.
    """

    def __init__(self, config: dict | PVAEConfig | None = None,
                 target_stats: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0)):
        super().__init__()
        if isinstance(config, PVAEConfig):
            config = config.to_dict()
        self.config = PVAEConfig.from_dict(config or {})
        self.save_hyperparameters({"config": self.config.to_dict(),
                                   "target_stats": [float(v) for v in target_stats]})
        self.net = PVAENet(self.config)
        self.register_buffer("multiplicity", torch.as_tensor(multiplicity_matrix(), dtype=torch.float32),
                             persistent=False)
        ef_mean, ef_std, gap_mean, gap_std = target_stats
        self.register_buffer("target_mean", torch.tensor([ef_mean, gap_mean], dtype=torch.float32))
        self.register_buffer("target_std", torch.tensor([max(ef_std, 1e-6), max(gap_std, 1e-6)],
                                                        dtype=torch.float32))

    # -- the network's outputs in raw units -------------------------------------------------
    def forward(self, x: torch.Tensor, sg: torch.Tensor) -> PVAEOutput:
        return self.net(x, sg)

    def predict_properties(self, z_mean: torch.Tensor) -> torch.Tensor:
        """(B, latent) -> (B, 2) formation energy (eV/atom) and band gap (eV)."""
        return self.net.predict_properties(z_mean) * self.target_std + self.target_mean

    # -- losses ----------------------------------------------------------------------------
    def losses(self, batch: Batch, out: PVAEOutput) -> dict[str, torch.Tensor]:
        c = self.config
        x, recon = batch.x, out.recon
        recon_mse = (recon[:, :, CONTINUOUS] - x[:, :, CONTINUOUS]).pow(2).sum((1, 2)).mean()
        element_ce = F.cross_entropy(recon[:, :, ELEMENT].reshape(-1, N_ELEMENTS),
                                     batch.element_index.reshape(-1), ignore_index=-1,
                                     reduction="sum") / x.shape[0]
        sg_ce = F.cross_entropy(out.sg_logits, batch.sg)
        kl = kl_divergence(out.z_mean, out.z_logvar)
        y_std = (batch.y - self.target_mean) / self.target_std
        err = (out.properties - y_std).pow(2)
        gap_known = batch.gap_mask.to(err.dtype)
        prop = err[:, 0].mean() + (err[:, 1] * gap_known).sum() / gap_known.sum().clamp(min=1.0)
        wyck = wyckoff_loss(out.sg_logits, recon[:, :, LETTERS], recon[:, :, COUNT] * COUNT_SCALE,
                            self.multiplicity)
        total = (c.recon_weight * recon_mse + c.element_weight * element_ce + c.sg_weight * sg_ce
                 + c.kl_weight * kl + c.property_weight * prop + c.wyckoff_weight * wyck)
        return {"loss": total, "recon_mse": recon_mse, "element_ce": element_ce, "sg_ce": sg_ce,
                "kl": kl, "property_mse": prop, "wyckoff_loss": wyck}

    def metrics(self, batch: Batch, out: PVAEOutput) -> dict[str, torch.Tensor]:
        """Reconstruction accuracies (fractions) and the E_f MAE of one batch."""
        recon = out.recon
        filled = batch.element_index >= 0
        el_pred = recon[:, :, ELEMENT].argmax(-1)
        element_ok = ((el_pred == batch.element_index) | ~filled).all(-1)
        letters_ok = (recon[:, :, LETTERS].round().clamp(min=0) == batch.x[:, :, LETTERS]).all(-1).all(-1)
        sg_ok = out.sg_logits.argmax(-1) == batch.sg
        ef_pred = self.predict_properties(out.z_mean)[:, 0]
        return {
            "element_accuracy": element_ok.float().mean(),
            "element_slot_accuracy": (el_pred == batch.element_index)[filled].float().mean(),
            "wyckoff_accuracy": letters_ok.float().mean(),
            "space_group_accuracy": sg_ok.float().mean(),
            "ef_mae": (ef_pred - batch.y[:, 0]).abs().mean(),
        }

    # -- Lightning hooks ---------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        batch = Batch(*batch)
        out = self(batch.x, batch.sg)
        losses = self.losses(batch, out)
        n = batch.x.shape[0]
        self.log("train/loss", losses["loss"], on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        for k, v in losses.items():
            if k != "loss":
                self.log(f"train/{k}", v, on_step=False, on_epoch=True, batch_size=n)
        return losses["loss"]

    def validation_step(self, batch, batch_idx):
        batch = Batch(*batch)
        out = self(batch.x, batch.sg)
        n = batch.x.shape[0]
        for k, v in self.losses(batch, out).items():
            self.log(f"val/{k}", v, on_step=False, on_epoch=True, prog_bar=(k == "loss"), batch_size=n)
        for k, v in self.metrics(batch, out).items():
            self.log(f"val/{k}", v, on_step=False, on_epoch=True, prog_bar=(k == "element_accuracy"),
                     batch_size=n)

    def configure_optimizers(self):
        c = self.config
        optimizer = torch.optim.AdamW(self.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        total_steps = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 0
        if total_steps <= 0:
            return optimizer
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=c.lr, total_steps=total_steps,
                                                        pct_start=0.15)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
