"""glibc heap settings for worker processes (glibc only; elsewhere these do nothing).

orjson reserves several times a string's length for each encoding. With glibc's default trim threshold, every
such reservation at the top of the heap is handed back to the kernel when freed and faulted in again by the
next one: per-trace encoding then costs ~5x more (measured in docs/performance.md). Workers therefore keep
freed memory for reuse, and give it back every few tasks instead. Setting the trim threshold also stops glibc
from raising its mmap threshold by itself (128 KiB then stays): each of a batch's megabyte buffers (its body,
its COPY stream) would be a fresh mapping, faulted in page by page. So it is raised alongside.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6") if sys.platform == "linux" else None
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Freed memory a worker keeps at the top of its heap before glibc trims it by itself.
KEEP_FREED_BYTES = 64 * 1024 * 1024
#: Tasks between explicit trims: each trim hands back the pages the next batches fault in again (~15 ms of a
#: worker's CPU). Every 8th task cost ~7 % of the worker's CPU per trace once the rest got faster; every 64th
#: costs under 1 %, and RSS stays flat all the same (docs/performance.md).
TRIM_EVERY_TASKS = 64
_tasks_since_trim = 0


def keep_freed_memory_for_reuse() -> None:
    """Called once per worker process, before its first task."""
    if _LIBC is not None:
        _LIBC.mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_BYTES)
        _LIBC.mallopt(_M_MMAP_THRESHOLD, KEEP_FREED_BYTES)


def return_freed_memory(**_: object) -> None:
    """A batch decodes into tens of MB of short-lived objects that glibc keeps after they are freed; hand them
    back to the OS now and then so a long-running worker's RSS stays near its idle size."""
    global _tasks_since_trim
    _tasks_since_trim += 1
    if _LIBC is not None and _tasks_since_trim >= TRIM_EVERY_TASKS:
        _LIBC.malloc_trim(0)
        _tasks_since_trim = 0
