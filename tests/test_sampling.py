"""Latent sampling: reproducible with a fixed seed; equivalent configurations merge into one gene."""

import json

import numpy as np
import polars as pl
import pytest

from ml.genes import gene_key
from ml.sampling import SamplingConfig, _pack, genes_from_decoded, sample_genes
from ml.tensors import DecodedGenes
from ml.elements import element_index
from ml.wyckoff import LETTER_INDEX


def _decoded(genes):
    """Hand-built DecodedGenes for [(slots [(element, count, {letter: n})], sg)]."""
    idx = element_index()
    n = len(genes)
    el = np.full((n, 3), -1, np.int64)
    cnt = np.zeros((n, 3), np.int64)
    let = np.zeros((n, 3, 27), np.int64)
    sg = np.zeros(n, np.int64)
    for i, (slots, g) in enumerate(genes):
        sg[i] = g
        for s, (e, c, letters) in enumerate(slots):
            el[i, s], cnt[i, s] = idx[e], c
            for letter, k in letters.items():
                let[i, s, LETTER_INDEX[letter]] = k
    return DecodedGenes(el, cnt, let, sg)


def test_equivalent_configurations_merge_and_hits_add_up():
    a = ([("Sr", 1, {"b": 1}), ("Ti", 1, {"a": 1}), ("O", 3, {"d": 1})], 221)  # Sr 1b / Ti 1a / O 3d
    b = ([("Sr", 1, {"a": 1}), ("Ti", 1, {"b": 1}), ("O", 3, {"c": 1})], 221)  # Sr 1a / Ti 1b / O 3c
    c = ([("Sr", 1, {"a": 1}), ("Ti", 1, {"a": 1}), ("O", 3, {"d": 1})], 221)  # invalid: 1a twice
    keys = _pack(_decoded([a, b, c]))
    table = genes_from_decoded(keys, np.array([5, 3, 2]), np.array([-10.0, -6.0, -2.0]), np.zeros(3))
    assert table.height == 2
    top = table.row(0, named=True)
    assert top["hits"] == 8 and top["n_configurations"] == 2
    assert top["gene_key"] == gene_key("SrTiO3", 221, {"Sr": ["1b"], "Ti": ["1a"], "O": ["3d"]})
    assert json.loads(top["wyckoff"]) == {"O": ["3d"], "Sr": ["1b"], "Ti": ["1a"]}  # the most-hit configuration
    assert top["predicted_formation_energy"] == pytest.approx(-16.0 / 8)


@pytest.fixture(scope="module")
def tiny_model(materials, tmp_path_factory):
    from ml.gene_table import build_gene_table
    from ml.pvae import PVAEConfig
    from ml.training import load_pvae, train_pvae

    rows = materials.filter(pl.col("nelements") == 3).sample(200, seed=5)
    genes, _ = build_gene_table(rows["material_id"].to_list(), rows["cif"].to_list(), processes=1)
    table = pl.DataFrame(genes, infer_schema_length=None).join(
        rows.select("material_id", "formation_energy_per_atom", "band_gap"), on="material_id")
    cfg = PVAEConfig(latent_dim=16, max_epochs=1, batch_size=64)
    result = train_pvae(table, cfg, tmp_path_factory.mktemp("tiny"), accelerator="cpu", devices=1, log=None)
    return load_pvae(result.checkpoint_path), table


def test_sampling_is_reproducible_with_a_seed(tiny_model):
    from ml.tensors import encode_table

    module, table = tiny_model
    origins = encode_table(table.head(5))
    cfg = SamplingConfig(samples_per_origin=400, noise_scale=1.4, seed=11, batch_size=512)
    first, stats = sample_genes(module, origins, cfg)
    second, _ = sample_genes(module, origins, cfg)
    assert first.equals(second)
    assert stats["latent_points"] == 2000 and int(first["hits"].sum()) == 2000
    assert first["gene_key"].n_unique() == first.height
    other, _ = sample_genes(module, origins, SamplingConfig(400, 1.4, seed=12, batch_size=512))
    assert int(other["hits"].sum()) == 2000


def test_element_constrained_decoding_keeps_to_the_allowed_elements(tiny_model):
    from pymatgen.core import Composition

    from ml.tensors import encode_table

    module, table = tiny_model
    origins = encode_table(table.head(5))
    cfg = SamplingConfig(samples_per_origin=300, noise_scale=4.0, seed=3, batch_size=512,
                         allowed_elements=("O", "Sr", "Ti"))
    genes, _ = sample_genes(module, origins, cfg)
    seen = {str(e) for f in genes["formula"].to_list() if f for e in Composition(f).elements}
    assert seen and seen <= {"O", "Sr", "Ti"}
    unconstrained, _ = sample_genes(module, origins, SamplingConfig(300, 4.0, seed=3, batch_size=512))
    seen_all = {str(e) for f in unconstrained["formula"].to_list() if f for e in Composition(f).elements}
    assert not seen_all <= {"O", "Sr", "Ti"}  # the 200 random ternaries decode to other elements
    with pytest.raises(ValueError, match="vocabulary"):
        sample_genes(module, origins, SamplingConfig(10, 1.0, allowed_elements=("Xx",)))


def test_decoded_formula_is_the_wyckoff_weighted_composition():
    from ml.tensors import decode_arrays, one_hot_space_group

    idx = element_index()
    onehot = np.zeros((1, 3, 94), np.float32)
    for s, e in enumerate(["Sr", "Ti", "O"]):
        onehot[0, s, idx[e]] = 1
    letters = np.zeros((1, 3, 27), np.float32)
    letters[0, 0, LETTER_INDEX["a"]] = 1.2  # rounds to one 1a site
    letters[0, 1, LETTER_INDEX["b"]] = 0.9
    letters[0, 2, LETTER_INDEX["c"]] = 1.0  # 3c: multiplicity 3 in Pm-3m
    wrong_counts = np.array([[0.4, 0.3, 2.2]])  # the count column rounds to 0, 0, 2
    sg = one_hot_space_group(np.array([220]))
    wyck = decode_arrays(onehot, wrong_counts, letters, sg)
    assert wyck.counts.tolist() == [[1, 1, 3]]
    raw = decode_arrays(onehot, wrong_counts, letters, sg, count_source="decoded")
    assert raw.counts.tolist() == [[0, 0, 2]]
