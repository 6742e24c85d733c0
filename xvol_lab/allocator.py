"""Host memory allocator settings for CPU training: keep freed tensor memory for reuse.

glibc's malloc serves blocks above its mmap threshold (at most 32 MiB, adjusted at run time) with fresh
`mmap` pages and returns them to the OS on free, and trims the heap top above its trim threshold. A
training step allocates and frees tensors of a few to tens of MiB many times, so with the defaults each
of them faults its pages in anew: on this machine's CPU a 3x3 convolution at batch 16, 64 ch x 56 x 56,
took 7800-9400 page faults per call against 600-800 with the settings below (tests/test_allocator.py
measures it), and a 1x1 one at batch 32 ran 4x slower (38 against 9 ms, one thread). The PyTorch
CPU tuning guide's remedy is jemalloc or tcmalloc via LD_PRELOAD; these two glibc settings give the same
reuse without a preload.

The lab's processes (`lab.py`, trial processes, benchmarks) call `keep_freed_memory()` at start. The
heap then keeps up to TRIM_THRESHOLD of freed memory resident. A process whose environment already
configures malloc (MALLOC_*_ variables, GLIBC_TUNABLES, or an LD_PRELOADed allocator), or sets
XVOL_LAB_MALLOC=default, is left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for it on 64-bit systems
TRIM_THRESHOLD = 1 << 30
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD")
OPT_OUT = "XVOL_LAB_MALLOC"  # =default: leave glibc's settings alone


_STATE = {"applied": False}


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True when they were set."""
    if _STATE["applied"]:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if os.environ.get(OPT_OUT) == "default" or any(name in os.environ for name in USER_SETTINGS):
        log.debug("malloc left as configured by the environment")
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not done:
        log.debug("glibc refused the malloc thresholds; defaults kept")
    _STATE["applied"] = done
    return done


def describe() -> str:
    """How this process's host allocator is set, for benchmark reports."""
    return "malloc keeps freed memory (xvol_lab.allocator)" if _STATE["applied"] else "malloc as configured"
