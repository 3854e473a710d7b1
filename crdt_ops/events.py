"""Change events: what a subscriber is told after each change of an object."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("crdt_ops")


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """A top-level object changed from ``old`` to ``new`` by operations of ``origin``.

    Events are emitted after a whole batch is applied (one per key it changed),
    in delivery order, for local and remote changes alike.

    ``key``: the top-level key; ``old`` / ``new``: its plain values before and
    after the batch (as ``Replica.get()`` shows them; None when the key was absent
    or is removed); ``origin``: the replica whose operations changed it (this
    replica's id for local writes).
    """

    key: str
    old: Any
    new: Any
    origin: str


Callback = Callable[[ChangeEvent], None]


class Subscribers:
    """Callbacks by key prefix. A callback that raises is logged and the others still run."""

    def __init__(self) -> None:
        self._subs: list[tuple[str, Callback]] = []

    def add(self, prefix: str, callback: Callback) -> Callable[[], None]:
        """Call ``callback`` for each change of a key that starts with ``prefix``; returns
        the function that unsubscribes it. Raises TypeError (adding nothing) when
        ``prefix`` is not a str or ``callback`` is not callable: either would fail later,
        at every change, far from the mistake."""
        if not isinstance(prefix, str):
            raise TypeError(f"a subscription's prefix must be a str (\"\" for every key), "
                            f"not {type(prefix).__name__}")
        if not callable(callback):
            raise TypeError(f"a subscription's callback must be callable with a ChangeEvent, "
                            f"not {type(callback).__name__}")
        entry = (prefix, callback)
        self._subs.append(entry)
        return lambda: self._subs.remove(entry) if entry in self._subs else None

    def __bool__(self) -> bool:
        return bool(self._subs)

    def wants(self, key: str) -> bool:
        return any(key.startswith(p) for p, _ in self._subs)

    def emit(self, event: ChangeEvent) -> None:
        for prefix, callback in list(self._subs):
            if event.key.startswith(prefix):
                try:
                    callback(event)
                except Exception:
                    log.exception("change callback for prefix %r failed on %r", prefix, event.key)
