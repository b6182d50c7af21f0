"""Latent sampling: reproducible with a fixed seed; equivalent configurations merge into one gene;
the fast path (ml.latent_decode + ml.decoded_genes) gives the reference path's table."""

import json

import numpy as np
import polars as pl
import pytest

from ml.decoded_genes import genes_table
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


def _fast_table(keys, hits, ef_sum, gap_sum):
    return genes_table(keys, hits, ef_sum, gap_sum)[0]


@pytest.mark.parametrize("to_table", [genes_from_decoded, _fast_table], ids=["reference", "fast"])
def test_equivalent_configurations_merge_and_hits_add_up(to_table):
    a = ([("Sr", 1, {"b": 1}), ("Ti", 1, {"a": 1}), ("O", 3, {"d": 1})], 221)  # Sr 1b / Ti 1a / O 3d
    b = ([("Sr", 1, {"a": 1}), ("Ti", 1, {"b": 1}), ("O", 3, {"c": 1})], 221)  # Sr 1a / Ti 1b / O 3c
    c = ([("Sr", 1, {"a": 1}), ("Ti", 1, {"a": 1}), ("O", 3, {"d": 1})], 221)  # invalid: 1a twice
    keys = _pack(_decoded([a, b, c]))
    table = to_table(keys, np.array([5, 3, 2]), np.array([-10.0, -6.0, -2.0]), np.zeros(3))
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


def test_sampling_pauses_the_cyclic_gc_and_restores_it(tiny_model, monkeypatch):
    """Python's cyclic collector is off while sampling decodes and canonicalizes (no collection
    walks the process's objects), and comes back as it was, also when sampling fails."""
    import gc

    import ml.decoded_genes as decoded_genes
    from ml.tensors import encode_table

    module, table = tiny_model
    origins = encode_table(table.head(2))
    seen = []
    real = decoded_genes.genes_table

    def spy(*args):
        seen.append(gc.isenabled())
        return real(*args)

    monkeypatch.setattr(decoded_genes, "genes_table", spy)
    assert gc.isenabled()
    sample_genes(module, origins, SamplingConfig(50, 1.0, seed=1, batch_size=64))
    assert seen == [False] and gc.isenabled()
    gc.disable()
    try:
        sample_genes(module, origins, SamplingConfig(50, 1.0, seed=1, batch_size=64))
        assert not gc.isenabled()  # left off by whoever turned it off
    finally:
        gc.enable()

    def broken(*args):
        raise RuntimeError("canonicalization failed")

    monkeypatch.setattr(decoded_genes, "genes_table", broken)
    with pytest.raises(RuntimeError, match="canonicalization failed"):
        sample_genes(module, origins, SamplingConfig(50, 1.0, seed=1, batch_size=64))
    assert gc.isenabled()


def test_sampling_keeps_freed_memory(tiny_model, monkeypatch):
    """sample_genes applies ml.allocator's malloc settings (tests/test_allocator.py measures their
    effect) before it decodes."""
    import ml.sampling as sampling
    from ml.tensors import encode_table

    calls = []
    monkeypatch.setattr(sampling, "keep_freed_memory", lambda: calls.append(1) or True)
    module, table = tiny_model
    sample_genes(module, encode_table(table.head(2)), SamplingConfig(20, 1.0, seed=1, batch_size=64))
    assert calls == [1]


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


# --- the fast path against the reference path ------------------------------------------------

_EXACT = ["formula", "space_group", "wyckoff", "gene_key", "hits", "n_configurations", "configurations"]


def assert_same_table(fast: pl.DataFrame, reference: pl.DataFrame):
    """Same genes, keys, hits and configurations; mean properties equal up to float summation order."""
    assert fast.columns == reference.columns
    assert fast.select(_EXACT).equals(reference.select(_EXACT))
    for col in ("predicted_formation_energy", "predicted_band_gap"):
        np.testing.assert_allclose(fast[col].to_numpy(), reference[col].to_numpy(), rtol=1e-12, atol=1e-12)


def test_hand_worked_origin_shift_in_a_cubic_group_is_one_key():
    """Pm-3m (221): the origin shift (1/2,1/2,1/2) swaps 1a<->1b and 3c<->3d. SrTiO3 written as
    Sr 1b / Ti 1a / O 3d and as Sr 1a / Ti 1b / O 3c is one gene; its key is the smaller JSON,
    which starts with O (elements sorted) and "3c" < "3d"."""
    a = ([("Sr", 1, {"b": 1}), ("Ti", 1, {"a": 1}), ("O", 3, {"d": 1})], 221)
    b = ([("Ti", 1, {"b": 1}), ("O", 3, {"c": 1}), ("Sr", 1, {"a": 1})], 221)  # slots in another order
    table = _fast_table(_pack(_decoded([a, b])), np.array([4, 6]), np.array([-4.0, -12.0]), np.zeros(2))
    expected = 'SrTiO3|221|{"O": ["3c"], "Sr": ["1a"], "Ti": ["1b"]}'
    assert table["gene_key"].to_list() == [expected]
    assert expected == gene_key("SrTiO3", 221, {"Sr": ["1b"], "Ti": ["1a"], "O": ["3d"]})
    row = table.row(0, named=True)
    assert row["hits"] == 10 and row["n_configurations"] == 2
    assert row["wyckoff"] == '{"O": ["3c"], "Sr": ["1a"], "Ti": ["1b"]}'  # the more-hit writing
    assert row["predicted_formation_energy"] == pytest.approx(-16.0 / 10)


def test_hand_worked_key_decided_after_twelve_sites():
    """The comparison vectors hold 12 sites per integer: here the two settings agree on O's first
    12 sites (8g is fixed by the shift) and differ on the 13th, 12j vs 12i ("12i" < "12j"), so the
    shifted setting is the key: O 8g x12 + 12i, Sr 1a."""
    sites = {"g": 12, "j": 1}
    a = ([("O", 8 * 12 + 12, sites), ("Sr", 1, {"b": 1})], 221)
    table = _fast_table(_pack(_decoded([a])), np.array([1]), np.array([0.0]), np.zeros(1))
    o_sites = ["8g"] * 12 + ["12i"]
    expected = "SrO108|221|" + json.dumps({"O": o_sites, "Sr": ["1a"]})
    assert table["gene_key"].to_list() == [expected]
    assert expected == gene_key("SrO108", 221, {"O": ["8g"] * 12 + ["12j"], "Sr": ["1b"]})


def test_invalid_decoded_rows_are_kept_as_today_and_counted():
    """Rows that are no valid configuration stay in the table under their own keys (the filters
    give the reason), as the reference does: no atom at all, a letter the space group lacks (62
    has only a-d), a DoF-0 site occupied twice (canonicalized like any gene; rejected later)."""
    no_atoms = ([], 12)
    outside = ([("Ca", 4, {"c": 1}), ("O", 0, {"x": 1})], 62)
    doubled = ([("Sr", 1, {"a": 1}), ("Ti", 1, {"a": 1}), ("O", 3, {"d": 1})], 221)
    keys = _pack(_decoded([no_atoms, outside, doubled]))
    args = (keys, np.array([2, 3, 4]), np.array([1.0, 2.0, 3.0]), np.zeros(3))
    table, stats = genes_table(*args)
    assert_same_table(table, genes_from_decoded(*args))
    assert sorted(table["gene_key"].to_list()) == sorted([
        "|12|{}", 'Ca|62|{"Ca": ["4c"], "O": ["0x"]}',
        gene_key("SrTiO3", 221, {"Sr": ["1a"], "Ti": ["1a"], "O": ["3d"]})])
    assert stats["decoded_rows_without_atoms"] == 1 and stats["decoded_points_without_atoms"] == 2
    assert stats["decoded_rows_letter_outside_space_group"] == 1
    assert stats["decoded_points_letter_outside_space_group"] == 3


def _random_decoded_rows(n: int, seed: int):
    """Decoded rows over all 230 space groups as decode_arrays makes them (atoms = sites x
    multiplicity, empty slot = -1), with duplicate elements, long site lists (> 12 sites), letters
    a group lacks and rows without atoms mixed in."""
    from ml.wyckoff import multiplicity_matrix, space_group_table

    rng = np.random.default_rng(seed)
    mult = multiplicity_matrix()
    el = np.full((n, 3), -1, np.int64)
    let = np.zeros((n, 3, 27), np.int64)
    sg = rng.integers(1, 231, n)
    pool = np.array([7, 19, 21, 22, 55, 81])  # O, Ca, Ti, ... (0-based vocabulary indices)
    for i in range(n):
        present = np.flatnonzero(mult[sg[i] - 1] > 0)
        for s in range(3):
            if rng.random() < 0.1:
                continue  # empty slot
            el[i, s] = rng.choice(pool)
            for letter in rng.choice(present, rng.integers(1, min(4, len(present)) + 1), replace=False):
                let[i, s, letter] = rng.integers(1, 16 if rng.random() < 0.1 else 4)
            if rng.random() < 0.03:
                let[i, s, rng.integers(0, 27)] += 1  # maybe a letter the group lacks
    # a third of the rows again in another setting of their group (PyXtal's letter map), slots shuffled
    twins = rng.random(n) < 0.35
    el2, let2 = el[twins].copy(), np.zeros_like(let[twins])
    for j, i in enumerate(np.flatnonzero(twins)):
        alternatives = space_group_table(int(sg[i])).alternatives
        perm = alternatives[rng.integers(0, len(alternatives))]
        for letter, new in perm.items():
            let2[j, :, LETTER_INDEX[new]] = let[i, :, LETTER_INDEX[letter]]
        for letter in set(LETTER_INDEX) - set(perm):  # letters the group lacks stay put
            let2[j, :, LETTER_INDEX[letter]] = let[i, :, LETTER_INDEX[letter]]
        order = rng.permutation(3)
        el2[j], let2[j] = el2[j][order], let2[j][order]
    el, let, sg = np.concatenate([el, el2]), np.concatenate([let, let2]), np.concatenate([sg, sg[twins]])
    cnt = (let * mult[sg - 1][:, None, :]).sum(-1)
    keys = _pack(DecodedGenes(el, cnt, let, sg))
    keys = np.unique(keys, axis=0)  # sample_decoded hands over distinct rows
    return keys, rng.integers(1, 50, len(keys)), rng.normal(size=len(keys)), rng.random(len(keys))


def test_fast_canonicalization_equals_reference_on_random_rows_of_every_space_group():
    args = _random_decoded_rows(2500, seed=7)
    fast, _ = genes_table(*args)
    reference = genes_from_decoded(*args)
    assert_same_table(fast, reference)
    assert fast["n_configurations"].max() > 1  # equivalent settings did merge


def test_row_hash_dedupe_is_exact_even_when_every_hash_collides(monkeypatch):
    import ml.row_hash as row_hash

    rng = np.random.default_rng(3)
    rows = rng.integers(0, 3, (5000, 11)).astype(np.uint8)
    first, inverse = row_hash.unique_rows(rows)
    assert np.array_equal(rows[first][inverse], rows)
    assert len(first) == len(np.unique(rows, axis=0))
    monkeypatch.setattr(row_hash, "row_hash", lambda r: np.zeros(len(r), np.uint64))
    first, inverse = row_hash.unique_rows(rows)
    assert np.array_equal(rows[first][inverse], rows) and len(first) == len(np.unique(rows, axis=0))


def _pymatgen_reduced_formula(element_row, count_row, symbols) -> str:
    """The independent expectation: Composition.reduced_formula of one row's (element, atoms)
    slots (two slots of one element add up), "" without atoms."""
    from pymatgen.core import Composition

    amounts: dict[str, int] = {}
    for e, c in zip(element_row, count_row):
        if e >= 0 and c > 0:
            amounts[symbols[e]] = amounts.get(symbols[e], 0) + int(c)
    return Composition(amounts).reduced_formula if amounts else ""


def test_reduced_formulas_match_pymatgen():
    """pymatgen's Composition.reduced_formula on the decoded counts (ratios, polyanions, special
    formulas such as O2 and H2O2), and normalize_formula leaves the result unchanged."""
    from ml.decoded_genes import reduced_formulas
    from ml.elements import vocabulary
    from ml.genes import normalize_formula

    rng = np.random.default_rng(11)
    n = 600
    el = rng.choice(np.array([0, 7, 10, 15, 16, 19, 21, 33, 51, 52, 55]), (n, 3))  # H O Na S Cl Ca Ti Se Te I Cs
    el[rng.random((n, 3)) < 0.15] = -1
    cnt = rng.integers(0, 13, (n, 3)) * rng.choice([1, 2, 4], (n, 1))
    cnt[el < 0] = 0
    el[:2], cnt[:2] = [[7, -1, -1], [0, 7, -1]], [[6, 0, 0], [4, 4, 0]]  # O2, H2O2
    formulas, index = reduced_formulas(el, cnt)
    symbols = vocabulary()
    for i in range(n):
        expected = _pymatgen_reduced_formula(el[i], cnt[i], symbols)
        assert formulas[index[i]] == expected
        if expected:
            assert normalize_formula(expected) == expected
    assert formulas[index[0]] == "O2" and formulas[index[1]] == "H2O2"


def test_reduced_formulas_match_pymatgen_over_the_whole_vocabulary():
    """Random compositions of up to three of all 94 elements (noble gases without an
    electronegativity, repeated elements, polyanion pairs with a common factor) against
    Composition.reduced_formula."""
    from ml.decoded_genes import reduced_formulas
    from ml.elements import vocabulary

    rng = np.random.default_rng(5)
    n = 6000
    el = rng.integers(0, 94, (n, 3))
    el[rng.random((n, 3)) < 0.1] = -1
    repeat = rng.random(n) < 0.1
    el[repeat, 2] = el[repeat, 0]  # some repeated elements
    cnt = rng.integers(0, 9, (n, 3)) * rng.choice([1, 2, 3, 6], (n, 3))
    cnt[el < 0] = 0
    formulas, index = reduced_formulas(el, cnt)
    symbols = vocabulary()
    polyanions = 0
    for i in range(n):
        expected = _pymatgen_reduced_formula(el[i], cnt[i], symbols)
        assert formulas[index[i]] == expected, (el[i], cnt[i], formulas[index[i]], expected)
        polyanions += ")" in expected
    assert polyanions > 20  # the polyanion rule was exercised


@pytest.mark.parametrize("noise, unit, allowed", [
    (1.0, "posterior_sigma", ("O", "Sr", "Ti")),
    (4.0, "posterior_sigma", ("O", "Sr", "Ti")),
    (4.0, "posterior_sigma", None),
    (3.0, "absolute", ("Ba", "Ca", "O", "S", "Se", "Sr", "Ti", "Zr")),
])
def test_fast_sampling_equals_reference_on_a_fixed_seed(tiny_model, noise, unit, allowed):
    """Same genes, keys, hits, configurations and mean properties (20 batches: the pending
    batches are folded, as in the reference)."""
    from ml.tensors import encode_table

    module, table = tiny_model
    origins = encode_table(table.head(8))
    cfg = dict(samples_per_origin=640, noise_scale=noise, seed=5, batch_size=256, noise_unit=unit,
               allowed_elements=allowed)
    reference, ref_stats = sample_genes(module, origins, SamplingConfig(**cfg, implementation="reference"))
    fast, stats = sample_genes(module, origins, SamplingConfig(**cfg))
    assert stats["implementation"] == "fast" and stats["fallback_batches"] == 0
    assert stats["distinct_decoded_rows"] == ref_stats["distinct_decoded_rows"]
    assert_same_table(fast, reference)
    assert int(fast["hits"].sum()) == 8 * 640


def test_decoded_rows_equal_reference_for_any_split_threads_and_fallback(tiny_model, monkeypatch):
    """decode_and_merge returns the reference's distinct rows, hits and sums however the batch is
    split (chunk), decoded (1 or 2 worker threads), or packed (batches handed to the reference
    packing when a letter count would not fit a byte)."""
    import ml.latent_decode as latent_decode
    from ml.sampling import _element_mask, encode_posterior, sample_decoded
    from ml.tensors import encode_table

    module, table = tiny_model
    z0, sigma = encode_posterior(module, encode_table(table.head(6)))
    cfg = SamplingConfig(samples_per_origin=700, noise_scale=4.0, seed=2, batch_size=256,
                         allowed_elements=("Ca", "O", "Ti"))
    keys, hits, ef, gap, _ = sample_decoded(module, z0, cfg, origin_sigma=sigma)

    def fast(**kw):
        return latent_decode.decode_and_merge(module, z0, cfg.samples_per_origin, cfg.noise_scale, cfg.seed,
                                              cfg.batch_size, _element_mask(cfg.allowed_elements), sigma, **kw)

    for kw in ({}, {"workers": 1, "chunk": 100}, {"workers": 2, "chunk": 1024}):
        k2, h2, e2, g2, _, stats = fast(**kw)
        assert np.array_equal(k2, keys) and np.array_equal(h2, hits)
        assert np.array_equal(e2, ef) and np.array_equal(g2, gap)  # same floats, same summation order
    calls = {"n": 0}
    rows = latent_decode._Heads.rows

    def every_third_batch_fails(self, z, out, props):
        calls["n"] += 1
        return False if calls["n"] % 3 == 0 else rows(self, z, out, props)

    monkeypatch.setattr(latent_decode._Heads, "rows", every_third_batch_fails)
    k2, h2, e2, g2, _, stats = fast(workers=1)
    assert stats["fallback_batches"] > 0
    assert np.array_equal(k2, keys) and np.array_equal(h2, hits)
    np.testing.assert_allclose(e2, ef, rtol=1e-12)
    np.testing.assert_allclose(g2, gap, rtol=1e-12, atol=1e-12)


def test_conv_decoder_fast_path_equals_reference():
    """The reference's transposed-convolution decoder goes through the full decode on the fast
    path too (an untrained network: the comparison needs no training)."""
    import torch

    from ml.pvae import PVAEConfig, PVAEModule
    from ml.tensors import GeneArrays

    torch.manual_seed(0)
    module = PVAEModule(PVAEConfig(latent_dim=16, decoder="conv"))
    module.eval()
    rng = np.random.default_rng(0)
    n = 4
    x = rng.random((n, 3, 135)).astype(np.float32)
    origins = GeneArrays(x, rng.integers(0, 230, n), np.zeros((n, 3), np.int64), np.zeros(n, np.float32),
                         np.zeros(n, np.float32), np.zeros(n, bool), np.asarray([""] * n, dtype=object))
    cfg = dict(samples_per_origin=600, noise_scale=20.0, seed=1, batch_size=512, noise_unit="absolute")
    reference, _ = sample_genes(module, origins, SamplingConfig(**cfg, implementation="reference"))
    fast, _ = sample_genes(module, origins, SamplingConfig(**cfg))
    assert_same_table(fast, reference)
    with pytest.raises(ValueError, match="implementation"):
        sample_genes(module, origins, SamplingConfig(**cfg, implementation="vectorised"))


def test_latent_noise_is_one_seeded_standard_normal_stream():
    """Both sampling paths draw from ml.latent_noise: the same seed gives the same points however
    the draws are split into batches (latent width 256), another seed other points, and the draws
    are standard normal (KS test against scipy's normal, mean and spread of 1M draws)."""
    from scipy import stats

    from ml.latent_noise import LatentNoise

    whole = LatentNoise(7).draw(12, 256)
    parts = LatentNoise(7)
    split = np.concatenate([parts.draw(2, 256), parts.draw(3, 256), parts.draw(7, 256)])
    assert whole.dtype == np.float32 and np.array_equal(whole, split)
    assert not np.array_equal(whole, LatentNoise(8).draw(12, 256))
    many = LatentNoise(0).draw(4096, 256).astype(np.float64).ravel()
    assert abs(many.mean()) < 0.005 and abs(many.std() - 1.0) < 0.005
    assert stats.kstest(many[:200_000], "norm").pvalue > 1e-3
