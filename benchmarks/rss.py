"""The benchmarks' one memory sampler: the peak resident memory summed over a process and all its
descendants (Beam workers included), sampled with psutil, also per process and per named phase."""

from __future__ import annotations

import os
import resource
import threading
from typing import Dict, Optional


class PeakRss:
    """Samples the summed RSS of process ``pid`` (default: this one) and its descendants every ``interval`` s,
    from construction (or ``with``) until :meth:`stop`. ``phase``: a label the caller sets (e.g. the
    component running); ``by_phase`` keeps each label's peak, ``per_process`` each process's."""

    def __init__(self, pid: Optional[int] = None, interval: float = 0.1):
        import psutil

        self.root = psutil.Process(pid or os.getpid())
        self.own = pid is None or pid == os.getpid()
        self.interval, self.peak = interval, 0
        self.phase = "start"
        self.by_phase: Dict[str, int] = {}
        self.per_process: Dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> int:
        import psutil

        total = 0
        try:
            procs = [self.root] + self.root.children(recursive=True)
        except psutil.NoSuchProcess:
            return 0
        for p in procs:
            try:
                rss = p.memory_info().rss
                total += rss
                name = f"{p.pid}:{' '.join(p.cmdline()[1:3])[:60]}"
                self.per_process[name] = max(self.per_process.get(name, 0), rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self._sample()
            self.peak = max(self.peak, rss)
            self.by_phase[self.phase] = max(self.by_phase.get(self.phase, 0), rss)
            self._stop.wait(self.interval)

    def stop(self) -> int:
        """Stops sampling; returns the peak in bytes."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._sample())
        return self.peak

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def peak_mb(self, verbose: bool = False) -> int:
        """The peak in MB (at least this process's own getrusage maxrss when it samples itself); ``verbose``
        prints each process's peak first."""
        if verbose:
            for name, peak in sorted(self.per_process.items()):
                print(f"  peak {peak / 2**20:.0f} MB  {name}")
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if self.own else 0
        return int(round(max(self.peak / 2 ** 20, own)))
