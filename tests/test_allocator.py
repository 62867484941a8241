"""gallery.allocator: freed tensors' memory is reused, not handed back and faulted in again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHILD = """
import resource, sys, threading, torch
import gallery
from gallery.allocator import keep_freed_memory
faults = []
def allocate():
    for _ in range(8):  # the heap settles: a freed block is reused once one fits the next
        x = torch.ones(16 << 20)  # 64 MB, touched
        del x
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        x = torch.ones(16 << 20)
        del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
if sys.argv[1] == "thread":  # as a unit that the main process computes on a thread
    worker = threading.Thread(target=allocate)
    worker.start()
    worker.join()
else:
    allocate()
print(keep_freed_memory(), faults[0])
"""


def _child(setting: str | None, where: str = "main") -> tuple[bool, int]:
    """(whether importing gallery set the thresholds, page faults of 20 allocations of
    64 MB in the main thread or in another `where`)."""
    env = {k: v for k, v in os.environ.items() if k != "GALLERY_MALLOC"}
    if setting is not None:
        env["GALLERY_MALLOC"] = setting
    out = subprocess.run([sys.executable, "-c", CHILD, where], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_importing_gallery_keeps_freed_memory_for_reuse():
    tuned, faults = _child(None)
    default, default_faults = _child("default")
    assert tuned and not default
    # with glibc's defaults every 64 MB tensor is mmapped afresh: 16384 faults each
    assert default_faults > 20 * 16384 // 2
    assert faults < default_faults // 20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_thread_reuses_freed_memory_too():
    tuned, faults = _child(None, "thread")
    default, default_faults = _child("default", "thread")
    assert tuned and not default
    assert default_faults > 20 * 16384 // 2
    assert faults < default_faults // 20
