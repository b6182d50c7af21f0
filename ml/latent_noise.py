"""The Gaussian noise of latent sampling: one seeded stream, drawn batch by batch in order.

Both sampling paths (:func:`ml.sampling.sample_decoded`, the reference, and
:func:`ml.latent_decode.decode_and_merge`, the fast path) draw their noise here, so a seed gives the
same latent points on both. The stream is torch's CPU generator (``torch.Generator`` seeded with
the sampling seed; ``Tensor.normal_``, vectorized Box-Muller): on the 2-core AMD development
machine it draws 223 M float32 normals per CPU-second against 62 M for numpy's PCG64 ziggurat
(``Generator.standard_normal``, float32) -- the noise was a fifth of the fast path's CPU time
(benchmarks/sampling_throughput.py). The draws come in the calling thread, one batch after
the other, so they do not depend on how many threads decode them.
"""

from __future__ import annotations

import numpy as np
import torch


class LatentNoise:
    """Standard-normal float32 draws from one seeded torch CPU generator."""

    def __init__(self, seed: int):
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(int(seed))

    def draw(self, n: int, dim: int) -> np.ndarray:
        """(n, dim) float32 standard normals, the next n * dim of the stream (a writable array)."""
        out = torch.empty((n, dim), dtype=torch.float32)
        out.normal_(generator=self.generator)
        return out.numpy()
