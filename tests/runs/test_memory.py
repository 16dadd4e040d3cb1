"""Memory accounting: the resident set size now and the peak so far, in GB."""

import resource

from tokrl.runs.memory import GB, memory_metrics, peak_rss_bytes, rss_bytes


def test_memory_metrics_are_the_rss_and_the_peak_in_gb():
    m = memory_metrics()
    assert set(m) == {"memory/rss_gb", "memory/peak_rss_gb"}
    assert 0.01 < m["memory/rss_gb"] <= m["memory/peak_rss_gb"] < 1000


def test_the_peak_is_ru_maxrss_in_bytes_not_kib():
    # Linux reports ru_maxrss in KiB: the peak is 1024 times it, and a process that has
    # imported torch holds far more than 1 MB
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert peak_rss_bytes() >= kib * 1024 > 1e6


def test_touching_memory_raises_the_rss_and_the_peak_stays():
    import mmap

    # fresh pages from the kernel (an anonymous map), not the heap: a bytearray can reuse
    # pages the allocator kept from earlier tests, which are resident already
    before = memory_metrics()
    block = mmap.mmap(-1, 300_000_000)
    block[::4096] = b"\x01" * len(block[::4096])     # touch every page
    held = rss_bytes()
    during = memory_metrics()
    block.close()                                    # unmapped: the pages leave the RSS
    after = memory_metrics()
    assert held >= before["memory/rss_gb"] * GB + 250e6
    assert during["memory/peak_rss_gb"] >= before["memory/rss_gb"] + 0.25
    assert after["memory/peak_rss_gb"] >= during["memory/peak_rss_gb"]           # the peak never falls
    assert after["memory/rss_gb"] < during["memory/rss_gb"] - 0.2                # freed memory leaves the RSS
