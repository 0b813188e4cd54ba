"""Peak resident memory of a block of code, for memory-bound tests and benchmarks."""

from __future__ import annotations

import threading
import time

__all__ = ["PeakRSS"]


class PeakRSS:
    """Context manager sampling the RSS (bytes) every ``interval`` seconds in a thread.

    Parameters
    ----------
    interval
        Sampling period in seconds.
    children
        Also count every child process (recursively), e.g. Dask or DataLoader workers.

    Attributes
    ----------
    base
        RSS when the block was entered.
    peak
        Highest RSS sampled inside the block (including entry and exit).
    """

    def __init__(self, interval: float = 0.01, *, children: bool = False) -> None:
        import psutil

        self.interval = interval
        self.children = children
        self._proc = psutil.Process()
        self.base = self._sample()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        import psutil

        total = int(self._proc.memory_info().rss)
        if self.children:
            for child in self._proc.children(recursive=True):
                try:
                    total += int(child.memory_info().rss)
                except psutil.Error:
                    pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.base = self._sample()
        self.peak = self.base
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())

    @property
    def increase_mib(self) -> float:
        """Peak minus base, in MiB."""
        return (self.peak - self.base) / 2**20
