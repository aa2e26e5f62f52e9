"""Keep freed activation buffers in the process (glibc's malloc), so CPU forwards and
backwards of small models stop page-faulting.

glibc hands blocks over its mmap threshold straight back to the OS when freed, and trims
the heap top above 128 KB: a forward of the Fashion-MNIST ConvNet (batch 50, width 64,
~10 MB per activation) then maps, faults in and unmaps every activation afresh, and
spends much of the forward doing so; raising only one of the two thresholds does not help.
A process that already freed a large block has glibc's adaptive threshold raised and runs
fast by accident, so two measurements of the same model could differ for no visible
reason; with `tune()` every lpld process runs the same way (`benchmarks/relabel_speed.py`
compares relabel with a pure forward under it).

The cost: up to TRIM_THRESHOLD of freed memory stays in the process (peak RSS does not
change). Only glibc's `mallopt` is called; on other C libraries nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

MMAP_THRESHOLD = 64 << 20  # blocks below it come from the heap and are reused
TRIM_THRESHOLD = 512 << 20  # free heap kept before it is returned to the OS
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


@functools.cache
def tune() -> bool:
    """Raise glibc's mmap and trim thresholds (once per process); False where there is no
    glibc or it refused."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
