"""Keep freed memory for reuse: glibc malloc settings for the analysis's tensors.

Attribution allocates and frees tensors of 1 to 300 MB many times a second. With glibc's
defaults a freed block that large goes back to the operating system (it was `mmap`ed, or
it sat at the top of the heap above the 128 KB trim threshold), and the next tensor of
that size is handed fresh pages, each zeroed by the kernel on its first touch. Measured on
coinrun.jd, 128 frames, value attribution at 1a: 307,000 page faults (1.2 GB of zeroed
pages) per call, 1.03 s; with the settings below none, 0.69 s
(`benchmarks/bench_allocator.py`; docs/analysis.md).

`keep_freed_memory()` raises two thresholds once per process, through `mallopt`:

- `M_MMAP_THRESHOLD` to 1 GiB: blocks below it come from the heap, not from `mmap`;
- `M_TRIM_THRESHOLD` to 1 GiB: up to that much free memory at the heap's top is kept.

The same tensors are alive at once, but a freed block kept in the heap does not always
fit the next request, so the peak grows a little (the whole default analysis, value and
policy, in one process: 6.03 to 6.37 GB); between analyses the process holds on to what
it freed, up to 1 GiB at the heap's top, for the next one. Setting it explicitly also turns off glibc's dynamic adjustment of the thresholds.
Nothing happens on a C library without `mallopt` (macOS, musl) or when the environment
variable `GALLERY_MALLOC=default` is set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

#: mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = 1 << 30
ENV = "GALLERY_MALLOC"


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (once per process); True if they were set."""
    if os.environ.get(ENV, "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; glibc before 2.26 refuses an mmap threshold over 32 MiB
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) or mallopt(M_MMAP_THRESHOLD, 32 << 20))
