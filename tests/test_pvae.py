"""PVAE: gene arrays round trip, Wyckoff loss, a tiny training run, decoding, plots (CPU, fast).

The genes come from the first rows of the real snapshot through ``build_gene_table``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from ml.gene_table import build_gene_table
from ml.genes import GeneError, validate_gene, wyckoff_json
from ml.pvae import PVAEConfig, PVAEModule, PVAENet, wyckoff_loss
from ml.tensors import (
    COUNT,
    COUNT_SCALE,
    LETTERS,
    N_FEATURES,
    DecodedGenes,
    decode_arrays,
    decoded_to_genes,
    encode_table,
    one_hot_space_group,
    slot_parts,
)
from ml.wyckoff import multiplicity_matrix

SHARED_DATA = Path(os.environ.get("WYCRYST_SHARED_DATA",
                                  Path(__file__).resolve().parents[1].parent / "shared" / "data"))
SNAPSHOT = SHARED_DATA / "mp_snapshot" / "materials.parquet"
N_ROWS = 400


@pytest.fixture(scope="module")
def genes() -> pl.DataFrame:
    """Gene table (with properties) of the first N_ROWS snapshot materials, up to 3 elements."""
    if not SNAPSHOT.exists():
        pytest.skip(f"snapshot not found at {SNAPSHOT} (set WYCRYST_SHARED_DATA)")
    df = pl.read_parquet(SNAPSHOT).head(N_ROWS)
    rows, _ = build_gene_table(df["material_id"].to_list(), df["cif"].to_list(), processes=1)
    table = pl.DataFrame(rows, infer_schema_length=None).join(
        df.select("material_id", "formation_energy_per_atom", "band_gap"), on="material_id")
    return table.filter(pl.col("element_index").is_not_null())


@pytest.fixture(scope="module")
def trained(genes, tmp_path_factory):
    from ml.training import train_pvae

    config = PVAEConfig(latent_dim=32, max_epochs=2, batch_size=64, encoder_hidden=64,
                        conv_channels=(8, 16, 16), sg_hidden=(32, 32), sg_decoder_hidden=64,
                        decoder_hidden=(64,), seed=3)
    lines: list[str] = []
    result = train_pvae(genes, config, tmp_path_factory.mktemp("ckpt"), accelerator="cpu",
                        devices=1, log=lines.append)
    return result, lines


def test_encode_table_shapes_and_columns(genes):
    arrays = encode_table(genes)
    n = genes.height
    assert arrays.X.shape == (n, 3, N_FEATURES) and arrays.X.dtype == np.float32
    assert arrays.sg.dtype == np.int64 and arrays.sg.shape == (n,)
    counts = np.array(genes["element_count"].to_list(), dtype=float)
    np.testing.assert_allclose(arrays.X[:, :, COUNT] * COUNT_SCALE, counts)
    letters = np.array(genes["wyckoff_letter_counts"].to_list()).reshape(n, 3, 27)
    np.testing.assert_array_equal(arrays.X[:, :, LETTERS], letters)
    assert (arrays.gap_mask == genes["band_gap"].is_not_null().to_numpy()).all()
    assert list(arrays.material_ids) == genes["material_id"].to_list()
    # one-hot rows: exactly one 1 per filled slot, none for an empty slot
    assert (arrays.X[:, :, :94].sum(-1) == (arrays.element_index >= 0)).all()


def test_round_trip_is_exact_for_valid_genes(genes):
    table = genes.filter(pl.col("n_elements") <= 3)
    assert table.filter(pl.col("n_elements") == 3).height >= 100
    arrays = encode_table(table)
    parts = slot_parts(arrays.X)
    decoded = decode_arrays(parts.element, parts.counts, parts.letter_counts, one_hot_space_group(arrays.sg))
    out = decoded_to_genes(decoded)
    assert len(out) == table.height
    for (formula, sg, wyckoff), row in zip(out, table.iter_rows(named=True)):
        assert formula == row["formula"]
        assert sg == row["space_group"]
        assert wyckoff_json(wyckoff) == row["wyckoff"]
        validate_gene(formula, sg, wyckoff)  # and it is a valid gene


def test_decoded_invalid_rows_are_still_returned():
    mult = multiplicity_matrix()
    sg = 221  # Pm-3m: a (1), b (1), c (3), d (3) ...
    letters = np.zeros((1, 3, 27), dtype=np.int64)
    letters[0, 0, 0] = 2  # Ca on 1a twice: a DoF-0 site occupied twice
    letters[0, 1, 1] = 1
    letters[0, 2, 2] = 1
    decoded = DecodedGenes(np.array([[19, 21, 7]]), np.array([[2, 1, 3]]), letters, np.array([sg]))
    ((formula, space_group, wyckoff),) = decoded_to_genes(decoded)
    assert space_group == sg and wyckoff["Ca"] == [f"{mult[sg - 1, 0]}a"] * 2
    with pytest.raises(GeneError):
        validate_gene(formula, space_group, wyckoff)


def _true_parts(arrays):
    parts = slot_parts(arrays.X)
    sg_logits = torch.as_tensor(one_hot_space_group(arrays.sg)) * 100.0  # a sharp distribution
    return (sg_logits, torch.as_tensor(parts.letter_counts), torch.as_tensor(parts.counts),
            torch.as_tensor(multiplicity_matrix(), dtype=torch.float32))


def test_wyckoff_loss_zero_for_valid_positive_for_broken(genes):
    arrays = encode_table(genes.filter(pl.col("n_elements") == 3))
    sg_logits, letters, counts, mult = _true_parts(arrays)
    assert float(wyckoff_loss(sg_logits, letters, counts, mult)) < 1e-8

    broken = letters.clone()
    broken[:, 0, :] *= 2  # every first slot claims twice its sites: multiplicities no longer match
    assert float(wyckoff_loss(sg_logits, broken, counts, mult)) > 0.1
    wrong_sg = torch.roll(sg_logits, 1, dims=1)  # wrong space group -> wrong multiplicities
    assert float(wyckoff_loss(wrong_sg, letters, counts, mult)) > 0.0

    # differentiable in letters, counts and the space-group logits
    letters.requires_grad_(True)
    counts = counts.clone().requires_grad_(True)
    logits = wrong_sg.clone().requires_grad_(True)
    wyckoff_loss(logits, letters, counts, mult).backward()
    assert letters.grad is not None and counts.grad is not None and logits.grad is not None


def test_network_shapes():
    config = PVAEConfig(latent_dim=16, encoder_hidden=32, conv_channels=(4, 8, 8), decoder_hidden=(32,))
    for decoder in ("mlp", "conv"):
        config.decoder = decoder
        net = PVAENet(config).eval()
        out = net(torch.zeros(5, 3, N_FEATURES), torch.zeros(5, dtype=torch.int64))
        assert out.recon.shape == (5, 3, N_FEATURES)
        assert out.sg_logits.shape == (5, 230)
        assert out.z_mean.shape == out.z_logvar.shape == (5, 16)
        assert out.properties.shape == (5, 2)


def test_tiny_training_writes_loadable_checkpoint(trained):
    from ml.training import load_pvae

    result, lines = trained
    assert Path(result.checkpoint_path).is_file()
    module = load_pvae(result.checkpoint_path)
    assert isinstance(module, PVAEModule) and module.config.latent_dim == 32
    for key in ("element_accuracy", "element_slot_accuracy", "wyckoff_accuracy", "space_group_accuracy"):
        assert 0.0 <= result.metrics[key] <= 1.0
    assert result.metrics["ef_mae"] >= 0 and result.metrics["epoch_seconds"] > 0
    assert len(result.history) == 2 and "val/loss" in result.history[-1]
    assert sum(line.startswith("epoch") for line in lines) == 2
    assert result.val_predictions.height == result.metrics["n_val"]
    assert result.train_latent.shape == (result.metrics["n_train"], 32)
    assert len(result.train_material_ids) == result.metrics["n_train"]


def test_decoding_trained_model_yields_genes(trained, genes):
    from ml.training import decode_latent, encode_latent, load_pvae

    result, _ = trained
    module = load_pvae(result.checkpoint_path)
    arrays = encode_table(genes.filter(pl.col("n_elements") == 3))
    z = encode_latent(module, arrays)
    assert z.shape == (len(arrays), 32) and z.dtype == np.float32
    samples = z[:50] + np.random.default_rng(0).normal(0, 0.5, size=(50, 32)).astype(np.float32)
    decoded = decode_latent(module, samples)
    assert len(decoded) == 50 and ((decoded.space_group >= 1) & (decoded.space_group <= 230)).all()
    out = decoded_to_genes(decoded)
    assert len(out) == 50
    for formula, sg, wyckoff in out:
        assert isinstance(formula, str) and 1 <= sg <= 230 and isinstance(wyckoff, dict)
        json.dumps(wyckoff)


def test_plots_are_png(trained):
    from ml.plots import latent_pca_png, parity_png, png_markdown, training_curves_png

    result, _ = trained
    preds = result.val_predictions
    for png in (training_curves_png(result.history),
                parity_png(preds["formation_energy_true"], preds["formation_energy_pred"]),
                parity_png(preds),
                latent_pca_png(result.train_latent, [0, 1, 2], label="origins",
                               color=np.arange(len(result.train_latent)), extra=result.train_latent[:5] + 0.1)):
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert png_markdown(b"\x89PNG", "x").startswith("![x](data:image/png;base64,")


def test_ml_pvae_does_not_import_dagster():
    code = ("import sys, ml.pvae, ml.training, ml.data, ml.tensors, ml.plots; "
            "sys.exit(any(m == 'dagster' or m.startswith('dagster') for m in sys.modules))")
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0
