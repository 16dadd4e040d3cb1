"""How much memory the training process holds: the metrics ``memory/rss_gb`` and
``memory/peak_rss_gb`` of every step.

- ``memory/rss_gb``: the resident set size now (Linux: ``/proc/self/statm``);
- ``memory/peak_rss_gb``: the largest resident set size of the process so far
  (``getrusage(RUSAGE_SELF).ru_maxrss``, never decreasing), model loading included.

GB is 10^9 bytes. Under torchrun each process measures itself and rank 0 writes the
log, so the figures are rank 0's. A resumed run is a new process: its peak starts
over (the report shows the highest of all lines). Host memory only: a model on a GPU
holds its weights and activations in GPU memory, which these do not count.
"""

from __future__ import annotations

import os
import resource
import sys

GB = 1e9


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # trap: Linux reports ru_maxrss in KiB, macOS in bytes
    return peak if sys.platform == "darwin" else peak * 1024


def rss_bytes() -> int:
    """The process's resident set size now, in bytes (the peak where /proc is absent)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            resident_pages = int(f.read().split()[1])        # fields: size resident shared ...
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


_HIGHEST = [0]
"""the highest peak reported so far by this process, in bytes"""


def memory_metrics() -> dict[str, float]:
    """{"memory/rss_gb": RSS now, "memory/peak_rss_gb": peak RSS so far}, in GB."""
    rss = rss_bytes()
    # trap: the kernel's peak can lag the current RSS by a few pages (measured: 64 KiB after
    # an munmap), so max(RSS, ru_maxrss) alone can fall between two calls; the highest
    # figure reported so far keeps the peak >= every RSS and never decreasing
    _HIGHEST[0] = max(_HIGHEST[0], rss, peak_rss_bytes())
    return {"memory/rss_gb": rss / GB, "memory/peak_rss_gb": _HIGHEST[0] / GB}
