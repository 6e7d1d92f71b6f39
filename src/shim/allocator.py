"""glibc's allocator, told to keep large freed buffers for the next large answer.

A LIST of 10,000 Pods is a 25 MB answer that passes through several buffers of that size
(the rows read, the joined answer, gRPC's copy of it). By default glibc serves each such
allocation with fresh pages from the kernel and hands them back when it is freed (``mmap``
above its threshold, trimming the heap's top below it), so every large answer page-faults all
its buffers in again: a third of the server's CPU per LIST (bench/runs/2026-12-07-list.md).
With both thresholds raised, freed buffers stay in the heap and the next answer reuses them:
the process keeps up to ``TRIM_THRESHOLD`` of freed memory instead of returning it.
"""

from __future__ import annotations

import ctypes

# mallopt(3) parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's largest allowed mmap threshold on 64-bit systems (HEAP_MAX_SIZE / 2): allocations
# below it come from the heap. An answer larger than this still gets fresh pages.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 128 << 20


def keep_large_buffers() -> None:
    """Raise glibc's mmap and trim thresholds (nothing where the C library has no
    ``mallopt``)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # Where the mmap threshold cannot be raised (32-bit: its maximum is far lower), large
    # buffers keep their own pages anyway, and holding freed memory would only cost.
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
