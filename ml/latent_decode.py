"""Perturb + decode + merge identical decoded rows: the fast path of latent sampling.

Same points, same network, same decoded rows, same hits and property sums as the reference
:func:`ml.sampling.sample_decoded`, with less work per point:

* the noise is drawn from the same stream (:class:`ml.latent_noise.LatentNoise`, one draw per batch, in order,
  in the calling thread), and the origin shift is applied in place per run of one origin's points;
* on a CPU, one batch per torch thread is decoded at once, each single-threaded and in chunks of
  1,024 points that stay in cache (matrix products give the same values however the rows are
  split or threaded; the fixed-seed test checks it), and merged batches are folded in batch order;
* of the decoder's 3 x 135 array outputs only the columns that decoding reads are computed: the
  27 Wyckoff letter counts per slot and the logits of the allowed elements (all 94 without an
  element constraint) — one smaller matrix product with the same weights (each output column is
  computed as in the full product: the same floats, checked bit for bit by the tests and the
  benchmark); the three layers that read the latent point run as three products whose outputs
  are used in place (stacking them into one product cost a copy of each slice, ~8 % more CPU);
* argmax, rounding and the empty-slot rule run in numpy on each chunk (as the reference's
  ``decode_arrays``; numpy's argmax over the 230 space-group logits is ~10x faster than torch's,
  which made post-processing ~10 % of the decode), and each point becomes one
  compact uint8 row (elements, letter counts, space group) that is merged with a 64-bit row hash
  (:func:`ml.row_hash.unique_rows`, exact) instead of ``np.unique`` over 352-byte rows; atom counts
  are derived for the distinct rows only. A batch whose letter counts do not fit a byte (or are
  not finite) is packed by the reference code instead.

The distinct rows come back packed and ordered exactly as the reference returns them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from ml.latent_noise import LatentNoise
from ml.row_hash import unique_rows
from ml.tensors import COUNT, COUNT_SCALE, ELEMENT, LETTERS, N_ELEMENTS, N_FEATURES, decode_arrays
from ml.wyckoff import N_LETTERS, multiplicity_matrix

N_SLOTS = 3
_FOLD = 16  # merge pending batches in groups of 16, as the reference does (same float sums)
_PACKED_WIDTH = N_SLOTS + N_SLOTS + N_SLOTS * N_LETTERS + 1  # the reference's int32 row
_COMPACT_WIDTH = 88  # uint8: element + 1 (3), letter counts (81), space group (1), zero padding (3)


def _forward(sequential: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``sequential(x)`` with every ReLU after the first layer applied in place (same values, no
    copies; ``x`` itself is never written)."""
    layers = list(sequential)
    x = layers[0](x)
    for layer in layers[1:]:
        x = torch.relu_(x) if isinstance(layer, torch.nn.ReLU) else layer(x)
    return x


class _Heads:
    """The decoder pieces that decoding reads, from a trained PVAE module.

    For the dense decoder the array decoder computes only the allowed elements' logits and the
    letter counts."""

    def __init__(self, module, element_mask: np.ndarray | None):
        net = module.net
        self.module = module
        self.allowed = (np.flatnonzero(element_mask) if element_mask is not None
                        else np.arange(N_ELEMENTS)).astype(np.int64)
        self.k = len(self.allowed)
        firsts = [seq[0] if isinstance(seq, torch.nn.Sequential) and len(seq) else None
                  for seq in (getattr(net, "decoder_input", None), net.sg_decoder, net.property_head)]
        self.dense = net.decoder_kind == "mlp" and all(isinstance(f, torch.nn.Linear) for f in firsts)
        if self.dense:
            cols = np.concatenate([np.concatenate([s * N_FEATURES + self.allowed,
                                                   s * N_FEATURES + np.arange(LETTERS.start, LETTERS.stop)])
                                   for s in range(N_SLOTS)])
            index = torch.as_tensor(cols, device=module.device)
            self.weight = net.array_decoder.weight.index_select(0, index).contiguous()
            self.bias = net.array_decoder.bias.index_select(0, index).contiguous()
        self.allowed_t = torch.as_tensor(self.allowed, device=module.device)
        self.allowed_u8 = (self.allowed + 1).astype(np.uint8)  # element index + 1, 0 kept for an empty slot

    def _outputs(self, z: torch.Tensor):
        """Element logits of the allowed elements (B, 3, k), letter counts (B, 3, 27), space-group
        logits (B, 230), properties in raw units (B, 2)."""
        net, module = self.module.net, self.module
        if not self.dense:
            recon, sg_logits = net.decode(z)
            return (recon[:, :, ELEMENT].index_select(2, self.allowed_t), recon[:, :, LETTERS], sg_logits,
                    module.predict_properties(z))
        h = _forward(net.decoder_input, z)
        out = F.linear(h, self.weight, self.bias).view(-1, N_SLOTS, self.k + N_LETTERS)
        sg_logits = _forward(net.sg_decoder, z)
        props = _forward(net.property_head, z) * module.target_std + module.target_mean
        return out[:, :, :self.k], out[:, :, self.k:], sg_logits, props

    def rows(self, z: torch.Tensor, out: np.ndarray, props: np.ndarray) -> bool:
        """Decode ``z`` into compact uint8 rows ``out`` (B, 88) [element + 1 per slot, 0 for an
        empty slot; letter counts; space group] and properties ``props`` (B, 2) float64. False
        when a letter count is not a finite value in 0..255 (the caller packs the batch with the
        reference code instead)."""
        element_logits, letters, sg_logits, properties = (t.cpu().numpy() for t in self._outputs(z))
        # numpy from here, as the reference's decode_arrays: on the (B, 230) logits np.argmax is
        # ~10x faster than torch's (same first-maximum rule, NaN counts as the maximum in both)
        letters = np.rint(letters)
        np.maximum(letters, 0, out=letters)
        if not letters.max(initial=0) <= 255:  # also False for NaN and inf
            return False
        letters_u8 = letters.astype(np.uint8)
        element = self.allowed_u8[element_logits.argmax(axis=-1)]  # element + 1
        element[~letters_u8.any(axis=-1)] = 0  # an empty slot
        out[:, :N_SLOTS] = element
        out[:, N_SLOTS:N_SLOTS + N_SLOTS * N_LETTERS] = letters_u8.reshape(len(z), -1)
        out[:, N_SLOTS + N_SLOTS * N_LETTERS] = sg_logits.argmax(axis=-1) + 1
        props[:] = properties
        return True


def _reference_rows(module, z: torch.Tensor, element_mask) -> np.ndarray:
    """The reference decode of one batch as packed int32 rows (fallback for odd batches)."""
    recon, sg_logits = module.net.decode(z)
    recon = recon.cpu().numpy()
    element_logits = recon[:, :, ELEMENT]
    if element_mask is not None:
        element_logits = np.where(element_mask, element_logits, -np.inf)
    d = decode_arrays(element_logits, recon[:, :, COUNT] * COUNT_SCALE, recon[:, :, LETTERS], sg_logits.cpu().numpy())
    n = len(d)
    return np.concatenate([d.element_index.reshape(n, -1), d.counts.reshape(n, -1),
                           d.letter_counts.reshape(n, -1), d.space_group.reshape(n, 1)], axis=1).astype(np.int32)


def _packed(compact: np.ndarray) -> np.ndarray:
    """Compact uint8 rows -> the reference's int32 rows (element, atoms, letter counts, SG)."""
    n = len(compact)
    element = compact[:, :N_SLOTS].astype(np.int32) - 1
    letters = compact[:, N_SLOTS:N_SLOTS + N_SLOTS * N_LETTERS].astype(np.int32).reshape(n, N_SLOTS, N_LETTERS)
    sg = compact[:, N_SLOTS + N_SLOTS * N_LETTERS].astype(np.int32)
    counts = (letters * multiplicity_matrix()[sg - 1][:, None, :]).sum(axis=-1, dtype=np.int32)
    return np.concatenate([element, counts, letters.reshape(n, -1), sg[:, None]], axis=1)


def _merge(rows: np.ndarray, hits: np.ndarray, ef: np.ndarray, gap: np.ndarray):
    first, inverse = unique_rows(rows)
    m = len(first)
    return (rows[first], np.bincount(inverse, hits, m).astype(np.int64),
            np.bincount(inverse, ef, m), np.bincount(inverse, gap, m))


def _fold(parts: list) -> tuple:
    return _merge(*(np.concatenate(x) for x in zip(*parts)))


def _shift(noise: np.ndarray, done: int, samples_per_origin: int, origin_latent, sigma) -> None:
    """noise -> origin + noise * sigma in place for points done .. done + len(noise) - 1 (the
    reference's float operations, per run of one origin's points)."""
    b = len(noise)
    first, last = done // samples_per_origin, (done + b - 1) // samples_per_origin
    if last - first < 256:
        for o in range(first, last + 1):
            lo = max(o * samples_per_origin, done) - done
            hi = min((o + 1) * samples_per_origin, done + b) - done
            noise[lo:hi] *= sigma[o]
            noise[lo:hi] += origin_latent[o]
    else:
        index = np.arange(done, done + b) // samples_per_origin
        noise *= sigma[index]
        noise += origin_latent[index]


MAX_WORKERS = 16  # batches in flight hold ~35 MB each


def _workers(module) -> int:
    """Batches decoded at once: one per torch CPU thread (each decodes single-threaded, which
    avoids the intra-op synchronization of small products), one on an accelerator."""
    return min(MAX_WORKERS, max(1, torch.get_num_threads())) if module.device.type == "cpu" else 1


def decode_and_merge(module, origin_latent: np.ndarray, samples_per_origin: int, noise_scale: float, seed: int,
                     batch_size: int, element_mask: np.ndarray | None = None,
                     origin_sigma: np.ndarray | None = None, log: Callable[[str], None] | None = None,
                     chunk: int = 1024, workers: int | None = None):
    """Perturb + decode + merge identical rows. Returns (keys (M, 88) int32, hits, ef_sum, gap_sum,
    seconds, stats) with keys, hits and sums equal to the reference's.

    The noise is drawn in order in the calling thread (the reference's stream,
    :class:`ml.latent_noise.LatentNoise`); up to
    ``workers`` batches are decoded concurrently, each in chunks of ``chunk`` points (the
    products' values do not depend on how the rows are split), and the merged batches are folded
    in batch order. With more than one worker, torch's (process-wide) thread count is 1 while
    this runs and restored afterwards."""
    module.eval()
    noise_source = LatentNoise(seed)
    origin_latent = np.ascontiguousarray(origin_latent, dtype=np.float32)
    sigma = (np.ones_like(origin_latent) if origin_sigma is None
             else np.ascontiguousarray(origin_sigma, dtype=np.float32))
    n_origins, dim = origin_latent.shape
    total = n_origins * samples_per_origin
    heads = _Heads(module, element_mask)
    scale = np.float32(noise_scale)
    workers = workers or _workers(module)

    def decode_batch(noise: np.ndarray, done: int):
        with torch.inference_mode():
            noise *= scale
            _shift(noise, done, samples_per_origin, origin_latent, sigma)
            b = len(noise)
            z = torch.from_numpy(noise).to(module.device)
            rows = np.empty((b, _COMPACT_WIDTH), dtype=np.uint8)
            rows[:, N_SLOTS + N_SLOTS * N_LETTERS + 1:] = 0  # padding to whole 8-byte words
            props = np.empty((b, 2), dtype=np.float64)
            ok = all(heads.rows(z[i:i + chunk], rows[i:i + chunk], props[i:i + chunk]) for i in range(0, b, chunk))
            if not ok:
                props = module.predict_properties(z).cpu().numpy().astype(np.float64)
                return False, _merge(_reference_rows(module, z, element_mask), np.ones(b), props[:, 0], props[:, 1])
            return True, _merge(rows, np.ones(b), props[:, 0], props[:, 1])

    pending: list = []
    wide: list = []  # batches packed by the reference code (letter counts beyond a byte)
    start = time.perf_counter()
    threads = torch.get_num_threads()
    if workers > 1:
        torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            in_flight: deque = deque()
            done = 0

            def collect():
                compact, part = in_flight.popleft().result()
                nonlocal pending
                if not compact:
                    wide.append(part)
                    return
                pending.append(part)
                if len(pending) >= _FOLD:  # fold in groups: a cumulative merge per batch grows quadratic
                    pending = [_fold(pending)]

            while done < total:
                b = min(batch_size, total - done)
                noise = noise_source.draw(b, dim)  # the reference's draws
                in_flight.append(pool.submit(decode_batch, noise, done))
                done += b
                while len(in_flight) > workers:
                    collect()
                    if log and len(pending) == 1:
                        log(f"sampled {done}/{total} latent points, {len(pending[0][0])} distinct decoded rows so far")
            while in_flight:
                collect()
    finally:
        torch.set_num_threads(threads)
    parts = []
    if pending:
        rows, hits, ef, gap = _fold(pending)
        parts.append((_packed(rows), hits, ef, gap))
    parts += wide
    if not parts:
        keys = np.zeros((0, _PACKED_WIDTH), dtype=np.int32)
        acc = (keys, np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    else:
        acc = _fold(parts) if len(parts) > 1 else parts[0]
        keys = np.ascontiguousarray(acc[0])
        # the reference's order: rows sorted by their bytes
        order = np.argsort(keys.view(np.dtype((np.void, keys.itemsize * keys.shape[1]))).reshape(-1), kind="stable")
        acc = tuple(a[order] for a in acc)
    if log:
        log(f"sampled {total} latent points, {len(acc[0])} distinct decoded rows")
    return (*acc, time.perf_counter() - start, {"fallback_batches": len(wide)})
