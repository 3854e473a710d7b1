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
among them are not collected (until ``gc.unfreeze``). The CRDT state makes no such cycles
when records are overwritten or removed (tests/transport/test_collector.py); the objects
of a connection that closed may, a bounded amount per reconnection. The Python
documentation of ``gc.freeze`` describes the permanent generation; the services install
this at their start (services/main.py), an application embedding the library may too.
"""

from __future__ import annotations

import gc
from typing import Any


def _freeze_after_full(phase: str, info: dict[str, Any]) -> None:
    """A ``gc.callbacks`` hook: at the end of every full collection, freeze the survivors."""
    if phase == "stop" and info.get("generation") == 2:
        gc.freeze()


def freeze_survivors() -> int:
    """Make every full garbage collection of this process from now on freeze what survived
    it (see the module docstring), and run one now, so that what the process holds after
    its start (modules, a restored replica) is frozen at once. Costs one full collection,
    on the caller's thread (tens to hundreds of ms at start). Idempotent. Returns how many
    objects are frozen."""
    if _freeze_after_full not in gc.callbacks:
        gc.callbacks.append(_freeze_after_full)
    gc.collect()
    return gc.get_freeze_count()


def stop_freezing() -> None:
    """Undo :func:`freeze_survivors`: no more freezing, and what was frozen is scanned
    (and collected, if garbage) by the next full collection again."""
    if _freeze_after_full in gc.callbacks:
        gc.callbacks.remove(_freeze_after_full)
    gc.unfreeze()


__all__ = ["freeze_survivors", "stop_freezing"]
