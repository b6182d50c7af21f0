"""Latent-space sampling: Gaussian perturbations of origin latents, decoded in large batches.

For each origin gene the encoder's latent mean is perturbed ``samples_per_origin`` times with
N(0, ``noise_scale``^2) noise (the reference code: 5,000 perturbations, scale ~1.4; the draws come from
one seeded stream, :class:`ml.latent_noise.LatentNoise`, shared by both paths); every point is
decoded (argmax elements and space group, rounded counts). Identical decoded rows are merged per
batch and across batches, the distinct rows become genes, and equivalent Wyckoff configurations
merge under one ``gene_key``.

Two implementations give the same table (``SamplingConfig.implementation``):

* ``"fast"`` (default): :func:`ml.latent_decode.decode_and_merge` (only the decoder columns that
  decoding reads, compact rows merged by an exact row hash) and
  :func:`ml.decoded_genes.genes_table` (canonicalization vectorized per space group, no Python
  call per decoded row);
* ``"reference"``: :func:`sample_decoded` + :func:`genes_from_decoded` below, the original
  per-row path (``np.unique`` over byte views, one ``gene_key`` call per distinct row), kept to
  check the fast path against (tests/test_sampling.py, benchmarks/sampling_throughput.py).
"""

from __future__ import annotations

import contextlib
import gc
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from ml.allocator import keep_freed_memory
from ml.genes import GeneError, gene_key, wyckoff_json
from ml.latent_noise import LatentNoise
from ml.tensors import COUNT, COUNT_SCALE, ELEMENT, LETTERS, DecodedGenes, GeneArrays, decode_arrays, decoded_to_genes


@dataclass
class SamplingConfig:
    """``noise_scale`` is in units of each origin's posterior standard deviation (exp(logvar/2)
    from the encoder) when ``noise_unit`` is "posterior_sigma" — the neighbourhood the decoder was
    trained to decode — or in absolute latent units ("absolute", the reference code's choice for
    its own latent space)."""

    samples_per_origin: int = 5000
    noise_scale: float = 1.4
    seed: int = 0
    batch_size: int = 32768
    noise_unit: str = "posterior_sigma"
    # Element-constrained decoding: each slot's element is the argmax of the decoder's element
    # logits over these symbols only (the task's composition or campaign list); None = all 94.
    allowed_elements: tuple[str, ...] | None = None
    # "fast" (vectorized) or "reference" (the original per-row path); same output
    implementation: str = "fast"


def _pack(decoded: DecodedGenes) -> np.ndarray:
    n = len(decoded)
    return np.concatenate([
        decoded.element_index.reshape(n, -1), decoded.counts.reshape(n, -1),
        decoded.letter_counts.reshape(n, -1), decoded.space_group.reshape(n, 1),
    ], axis=1).astype(np.int32)


def _unpack(keys: np.ndarray, n_slots: int = 3, n_letters: int = 27) -> DecodedGenes:
    a = n_slots
    return DecodedGenes(
        element_index=keys[:, :a].astype(np.int64),
        counts=keys[:, a:2 * a].astype(np.int64),
        letter_counts=keys[:, 2 * a:2 * a + a * n_letters].reshape(-1, a, n_letters).astype(np.int64),
        space_group=keys[:, -1].astype(np.int64),
    )


def _merge(keys: np.ndarray, hits: np.ndarray, ef_sum: np.ndarray, gap_sum: np.ndarray):
    """Merge identical rows: unique over a contiguous byte view of each row (one 1-D sort, much
    faster than ``np.unique(axis=0)``'s lexsort), hits and property sums added per row."""
    keys = np.ascontiguousarray(keys, dtype=np.int32)
    view = keys.view(np.dtype((np.void, keys.dtype.itemsize * keys.shape[1]))).reshape(-1)
    _, first, inverse = np.unique(view, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    m = len(first)
    return (keys[first], np.bincount(inverse, hits, m).astype(np.int64),
            np.bincount(inverse, ef_sum, m), np.bincount(inverse, gap_sum, m))


def _merge_all(parts: list) -> tuple:
    return _merge(*(np.concatenate(x) for x in zip(*parts)))


def _element_mask(allowed: tuple[str, ...] | None) -> np.ndarray | None:
    """(94,) boolean mask of the allowed symbols (ValueError for a symbol outside the vocabulary)."""
    if not allowed:
        return None
    from ml.elements import vocabulary

    symbols = vocabulary()
    unknown = sorted(set(allowed) - set(symbols))
    if unknown:
        raise ValueError(f"elements outside the model's vocabulary: {unknown}")
    return np.isin(np.asarray(symbols), list(allowed))


@torch.no_grad()
def sample_decoded(module, origin_latent: np.ndarray, config: SamplingConfig,
                   log: Callable[[str], None] | None = None, origin_sigma: np.ndarray | None = None):
    """Perturb + decode + merge identical rows. Returns (keys, hits, ef_sum, gap_sum, seconds).

    ``origin_sigma`` (n_origins, latent) scales the noise per origin and dimension when given."""
    module.eval()
    noise_source = LatentNoise(config.seed)
    origin_latent = np.asarray(origin_latent, dtype=np.float32)
    sigma = np.ones_like(origin_latent) if origin_sigma is None else np.asarray(origin_sigma, dtype=np.float32)
    n_origins, dim = origin_latent.shape
    total = n_origins * config.samples_per_origin
    pending: list = []
    start = time.perf_counter()
    done = 0
    device = module.device
    element_mask = _element_mask(config.allowed_elements)
    while done < total:
        b = min(config.batch_size, total - done)
        origin_index = (np.arange(done, done + b) // config.samples_per_origin).astype(np.int64)
        noise = noise_source.draw(b, dim) * np.float32(config.noise_scale)
        z = origin_latent[origin_index] + noise * sigma[origin_index]
        zt = torch.from_numpy(z).to(device)
        recon, sg_logits = module.net.decode(zt)
        props = module.predict_properties(zt).cpu().numpy().astype(np.float64)
        recon = recon.cpu().numpy()
        element_logits = recon[:, :, ELEMENT]
        if element_mask is not None:
            element_logits = np.where(element_mask, element_logits, -np.inf)
        decoded = decode_arrays(element_logits, recon[:, :, COUNT] * COUNT_SCALE, recon[:, :, LETTERS],
                                sg_logits.cpu().numpy())
        pending.append(_merge(_pack(decoded), np.ones(b), props[:, 0], props[:, 1]))
        if len(pending) >= 16:  # fold batches in groups: a cumulative merge per batch grows quadratic
            pending = [_merge_all(pending)]
        done += b
        if log and (len(pending) == 1 or done == total):
            log(f"sampled {done}/{total} latent points, {len(pending[0][0])} distinct decoded rows so far")
    acc = _merge_all(pending) if pending else None
    if acc is None:
        empty = np.zeros((0, 3 + 3 + 81 + 1), dtype=np.int32)
        acc = (empty, np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    return (*acc, time.perf_counter() - start)


def genes_from_decoded(keys, hits, ef_sum, gap_sum) -> pl.DataFrame:
    """Distinct decoded rows -> one row per gene (equivalent configurations merged by gene_key)."""
    genes = decoded_to_genes(_unpack(keys)) if len(keys) else []
    rows = []
    for (formula, sg, wyckoff), h, ef, gap in zip(genes, hits, ef_sum, gap_sum):
        text = wyckoff_json(wyckoff)
        try:
            key = gene_key(formula, sg, wyckoff) if formula else f"|{sg}|{text}"
        except GeneError:
            key = f"{formula}|{sg}|{text}"  # not a valid configuration: its own key; filters say why
        rows.append((formula, sg, text, key, int(h), float(ef), float(gap)))
    df = pl.DataFrame(rows, schema={"formula": pl.String, "space_group": pl.Int32, "wyckoff": pl.String,
                                    "gene_key": pl.String, "hits": pl.Int64, "ef_sum": pl.Float64,
                                    "gap_sum": pl.Float64}, orient="row")
    from ml.decoded_genes import merge_by_gene_key

    return merge_by_gene_key(df, pl.col("configurations").map_elements(lambda c: json.dumps(list(c)),
                                                                       return_dtype=pl.String))


@torch.no_grad()
def encode_posterior(module, arrays: GeneArrays, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Latent means and posterior standard deviations (N, latent) of genes."""
    module.eval()
    means, sigmas = [], []
    for start in range(0, len(arrays), batch_size):
        sl = slice(start, start + batch_size)
        x = torch.as_tensor(arrays.X[sl], dtype=torch.float32, device=module.device)
        sg = torch.as_tensor(arrays.sg[sl], dtype=torch.int64, device=module.device)
        mean, logvar = module.net.encode(x, sg)
        means.append(mean.cpu().numpy())
        sigmas.append(torch.exp(0.5 * logvar).cpu().numpy())
    if not means:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(means).astype(np.float32), np.concatenate(sigmas).astype(np.float32)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for a bounded numeric step, then back as it was.
    Decode and canonicalization create no reference cycles, but their many short-lived objects
    trigger full collections that walk every object of the process (a loaded Dagster/pymatgen
    process holds ~0.5 M): 0.3 s per collection, measured in the benchmark process."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def sample_genes(module, origin_arrays: GeneArrays, config: SamplingConfig | None = None,
                 log: Callable[[str], None] | None = None) -> tuple[pl.DataFrame, dict]:
    """Origins -> sampled genes table + stats (points, distinct rows, seconds, points/s, and the
    decoded rows that are no valid configuration: without atoms or using a letter the space group
    lacks — kept in the table under their own keys, the filters give the reason)."""
    config = config or SamplingConfig()
    keep_freed_memory()  # decode buffers reused, not faulted in again (ml.allocator)
    if config.implementation not in ("fast", "reference"):
        raise ValueError(f"implementation must be 'fast' or 'reference', got {config.implementation!r}")
    z0, sigma = encode_posterior(module, origin_arrays)
    if config.noise_unit == "absolute":
        sigma = None
    elif config.noise_unit != "posterior_sigma":
        raise ValueError(f"noise_unit must be 'posterior_sigma' or 'absolute', got {config.noise_unit!r}")
    with _gc_paused():
        table, keys, hits, seconds, canon_seconds, extra = _sample(module, z0, sigma, config, log)
    points = int(hits.sum())
    stats = {"origins": int(len(z0)), "latent_points": points, "distinct_decoded_rows": int(len(keys)),
             "genes": table.height, "decode_seconds": seconds, "canonicalize_seconds": canon_seconds,
             "points_per_second": points / max(seconds + canon_seconds, 1e-9),
             "implementation": config.implementation, **extra}
    return table, stats


def _sample(module, z0, sigma, config: SamplingConfig, log):
    """Decode + canonicalize by the configured implementation: (table, distinct decoded rows, hits
    per row, decode seconds, canonicalize seconds, extra stats)."""
    extra: dict = {}
    if config.implementation == "fast":
        from ml.decoded_genes import genes_table
        from ml.latent_decode import decode_and_merge

        keys, hits, ef_sum, gap_sum, seconds, extra = decode_and_merge(
            module, z0, config.samples_per_origin, config.noise_scale, config.seed, config.batch_size,
            element_mask=_element_mask(config.allowed_elements), origin_sigma=sigma, log=log)
        t = time.perf_counter()
        table, invalid = genes_table(keys, hits, ef_sum, gap_sum)
        extra = {**extra, **invalid}
    else:
        keys, hits, ef_sum, gap_sum, seconds = sample_decoded(module, z0, config, log=log, origin_sigma=sigma)
        t = time.perf_counter()
        table = genes_from_decoded(keys, hits, ef_sum, gap_sum)
    return table, keys, hits, seconds, time.perf_counter() - t, extra
