"""Keep freed heap memory in the process (glibc's ``M_TOP_PAD``), so that a job's buffers are not unmapped and faulted back in step after step.

With glibc's defaults the heap is trimmed back to the system whenever more
than 128 KiB is free at its top, and grown again by as little as is asked.
A training or scoring step frees and re-allocates the same tensors (tens of
MB at a time), so every step paid for its pages again: the fault-injection job of ``tests/faults``
(smoke VGG16, five epochs, 16 chunks of curves) took 2.7-2.9 million page
faults and 8.7-9.9 s of system time in 30-33 CPU seconds. With 64 MiB of
padding kept at the top of the heap it takes 0.83-0.86 million, 4.1 s and
24.6-25.2 CPU seconds (2-core AMD EPYC, TensorFlow 2.21; peak RSS 1.37 ->
1.50 GB); the kernel tests of ``test_propagation.py`` and
``test_perturbation.py`` in one process took 10% less CPU. Where memory
sits does not change what is computed: the job's curves, heatmaps and
predictions are bit-identical with and without it (docs/performance.md,
"Heap padding").

Set by xbench's entry points (a job, the bench, the phantom writer, the
report) and by the test suite's processes; a program that imports xbench as
a library keeps its own allocator settings unless it calls :func:`pad_heap`.
"""

from __future__ import annotations

import ctypes
import sys

#: Bytes glibc keeps at the top of the heap when it grows or trims it (``M_TOP_PAD``; glibc's default is 128 KiB).
TOP_PAD_BYTES = 64 << 20

_M_TOP_PAD = -2  # mallopt's parameter number (glibc's malloc.h)


def pad_heap(pad_bytes: int = TOP_PAD_BYTES) -> bool:
    """Ask glibc to keep ``pad_bytes`` at the top of the heap; True where it did (glibc on Linux), False elsewhere (a no-op).

    Process-wide and idempotent. glibc then also stops adapting its mmap
    threshold (allocations of 128 KiB and more are mapped and unmapped on
    their own), which is what the measurements above include.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(_M_TOP_PAD, int(pad_bytes)) == 1
