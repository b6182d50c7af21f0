"""Peak resident memory of a process tree, sampled by a background thread (psutil)."""

from __future__ import annotations

import threading
import time

import psutil


class TreePeakRSS:
    """``with TreePeakRSS() as peak: ...`` then ``peak.gib`` = max summed RSS of this process and
    all its descendants while the block ran (sampled every ``interval`` s), and
    ``peak.cpu_seconds`` = the CPU time the sampling thread itself used (a CPU-time figure of
    the block can leave it out: it is measurement, not the work measured)."""

    def __init__(self, pid: int | None = None, interval: float = 0.1):
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.cpu_seconds = 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        start = time.thread_time()
        try:
            self._sample_until_stopped()
        finally:
            self.cpu_seconds = time.thread_time() - start

    def _sample_until_stopped(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.Error:
                procs = [self.proc]
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def gib(self) -> float:
        return self.peak / 2**30
