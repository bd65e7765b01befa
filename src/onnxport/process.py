"""Process helpers: garbage collection at the start and the exit of onnxport's own processes
(the `onnxport` command and its child processes, never a process that imports onnxport as a
library), and the peak memory of a process, as the kernel records it.

Such a process imports torch, transformers and onnxscript (about 400,000 objects that live
until the end) and then traces a model, which makes millions more; every full collection
walks them all. Two measured costs on DistilBERT-base (2 cores):

- the export: 14.1-14.6 s, and 12.8-13.7 s with the import-time objects frozen first
  (`gc.freeze()` moves them to a generation the collector skips);
- the exit: 2.9 s from the return of `main()` to the end of the process, 0.35 s when
  everything is frozen first, because the interpreter's teardown collects again and again.

Freezing leaks only reference cycles among the objects frozen that later become garbage: none
of the import-time objects do, and at exit nothing is left to free. Files, the manifest and
MLflow runs are closed before the exit, atexit handlers still run, and reference counting
still frees everything else.
"""

from __future__ import annotations

import contextlib
import gc
import resource
import sys
from typing import NoReturn

_owned = False


def own_process() -> None:
    """Declare this process onnxport's own (the command's and the child's entry points)."""
    global _owned
    _owned = True


def freeze_startup_objects() -> None:
    """In onnxport's own process, after the heavy imports and before the model is loaded:
    keep the import-time objects out of every later collection. Elsewhere, nothing."""
    if _owned:
        gc.collect()
        gc.freeze()


def exit_process(code: int) -> NoReturn:
    """Flush the standard streams and exit with `code`, skipping the slow final collections.

    Only for the end of a process: after `gc.freeze()` the cyclic collector ignores every
    object alive now, which would leak reference cycles in a process that goes on running.
    """
    for stream in (sys.stdout, sys.stderr):
        # A closed pipe or stream has nothing left to flush.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    gc.freeze()
    sys.exit(code)


def peak_rss_mb(usage: resource.struct_rusage | None = None) -> float:
    """The largest resident memory, in MB, that the kernel recorded (`ru_maxrss`): of the
    child whose `usage` `os.wait4` returned (it and the children it waited for), or else of
    this process and the children it waited for. The largest process's, not a sum: a child
    that runs while its parent waits is measured at its own peak, however short. A child's
    figure is at least its parent's memory when it was forked (`own_peak_rss_mb` is not)."""
    if usage is None:
        usage_kib = max(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        )
    else:
        usage_kib = usage.ru_maxrss
    return usage_kib / 1024.0


def own_peak_rss_mb() -> float:
    """This process's own peak resident memory, in MB, since it started its program: Linux's
    `VmHWM`. Unlike `ru_maxrss`, it leaves out the parent's memory at the fork, which the
    kernel counts in a child's `ru_maxrss` (a child of a parent holding torch starts with
    torch's peak). Elsewhere, `ru_maxrss`."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return peak_rss_mb(resource.getrusage(resource.RUSAGE_SELF))
