"""glibc malloc settings for the compute-heavy processes: keep freed memory for reuse.

Latent sampling and MLIP relaxations allocate and free the same large buffers over and over
(decoder activations per chunk; CHGNet's per-step graphs and autograd tensors). With glibc's
defaults, blocks above a (dynamic, at most 32 MiB) threshold are ``mmap``-ed and returned on
``free``, and free memory at the top of the heap is trimmed back to the OS, so the next
allocation of the same size faults its pages in again, zero-filled by the kernel.

:func:`keep_freed_memory` raises both thresholds (``mallopt``): blocks up to 256 MiB come from the
heap and up to 1 GiB of free heap is kept for reuse. Peak memory is unchanged (what is kept was in
use a moment before). Measured on the 2-core development machine, 2026-11-30:

* batched CHGNet relaxation of 8-16 trials in one process: page faults 430-810k -> ~100k, kernel
  time 3.5 -> 0.5 s (16 trials), peak RSS 524 -> 526 MB; CPU per relaxation 3.79-3.89 -> 3.49-3.56
  core-s in two alternating pairs, within the host's run-to-run spread in two others;
* sampling campaign-paper at 4 sigma (1.81 M latent points): page faults 630k -> 200-260k, 91-95k
  -> 107-113k points/s in two alternating pairs. Its 32 MiB noise batches need the 256 MiB
  threshold: at 32 MiB they stay mmap-ed and the faults stay at ~625k.

Both thresholds are needed: setting either alone turns glibc's dynamic threshold off and is
worse than the defaults (8 relaxations, page faults / core-s per relaxation: defaults 794k /
3.07; trim threshold alone 7.4 M / 6.05; mmap threshold alone 879k / 3.46; both 98k / 2.68).

Called by :func:`ml.sampling.sample_genes` and by every :mod:`dft.hpc` worker (local pool
processes and Slurm jobs). A no-op where the C library has no ``mallopt`` (not glibc).
"""

from __future__ import annotations

import ctypes
import functools

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 20  # bytes: larger blocks stay mmap-ed (a 32,768-point noise batch is 32 MiB)
FALLBACK_MMAP_THRESHOLD = 32 << 20  # for a glibc that refuses more than its dynamic maximum
TRIM_THRESHOLD = 1 << 30  # bytes of free heap kept before any is returned to the OS


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once). True when applied, False
    where the C library has no ``mallopt`` or refuses the values."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap_set = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 or mallopt(M_MMAP_THRESHOLD, FALLBACK_MMAP_THRESHOLD) == 1
    return mmap_set and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
