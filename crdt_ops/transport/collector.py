"""Python's full garbage collections kept short in a long-running replica process.

CPython's cyclic garbage collector scans every object it tracks in a full (generation 2)
collection, on the event loop, holding every delivery and hop behind it. A replica
process tracks a few hundred thousand objects of its own (the modules it imported, its
connection, its groups) and more with every record it holds: a full collection took
20-152 ms in web and logic as the platform grew to 30,000 records, and 400 ms in a bare
replica holding 50,000 records not yet settled (BENCHMARKS.md, 2026-12-05, sixteenth
session). CPython starts one each time the objects that survived into generation 2 since
the last one reach a quarter of those it kept then.

:func:`freeze_survivors` freezes (``gc.freeze``) what survives each full collection: such
objects move to the permanent generation, which no collection scans, so the next full
collection scans only what survived since the last one. Frozen objects are still freed as
usual when nothing refers to them any more (reference counting); only garbage *cycles*
among them are not collected while frozen. The CRDT state makes no such cycles when
records are written, overwritten or removed (tests/transport/test_collector.py); the
objects of a closed connection or of an event stream a client left may. So every
:data:`RESCAN_S` the frozen objects are handed back (``gc.unfreeze``) and the next full
collection scans everything, frees the cycles that died meanwhile, and freezes again:
garbage cycles live at most that long plus one collection, and a full scan holds the loop
once per :data:`RESCAN_S`, not every time. The Python documentation of ``gc.freeze``
describes the permanent generation; the services install this at their start
(services/main.py), an application embedding the library may too.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

#: Seconds between two full collections that scan everything, frozen objects too (the
#: others scan only what survived since the last one).
RESCAN_S = 600.0


class _Freezer:
    """The ``gc.callbacks`` hook: at the end of every full collection, freeze the survivors,
    or, once :data:`RESCAN_S` passed since the last full scan, hand every frozen object back
    so that the next full collection scans them all."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.monotonic = monotonic
        self.rescan_s = RESCAN_S
        self.scanned_at = monotonic()  # the last full collection that scanned everything

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "stop" or info.get("generation") != 2:
            return
        now = self.monotonic()
        if gc.get_freeze_count() and now - self.scanned_at >= self.rescan_s:
            gc.unfreeze()  # the next full collection scans (and frees) what was frozen
            self.scanned_at = now
        else:
            gc.freeze()


_freezer = _Freezer()


def freeze_survivors(rescan_s: float = RESCAN_S) -> int:
    """Make every full garbage collection of this process from now on freeze what survived
    it, and every ``rescan_s`` seconds let one scan everything (see the module docstring);
    and run one now, so that what the process holds after its start (modules, a restored
    replica) is frozen at once. Costs that one full collection, on the caller's thread
    (tens of ms at start). Idempotent. Returns how many objects are frozen."""
    _freezer.rescan_s = rescan_s
    if _freezer not in gc.callbacks:
        gc.callbacks.append(_freezer)
    gc.collect()
    _freezer.scanned_at = _freezer.monotonic()
    return gc.get_freeze_count()


def stop_freezing() -> None:
    """Undo :func:`freeze_survivors`: no more freezing, and what was frozen is scanned
    (and collected, if garbage) by the next full collection again."""
    if _freezer in gc.callbacks:
        gc.callbacks.remove(_freezer)
    gc.unfreeze()


__all__ = ["RESCAN_S", "freeze_survivors", "stop_freezing"]
